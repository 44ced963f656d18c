"""ResRLTrainer: TRL's GRPOTrainer with ResRL's per-token advantages."""

from __future__ import annotations

import json
import os
import shutil
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from trl import GRPOTrainer

from .advantages import SCALES_POSITIVES, USES_TOKEN_WEIGHTS, reinforce_advantages
from .config import ResRLConfig
from .model_card import RESRL_PAPER, append_settings
from .residual import (
    SINGLE_PROCESS,
    Collective,
    GroupSubspaces,
    ResidualStats,
    build_group_subspaces,
    compute_residual_weights,
    group_stream_seed,
    project_onto_group_subspaces,
    think_span_mask,
)
from .safety import SafeTrainingMixin
from .trl_compat import (
    check_trl_internals,
    disable_gradient_checkpointing,
    split_pixel_values_by_grid,
    split_tensor_dict,
    unsplit_pixel_values_by_grid,
)

GROUP_IDS_KEY = "resrl_group_ids"
RESRL_STATE_FILE = "resrl_state.json"
IS_POSITIVE_KEY = "resrl_is_positive"


def shuffle_groups(batch: dict[str, Any], group_size: int) -> dict[str, Any]:
    """Shuffle the rows of a rollout batch at the level of whole groups of ``group_size`` consecutive rows.

    It draws exactly the permutation TRL's row shuffle would draw (``torch.randperm`` of the batch size, from the
    global RNG) and orders the groups by where they first appear in it, so the RNG stream, and with it every later
    sampled completion, is the same as under ``GRPOTrainer``; every order of the groups is equally likely.
    """
    batch_size = len(next(v for v in batch.values() if v is not None))
    permutation = torch.randperm(batch_size)
    num_groups = batch_size // group_size
    first_seen = torch.full((num_groups,), batch_size).scatter_reduce(
        0, permutation // group_size, torch.arange(batch_size), reduce="amin"
    )
    group_order = torch.argsort(first_seen)
    rows = (group_order[:, None] * group_size + torch.arange(group_size)).flatten()

    def permute(value: Any) -> Any:
        if value is None or (isinstance(value, torch.Tensor) and value.ndim == 0):
            return value
        if isinstance(value, torch.Tensor):
            return value[rows.to(value.device)]
        return [value[i] for i in rows.tolist()]

    return {key: permute(value) for key, value in batch.items()}


def decoder_layer_for_hidden_state(model: nn.Module, hidden_layer: int) -> nn.Module:
    """The decoder block whose output is ``output_hidden_states[hidden_layer]``.

    Works through PEFT, DDP and DeepSpeed wrappers: it looks for the module list of decoder blocks, whose length is
    ``config.num_hidden_layers``.
    """
    config = None
    for module in model.modules():
        config = getattr(module, "config", None)
        if config is not None and hasattr(config, "get_text_config"):
            config = config.get_text_config()
            break
    num_layers = getattr(config, "num_hidden_layers", None)
    if num_layers is None:
        raise ValueError("ResRL could not read num_hidden_layers from the model's config to find its decoder blocks")
    blocks = [m for name, m in model.named_modules() if isinstance(m, nn.ModuleList) and len(m) == num_layers and name]
    if not blocks:
        raise ValueError(
            f"ResRL found no list of {num_layers} decoder blocks in {type(model).__name__}; it needs a transformer "
            "whose decoder blocks sit in an nn.ModuleList (as in every Hugging Face causal LM)"
        )
    index = hidden_layer if hidden_layer >= 0 else num_layers + 1 + hidden_layer
    if not 1 <= index <= num_layers - 1:
        raise ValueError(
            f"resrl_hidden_layer={hidden_layer} does not name a decoder block's output in a model with {num_layers} "
            f"blocks: use an index in [1, {num_layers - 1}] or [{-num_layers}, -2] (the paper uses -2)"
        )
    return blocks[0][index - 1]


class ResRLTrainer(SafeTrainingMixin, GRPOTrainer):
    """Trainer for ResRL (Lin et al., "ResRL: Boosting LLM Reasoning via Negative Sample Projection Residual
    Reinforcement Learning", ICML 2026, https://arxiv.org/abs/2605.00380).

    ResRL is GRPO with per-token advantages. In each prompt group, the hidden states of the positive completions'
    tokens span a low-rank subspace; every token of a negative completion keeps a share of its negative advantage
    that grows with how far its hidden state lies outside that subspace (weights in ``[resrl_min_weight, 1]``), and
    positive completions' advantages are multiplied by ``resrl_pos_weight``.

    What changes with respect to [`trl.GRPOTrainer`]:

    - rollouts carry each completion's group id and whether it is positive;
    - with ``resrl_subspace="step"``, rollouts are shuffled by whole groups, so each micro-batch holds whole groups;
      with ``"rollout"``, each group's subspace and energy quantiles are built once per generation, from the whole
      group on every process that holds part of it;
    - in the training forward that ``_compute_loss`` already runs, a forward hook on one decoder block reads its
      hidden states and turns the ``(B,)`` advantages into ``(B, T)`` advantages before the loss uses them.

    The clipped loss, KL, aggregation and everything else are TRL's. The maths lives in :mod:`resrl_trl.residual`.
    """

    _tag_names = ["trl", "resrl"]
    _name = "ResRL"
    _paper = RESRL_PAPER

    def __init__(self, model: Any, reward_funcs: Any = None, args: ResRLConfig | None = None, **kwargs: Any) -> None:
        # reward_funcs may be omitted when an environment owns the reward (TRL's environment_factory): TRL then adds
        # the environment's reward as a reward function of weight 1, and ResRL reads it like any other.
        if args is None:
            name = model if isinstance(model, str) else model.config._name_or_path
            args = ResRLConfig(f"{str(name).split('/')[-1]}-ResRL")
        if not isinstance(args, ResRLConfig):
            raise TypeError(
                f"ResRLTrainer needs a ResRLConfig, got {type(args).__name__}; build the arguments with "
                "resrl_trl.ResRLConfig (it takes every GRPOConfig field)"
            )
        check_trl_internals()  # a TRL release that moved what ResRL hooks into fails here, naming what moved
        super().__init__(model, reward_funcs, args=args, **kwargs)
        self._resrl_layer = (  # only the token-weight modes read hidden states
            decoder_layer_for_hidden_state(self.model, args.resrl_hidden_layer)
            if args.advantage_mode in USES_TOKEN_WEIGHTS
            else None
        )
        self._rollout_subspaces = args.resrl_subspace == "rollout" and self._resrl_layer is not None
        # ResRL's randomness (positive-token subsampling, the PCA's random start) comes from one stream per group,
        # seeded from resrl_seed, the generation's index and the group's id: never from the global RNG (so the
        # sampled completions stay as under GRPOTrainer), and the same wherever the group's rows are processed.
        self._resrl_seed = args.seed if args.resrl_seed is None else args.resrl_seed
        self._generations = {"train": 0, "eval": 0}
        self._group_seed = {"train": 0, "eval": 0}  # of the latest generation, per mode
        self._num_groups = {"train": 0, "eval": 0}  # groups in the latest generation (ids are 0..n-1), per mode
        self._think_markers = self._resolve_think_markers() if args.resrl_mask_think else None
        self._last_rewards_per_func: torch.Tensor | None = None
        self._group_subspaces: dict[str, GroupSubspaces] = {}  # per mode, from the latest generation
        self._rollout_hidden: list[torch.Tensor] | None = None  # filled while TRL's rollout forward runs
        self._token_sums: dict[str, torch.Tensor] = {}  # per mode: weight, energy, alignment sums and token count

    def _resolve_think_markers(self) -> tuple[list[int], list[int]]:
        tokenizer = getattr(self.processing_class, "tokenizer", self.processing_class)
        start = tokenizer.encode(self.args.resrl_think_start, add_special_tokens=False)
        end = tokenizer.encode(self.args.resrl_think_end, add_special_tokens=False)
        if not start or not end:
            raise ValueError(
                f"resrl_mask_think=True but the tokenizer encodes {self.args.resrl_think_start!r} or "
                f"{self.args.resrl_think_end!r} to no tokens; set resrl_think_start/resrl_think_end to the markers "
                "your model writes"
            )
        return start, end

    # --- Rollouts: remember each completion's group and whether it succeeded. ---

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):  # noqa: ANN001, ANN202
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self._last_rewards_per_func = rewards_per_func  # gathered over all processes, shape (N_total, F)
        return rewards_per_func

    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        # Reuse the hidden states of the no-grad forward TRL runs over the rollout (old log-probs) when it runs one.
        self._rollout_hidden = [] if self._rollout_subspaces and self._trl_runs_rollout_forward() else None
        try:
            output = super()._generate_and_score_completions(inputs)
            captured, self._rollout_hidden = self._rollout_hidden, None
        finally:
            self._rollout_hidden = None
        rewards_per_func, self._last_rewards_per_func = self._last_rewards_per_func, None
        weights = self.reward_weights.to(rewards_per_func.device)
        rewards = (rewards_per_func * weights).nansum(dim=1)
        # A completion no reward function could score is not positive (TRL gives it a zero advantage).
        rewards[torch.isnan(rewards_per_func).all(dim=1)] = float("nan")
        mode = "train" if self.model.training else "eval"
        # Eval generations draw from their own sequence of seeds, so evaluating never shifts training's.
        self._group_seed[mode] = group_stream_seed(self._resrl_seed + (mode == "eval") * 7919, self._generations[mode])
        self._generations[mode] += 1
        group_size = self.num_generations if mode == "train" else self.num_generations_eval
        start = self.accelerator.process_index * len(inputs)
        local = slice(start, start + len(inputs))
        self._num_groups[mode] = len(inputs) * self.accelerator.num_processes // group_size
        device = output["completion_ids"].device
        is_positive = (rewards[local] > self.args.resrl_positive_threshold).to(device)
        output[IS_POSITIVE_KEY] = is_positive
        output[GROUP_IDS_KEY] = torch.arange(start, start + len(inputs), device=device) // group_size
        method = self.args.advantage_mode
        if method in ("psr", "nsr", "w_reinforce"):
            output["advantages"] = reinforce_advantages(
                rewards[local].to(device), is_positive, method, self.args.w_reinforce_lambda
            )
        elif method == "resrl_pos_only":  # no token weights: the positive scaling is all there is, per sequence
            advantages = output["advantages"]
            output["advantages"] = torch.where(is_positive, advantages * self.args.resrl_pos_weight, advantages)
        # A non-finite advantage (a reward function's NaN or inf, say) would turn the whole loss into NaN: such a
        # completion takes no part in the update, and is counted.
        finite = torch.isfinite(output["advantages"])
        self._metrics[mode]["resrl/nonfinite_advantages"].append(float((~finite).sum()))
        output["advantages"] = torch.where(finite, output["advantages"], 0.0)
        if self._rollout_subspaces:
            all_positive = rewards > self.args.resrl_positive_threshold
            self._build_rollout_subspaces(output, all_positive, group_size, captured or None, mode)
        return output

    # --- Rollout-time subspaces (resrl_subspace="rollout"). ---

    def _trl_runs_rollout_forward(self) -> bool:
        """Whether GRPOTrainer computes old log-probabilities over the rollout (the condition it uses itself)."""
        generate_every = self.args.steps_per_generation * self.num_iterations
        return self.args.gradient_accumulation_steps % generate_every != 0 or (
            self.use_vllm and self.vllm_importance_sampling_correction
        )

    def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        if self._rollout_hidden is None or self._rollout_hidden:
            return super()._get_per_token_logps_and_entropies(
                model, input_ids, attention_mask, logits_to_keep, *args, **kwargs
            )
        # The first such call of a rollout is the old-log-prob forward (the reference model's, if any, comes later).
        captured = self._rollout_hidden

        def hook(module: nn.Module, hook_args: Any, output: Any) -> None:
            hidden = output[0] if isinstance(output, tuple) else output
            captured.append(hidden[:, -logits_to_keep - 1 : -1].detach())

        handle = self._resrl_layer.register_forward_hook(hook)
        try:
            return super()._get_per_token_logps_and_entropies(
                model, input_ids, attention_mask, logits_to_keep, *args, **kwargs
            )
        finally:
            handle.remove()

    def _collective(self) -> Collective:
        if self.accelerator.num_processes == 1:
            return SINGLE_PROCESS

        def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
            total = tensor.clone()
            dist.all_reduce(total)
            return total

        return Collective(all_reduce_sum, self.accelerator.process_index, self.accelerator.num_processes)

    def _completion_hidden_states(self, batch: dict[str, Any], rows: torch.Tensor, num_chunks: int) -> torch.Tensor:
        """Hidden states at the completion positions of ``rows``, from one no-grad forward in ``num_chunks`` chunks
        (the same number on every process, as ZeRO-3 needs; a process with fewer rows runs a throwaway chunk)."""
        input_ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], dim=1)
        attention_mask = torch.cat([batch["prompt_mask"], batch["completion_mask"]], dim=1)
        num_tokens = batch["completion_ids"].size(1)
        chunk_size = max(1, -(-len(rows) // num_chunks)) if len(rows) else 1
        chunks = list(rows.split(chunk_size)) if len(rows) else []
        captured: list[torch.Tensor] = []

        def hook(module: nn.Module, hook_args: Any, output: Any) -> None:
            hidden = output[0] if isinstance(output, tuple) else output
            captured.append(hidden[:, -num_tokens - 1 : -1].detach())

        # Only hidden states are wanted: run the decoder stack alone, never the LM head. (Calling the LM head module
        # here, where the training forward only reads its weight through TRL's fused kernel, leaves ZeRO-3 unable to
        # gather that weight again in the backward.)
        model = self.accelerator.unwrap_model(self.model)
        decoder = (model.get_base_model() if hasattr(model, "get_base_model") else model).get_decoder()
        handle = self._resrl_layer.register_forward_hook(hook)
        try:
            with torch.no_grad(), disable_gradient_checkpointing(self.model, self.args.gradient_checkpointing_kwargs):
                for index in range(num_chunks):
                    chunk = chunks[index] if index < len(chunks) else torch.zeros(1, dtype=torch.long)
                    chunk = chunk.to(input_ids.device)
                    with self.accelerator.autocast():
                        decoder(input_ids=input_ids[chunk], attention_mask=attention_mask[chunk], use_cache=False)
        finally:
            handle.remove()
        if not captured:  # no process has a mixed group: nothing will be built
            return input_ids.new_zeros((0, num_tokens, 1), dtype=torch.float32)
        return torch.cat(captured)[: len(rows)]  # drops the throwaway chunk's row, if any

    def _build_rollout_subspaces(
        self,
        batch: dict[str, Any],
        all_positive: torch.Tensor,
        group_size: int,
        captured: list[torch.Tensor] | None,
        mode: str,
    ) -> None:
        """Build every group's subspace and quantiles from the whole rollout, whichever processes hold its rows."""
        device = batch["completion_ids"].device
        num_processes, local_rows = self.accelerator.num_processes, len(batch["completion_ids"])
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
            chunk_size = (
                self.args.per_device_train_batch_size if mode == "train" else self.args.per_device_eval_batch_size
            )
            num_chunks = int((-(-row_mixed.sum(1) // chunk_size)).max())
            rows = row_mixed[self.accelerator.process_index].nonzero().flatten().to(device)
            hidden = self._completion_hidden_states(batch, rows, num_chunks)
        subspaces, stats = build_group_subspaces(
            hidden,
            self._valid_tokens(batch)[rows],
            batch[GROUP_IDS_KEY][rows],
            batch[IS_POSITIVE_KEY][rows],
            num_groups=num_groups,
            rank=self.args.resrl_rank,
            max_pos_tokens=self.args.resrl_max_pos_tokens,
            q_low=self.args.resrl_q_low,
            q_high=self.args.resrl_q_high,
            niter=self.args.resrl_pca_niter,
            group_seed=self._group_seed[mode],
            collective=self._collective(),
        )
        self._group_subspaces[mode] = subspaces
        metrics = self._metrics[mode]
        metrics["resrl/mixed_group_frac"].append(float(mixed.float().mean()))
        metrics["resrl/skipped_groups"].append(float(mixed.sum()) - len(subspaces.group_ids))
        metrics["resrl/positives"].append(float(all_positive.sum()))
        metrics["resrl/negatives"].append(float((~all_positive).sum()))
        del stats  # its group counts cover the mixed groups only; the full counts come from the rewards above

    def _prepare_inputs(self, generation_batch: dict[str, Any]) -> dict[str, Any]:
        # As GRPOTrainer._prepare_inputs, with TRL's row shuffle replaced by a shuffle of whole groups.
        if not self.model.training or self._resrl_layer is None or self._rollout_subspaces:
            return super()._prepare_inputs(generation_batch)
        generate_every = self.args.steps_per_generation * self.num_iterations
        if self._step % generate_every == 0 or self._buffered_inputs is None:
            generation_batch = self._generate_and_score_completions(generation_batch)
            generation_batch = split_pixel_values_by_grid(generation_batch)
            generation_batch = shuffle_groups(generation_batch, self.num_generations)
            generation_batches = split_tensor_dict(generation_batch, self.args.steps_per_generation)
            self._buffered_inputs = [unsplit_pixel_values_by_grid(batch) for batch in generation_batches]
        return self._buffered_inputs[self._step % self.args.steps_per_generation]

    # --- Training step: per-token advantages from the hidden states of the forward TRL already runs. ---

    def _compute_loss(self, model: nn.Module, inputs: dict[str, Any]) -> torch.Tensor:
        if self.args.advantage_mode not in USES_TOKEN_WEIGHTS:
            return super()._compute_loss(model, inputs)
        # A shallow copy: the hook swaps in per-token advantages, and buffered rollouts are reused across iterations.
        inputs = dict(inputs)
        found: list[ResidualStats] = []

        def hook(module: nn.Module, args: Any, output: Any) -> None:
            if found:  # the weights of this step are set; a repeated call (e.g. recomputation) changes nothing
                return
            hidden = output[0] if isinstance(output, tuple) else output
            found.append(self._apply_residual_weights(hidden.detach(), inputs))

        handle = self._resrl_layer.register_forward_hook(hook)
        try:
            loss = super()._compute_loss(model, inputs)
        finally:
            handle.remove()  # before backward: gradient-checkpoint recomputation never reaches the hook
        if not found:
            raise RuntimeError(
                "ResRL's hook on the decoder block never fired during the training forward; the model's forward did "
                "not run its decoder blocks as nn.Module calls"
            )
        self._log_residual_stats(found[0])
        return loss

    def _apply_residual_weights(self, hidden: torch.Tensor, inputs: dict[str, Any]) -> ResidualStats:
        completion_ids = inputs["completion_ids"]
        num_tokens = completion_ids.size(1)
        total = inputs["prompt_ids"].size(1) + num_tokens
        if hidden.size(1) != total:
            raise RuntimeError(
                f"ResRL expected hidden states over {total} positions (prompt + completion), got {hidden.size(1)}"
            )
        completion_hidden = hidden[:, total - num_tokens - 1 : total - 1]
        valid = self._valid_tokens(inputs)
        group_ids, is_positive, args = inputs[GROUP_IDS_KEY], inputs[IS_POSITIVE_KEY], self.args
        mode = "train" if self.model.training else "eval"
        if self._rollout_subspaces:
            result = project_onto_group_subspaces(
                completion_hidden,
                valid,
                group_ids,
                is_positive,
                self._group_subspaces[mode],
                min_weight=args.resrl_min_weight,
            )
        else:
            group_sizes = torch.unique(group_ids, return_counts=True)[1]
            expected = self.num_generations if self.model.training else self.num_generations_eval
            if bool((group_sizes != expected).any()):
                raise RuntimeError(
                    f"a micro-batch holds a partial prompt group (sizes {group_sizes.tolist()}, expected {expected}); "
                    "resrl_subspace='step' needs whole groups in each micro-batch (use resrl_subspace='rollout')"
                )
            result = compute_residual_weights(
                completion_hidden,
                valid,
                group_ids,
                is_positive,
                rank=args.resrl_rank,
                max_pos_tokens=args.resrl_max_pos_tokens,
                q_low=args.resrl_q_low,
                q_high=args.resrl_q_high,
                min_weight=args.resrl_min_weight,
                niter=args.resrl_pca_niter,
                group_seed=self._group_seed[mode],
                num_groups=self._num_groups[mode] or None,
            )
        pos_weight = args.resrl_pos_weight if args.advantage_mode in SCALES_POSITIVES else 1.0
        factor = torch.where(is_positive[:, None], pos_weight, result.weights)
        advantages = inputs["advantages"]
        if advantages.dim() == 1:
            advantages = advantages[:, None]
        inputs["advantages"] = advantages * factor
        return result.stats

    def _valid_tokens(self, inputs: dict[str, Any]) -> torch.Tensor:
        """The completion tokens that take part: not padding, not tool output, not inside a masked think span."""
        valid = inputs["completion_mask"].bool()
        if "tool_mask" in inputs:
            valid = valid & inputs["tool_mask"].bool()
        if self._think_markers is not None:
            valid = valid & ~think_span_mask(inputs["completion_ids"], *self._think_markers)
        return valid

    def _log_residual_stats(self, stats: ResidualStats) -> None:
        totals = self.accelerator.reduce(torch.stack(list(stats)), reduction="sum")
        mode = "train" if self.model.training else "eval"
        # Token statistics are summed over the micro-batches and turned into means over all weighted tokens when
        # logged (see log): a micro-batch without weighted tokens must not count as a mean of 0.
        self._token_sums[mode] = self._token_sums.get(mode, 0) + totals[:4].double().cpu()
        if not self._rollout_subspaces:  # else logged once per rollout, for whole groups
            s = ResidualStats(*totals.tolist())
            metrics = self._metrics[mode]
            metrics["resrl/mixed_group_frac"].append(s.mixed_groups / max(s.groups, 1.0))
            metrics["resrl/skipped_groups"].append(s.skipped_groups)
            metrics["resrl/positives"].append(s.positives)
            metrics["resrl/negatives"].append(s.negatives)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "train" if self.model.training else "eval"
        sums = self._token_sums.pop(mode, None)
        if sums is not None and sums[3] > 0:  # no weighted token since the last log: no mean to report
            weight_sum, energy_sum, alignment_sum, tokens = sums.tolist()
            self._metrics[mode]["resrl/neg_token_weight_mean"] = [weight_sum / tokens]
            self._metrics[mode]["resrl/residual_energy_mean"] = [energy_sum / tokens]
            self._metrics[mode]["resrl/neg_alignment_mean"] = [alignment_sum / tokens]
        super().log(logs, start_time)

    # --- Saved models carry a card that names ResRL and lists its settings. ---

    def create_model_card(self, model_name=None, dataset_name=None, tags=None) -> None:  # noqa: ANN001
        super().create_model_card(model_name, dataset_name, tags)
        if self.is_world_process_zero():
            model = self.accelerator.unwrap_model(self.model)
            base = getattr(getattr(model, "config", None), "_name_or_path", None) or None
            append_settings(os.path.join(self.args.output_dir, "README.md"), self.args, base)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        super().save_model(output_dir, _internal_call)
        if not self.args.should_save:
            return
        # PEFT and transformers write an empty template card; TRL's card (written to output_dir) replaces it.
        self.create_model_card(model_name=os.path.basename(os.path.normpath(self.args.output_dir)))
        card = os.path.join(self.args.output_dir, "README.md")
        folder = output_dir or self.args.output_dir
        if os.path.abspath(folder) != os.path.abspath(self.args.output_dir):
            shutil.copyfile(card, os.path.join(folder, "README.md"))

    # --- Checkpoints: ResRL's random-stream state travels with them (SafeTrainingMixin makes them atomic). ---

    def _save_rng_state(self, output_dir: str) -> None:
        super()._save_rng_state(output_dir)
        if self.args.should_save:
            state = {"generations": self._generations}
            with open(os.path.join(output_dir, RESRL_STATE_FILE), "w") as handle:
                json.dump(state, handle)

    def _load_rng_state(self, checkpoint: str | None) -> None:
        super()._load_rng_state(checkpoint)
        path = os.path.join(checkpoint, RESRL_STATE_FILE) if checkpoint else None
        if path and os.path.isfile(path):
            with open(path) as handle:
                self._generations = {**self._generations, **json.load(handle)["generations"]}
