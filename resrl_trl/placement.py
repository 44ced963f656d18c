"""Where each group's subspace is built: one small strategy object per ``resrl_subspace`` value, chosen once.

- :class:`StepPlacement` (``"step"``, the reference's): in the training forward, from the micro-batch's own hidden
  states; every micro-batch must hold whole groups, which the trainer's group-level shuffle ensures.
- :class:`RolloutPlacement` (``"rollout"``): once per generation, from whole groups wherever their rows sit (other
  micro-batches, other processes); each training micro-batch then only projects its negatives.

Both read the trainer they serve (its settings, accelerator, model and metric lists) and call the pure maths of
:mod:`resrl_trl.residual`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from .residual import (
    SINGLE_PROCESS,
    Collective,
    GroupSubspaces,
    ResidualWeights,
    build_group_subspaces,
    completion_states,
    compute_residual_weights,
    project_onto_group_subspaces,
)
from .trl_compat import disable_gradient_checkpointing

logger = logging.getLogger(__name__)

__all__ = ["GROUP_IDS_KEY", "IS_POSITIVE_KEY", "RolloutPlacement", "StepPlacement", "make_placement"]

GROUP_IDS_KEY = "resrl_group_ids"
IS_POSITIVE_KEY = "resrl_is_positive"


def _block_output(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


class StepPlacement:
    """Subspaces built in the training forward, from the whole groups each micro-batch holds."""

    name = "step"
    shuffles_groups = True  # the trainer keeps groups whole when it splits a generation into micro-batches

    def __init__(self, trainer: Any) -> None:
        self.trainer = trainer

    def start_rollout(self) -> None:
        """Called before TRL generates: nothing to prepare."""

    @contextmanager
    def old_logprob_forward(self, logits_to_keep: int) -> Iterator[None]:
        yield

    def finish_rollout(self, batch: dict[str, Any], all_positive: torch.Tensor, group_size: int, mode: str) -> None:
        """Called once the rollout batch is complete: nothing to build ahead."""

    def weights(
        self, hidden: torch.Tensor, valid: torch.Tensor, group_ids: torch.Tensor, is_positive: torch.Tensor, mode: str
    ) -> ResidualWeights:
        trainer, args = self.trainer, self.trainer.args
        group_sizes = torch.unique(group_ids, return_counts=True)[1]
        expected = trainer.num_generations if mode == "train" else trainer.num_generations_eval
        if bool((group_sizes != expected).any()):
            raise RuntimeError(
                f"a micro-batch holds a partial prompt group (sizes {group_sizes.tolist()}, expected {expected}); "
                "resrl_subspace='step' needs whole groups in each micro-batch (use resrl_subspace='rollout')"
            )
        return compute_residual_weights(
            hidden,
            valid,
            group_ids,
            is_positive,
            args.subspace_settings,
            group_seed=trainer._group_seed[mode],
            num_groups=trainer._num_groups[mode] or None,
        )


class RolloutPlacement:
    """Subspaces and energy quantiles built once per generation from whole groups, then projected onto per
    micro-batch. The hidden states come from TRL's old-log-probability forward when TRL runs one over the rollout,
    else from one no-grad forward of the decoder over the completions of mixed groups."""

    name = "rollout"
    shuffles_groups = False

    def __init__(self, trainer: Any) -> None:
        self.trainer = trainer
        self.subspaces: dict[str, GroupSubspaces] = {}  # per mode, from the latest generation
        self._captured: list[torch.Tensor] | None = None  # filled while TRL's old-log-prob forward runs

    def _trl_runs_rollout_forward(self) -> bool:
        """Whether GRPOTrainer computes old log-probabilities over the rollout (the condition it uses itself)."""
        trainer, args = self.trainer, self.trainer.args
        generate_every = args.steps_per_generation * trainer.num_iterations
        return args.gradient_accumulation_steps % generate_every != 0 or (
            trainer.use_vllm and trainer.vllm_importance_sampling_correction
        )

    def start_rollout(self) -> None:
        self._captured = [] if self._trl_runs_rollout_forward() else None

    @contextmanager
    def old_logprob_forward(self, logits_to_keep: int) -> Iterator[None]:
        """Around TRL's log-probability forwards of a rollout: the first one (old log-probabilities; a reference
        model's, if any, comes later) leaves its hidden states at the completion positions here."""
        if self._captured is None or self._captured:
            yield
            return
        captured, position = self._captured, self.trainer.args.resrl_weight_position

        def hook(module: nn.Module, hook_args: Any, output: Any) -> None:
            captured.append(completion_states(_block_output(output), logits_to_keep, position).detach())

        handle = self.trainer._resrl_layer.register_forward_hook(hook)
        try:
            yield
        finally:
            handle.remove()

    def _collective(self) -> Collective:
        accelerator = self.trainer.accelerator
        if accelerator.num_processes == 1:
            return SINGLE_PROCESS

        def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
            total = tensor.clone()
            dist.all_reduce(total)
            return total

        return Collective(all_reduce_sum, accelerator.process_index, accelerator.num_processes)

    def _completion_hidden_states(self, batch: dict[str, Any], rows: torch.Tensor, num_chunks: int) -> torch.Tensor:
        """Hidden states at the completion positions of ``rows``, from one no-grad forward in ``num_chunks`` chunks
        (the same number on every process, as ZeRO-3 needs; a process with fewer rows runs a throwaway chunk)."""
        trainer = self.trainer
        input_ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], dim=1)
        attention_mask = torch.cat([batch["prompt_mask"], batch["completion_mask"]], dim=1)
        num_tokens = batch["completion_ids"].size(1)
        chunk_size = max(1, -(-len(rows) // num_chunks)) if len(rows) else 1
        chunks = list(rows.split(chunk_size)) if len(rows) else []
        captured: list[torch.Tensor] = []
        position = trainer.args.resrl_weight_position

        def hook(module: nn.Module, hook_args: Any, output: Any) -> None:
            captured.append(completion_states(_block_output(output), num_tokens, position).detach())

        # Only hidden states are wanted: run the decoder stack alone, never the LM head. (Calling the LM head module
        # here, where the training forward only reads its weight through TRL's fused kernel, leaves ZeRO-3 unable to
        # gather that weight again in the backward.)
        model = trainer.accelerator.unwrap_model(trainer.model)
        decoder = (model.get_base_model() if hasattr(model, "get_base_model") else model).get_decoder()
        handle = trainer._resrl_layer.register_forward_hook(hook)
        try:
            checkpointing_kwargs = trainer.args.gradient_checkpointing_kwargs
            with torch.no_grad(), disable_gradient_checkpointing(trainer.model, checkpointing_kwargs):
                for index in range(num_chunks):
                    chunk = chunks[index] if index < len(chunks) else torch.zeros(1, dtype=torch.long)
                    chunk = chunk.to(input_ids.device)
                    with trainer.accelerator.autocast():
                        decoder(input_ids=input_ids[chunk], attention_mask=attention_mask[chunk], use_cache=False)
        finally:
            handle.remove()
        if not captured:  # no process has a mixed group: nothing will be built
            return input_ids.new_zeros((0, num_tokens, 1), dtype=torch.float32)
        return torch.cat(captured)[: len(rows)]  # drops the throwaway chunk's row, if any

    def finish_rollout(self, batch: dict[str, Any], all_positive: torch.Tensor, group_size: int, mode: str) -> None:
        """Build every group's subspace and quantiles from the whole rollout, whichever processes hold its rows."""
        trainer, args = self.trainer, self.trainer.args
        captured, self._captured = self._captured or None, None
        if captured is not None and batch.get("old_per_token_logps") is None:
            # Predicted from TRL's own condition, checked against what TRL did: hidden states of a forward that was
            # not the old-log-prob one (a reference model's, say) must not build subspaces.
            logger.warning("TRL ran no old-log-prob forward this rollout; ResRL runs its own (see trl_compat.py)")
            captured = None
        device = batch["completion_ids"].device
        num_processes, local_rows = trainer.accelerator.num_processes, len(batch["completion_ids"])
        num_groups = local_rows * num_processes // group_size
        group_of = torch.arange(num_groups * group_size, device=all_positive.device) // group_size
        positives_per_group = torch.zeros(num_groups, device=all_positive.device).index_add_(
            0, group_of, all_positive.float()
        )
        mixed = (positives_per_group > 0) & (positives_per_group < group_size)
        row_mixed = mixed[group_of].view(num_processes, local_rows)  # rewards are global: every process sees all
        if captured is not None:
            rows = torch.arange(local_rows, device=device)
            hidden = torch.cat(captured)
        else:
            # Only the completions of mixed groups are needed; every process runs as many chunks as the busiest.
            chunk_size = args.per_device_train_batch_size if mode == "train" else args.per_device_eval_batch_size
            num_chunks = int((-(-row_mixed.sum(1) // chunk_size)).max())
            rows = row_mixed[trainer.accelerator.process_index].nonzero().flatten().to(device)
            hidden = self._completion_hidden_states(batch, rows, num_chunks)
        subspaces, _ = build_group_subspaces(  # its group counts cover mixed groups only: the full ones come below
            hidden,
            trainer._valid_tokens(batch)[rows],
            batch[GROUP_IDS_KEY][rows],
            batch[IS_POSITIVE_KEY][rows],
            args.subspace_settings,
            num_groups=num_groups,
            group_seed=trainer._group_seed[mode],
            collective=self._collective(),
        )
        self.subspaces[mode] = subspaces
        metrics = trainer._metrics[mode]
        metrics["resrl/mixed_group_frac"].append(float(mixed.float().mean()))
        metrics["resrl/skipped_groups"].append(float(mixed.sum()) - len(subspaces.group_ids))
        metrics["resrl/positives"].append(float(all_positive.sum()))
        metrics["resrl/negatives"].append(float((~all_positive).sum()))

    def weights(
        self, hidden: torch.Tensor, valid: torch.Tensor, group_ids: torch.Tensor, is_positive: torch.Tensor, mode: str
    ) -> ResidualWeights:
        settings = self.trainer.args.subspace_settings
        return project_onto_group_subspaces(hidden, valid, group_ids, is_positive, self.subspaces[mode], settings)


def make_placement(trainer: Any) -> StepPlacement | RolloutPlacement:
    """The placement ``trainer.args.resrl_subspace`` names (``"auto"`` is resolved by the config)."""
    return RolloutPlacement(trainer) if trainer.args.resrl_subspace == "rollout" else StepPlacement(trainer)
