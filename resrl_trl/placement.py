"""Where each group's subspace is built, and the one owner of "hidden states -> token weights" in training.

A placement is built once from explicit parts (the decoder block it reads, the :class:`SubspaceSettings`, the
position a token is read from, a :class:`SeedStream` and a :class:`Collective`) and the trainer calls it at TRL's
seams; it never reads the trainer:

- :meth:`Placement.shuffle_rollout`: how a generation's rows are shuffled before TRL splits them into micro-batches;
- :meth:`Placement.start_rollout` / :meth:`Placement.old_logprob_forward` / :meth:`Placement.finish_rollout`: around
  a rollout; ``finish_rollout`` returns the rollout's metrics;
- :meth:`Placement.training_forward`: around TRL's training forward, where one forward hook on the block turns the
  ``(B,)`` advantages into ``(B, T)`` ones; it yields the weights and token statistics it computed.

Two placements, one per ``resrl_subspace`` value:

- :class:`StepPlacement` (``"step"``, the reference's): subspaces built in the training forward from the micro-batch's
  own hidden states; every micro-batch must hold whole groups, which its group-level shuffle ensures.
- :class:`RolloutPlacement` (``"rollout"``): subspaces built once per generation from whole groups wherever their rows
  sit (other micro-batches, other processes); each training micro-batch then only projects its negatives.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from .advantages import token_advantages
from .capture import capture_outputs
from .residual import (
    SINGLE_PROCESS,
    Collective,
    GroupSubspaces,
    ResidualStats,
    ResidualWeights,
    SubspaceSettings,
    build_group_subspaces,
    completion_states,
    compute_residual_weights,
    group_stream_seed,
    project_onto_group_subspaces,
)
from .trl_compat import shuffle_sequence_dict

logger = logging.getLogger(__name__)

__all__ = [
    "GROUP_IDS_KEY",
    "IS_POSITIVE_KEY",
    "ForwardWeights",
    "Placement",
    "Rollout",
    "RolloutPlacement",
    "SeedStream",
    "StepPlacement",
    "group_count_metrics",
    "make_collective",
    "make_placement",
    "shuffle_groups",
]

GROUP_IDS_KEY = "resrl_group_ids"
IS_POSITIVE_KEY = "resrl_is_positive"
EVAL_SEED_OFFSET = 7919  # evaluation generations draw their own seeds, so evaluating never shifts training's


class SeedStream:
    """ResRL's randomness (positive-token subsampling, the PCA's random start): one stream per group, seeded from
    ``seed``, the generation's index and the group's id.

    Never the global RNG, so the sampled completions stay as under ``GRPOTrainer``; and the same wherever a group's
    rows are processed. Training and evaluation count their generations apart; the counts are the checkpoint state.
    """

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.generations = {"train": 0, "eval": 0}
        self._group_seed = {"train": 0, "eval": 0}  # of the latest generation, per mode
        self._num_groups = {"train": 0, "eval": 0}  # groups in the latest generation (ids 0..n-1), per mode

    def advance(self, mode: str, num_groups: int) -> None:
        """Start a new generation of ``num_groups`` groups in ``mode`` (``"train"`` or ``"eval"``)."""
        seed = self.seed + (mode == "eval") * EVAL_SEED_OFFSET
        self._group_seed[mode] = group_stream_seed(seed, self.generations[mode])
        self.generations[mode] += 1
        self._num_groups[mode] = num_groups

    def group_seed(self, mode: str) -> int:
        """The seed the latest generation's groups draw their streams from."""
        return self._group_seed[mode]

    def num_groups(self, mode: str) -> int | None:
        """The number of groups in the latest generation (their ids are ``0..n-1``), ``None`` before the first."""
        return self._num_groups[mode] or None

    def state_dict(self) -> dict[str, Any]:
        return {"generations": dict(self.generations)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generations = {**self.generations, **state["generations"]}


def make_collective(process_index: int, num_processes: int) -> Collective:
    """The sum over processes that subspaces and statistics need (``torch.distributed`` when there are several)."""
    if num_processes == 1:
        return SINGLE_PROCESS

    def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
        total = tensor.clone()
        dist.all_reduce(total)
        return total

    return Collective(all_reduce_sum, process_index, num_processes)


def group_count_metrics(
    groups: float, mixed_groups: float, skipped_groups: float, positives: float, negatives: float
) -> dict[str, float]:
    """The group counts ResRL logs (over every process): the share of groups that are mixed (hold a positive and a
    negative), the mixed groups that got no weights (too few positive tokens, non-finite states), and the positive
    and negative completions."""
    return {
        "resrl/mixed_group_frac": mixed_groups / max(groups, 1.0),
        "resrl/skipped_groups": skipped_groups,
        "resrl/positives": positives,
        "resrl/negatives": negatives,
    }


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


@dataclass
class Rollout:
    """One generation as the placement sees it after TRL scored it."""

    batch: dict[str, Any]
    """This process's rows as TRL returns them, with ``GROUP_IDS_KEY`` and ``IS_POSITIVE_KEY``."""
    valid: torch.Tensor
    """``(B, T)`` bool, this process's completion tokens that take part (:mod:`resrl_trl.masks`)."""
    all_positive: torch.Tensor
    """``(N,)`` bool, whether each completion of every process is positive (rows in process order)."""
    group_size: int
    mode: str
    """``"train"`` or ``"eval"``."""
    rows_per_forward: int
    """How many rows one forward may hold (the mode's per-device batch size)."""


@dataclass
class ForwardWeights:
    """What one training forward's hook computed, filled in when the forward reached the block."""

    weights: torch.Tensor | None = None
    """``(B, T)`` float32 token weights (negatives' residual weights, 1 elsewhere)."""
    token_sums: torch.Tensor | None = None
    """``(4,)`` sums over processes of the weights, energies, alignments and weighted tokens (ResidualStats order)."""
    metrics: dict[str, float] = field(default_factory=dict)
    """Group counts, where this placement counts groups per forward."""


class Placement:
    """What both placements share: reading the block in the training forward and weighting the advantages."""

    def __init__(
        self,
        block: nn.Module,
        settings: SubspaceSettings,
        weight_position: str,
        seeds: SeedStream,
        collective: Collective = SINGLE_PROCESS,
    ) -> None:
        self.block = block
        self.settings = settings
        self.weight_position = weight_position
        self.seeds = seeds
        self.collective = collective

    def shuffle_rollout(self, batch: dict[str, Any], group_size: int) -> dict[str, Any]:
        """A generation's rows in the order TRL will cut into micro-batches."""
        raise NotImplementedError

    def start_rollout(self, trl_runs_old_logprob_forward: bool) -> None:
        """Called before TRL generates."""

    @contextmanager
    def old_logprob_forward(self, logits_to_keep: int) -> Iterator[None]:
        """Around each of TRL's log-probability forwards outside training."""
        yield

    def finish_rollout(self, rollout: Rollout) -> dict[str, float]:
        """Called once the rollout batch is complete; returns the metrics to log for it."""
        return {}

    def token_weights(
        self, hidden: torch.Tensor, valid: torch.Tensor, group_ids: torch.Tensor, is_positive: torch.Tensor, mode: str
    ) -> ResidualWeights:
        """``(B, T)`` weights of a micro-batch's tokens from their ``(B, T, H)`` hidden states."""
        raise NotImplementedError

    def forward_metrics(self, totals: torch.Tensor) -> dict[str, float]:
        """Metrics of one training forward from its :class:`ResidualStats` summed over processes (stacked)."""
        return {}

    @contextmanager
    def training_forward(self, inputs: dict[str, Any], valid: torch.Tensor, mode: str) -> Iterator[ForwardWeights]:
        """Around TRL's training forward over the micro-batch ``inputs``: the first output of the block becomes token
        weights, and ``inputs["advantages"]`` becomes ``(B, T)`` advantages before the loss reads it. A repeated call
        of the block (a recomputation) changes nothing; the hook is gone when the block ends, before backward."""
        result = ForwardWeights()
        num_tokens = inputs["completion_ids"].size(1)
        total = inputs["prompt_ids"].size(1) + num_tokens
        found: list[ResidualStats] = []

        def on_output(hidden: torch.Tensor) -> None:
            if found:
                return
            if hidden.size(1) != total:
                raise RuntimeError(
                    f"ResRL expected hidden states over {total} positions (prompt + completion), got {hidden.size(1)}"
                )
            states = completion_states(hidden.detach(), num_tokens, self.weight_position)
            weights = self.token_weights(states, valid, inputs[GROUP_IDS_KEY], inputs[IS_POSITIVE_KEY], mode)
            inputs["advantages"] = token_advantages(inputs["advantages"], weights.weights)
            result.weights = weights.weights
            found.append(weights.stats)

        with capture_outputs(self.block, on_output):
            yield result
        if not found:
            raise RuntimeError(
                "ResRL's hook on the decoder block never fired during the training forward; the model's forward did "
                "not run its decoder blocks as nn.Module calls"
            )
        totals = self.collective.all_reduce_sum(torch.stack(list(found[0])))
        result.token_sums = totals[:4]
        result.metrics = self.forward_metrics(totals)


class StepPlacement(Placement):
    """Subspaces built in the training forward, from the whole groups each micro-batch holds."""

    def __init__(self, *parts: Any, group_sizes: dict[str, int], **named_parts: Any) -> None:
        super().__init__(*parts, **named_parts)
        self.group_sizes = group_sizes  # generations per prompt, per mode: every micro-batch holds whole groups

    def shuffle_rollout(self, batch: dict[str, Any], group_size: int) -> dict[str, Any]:
        return shuffle_groups(batch, group_size)

    def token_weights(
        self, hidden: torch.Tensor, valid: torch.Tensor, group_ids: torch.Tensor, is_positive: torch.Tensor, mode: str
    ) -> ResidualWeights:
        group_sizes = torch.unique(group_ids, return_counts=True)[1]
        expected = self.group_sizes[mode]
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
            self.settings,
            group_seed=self.seeds.group_seed(mode),
            num_groups=self.seeds.num_groups(mode),
        )

    def forward_metrics(self, totals: torch.Tensor) -> dict[str, float]:
        counts = ResidualStats(*totals.tolist())  # groups are counted where they are built: here, per micro-batch
        return group_count_metrics(
            counts.groups, counts.mixed_groups, counts.skipped_groups, counts.positives, counts.negatives
        )


RunDecoder = Callable[[Sequence[tuple[torch.Tensor, torch.Tensor]]], None]
"""Runs the policy's decoder stack (no LM head, no gradients) over ``(input_ids, attention_mask)`` chunks."""


class RolloutPlacement(Placement):
    """Subspaces and energy quantiles built once per generation from whole groups, then projected onto per
    micro-batch. The hidden states come from TRL's old-log-probability forward when TRL runs one over the rollout,
    else from ``run_decoder`` over the completions of mixed groups."""

    def __init__(self, *parts: Any, run_decoder: RunDecoder, **named_parts: Any) -> None:
        super().__init__(*parts, **named_parts)
        self.run_decoder = run_decoder
        self.subspaces: dict[str, GroupSubspaces] = {}  # per mode, from the latest generation
        self._captured: list[torch.Tensor] | None = None  # filled while TRL's old-log-prob forward runs

    def shuffle_rollout(self, batch: dict[str, Any], group_size: int) -> dict[str, Any]:
        return shuffle_sequence_dict(batch)  # TRL's own: micro-batches need not hold whole groups

    def start_rollout(self, trl_runs_old_logprob_forward: bool) -> None:
        self._captured = [] if trl_runs_old_logprob_forward else None

    @contextmanager
    def old_logprob_forward(self, logits_to_keep: int) -> Iterator[None]:
        """The first of a rollout's log-probability forwards (old log-probabilities; a reference model's, if any,
        comes later) leaves its hidden states at the completion positions here."""
        if self._captured is None or self._captured:
            yield
            return
        captured = self._captured

        def on_output(hidden: torch.Tensor) -> None:
            captured.append(completion_states(hidden, logits_to_keep, self.weight_position).detach())

        with capture_outputs(self.block, on_output):
            yield

    def completion_hidden_states(self, batch: dict[str, Any], rows: torch.Tensor, num_chunks: int) -> torch.Tensor:
        """Hidden states at the completion positions of ``rows``, from one no-grad forward in ``num_chunks`` chunks
        (the same number on every process, as ZeRO-3 needs; a process with fewer rows runs a throwaway chunk)."""
        input_ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], dim=1)
        attention_mask = torch.cat([batch["prompt_mask"], batch["completion_mask"]], dim=1)
        num_tokens = batch["completion_ids"].size(1)
        chunk_size = max(1, -(-len(rows) // num_chunks)) if len(rows) else 1
        chunks = list(rows.split(chunk_size)) if len(rows) else []
        chunks += [torch.zeros(1, dtype=torch.long)] * (num_chunks - len(chunks))
        captured: list[torch.Tensor] = []

        def on_output(hidden: torch.Tensor) -> None:
            captured.append(completion_states(hidden, num_tokens, self.weight_position).detach())

        with capture_outputs(self.block, on_output):
            indices = [chunk.to(input_ids.device) for chunk in chunks]
            self.run_decoder([(input_ids[index], attention_mask[index]) for index in indices])
        if not captured:  # no process has a mixed group: nothing will be built
            return input_ids.new_zeros((0, num_tokens, 1), dtype=torch.float32)
        return torch.cat(captured)[: len(rows)]  # drops the throwaway chunk's row, if any

    def finish_rollout(self, rollout: Rollout) -> dict[str, float]:
        """Build every group's subspace and quantiles from the whole rollout, whichever processes hold its rows."""
        batch, all_positive, group_size, mode = rollout.batch, rollout.all_positive, rollout.group_size, rollout.mode
        captured, self._captured = self._captured or None, None
        if captured is not None and batch.get("old_per_token_logps") is None:
            # Predicted from TRL's own condition, checked against what TRL did: hidden states of a forward that was
            # not the old-log-prob one (a reference model's, say) must not build subspaces.
            logger.warning("TRL ran no old-log-prob forward this rollout; ResRL runs its own (see trl_compat.py)")
            captured = None
        device = batch["completion_ids"].device
        num_processes, local_rows = self.collective.num_processes, len(batch["completion_ids"])
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
            num_chunks = int((-(-row_mixed.sum(1) // rollout.rows_per_forward)).max())
            rows = row_mixed[self.collective.process_index].nonzero().flatten().to(device)
            hidden = self.completion_hidden_states(batch, rows, num_chunks)
        subspaces, _ = build_group_subspaces(  # its group counts cover mixed groups only: the full ones come below
            hidden,
            rollout.valid[rows],
            batch[GROUP_IDS_KEY][rows],
            batch[IS_POSITIVE_KEY][rows],
            self.settings,
            num_groups=num_groups,
            group_seed=self.seeds.group_seed(mode),
            collective=self.collective,
        )
        self.subspaces[mode] = subspaces
        num_mixed = float(mixed.sum())
        return group_count_metrics(
            num_groups, num_mixed, num_mixed - len(subspaces.group_ids), float(all_positive.sum()),
            float((~all_positive).sum()),
        )  # fmt: skip

    def token_weights(
        self, hidden: torch.Tensor, valid: torch.Tensor, group_ids: torch.Tensor, is_positive: torch.Tensor, mode: str
    ) -> ResidualWeights:
        return project_onto_group_subspaces(hidden, valid, group_ids, is_positive, self.subspaces[mode], self.settings)


def make_placement(
    subspace: str,
    block: nn.Module,
    settings: SubspaceSettings,
    weight_position: str,
    seeds: SeedStream,
    collective: Collective,
    group_sizes: dict[str, int],
    run_decoder: RunDecoder,
) -> Placement:
    """The placement ``resrl_subspace`` names (``"step"`` or ``"rollout"``; the config resolves ``"auto"``), built
    from its parts."""
    parts = (block, settings, weight_position, seeds, collective)
    if subspace == "rollout":
        return RolloutPlacement(*parts, run_decoder=run_decoder)
    if subspace == "step":
        return StepPlacement(*parts, group_sizes=group_sizes)
    raise ValueError(f"resrl_subspace must be 'step' or 'rollout' once the config is built, got {subspace!r}")
