"""What ResRLTrainer logs beside TRL's metrics: token statistics as means over the weighted tokens, per-group counts,
and the sequence advantages shown in TRL's completions table."""

from __future__ import annotations

from collections.abc import MutableSequence

import torch

from .advantages import SCALES_POSITIVES
from .residual import ResidualStats


class TokenStatistics:
    """ResRL's token sums (weight, energy, alignment, weighted tokens) per mode, added up on the device over the
    micro-batches since the last log (no host read in the training step) and turned into means when logged."""

    def __init__(self) -> None:
        self._sums: dict[str, torch.Tensor] = {}

    def add(self, mode: str, totals: torch.Tensor) -> None:
        """Add a micro-batch's ``ResidualStats`` sums (over processes, stacked in field order)."""
        self._sums[mode] = self._sums.get(mode, 0) + totals[:4]

    def pop_means(self, mode: str) -> dict[str, float]:
        """The means over every weighted token since the last call, and start again. A span without weighted tokens
        has no mean (rather than a mean of 0)."""
        sums = self._sums.pop(mode, None)
        weight_sum, energy_sum, alignment_sum, tokens = sums.tolist() if sums is not None else (0.0,) * 4
        if tokens <= 0:
            return {}
        return {
            "resrl/neg_token_weight_mean": weight_sum / tokens,
            "resrl/residual_energy_mean": energy_sum / tokens,
            "resrl/neg_alignment_mean": alignment_sum / tokens,
        }


def log_group_counts(metrics: dict[str, list[float]], totals: ResidualStats) -> None:
    """Append a step's group counts (summed over processes) to TRL's metric lists."""
    metrics["resrl/mixed_group_frac"].append(totals.mixed_groups / max(totals.groups, 1.0))
    metrics["resrl/skipped_groups"].append(totals.skipped_groups)
    metrics["resrl/positives"].append(totals.positives)
    metrics["resrl/negatives"].append(totals.negatives)


def show_sequence_advantages(
    logged: MutableSequence[float],
    all_positive: torch.Tensor,
    baseline: torch.Tensor | None,
    advantage_mode: str,
    pos_weight: float,
) -> None:
    """Put in TRL's completions table the sequence advantages the method uses (before token weights), in place of
    the GRPO advantages TRL logged (the last ``len(all_positive)`` entries of ``logged``, every process's rows) before
    ResRL replaced them by ``baseline`` or scaled its positives by ``pos_weight``."""
    count = len(all_positive)
    if len(logged) < count or (baseline is None and advantage_mode not in SCALES_POSITIVES):
        return  # grpo, resrl_tokens_only: TRL's advantages are the sequence advantages
    if baseline is None:  # resrl scales positives per token, by one factor for every token
        trl_advantages = torch.tensor(list(logged)[-count:], dtype=torch.float32)
        shown = torch.where(all_positive.cpu(), trl_advantages * pos_weight, trl_advantages)
    else:
        shown = baseline.cpu()
    for _ in range(count):
        logged.pop()
    logged.extend(torch.nan_to_num(shown, nan=0.0, posinf=0.0, neginf=0.0).tolist())
