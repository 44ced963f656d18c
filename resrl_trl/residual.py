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

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F

__all__ = [
    "Collective",
    "GroupSubspaces",
    "ResidualStats",
    "ResidualWeights",
    "build_group_subspaces",
    "compute_residual_weights",
    "group_stream_seed",
    "project_onto_group_subspaces",
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


class Collective(NamedTuple):
    """How the processes that share prompt groups combine partial sums.

    ``all_reduce_sum(t)`` returns the elementwise sum of ``t`` over all processes, identical on every process. Every
    process must make the same calls in the same order with tensors of the same shape, which the functions here
    guarantee by deriving every shape from sums that are already reduced. Only sums of per-group statistics
    (``O(H x rank)`` numbers per group) and of per-token scalars travel, never hidden states.
    """

    all_reduce_sum: Callable[[torch.Tensor], torch.Tensor]
    process_index: int = 0
    num_processes: int = 1


SINGLE_PROCESS = Collective(lambda tensor: tensor)


class GroupSubspaces(NamedTuple):
    """What weighting a group's negative tokens needs, for the groups that get token weights (spec steps 1-5, 7).

    Built once per rollout by :func:`build_group_subspaces`; a training step then weights any subset of the groups'
    negatives with :func:`project_onto_group_subspaces`.
    """

    group_ids: torch.Tensor
    """``(A,)`` sorted ids of the groups that get token weights: mixed, >= 4 positive tokens, finite hidden states."""
    mean: torch.Tensor
    """``(A, H)`` float32 mean ``mu`` of each group's layer-normed positive tokens."""
    basis: torch.Tensor
    """``(A, H, q)`` float32 orthonormal basis ``V_k`` of each group's positive subspace; columns past the group's
    ``k`` are zero."""
    low: torch.Tensor
    """``(A,)`` the ``q_low`` quantile of the residual energies of the group's negative tokens."""
    high: torch.Tensor
    """``(A,)`` the ``q_high`` quantile of the same energies."""


class _NegativeEnergies(NamedTuple):
    rows: torch.Tensor
    cols: torch.Tensor
    group: torch.Tensor  # index into the active groups
    energy: torch.Tensor
    alignment: torch.Tensor


def _layer_norm_fp32(x: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(x.float(), (x.shape[-1],), eps=LAYER_NORM_EPS)


def _rank_within_group(token_group: torch.Tensor, num_groups: int, sort_key: torch.Tensor | None = None):
    """Order tokens by group (then by ``sort_key``) and give each its 0-based rank inside its group.

    Returns ``(order, sorted_group, rank, counts)`` where ``order`` permutes the tokens into group order.
    """
    counts = torch.zeros(num_groups, dtype=torch.long, device=token_group.device)
    counts.index_add_(0, token_group, torch.ones_like(token_group))  # bincount would sync on a GPU
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
    factor = torch.linalg.cholesky_ex(gram + shift[:, None, None] * eye).L  # _ex: no error check, no GPU sync
    # block @ factor^{-T}: solve factor @ X^T = block^T
    return torch.linalg.solve_triangular(factor, wide.mT, upper=False).mT.to(block.dtype)


def _randomized_top_right_singular_vectors(
    centred: torch.Tensor, start: torch.Tensor, collective: Collective, niter: int
) -> torch.Tensor:
    """Top right singular vectors of each group's centred positives, whose rows may be spread over processes.

    ``centred`` is ``(G, N, H)``: this process's rows of each group (zero rows are padding). ``start`` is the
    ``(G, H, q)`` Gaussian start; group ``g`` uses its first ``k_g`` columns, the rest are zero and stay zero (so each
    group runs exactly the iteration ``torch.pca_lowrank(Xc, q=k_g, niter)`` runs on it alone). The subspace
    iteration of Halko et al. (2011): ``niter`` power iterations, then Rayleigh-Ritz. Each product ``X^T X B`` is a
    sum over rows, so processes add their ``(G, H, q)`` parts. Intermediate iterates are orthonormalised by Cholesky
    QR, the last by Householder QR, so the Rayleigh-Ritz step sees an exactly orthonormal basis.
    """
    reduce = collective.all_reduce_sum
    in_use = (start.abs().sum(1, keepdim=True) > 0).to(start.dtype)  # (G, 1, q)

    def times_gram(block: torch.Tensor) -> torch.Tensor:  # X^T X block, over all processes' rows
        return reduce(centred.mT @ (centred @ block))

    basis = start
    for _ in range(niter):
        # Zero columns stay zero: the Cholesky factor is block-diagonal between used and unused columns.
        basis = _orthonormalise_cheaply(times_gram(basis))
    basis = torch.linalg.qr(times_gram(basis)).Q * in_use  # QR completes unused columns arbitrarily: drop them
    # Rayleigh-Ritz: the exact top singular vectors of X restricted to span(basis), in decreasing order (the zero
    # columns give eigenvalue 0 and sort last).
    coords = centred @ basis
    _, ritz_vectors = torch.linalg.eigh(reduce(coords.mT @ coords))
    return basis @ ritz_vectors.flip(-1)


def group_stream_seed(seed: int, group_id: int) -> int:
    """Seed of group ``group_id``'s own random stream under batch seed ``seed`` (a SplitMix64-style mix)."""
    z = (seed * 0x9E3779B97F4A7C15 + (group_id + 1) * 0xBF58476D1CE4E5B9) % 2**64
    z = ((z ^ (z >> 30)) * 0x94D049BB133111EB) % 2**64
    return (z ^ (z >> 31)) % 2**63


def _random_streams(
    group_ids: torch.Tensor, generator: torch.Generator | None, group_seed: int | None, device: torch.device
) -> list[torch.Generator | None]:
    """One generator per group: its own stream seeded from ``group_seed`` and its id, or the shared ``generator``."""
    if group_seed is None:
        return [generator] * group_ids.numel()
    streams = []
    for group_id in group_ids.tolist():
        stream = torch.Generator(device=device)
        stream.manual_seed(group_stream_seed(group_seed, group_id))
        streams.append(stream)
    return streams


def _global_slots(local_counts: torch.Tensor, collective: Collective) -> tuple[torch.Tensor, torch.Tensor]:
    """Per group: how many items lower-ranked processes hold (this process's offset) and the total over processes."""
    if collective.num_processes == 1:
        return torch.zeros_like(local_counts), local_counts
    table = torch.zeros(collective.num_processes, local_counts.numel(), dtype=torch.long, device=local_counts.device)
    table[collective.process_index] = local_counts
    table = collective.all_reduce_sum(table)
    return table[: collective.process_index].sum(0), table.sum(0)


def _negative_energies(
    hidden: torch.Tensor,
    rows: torch.Tensor,
    cols: torch.Tensor,
    group: torch.Tensor,
    mean: torch.Tensor,
    basis: torch.Tensor,
    padded: int,
) -> _NegativeEnergies:
    """Residual energy (spec step 6) and subspace alignment of the tokens ``hidden[rows, cols]`` of groups ``group``
    (indices into ``mean``/``basis``; at most ``padded`` tokens per group), returned in group order."""
    num_groups, width = mean.shape
    order, sorted_group, slot, _ = _rank_within_group(group, num_groups)
    rows, cols = rows[order], cols[order]
    centred = torch.zeros(num_groups, padded, width, device=hidden.device, dtype=torch.float32)
    centred[sorted_group, slot] = _layer_norm_fp32(hidden[rows, cols])
    centred.sub_(mean[:, None, :])
    total_energy = torch.linalg.vector_norm(centred, dim=-1).square()
    coords = centred @ basis  # (A, M, q): coordinates of z in the subspace
    del centred
    inside_energy = torch.linalg.vector_norm(coords, dim=-1).square()
    del coords
    # ||z - V V^T z||^2 = ||z||^2 - ||V^T z||^2 (Pythagoras, V has orthonormal columns): no (A, M, H) residual.
    energy = (total_energy - inside_energy).clamp(min=0.0)[sorted_group, slot] / width
    alignment = inside_energy[sorted_group, slot] / total_energy[sorted_group, slot].clamp(min=1e-12)
    return _NegativeEnergies(rows, cols, sorted_group, energy, alignment)


def _quantile_bounds(
    negatives: _NegativeEnergies,
    num_groups: int,
    padded: int,
    q_low: float,
    q_high: float,
    collective: Collective,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-group ``q_low``/``q_high`` quantiles of the energies (step 7), over every process's negative tokens, as
    ``torch.quantile``'s "linear" interpolation. Only the scalar energies travel between processes."""
    device = negatives.energy.device
    local_count = torch.zeros(num_groups, dtype=torch.long, device=device)
    local_count.index_add_(0, negatives.group, torch.ones_like(negatives.group))
    offset, count = _global_slots(local_count, collective)
    group_start = torch.cumsum(local_count, 0) - local_count
    slot = (
        offset[negatives.group] + torch.arange(negatives.group.numel(), device=device) - group_start[negatives.group]
    )
    padded = max(padded, 1)  # the most negative tokens of a group, over all processes
    energies = torch.zeros(num_groups, padded, device=device, dtype=torch.float32)
    energies[negatives.group, slot] = negatives.energy
    energies = collective.all_reduce_sum(energies)
    is_real = torch.arange(padded, device=device)[None, :] < count[:, None]
    ordered = torch.sort(energies.masked_fill(~is_real, float("inf")), dim=1).values
    last = (count - 1).clamp(min=0).double()

    def quantile(level: float) -> torch.Tensor:
        position = level * last
        below, above = position.floor().long(), position.ceil().long()
        low_value = ordered.gather(1, below[:, None]).squeeze(1)
        high_value = ordered.gather(1, above[:, None]).squeeze(1)
        return torch.lerp(low_value, high_value, (position - below.double()).float())

    return quantile(q_low), quantile(q_high)


def _weights_from_energy(
    energy: torch.Tensor, low: torch.Tensor, high: torch.Tensor, min_weight: float
) -> torch.Tensor:
    """Step 7's map from residual energy to weight, with each token's group bounds ``low``/``high``."""
    spread = high - low
    scaled = torch.clamp((energy - low) / spread.clamp(min=MIN_ENERGY_RANGE), 0.0, 1.0)
    return torch.where(
        spread < FLAT_ENERGY_RANGE,
        torch.full_like(energy, (min_weight + 1.0) / 2.0),
        min_weight + (1.0 - min_weight) * scaled,
    )


def _check_shapes(hidden: torch.Tensor, valid_mask: torch.Tensor, group_ids: torch.Tensor, is_positive: torch.Tensor):
    if hidden.dim() != 3:
        raise ValueError(f"hidden must be (B, T, H), got shape {tuple(hidden.shape)}")
    batch, length, _ = hidden.shape
    if valid_mask.shape != (batch, length):
        raise ValueError(f"valid_mask must be {(batch, length)}, got {tuple(valid_mask.shape)}")
    if group_ids.shape != (batch,) or is_positive.shape != (batch,):
        raise ValueError(
            f"group_ids and is_positive must be ({batch},), got {tuple(group_ids.shape)} and "
            f"{tuple(is_positive.shape)}"
        )


class _Build(NamedTuple):
    subspaces: GroupSubspaces
    negatives: _NegativeEnergies  # this process's negative tokens in the subspaces' groups
    stats: ResidualStats


def _build(
    hidden: torch.Tensor,
    valid_mask: torch.Tensor,
    group_ids: torch.Tensor,
    is_positive: torch.Tensor,
    num_groups: int | None,
    *,
    rank: int,
    max_pos_tokens: int,
    q_low: float,
    q_high: float,
    niter: int,
    generator: torch.Generator | None,
    group_seed: int | None,
    collective: Collective,
) -> _Build:
    """Steps 1-7 for every group, over the rows of all processes. With ``num_groups`` the ids are global indices in
    ``[0, num_groups)`` (the same group has the same id on every process); without, the groups are those present."""
    _check_shapes(hidden, valid_mask, group_ids, is_positive)
    device, width = hidden.device, hidden.shape[-1]
    f32 = dict(device=device, dtype=torch.float32)
    reduce = collective.all_reduce_sum
    valid, positive = valid_mask.bool(), is_positive.bool()
    if num_groups is None:
        unique_groups, seq_group = torch.unique(group_ids, return_inverse=True)
        num_groups = unique_groups.numel()
    else:
        unique_groups, seq_group = torch.arange(num_groups, device=device), group_ids.long()

    # Per-group counts over all processes: completions +/-, valid tokens +/-, non-finite valid tokens. A row sum is
    # finite iff the row is (a cheap (B, T) reduction, no (B, T, H) temporary).
    tokens = valid.sum(1)
    bad_tokens = (valid & ~torch.isfinite(hidden.sum(-1, dtype=torch.float32))).sum(1)
    per_row = torch.stack([positive.long(), (~positive).long(), tokens * positive, tokens * ~positive, bad_tokens])
    local = torch.zeros(5, num_groups, dtype=torch.long, device=device).index_add_(1, seq_group, per_row)
    pos_seqs, neg_seqs, pos_tokens, neg_tokens, bad = reduce(local)
    mixed = (pos_seqs > 0) & (neg_seqs > 0)
    active = mixed & (bad == 0) & (pos_tokens >= MIN_POSITIVE_TOKENS)
    present = (pos_seqs + neg_seqs) > 0
    stats_counts = dict(
        groups=present.sum().float(),
        mixed_groups=mixed.sum().float(),
        skipped_groups=(mixed & ~active).sum().float(),
        positives=pos_seqs.sum().float(),
        negatives=neg_seqs.sum().float(),
    )
    active_index = torch.cumsum(active.long(), 0) - 1
    active_index[~active] = -1
    # Every size below, read in one device-to-host transfer (each one would otherwise stall the GPU).
    table = torch.stack([active.long(), unique_groups, pos_tokens, local[2], local[3], neg_tokens]).cpu()
    is_active = table[0].bool()
    active_ids, pos_total, local_pos, local_neg, neg_total = (row[is_active] for row in table[1:])
    num_active = len(active_ids)
    if num_active == 0:
        none = torch.zeros(0, **f32)
        subspaces = GroupSubspaces(
            torch.zeros(0, dtype=torch.long, device=device), none.view(0, width), none.view(0, width, 0), none, none
        )
        return _Build(subspaces, _no_negatives(device), _token_stats(_no_negatives(device), stats_counts))
    kept_total = pos_total.clamp(max=max_pos_tokens)
    group_rank = kept_total.sub(1).clamp(max=min(rank, width)).tolist()  # k per group
    streams = _random_streams(active_ids, generator, group_seed, device)

    # --- Positive set P per group (steps 1-3): subsample, layer-norm, centre. ---
    row_active = active[seq_group]
    pos_b, pos_t = _nonzero_known(valid & (positive & row_active)[:, None], int(local_pos.sum()))
    order, pos_group, local_rank, local_count = _rank_within_group(active_index[seq_group[pos_b]], num_active)
    pos_b, pos_t = pos_b[order], pos_t[order]
    offset, total = _global_slots(local_count, collective)
    if int(pos_total.max()) > max_pos_tokens:
        # A uniform subset without replacement: the max_pos_tokens lowest random keys of each group. One key per
        # positive token of every process, in (group, process, row, position) order, drawn by all processes alike.
        keys = torch.cat(
            [
                torch.rand(n, generator=stream, device=device, dtype=torch.float64)
                for n, stream in zip(pos_total.tolist(), streams, strict=True)
            ]
        )
        key_group = torch.repeat_interleave(
            torch.arange(num_active, device=device), total, output_size=int(pos_total.sum())
        )
        key_order, _, key_rank_sorted, _ = _rank_within_group(key_group, num_active, keys)
        key_rank = torch.empty_like(key_group)
        key_rank[key_order] = key_rank_sorted
        group_start = torch.cumsum(total, 0) - total
        kept = key_rank[group_start[pos_group] + offset[pos_group] + local_rank] < max_pos_tokens
        # One process knows how many of its tokens are kept; several must count them.
        num_kept = int(kept_total.sum()) if collective.num_processes == 1 else int(kept.sum())
        (index,) = _nonzero_known(kept, num_kept)
        pos_b, pos_t, pos_group = pos_b[index], pos_t[index], pos_group[index]
        _, _, local_rank, local_count = _rank_within_group(pos_group, num_active)
        total = total.clamp(max=max_pos_tokens)
    padded_rows = int(local_pos.clamp(max=max_pos_tokens).max())  # an upper bound on any group's rows here
    positives = torch.zeros(num_active, padded_rows, width, **f32)
    positives[pos_group, local_rank] = _layer_norm_fp32(hidden[pos_b, pos_t])
    mean = reduce(positives.sum(1)) / total[:, None]
    row_is_real = torch.arange(padded_rows, device=device)[None, :] < local_count[:, None]
    # Padding rows stay exactly zero, so they add nothing to X^T X and leave the subspace unchanged.
    positives.sub_(mean[:, None, :]).mul_(row_is_real[..., None])

    # --- Subspace V_k (steps 4-5). ---
    start = torch.zeros(num_active, width, max(group_rank), **f32)
    for index, (k, stream) in enumerate(zip(group_rank, streams, strict=True)):
        start[index, :, :k] = torch.randn(width, k, generator=stream, **f32)
    basis = _randomized_top_right_singular_vectors(positives, start, collective, niter)
    del positives, start

    # --- Residual energies of the negative tokens (step 6) and their per-group quantiles (step 7). ---
    neg_b, neg_t = _nonzero_known(valid & (~positive & row_active)[:, None], int(local_neg.sum()))
    negatives = _negative_energies(
        hidden, neg_b, neg_t, active_index[seq_group[neg_b]], mean, basis, int(local_neg.max())
    )
    low, high = _quantile_bounds(negatives, num_active, int(neg_total.max()), q_low, q_high, collective)
    subspaces = GroupSubspaces(active_ids.to(device, non_blocking=True), mean, basis, low, high)
    # weight_sum needs min_weight, which the callers apply: they fill it in.
    return _Build(subspaces, negatives, _token_stats(negatives, stats_counts))


def _nonzero_known(mask: torch.Tensor, count: int) -> tuple[torch.Tensor, ...]:
    """``torch.nonzero(mask, as_tuple=True)`` when the number of hits is already known: no device-to-host sync."""
    return tuple(torch.nonzero_static(mask, size=count).unbind(1))


def _no_negatives(device: torch.device) -> _NegativeEnergies:
    empty = torch.zeros(0, device=device, dtype=torch.long)
    return _NegativeEnergies(empty, empty, empty, torch.zeros(0, device=device), torch.zeros(0, device=device))


def _token_stats(
    negatives: _NegativeEnergies, counts: dict[str, torch.Tensor], weights: torch.Tensor | None = None
) -> ResidualStats:
    f32 = dict(device=negatives.energy.device, dtype=torch.float32)
    return ResidualStats(
        weight_sum=torch.zeros((), **f32) if weights is None else weights.sum(),
        energy_sum=negatives.energy.sum(),
        alignment_sum=negatives.alignment.sum(),
        weighted_tokens=torch.tensor(float(negatives.energy.numel()), **f32),
        **counts,
    )


@contextlib.contextmanager
def _exact_fp32(device_type: str) -> Iterator[None]:
    # Called from inside a training forward, where autocast would silently run the matmuls in bf16/fp16.
    with torch.autocast(device_type, enabled=False), torch.no_grad():
        yield


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
    group_seed: int | None = None,
    num_groups: int | None = None,
) -> ResidualWeights:
    """ResRL per-token weights and their statistics, every group whole in this batch. See
    :func:`residual_token_weights` for the arguments; ``num_groups``, when given, says the ids lie in
    ``[0, num_groups)``, which spares a ``torch.unique`` (a GPU synchronisation)."""
    with _exact_fp32(hidden.device.type):
        build = _build(
            hidden,
            valid_mask,
            group_ids,
            is_positive,
            num_groups,
            rank=rank,
            max_pos_tokens=max_pos_tokens,
            q_low=q_low,
            q_high=q_high,
            niter=niter,
            generator=generator,
            group_seed=group_seed,
            collective=SINGLE_PROCESS,
        )
        negatives, subspaces = build.negatives, build.subspaces
        weights = torch.ones(valid_mask.shape, device=hidden.device, dtype=torch.float32)
        token_weight = _weights_from_energy(
            negatives.energy, subspaces.low[negatives.group], subspaces.high[negatives.group], min_weight
        )
        weights[negatives.rows, negatives.cols] = token_weight
        return ResidualWeights(weights, build.stats._replace(weight_sum=token_weight.sum()))


def build_group_subspaces(
    hidden: torch.Tensor,
    valid_mask: torch.Tensor,
    group_ids: torch.Tensor,
    is_positive: torch.Tensor,
    *,
    num_groups: int,
    rank: int = 64,
    max_pos_tokens: int = 4096,
    q_low: float = 0.2,
    q_high: float = 0.8,
    niter: int = 4,
    generator: torch.Generator | None = None,
    group_seed: int | None = None,
    collective: Collective = SINGLE_PROCESS,
) -> tuple[GroupSubspaces, ResidualStats]:
    """Each group's positive subspace and energy quantiles, from completions that may sit on several processes.

    The rollout-time half of ResRL: steps 1-5 and 7 of :func:`residual_token_weights` for every group, where this
    process holds some rows of some groups and ``collective`` adds up what the processes hold. ``group_ids`` are
    global indices in ``[0, num_groups)``. With the same ``group_seed`` (or ``generator`` state) on every process
    the result equals that of one process holding all rows. Returns the subspaces and the statistics (group counts
    summed over processes; energy and alignment sums of this process's negatives, to be summed by the caller; no
    weight sum).
    """
    with _exact_fp32(hidden.device.type):
        build = _build(
            hidden,
            valid_mask,
            group_ids,
            is_positive,
            num_groups,
            rank=rank,
            max_pos_tokens=max_pos_tokens,
            q_low=q_low,
            q_high=q_high,
            niter=niter,
            generator=generator,
            group_seed=group_seed,
            collective=collective,
        )
    return build.subspaces, build.stats


def project_onto_group_subspaces(
    hidden: torch.Tensor,
    valid_mask: torch.Tensor,
    group_ids: torch.Tensor,
    is_positive: torch.Tensor,
    subspaces: GroupSubspaces,
    *,
    min_weight: float = 0.1,
) -> ResidualWeights:
    """Per-token weights of the negatives in a batch that may hold any part of each group (the training-step half).

    Each valid token of a negative completion whose group has a subspace gets step 6's energy against its group's
    ``mean`` and ``basis`` and step 7's weight with its group's stored quantiles; every other entry is 1 (so is a
    token whose hidden state is not finite). Group counts in the statistics are zero: they belong to the rollout (see
    :func:`build_group_subspaces`).

    It runs without a single device-to-host synchronisation (every shape is known in advance), so it does not stall
    the training forward it is called from; the price is float32 temporaries over all ``B x T`` positions.
    """
    _check_shapes(hidden, valid_mask, group_ids, is_positive)
    with _exact_fp32(hidden.device.type):
        device, width = hidden.device, hidden.shape[-1]
        weights = torch.ones(valid_mask.shape, device=device, dtype=torch.float32)
        zero = torch.zeros((), device=device, dtype=torch.float32)
        zero_counts = dict(groups=zero, mixed_groups=zero, skipped_groups=zero, positives=zero, negatives=zero)
        num_subspaces = len(subspaces.group_ids)
        if num_subspaces == 0:
            return ResidualWeights(weights, _token_stats(_no_negatives(device), zero_counts))
        # Each row's group among the subspaces (a per-row, not per-token, copy of its mean and basis).
        position = torch.searchsorted(subspaces.group_ids, group_ids.long()).clamp(max=num_subspaces - 1)
        row_weighted = (subspaces.group_ids[position] == group_ids) & ~is_positive.bool()
        centred = _layer_norm_fp32(hidden) - subspaces.mean[position][:, None, :]
        total_energy = torch.linalg.vector_norm(centred, dim=-1).square()
        inside_energy = torch.linalg.vector_norm(centred @ subspaces.basis[position], dim=-1).square()
        del centred
        energy = (total_energy - inside_energy).clamp(min=0.0) / width
        token_weight = _weights_from_energy(
            energy, subspaces.low[position][:, None], subspaces.high[position][:, None], min_weight
        )
        weighted = valid_mask.bool() & row_weighted[:, None] & torch.isfinite(token_weight)
        weights = torch.where(weighted, token_weight, weights)
        alignment = inside_energy / total_energy.clamp(min=1e-12)
        stats = ResidualStats(
            weight_sum=(token_weight * weighted).nansum(),
            energy_sum=(energy * weighted).nansum(),
            alignment_sum=(alignment * weighted).nansum(),
            weighted_tokens=weighted.sum().float(),
            **zero_counts,
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
    group_seed: int | None = None,
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
        generator: source of randomness for subsampling and PCA, drawn group after group in the order of the
            group ids; ``None`` uses the global RNG.
        group_seed: instead of ``generator``, give every group its own stream, seeded from ``group_seed`` and the
            group's id (:func:`group_stream_seed`). A group's weights then depend only on its own rows, its id and
            ``group_seed``: not on which other groups share the batch, nor on how many processes or micro-batches the
            rollout is split into.

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
        group_seed=group_seed,
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
