"""ResRL's per-token weights as pure tensor functions.

This module implements steps 1-8 of "Exact per-token weighting" in ResRL (Lin et al., "ResRL: Boosting LLM
Reasoning via Negative Sample Projection Residual Reinforcement Learning", ICML 2026, arXiv 2605.00380): for every
prompt group that holds both successful (positive) and failed (negative) completions, the hidden states of the
positive tokens span a low-rank "successful reasoning" subspace; each negative token is weighted by how much of its
(layer-normed, centred) hidden state lies outside that subspace.

Everything here is plain ``torch``: no TRL, transformers or accelerate imports, so the maths can be tested and
benchmarked on its own. All groups are processed at once (padded batched linear algebra), never in a Python loop
per group or per token, and all arithmetic is float32 whatever the dtype of the hidden states.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F

__all__ = [
    "ResidualStats",
    "ResidualWeights",
    "compute_residual_weights",
    "residual_token_weights",
    "think_span_mask",
]

LAYER_NORM_EPS = 1e-5
MIN_POSITIVE_TOKENS = 4
FLAT_ENERGY_RANGE = 1e-5
MIN_ENERGY_RANGE = 1e-6


class ResidualStats(NamedTuple):
    """Sums and counts (0-dim float32 tensors) from one call, ready to be summed across processes.

    Token sums run over the *weighted* tokens: valid tokens of negative completions in groups that were not skipped.
    """

    weight_sum: torch.Tensor
    """Sum of the weights of the weighted tokens."""
    energy_sum: torch.Tensor
    """Sum of the residual energies ``||z - V V^T z||^2 / H`` of the weighted tokens."""
    alignment_sum: torch.Tensor
    """Sum over weighted tokens of ``||V^T z||^2 / ||z||^2``: the share of each token's centred energy inside the
    positive subspace."""
    weighted_tokens: torch.Tensor
    """Number of weighted tokens."""
    groups: torch.Tensor
    """Number of distinct groups in the batch."""
    mixed_groups: torch.Tensor
    """Groups holding at least one positive and one negative completion."""
    skipped_groups: torch.Tensor
    """Mixed groups left at weight 1: fewer than 4 positive tokens, or non-finite hidden states."""
    positives: torch.Tensor
    """Number of positive completions."""
    negatives: torch.Tensor
    """Number of negative completions."""


class ResidualWeights(NamedTuple):
    weights: torch.Tensor
    """``(B, T)`` float32 per-token weights."""
    stats: ResidualStats


def _layer_norm_fp32(x: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(x.float(), (x.shape[-1],), eps=LAYER_NORM_EPS)


def _rank_within_group(token_group: torch.Tensor, num_groups: int, sort_key: torch.Tensor | None = None):
    """Order tokens by group (then by ``sort_key``) and give each its 0-based rank inside its group.

    Returns ``(order, sorted_group, rank, counts)`` where ``order`` permutes the tokens into group order.
    """
    counts = torch.bincount(token_group, minlength=num_groups)
    if sort_key is None:
        order = torch.sort(token_group, stable=True).indices
    else:
        # group index + a key in [0, 1): one sort orders by group, then randomly inside each group
        order = torch.sort(token_group.double() + sort_key.double()).indices
    sorted_group = token_group[order]
    group_start = torch.cumsum(counts, 0) - counts
    rank = torch.arange(order.numel(), device=order.device) - group_start[sorted_group]
    return order, sorted_group, rank, counts


def _orthonormalise_cheaply(block: torch.Tensor) -> torch.Tensor:
    """An approximately orthonormal basis of span(block) for ``(G, H, q)`` blocks, by Cholesky QR in float64.

    Much cheaper than Householder QR on a GPU (batched ``q x q`` factorisations instead of one ``H x q`` QR per
    group). Orthogonality is only approximate when ``block`` is ill-conditioned, which a power iteration tolerates;
    a small diagonal shift keeps rank-deficient blocks (groups with fewer than ``q + 1`` positive tokens) factorable.
    """
    wide = block.double()
    gram = wide.mT @ wide
    shift = 1e-12 * gram.diagonal(dim1=-2, dim2=-1).mean(-1).clamp(min=1e-30)
    eye = torch.eye(gram.size(-1), dtype=gram.dtype, device=gram.device)
    factor = torch.linalg.cholesky(gram + shift[:, None, None] * eye)
    # block @ factor^{-T}: solve factor @ X^T = block^T
    return torch.linalg.solve_triangular(factor, wide.mT, upper=False).mT.to(block.dtype)


def _randomized_top_right_singular_vectors(
    a: torch.Tensor, q: int, niter: int, generator: torch.Generator | None
) -> torch.Tensor:
    """Top-``q`` right singular vectors of each ``a[g]`` (``(G, N, H)`` -> ``(G, H, q)``), by randomised PCA.

    The subspace iteration of ``torch.pca_lowrank`` / ``torch.svd_lowrank`` (Halko et al. 2011: a Gaussian start,
    ``niter`` power iterations, then Rayleigh-Ritz), run on the ``H x H`` Gram matrix ``a^T a`` so that each
    iteration costs ``H^2 q`` instead of ``N H q``; in exact arithmetic it spans the same subspace as
    ``svd_lowrank``'s alternating ``a`` / ``a^T`` products. Intermediate iterates are orthonormalised by Cholesky QR,
    the last one by Householder QR, so the Rayleigh-Ritz step sees an exactly orthonormal basis. The random start is
    drawn from ``generator``, never from the global RNG.
    """
    num_groups, _, hidden = a.shape
    gram = a.mT @ a  # (G, H, H)
    basis = torch.randn(num_groups, hidden, q, generator=generator, device=a.device, dtype=a.dtype)
    for _ in range(niter):
        basis = _orthonormalise_cheaply(gram @ basis)
    basis = torch.linalg.qr(gram @ basis).Q
    # Rayleigh-Ritz: the exact top singular vectors of `a` restricted to span(basis), in decreasing order.
    _, ritz_vectors = torch.linalg.eigh(basis.mT @ gram @ basis)
    return basis @ ritz_vectors.flip(-1)


def compute_residual_weights(
    hidden: torch.Tensor,
    valid_mask: torch.Tensor,
    group_ids: torch.Tensor,
    is_positive: torch.Tensor,
    *,
    rank: int = 64,
    max_pos_tokens: int = 4096,
    q_low: float = 0.2,
    q_high: float = 0.8,
    min_weight: float = 0.1,
    niter: int = 4,
    generator: torch.Generator | None = None,
) -> ResidualWeights:
    """ResRL per-token weights and their statistics. See :func:`residual_token_weights` for the arguments."""
    # Called from inside a training forward, where autocast would silently run the matmuls in bf16/fp16.
    with torch.autocast(hidden.device.type, enabled=False), torch.no_grad():
        return _compute_residual_weights(
            hidden,
            valid_mask,
            group_ids,
            is_positive,
            rank=rank,
            max_pos_tokens=max_pos_tokens,
            q_low=q_low,
            q_high=q_high,
            min_weight=min_weight,
            niter=niter,
            generator=generator,
        )


def _compute_residual_weights(
    hidden: torch.Tensor,
    valid_mask: torch.Tensor,
    group_ids: torch.Tensor,
    is_positive: torch.Tensor,
    *,
    rank: int,
    max_pos_tokens: int,
    q_low: float,
    q_high: float,
    min_weight: float,
    niter: int,
    generator: torch.Generator | None,
) -> ResidualWeights:
    if hidden.dim() != 3:
        raise ValueError(f"hidden must be (B, T, H), got shape {tuple(hidden.shape)}")
    batch, length, width = hidden.shape
    if valid_mask.shape != (batch, length):
        raise ValueError(f"valid_mask must be {(batch, length)}, got {tuple(valid_mask.shape)}")
    if group_ids.shape != (batch,) or is_positive.shape != (batch,):
        raise ValueError(
            f"group_ids and is_positive must be ({batch},), got {tuple(group_ids.shape)} and "
            f"{tuple(is_positive.shape)}"
        )
    device = hidden.device
    f32 = dict(device=device, dtype=torch.float32)
    weights = torch.ones(batch, length, **f32)

    valid = valid_mask.bool()
    positive = is_positive.bool()
    unique_groups, seq_group = torch.unique(group_ids, return_inverse=True)
    num_groups = unique_groups.numel()
    pos_per_group = torch.bincount(seq_group[positive], minlength=num_groups)
    neg_per_group = torch.bincount(seq_group[~positive], minlength=num_groups)
    mixed = (pos_per_group > 0) & (neg_per_group > 0)

    seq_mixed = mixed[seq_group]
    pos_b, pos_t = torch.nonzero(valid & (positive & seq_mixed)[:, None], as_tuple=True)
    neg_b, neg_t = torch.nonzero(valid & (~positive & seq_mixed)[:, None], as_tuple=True)
    pos_group, neg_group = seq_group[pos_b], seq_group[neg_b]

    # A group is usable when it has >= 4 positive tokens and every hidden state it would read is finite. A row sum
    # is finite iff the row is (a cheap (B, T) reduction, no (B, T, H) temporary).
    token_finite = torch.isfinite(hidden.sum(-1, dtype=torch.float32))
    bad_tokens = torch.cat([pos_group[~token_finite[pos_b, pos_t]], neg_group[~token_finite[neg_b, neg_t]]])
    finite = torch.bincount(bad_tokens, minlength=num_groups) == 0
    pos_tokens_per_group = torch.bincount(pos_group, minlength=num_groups)
    neg_tokens_per_group = torch.bincount(neg_group, minlength=num_groups)
    active = mixed & finite & (pos_tokens_per_group >= MIN_POSITIVE_TOKENS)

    zero = torch.zeros((), **f32)
    stats_counts = dict(
        groups=torch.tensor(float(num_groups), **f32),
        mixed_groups=mixed.sum().float(),
        skipped_groups=(mixed & ~active).sum().float(),
        positives=positive.sum().float(),
        negatives=(~positive).sum().float(),
    )
    # Every size the padded layout needs, read in one device-to-host sync.
    num_active, most_pos, most_neg = torch.stack(
        [active.sum(), (pos_tokens_per_group * active).max(), (neg_tokens_per_group * active).max()]
    ).tolist()
    if num_active == 0 or most_neg == 0:
        return ResidualWeights(weights, ResidualStats(zero, zero, zero, zero.clone(), **stats_counts))

    # Compact numbering of the active groups: 0..A-1 (-1 for the others).
    active_index = torch.cumsum(active.long(), 0) - 1
    active_index[~active] = -1

    # --- Positive set P per group (steps 1-3): subsample, layer-norm, centre. ---
    keep = active[pos_group]
    pos_b, pos_t, pos_group = pos_b[keep], pos_t[keep], active_index[pos_group[keep]]
    sort_key = None
    if most_pos > max_pos_tokens:
        sort_key = torch.rand(pos_group.numel(), generator=generator, device=device, dtype=torch.float64)
    order, sorted_group, slot, counts = _rank_within_group(pos_group, num_active, sort_key)
    kept = slot < max_pos_tokens  # a uniform subset without replacement: the first max_pos_tokens of a random order
    order, sorted_group, slot = order[kept], sorted_group[kept], slot[kept]
    pos_count = counts.clamp(max=max_pos_tokens)
    padded_rows = min(most_pos, max_pos_tokens)

    positives = torch.zeros(num_active, padded_rows, width, **f32)
    positives[sorted_group, slot] = _layer_norm_fp32(hidden[pos_b[order], pos_t[order]])
    mean = positives.sum(1) / pos_count[:, None]
    row_is_real = torch.arange(padded_rows, device=device)[None, :] < pos_count[:, None]
    # Padding rows stay exactly zero, so they add nothing to the Gram matrix and leave the subspace unchanged.
    positives.sub_(mean[:, None, :]).mul_(row_is_real[..., None])

    # --- Subspace V_k (steps 4-5). ---
    group_rank = torch.clamp(pos_count - 1, max=min(rank, width))
    q = min(rank, width, padded_rows - 1)
    basis = _randomized_top_right_singular_vectors(positives, q, niter, generator)
    basis = basis * (torch.arange(q, device=device)[None, :] < group_rank[:, None])[:, None, :]
    del positives

    # --- Residual energy of each negative token (step 6). ---
    keep = active[neg_group]
    neg_b, neg_t, neg_group = neg_b[keep], neg_t[keep], active_index[neg_group[keep]]
    order, sorted_group, slot, neg_count = _rank_within_group(neg_group, num_active)
    neg_b, neg_t = neg_b[order], neg_t[order]
    padded_neg = most_neg
    centred = torch.zeros(num_active, padded_neg, width, **f32)
    centred[sorted_group, slot] = _layer_norm_fp32(hidden[neg_b, neg_t])
    centred.sub_(mean[:, None, :])
    total_energy = torch.linalg.vector_norm(centred, dim=-1).square()
    coords = centred @ basis  # (A, M, q): coordinates of z in the subspace
    del centred
    inside_energy = torch.linalg.vector_norm(coords, dim=-1).square()
    # ||z - V V^T z||^2 = ||z||^2 - ||V^T z||^2 (Pythagoras, V has orthonormal columns): no (A, M, H) residual.
    energy_padded = (total_energy - inside_energy).clamp(min=0.0) / width
    del coords

    # --- Per-group quantiles over the valid negative tokens (step 7), as torch.quantile's "linear". ---
    is_real = torch.arange(padded_neg, device=device)[None, :] < neg_count[:, None]
    sorted_energy = torch.sort(energy_padded.masked_fill(~is_real, float("inf")), dim=1).values
    last = (neg_count - 1).clamp(min=0).double()

    def quantile(level: float) -> torch.Tensor:
        position = level * last
        below = position.floor().long()
        above = position.ceil().long()
        low_value = sorted_energy.gather(1, below[:, None]).squeeze(1)
        high_value = sorted_energy.gather(1, above[:, None]).squeeze(1)
        return torch.lerp(low_value, high_value, (position - below.double()).float())

    low, high = quantile(q_low), quantile(q_high)
    spread = high - low

    energy = energy_padded[sorted_group, slot]
    tok_low, tok_spread = low[sorted_group], spread[sorted_group]
    scaled = torch.clamp((energy - tok_low) / tok_spread.clamp(min=MIN_ENERGY_RANGE), 0.0, 1.0)
    token_weight = torch.where(
        tok_spread < FLAT_ENERGY_RANGE,
        torch.full_like(energy, (min_weight + 1.0) / 2.0),
        min_weight + (1.0 - min_weight) * scaled,
    )
    weights[neg_b, neg_t] = token_weight

    alignment = inside_energy[sorted_group, slot] / total_energy[sorted_group, slot].clamp(min=1e-12)
    stats = ResidualStats(
        weight_sum=token_weight.sum(),
        energy_sum=energy.sum(),
        alignment_sum=alignment.sum(),
        weighted_tokens=torch.tensor(float(energy.numel()), **f32),
        **stats_counts,
    )
    return ResidualWeights(weights, stats)


def residual_token_weights(
    hidden: torch.Tensor,
    valid_mask: torch.Tensor,
    group_ids: torch.Tensor,
    is_positive: torch.Tensor,
    *,
    rank: int = 64,
    max_pos_tokens: int = 4096,
    q_low: float = 0.2,
    q_high: float = 0.8,
    min_weight: float = 0.1,
    niter: int = 4,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    r"""ResRL's per-token weights for the negative completions of a batch.

    For each group ``g`` (completions sharing ``group_ids``) that holds a positive and a negative completion:

    1. ``P`` = hidden states of the valid tokens of g's positive completions; skip ``g`` if ``|P| < 4``.
    2. If ``|P| > max_pos_tokens``, keep a uniform random subset of ``max_pos_tokens`` rows (without replacement).
    3. ``X = layer_norm(P)`` (no affine, eps 1e-5, float32); ``mu`` = mean row of ``X``; ``Xc = X - mu``.
    4. ``k = min(rank, |P| - 1, H)``.
    5. ``V_k`` = top-``k`` right singular vectors of ``Xc``, by randomised PCA with ``niter`` power iterations.
    6. For each valid token of each negative completion: ``z = layer_norm(h) - mu``,
       ``e = ||z - V_k V_k^T z||^2 / H``.
    7. ``lo, hi`` = the ``q_low``, ``q_high`` quantiles of ``e`` over the group's valid negative tokens (linear
       interpolation, as ``torch.quantile``). If ``hi - lo < 1e-5`` every such token gets ``(min_weight + 1) / 2``;
       else ``w = min_weight + (1 - min_weight) * clamp((e - lo) / max(hi - lo, 1e-6), 0, 1)``.
    8. Every other entry is 1.

    A group whose hidden states (at the tokens it reads) are not all finite is skipped: its weights stay 1.

    Args:
        hidden: ``(B, T, H)`` hidden states, any float dtype; only the rows at valid tokens are read.
        valid_mask: ``(B, T)`` bool, the tokens that take part (completion tokens, minus tool output or think spans).
        group_ids: ``(B,)`` integer id of each completion's prompt group.
        is_positive: ``(B,)`` bool, whether each completion succeeded (reward above the threshold).
        rank: subspace rank before clamping (paper: 64).
        max_pos_tokens: most positive tokens used per group (paper: 4096).
        q_low, q_high: quantiles of the residual energies mapped to ``min_weight`` and 1 (paper: 0.2, 0.8).
        min_weight: smallest weight (paper: 0.1).
        niter: power iterations of the randomised PCA (paper: 4).
        generator: source of randomness for subsampling and PCA; ``None`` uses the global RNG.

    Returns:
        ``(B, T)`` float32 weights: in ``[min_weight, 1]`` at the valid tokens of negatives in usable mixed groups,
        exactly 1 elsewhere.
    """
    return compute_residual_weights(
        hidden,
        valid_mask,
        group_ids,
        is_positive,
        rank=rank,
        max_pos_tokens=max_pos_tokens,
        q_low=q_low,
        q_high=q_high,
        min_weight=min_weight,
        niter=niter,
        generator=generator,
    ).weights


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
