"""Which completion tokens take part in ResRL: not padding, not tool output, not inside a masked think span.

Plain ``torch`` (the tokenizer is only asked to ``encode``), like :mod:`resrl_trl.residual`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

__all__ = ["ThinkMarkers", "think_marker_ids", "think_span_mask", "valid_completion_tokens"]

ThinkMarkers = tuple[Sequence[int], Sequence[int]]
"""The token ids of a think span's start and end markers."""


def think_marker_ids(processing_class: Any, start: str, end: str) -> ThinkMarkers:
    """The token ids of the think-span markers ``start`` and ``end`` in the tokenizer of ``processing_class``."""
    tokenizer = getattr(processing_class, "tokenizer", processing_class)
    start_ids = tokenizer.encode(start, add_special_tokens=False)
    end_ids = tokenizer.encode(end, add_special_tokens=False)
    if not start_ids or not end_ids:
        raise ValueError(
            f"resrl_mask_think=True but the tokenizer encodes {start!r} or {end!r} to no tokens; set "
            "resrl_think_start/resrl_think_end to the markers your model writes"
        )
    return start_ids, end_ids


def _marker_hits(token_ids: torch.Tensor, marker: Sequence[int]) -> torch.Tensor:
    """``(B, T)`` bool: where ``marker`` (a token id sequence) starts in each row."""
    batch, length = token_ids.shape
    size = len(marker)
    hits = torch.zeros(batch, length, dtype=torch.bool, device=token_ids.device)
    if size == 0 or size > length:
        return hits
    windows = token_ids.unfold(1, size, 1)  # (B, T - size + 1, size), a view
    pattern = torch.as_tensor(list(marker), dtype=token_ids.dtype, device=token_ids.device)
    hits[:, : length - size + 1] = (windows == pattern).all(-1)
    return hits


def think_span_mask(token_ids: torch.Tensor, start_ids: Sequence[int], end_ids: Sequence[int]) -> torch.Tensor:
    """``(B, T)`` bool mask of the tokens inside ``<think>…</think>`` spans, the markers included.

    ``start_ids`` and ``end_ids`` are the token id sequences of the two markers. Spans are matched in order: a
    span left open (for example by truncation) runs to the end of the row, an end marker with no open span is
    ignored, and nested spans close with their outermost end marker.
    """
    if len(start_ids) == 0 or len(end_ids) == 0:
        raise ValueError("think markers must be non-empty token id sequences")
    batch, length = token_ids.shape
    step = torch.zeros(batch, length + 1, dtype=torch.long, device=token_ids.device)
    step[:, :length] += _marker_hits(token_ids, start_ids).long()
    # An end marker closes the span after its last token, so the marker itself is inside.
    step[:, len(end_ids) : length + 1] -= _marker_hits(token_ids, end_ids).long()[:, : length + 1 - len(end_ids)]
    walk = torch.cumsum(step[:, :length], 1)
    # Depth of nesting, floored at 0: the walk reflected at zero (unmatched end markers are ignored).
    depth = walk - torch.cummin(walk, 1).values.clamp(max=0)
    return depth > 0


def valid_completion_tokens(
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    tool_mask: torch.Tensor | None = None,
    think_markers: ThinkMarkers | None = None,
) -> torch.Tensor:
    """``(B, T)`` bool: the completion tokens ResRL reads and weights.

    Args:
        completion_ids: ``(B, T)`` token ids of the completions.
        completion_mask: ``(B, T)``, nonzero at real (not padding) tokens.
        tool_mask: ``(B, T)``, nonzero at tokens the model wrote (zero at tool output), when the rollout has tools.
        think_markers: the start and end markers' token ids when think spans are left out (``resrl_mask_think``).
    """
    valid = completion_mask.bool()
    if tool_mask is not None:
        valid = valid & tool_mask.bool()
    if think_markers is not None:
        valid = valid & ~think_span_mask(completion_ids, *think_markers)
    return valid
