"""What ResRLTrainer logs beside TRL's metrics: token statistics as means over the weighted tokens, the sequence
advantages shown in TRL's completions table, and the output head's gradient interference (``resrl_log_interference``).
The group counts are the placement's (:func:`resrl_trl.placement.group_count_metrics`)."""

from __future__ import annotations

from collections.abc import MutableSequence
from contextlib import AbstractContextManager
from typing import Any

import torch

from .analysis import positive_negative_cosines
from .capture import capture_outputs


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


def show_advantages_used(logged: MutableSequence[float], used: torch.Tensor) -> None:
    """Put in TRL's completions table the sequence advantages the loss reads (``used``, every process's rows, before
    token weights), in place of the GRPO advantages TRL logged for the same rows (the last ``len(used)`` entries)."""
    count = len(used)
    if len(logged) < count:
        return
    for _ in range(count):
        logged.pop()
    logged.extend(used.float().cpu().tolist())


def check_head_probe(model_config: Any, head_is_sharded: bool) -> None:
    """Refuse ``resrl_log_interference`` where the probe would not measure what training computes: a model that scales
    or soft-caps its logits, or an output head sharded by DeepSpeed ZeRO-3 or FSDP."""
    config = model_config
    if getattr(config, "final_logit_softcapping", None) or getattr(config, "logit_scale", 1.0) not in (None, 1.0):
        raise ValueError(
            "resrl_log_interference: this model scales or soft-caps its logits, which the probe does not reproduce; "
            "leave it off for this model"
        )
    if head_is_sharded:
        raise ValueError(
            "resrl_log_interference: the output head's weight is sharded (DeepSpeed ZeRO-3 or FSDP) and the probe "
            "applies it outside the forward; measure interference with experiments/analysis_report.py instead"
        )


class HeadProbe:
    """Measures the positive/negative gradient interference at the output head during a training forward.

    TRL scores tokens with a fused head (the logits never exist as one tensor), so the probe keeps a reference to the
    decoder's final hidden states (the head's input) from the first forward call, and applies the head itself to at
    most ``max_tokens`` sampled completion tokens per side (positive, negative) of the micro-batch. The coefficients
    are token advantages: the loss type's normalisation, ratios and clipping are left out (at ratio 1, on the first
    pass over fresh samples, the token-mean losses differ from this by one constant per micro-batch).
    """

    def __init__(self, model: torch.nn.Module, max_tokens: int = 256) -> None:
        self.decoder = model.get_decoder()
        self.head = model.get_output_embeddings()
        self.max_tokens = max_tokens
        self.final_hidden: torch.Tensor | None = None
        self._capture: AbstractContextManager | None = None

    def _keep_first(self, hidden: torch.Tensor) -> None:
        if self.final_hidden is None:
            self.final_hidden = hidden.detach()

    def __enter__(self) -> HeadProbe:
        self.final_hidden = None
        self._capture = capture_outputs(self.decoder, self._keep_first)
        self._capture.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._capture.__exit__(*exc)

    @torch.no_grad()
    def cosines(
        self,
        completion_ids: torch.Tensor,
        valid: torch.Tensor,
        is_positive: torch.Tensor,
        sequence_advantages: torch.Tensor,
        token_advantages: torch.Tensor,
        temperature: float,
        seed: int,
    ) -> tuple[float, float]:
        """``(plain, weighted)`` cosines (see :func:`resrl_trl.analysis.positive_negative_cosines`): loss coefficients
        are the sequence advantages (positives already x ``resrl_pos_weight``, which a cosine does not see, except
        that with ``resrl_pos_weight=0`` there is no positive gradient and both cosines are NaN), then the per-token
        advantages the loss used."""
        if self.final_hidden is None:
            raise RuntimeError("resrl_log_interference: the decoder did not run in the training forward")
        length = completion_ids.size(1)
        final = self.final_hidden[:, -length - 1 : -1]  # the positions whose logits score the completion tokens
        keep = torch.zeros_like(valid, dtype=torch.bool)
        generator = torch.Generator(device=valid.device).manual_seed(seed)
        for side in (is_positive.bool(), ~is_positive.bool()):
            candidates = (valid.bool() & side[:, None]).flatten().nonzero().squeeze(1)
            order = torch.randperm(len(candidates), generator=generator, device=valid.device)
            keep.view(-1)[candidates[order[: self.max_tokens]]] = True
        rows, cols = keep.nonzero(as_tuple=True)
        kept_final = final[rows, cols]
        logits = self.head(kept_final).float() / temperature
        if sequence_advantages.dim() == 1:
            sequence_advantages = sequence_advantages[:, None]

        def kept(coefficients: torch.Tensor) -> torch.Tensor:
            return coefficients.expand_as(valid)[rows, cols][:, None].float()

        plain, weighted = positive_negative_cosines(
            kept_final[:, None], logits[:, None], completion_ids[rows, cols][:, None],
            torch.ones(len(rows), 1, dtype=torch.bool, device=valid.device), is_positive[rows],
            kept(sequence_advantages), kept(token_advantages),
        )  # fmt: skip
        return plain, weighted
