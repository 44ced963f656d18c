"""ResRL's per-token weights as pure tensor functions.

Steps 1-8 of "Exact per-token weighting" in ResRL (Lin et al., "ResRL: Boosting LLM Reasoning via Negative Sample
Projection Residual Reinforcement Learning", ICML 2026, arXiv 2605.00380). For each group ``g`` (completions of one
prompt) that holds a positive (successful) and a negative (failed) completion:

1. ``P`` = hidden states of the valid tokens of g's positive completions; skip ``g`` if ``|P| < 4``.
2. If ``|P| > max_pos_tokens``, keep a uniform random subset of ``max_pos_tokens`` rows (without replacement).
3. ``X = layer_norm(P)`` (no affine, eps 1e-5, float32); ``mu`` = mean row of ``X``; ``Xc = X - mu``.
4. ``k = min(rank, |P| - 1, H)``.
5. ``V_k`` = top-``k`` right singular vectors of ``Xc``, by randomised PCA with ``niter`` power iterations.
6. For each valid token of each negative completion: ``z = layer_norm(h) - mu``, ``e = ||z - V_k V_k^T z||^2 / H``.
7. ``lo, hi`` = the ``q_low``, ``q_high`` quantiles of ``e`` over the group's valid negative tokens (linear
   interpolation, as ``torch.quantile``). If ``hi - lo < 1e-5`` every such token gets ``(min_weight + 1) / 2``;
   else ``w = min_weight + (1 - min_weight) * clamp((e - lo) / max(hi - lo, 1e-6), 0, 1)``.
8. Every other entry is 1. A group whose hidden states (at the tokens it reads) are not all finite is skipped.

Where each step lives (one public entry point per computation):

- :func:`completion_states`: which position's hidden state a completion token is read from.
- :func:`compute_residual_weights`: steps 1-8 for a batch that holds every group whole (the reference's place).
- :func:`build_group_subspaces` (steps 1-5 and 7, over processes) then :func:`project_onto_group_subspaces`
  (steps 6-8 on any part of each group): the same weights when groups are split across micro-batches or processes.
- :func:`residual_energy`: step 6's formula, the only one; :func:`token_energies`: step 6 at every position.
- :func:`subspace_positive_states`: the states steps 1-2 keep, for analyses.
- :func:`group_stream_seed`: the per-group random stream of steps 2 and 5.
- :class:`SubspaceSettings`: the six settings (paper defaults); :class:`ResidualStats`: token sums and group counts.

Everything here is plain ``torch``: no TRL, transformers or accelerate imports, so the maths can be tested and
benchmarked on its own. All groups are processed at once (padded batched linear algebra), never in a Python loop
per group or per token, and all arithmetic is float32 whatever the dtype of the hidden states. Which completion
tokens are valid is decided in :mod:`resrl_trl.masks`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import NamedTuple

import torch
import torch.nn.functional as F

__all__ = [
    "Collective",
    "GroupSubspaces",
    "ResidualStats",
    "ResidualWeights",
    "SubspaceSettings",
    "WEIGHT_POSITIONS",
    "build_group_subspaces",
    "completion_states",
    "compute_residual_weights",
    "group_stream_seed",
    "project_onto_group_subspaces",
    "residual_energy",
    "subspace_positive_states",
    "token_energies",
]

LAYER_NORM_EPS = 1e-5
MIN_POSITIVE_TOKENS = 4
FLAT_ENERGY_RANGE = 1e-5
MIN_ENERGY_RANGE = 1e-6
WEIGHT_POSITIONS = ("previous", "own")
"""Where a completion token's hidden state is read: ``"previous"`` (the reference), the position before the token,
whose logits chose it; ``"own"`` (an ablation), the token's own position, the first state that has read it."""


def completion_states(sequence_states: torch.Tensor, num_tokens: int, position: str = "previous") -> torch.Tensor:
    """The ``(B, num_tokens, H)`` hidden states ResRL reads for the last ``num_tokens`` tokens of ``(B, L, H)``
    prompt + completion states (a view, no copy).

    ``position="previous"`` (the spec and the reference) takes the states at positions ``L - num_tokens - 1`` to
    ``L - 2``: token ``t``'s state is the one whose logits score it, the same alignment as its log-probability. It has
    not read token ``t``, so a failed completion's token that first departs from a successful one's text is read
    from a state the two share. ``position="own"`` takes positions ``L - num_tokens`` to ``L - 1``: the state at the
    token itself, which has read it.
    """
    if position not in WEIGHT_POSITIONS:
        raise ValueError(f"the weight position must be one of {WEIGHT_POSITIONS}, got {position!r}")
    if sequence_states.shape[1] <= num_tokens:
        raise ValueError(
            f"need more positions ({sequence_states.shape[1]}) than completion tokens ({num_tokens}): the states must "
            "cover the prompt and the completion"
        )
    end = sequence_states.shape[1] - (position == "previous")
    return sequence_states[:, end - num_tokens : end]


@dataclass(frozen=True)
class SubspaceSettings:
    """How each group's positive subspace is built and how residual energies become weights.

    Every default is the paper's (and the reference code's). Invalid values raise a ``ValueError`` naming the field.
    """

    rank: int = 64
    """Rank of the positive subspace before clamping to ``min(rank, |P| - 1, H)`` (paper: 64)."""
    max_pos_tokens: int = 4096
    """Most positive tokens used per group; a larger set is subsampled uniformly without replacement (paper: 4096)."""
    q_low: float = 0.2
    """Quantile of a group's negative-token energies mapped to ``min_weight`` (paper: 0.2)."""
    q_high: float = 0.8
    """Quantile of the same energies mapped to weight 1 (paper: 0.8)."""
    min_weight: float = 0.1
    """Smallest weight of a negative token, the one that looks most like successful reasoning (paper: 0.1)."""
    niter: int = 4
    """Power iterations of the randomised PCA that finds the subspace (paper: 4)."""

    def __post_init__(self) -> None:
        problems = self.problems(asdict(self))
        if problems:
            raise ValueError("Invalid SubspaceSettings: " + "; ".join(problems))

    @staticmethod
    def problems(values: Mapping[str, float], names: Mapping[str, str] | None = None) -> list[str]:
        """What is wrong with ``values`` (keyed by this class's field names), each message naming the field as
        ``names`` spells it (default: the field's own name), so that a config with other field names can reuse it."""
        name = {field.name: field.name for field in fields(SubspaceSettings)} | dict(names or {})
        rank, max_pos_tokens, niter = values["rank"], values["max_pos_tokens"], values["niter"]
        q_low, q_high, min_weight = values["q_low"], values["q_high"], values["min_weight"]
        problems = []
        if not rank >= 1:
            problems.append(f"{name['rank']} must be >= 1, got {rank}")
        if not max_pos_tokens >= MIN_POSITIVE_TOKENS:
            problems.append(
                f"{name['max_pos_tokens']} must be >= {MIN_POSITIVE_TOKENS} (a group needs {MIN_POSITIVE_TOKENS} "
                f"positive tokens), got {max_pos_tokens}"
            )
        if not 0.0 <= q_low < q_high <= 1.0:
            problems.append(
                f"need 0 <= {name['q_low']} < {name['q_high']} <= 1, got {name['q_low']}={q_low}, "
                f"{name['q_high']}={q_high}"
            )
        if not 0.0 <= min_weight <= 1.0:
            problems.append(f"{name['min_weight']} must lie in [0, 1], got {min_weight}")
        if not niter >= 0:
            problems.append(f"{name['niter']} must be >= 0, got {niter}")
        return problems


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


def residual_energy(centred: torch.Tensor, basis: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Step 6's residual energy of centred hidden states against a subspace, and their alignment with it.

    ``centred`` is ``(..., H)`` float32: layer-normed hidden states minus their group's mean ``mu``. ``basis`` holds
    orthonormal columns (zero columns allowed) such that ``centred @ basis`` is defined: ``(H, q)`` for one subspace,
    or ``(..., H, q)`` with one subspace per batch entry (``(B, T, H)`` with ``(B, H, q)``, say). Returns
    ``(energy, alignment)``, both shaped like ``centred`` without its last dimension: ``||z - V V^T z||^2 / H`` and
    ``||V^T z||^2 / ||z||^2``, the share of ``z``'s energy inside the subspace.
    """
    total = torch.linalg.vector_norm(centred, dim=-1).square()
    inside = torch.linalg.vector_norm(centred @ basis, dim=-1).square()
    # ||z - V V^T z||^2 = ||z||^2 - ||V^T z||^2 (Pythagoras, V has orthonormal columns): no residual tensor is formed.
    energy = (total - inside).clamp(min=0.0) / centred.shape[-1]
    return energy, inside / total.clamp(min=1e-12)


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
    # Padded per group, so that each group's tokens meet its own basis in one batched product.
    centred = torch.zeros(num_groups, padded, width, device=hidden.device, dtype=torch.float32)
    centred[sorted_group, slot] = _layer_norm_fp32(hidden[rows, cols])
    centred.sub_(mean[:, None, :])
    energy, alignment = residual_energy(centred, basis)
    return _NegativeEnergies(rows, cols, sorted_group, energy[sorted_group, slot], alignment[sorted_group, slot])


def _quantile_bounds(
    negatives: _NegativeEnergies, num_groups: int, padded: int, settings: SubspaceSettings, collective: Collective
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

    return quantile(settings.q_low), quantile(settings.q_high)


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


class _Census(NamedTuple):
    """Which groups get token weights, and the sizes the later steps need (step 1 and the statistics' counts)."""

    row_group: torch.Tensor  # (B,) each row's group index in [0, num_groups)
    row_active: torch.Tensor  # (B,) whether the row's group gets token weights
    active_index: torch.Tensor  # (num_groups,) each group's index among the active ones, -1 if not active
    counts: dict[str, torch.Tensor]  # the group counts of ResidualStats, summed over processes
    # On the host, one entry per active group, in id order:
    active_ids: torch.Tensor
    pos_total: torch.Tensor  # valid positive tokens over all processes
    local_pos: torch.Tensor  # ... on this process
    local_neg: torch.Tensor  # valid negative tokens on this process
    neg_total: torch.Tensor  # ... over all processes


def _group_census(
    hidden: torch.Tensor,
    valid: torch.Tensor,
    group_ids: torch.Tensor,
    positive: torch.Tensor,
    num_groups: int | None,
    collective: Collective,
) -> _Census:
    device = hidden.device
    if num_groups is None:
        unique_groups, row_group = torch.unique(group_ids, return_inverse=True)
        num_groups = unique_groups.numel()
    else:
        unique_groups, row_group = torch.arange(num_groups, device=device), group_ids.long()
    # Per-group counts over all processes: completions +/-, valid tokens +/-, non-finite valid tokens. A row sum is
    # finite iff the row is (a cheap (B, T) reduction, no (B, T, H) temporary).
    tokens = valid.sum(1)
    bad_tokens = (valid & ~torch.isfinite(hidden.sum(-1, dtype=torch.float32))).sum(1)
    per_row = torch.stack([positive.long(), (~positive).long(), tokens * positive, tokens * ~positive, bad_tokens])
    local = torch.zeros(5, num_groups, dtype=torch.long, device=device).index_add_(1, row_group, per_row)
    pos_seqs, neg_seqs, pos_tokens, neg_tokens, bad = collective.all_reduce_sum(local)
    mixed = (pos_seqs > 0) & (neg_seqs > 0)
    active = mixed & (bad == 0) & (pos_tokens >= MIN_POSITIVE_TOKENS)
    present = (pos_seqs + neg_seqs) > 0
    counts = dict(
        groups=present.sum().float(),
        mixed_groups=mixed.sum().float(),
        skipped_groups=(mixed & ~active).sum().float(),
        positives=pos_seqs.sum().float(),
        negatives=neg_seqs.sum().float(),
    )
    active_index = torch.cumsum(active.long(), 0) - 1
    active_index[~active] = -1
    # Every size the later steps need, read in one device-to-host transfer (each would otherwise stall the GPU).
    table = torch.stack([active.long(), unique_groups, pos_tokens, local[2], local[3], neg_tokens]).cpu()
    is_active = table[0].bool()
    sizes = (row[is_active] for row in table[1:])
    return _Census(row_group, active[row_group], active_index, counts, *sizes)


class _PositiveTokens(NamedTuple):
    """This process's positive tokens of the active groups, in group order (steps 1-2)."""

    rows: torch.Tensor
    cols: torch.Tensor
    group: torch.Tensor  # index among the active groups
    slot: torch.Tensor  # rank of the token among this process's tokens of its group
    local_count: torch.Tensor  # (A,) this process's tokens per group
    offset: torch.Tensor  # (A,) the group's tokens on lower-ranked processes
    total: torch.Tensor  # (A,) the group's tokens over all processes


def _positive_tokens(
    valid: torch.Tensor, positive: torch.Tensor, census: _Census, collective: Collective
) -> _PositiveTokens:
    num_active = len(census.active_ids)
    rows, cols = _nonzero_known(valid & (positive & census.row_active)[:, None], int(census.local_pos.sum()))
    order, group, slot, local_count = _rank_within_group(census.active_index[census.row_group[rows]], num_active)
    offset, total = _global_slots(local_count, collective)
    return _PositiveTokens(rows[order], cols[order], group, slot, local_count, offset, total)


def _subsample_positives(
    tokens: _PositiveTokens,
    census: _Census,
    max_pos_tokens: int,
    streams: Sequence[torch.Generator | None],
    collective: Collective,
) -> _PositiveTokens:
    """Step 2: a uniform subset without replacement of each group's positive tokens, at most ``max_pos_tokens``: the
    tokens with the lowest random keys. One key per positive token of every process, in (group, process, row,
    position) order, drawn by all processes alike, so the subset does not depend on how the rows are split."""
    device, num_active = tokens.rows.device, len(census.active_ids)
    keys = torch.cat(
        [
            torch.rand(n, generator=stream, device=device, dtype=torch.float64)
            for n, stream in zip(census.pos_total.tolist(), streams, strict=True)
        ]
    )
    key_group = torch.repeat_interleave(
        torch.arange(num_active, device=device), tokens.total, output_size=int(census.pos_total.sum())
    )
    key_order, _, key_rank_sorted, _ = _rank_within_group(key_group, num_active, keys)
    key_rank = torch.empty_like(key_group)
    key_rank[key_order] = key_rank_sorted
    group_start = torch.cumsum(tokens.total, 0) - tokens.total
    kept = key_rank[group_start[tokens.group] + tokens.offset[tokens.group] + tokens.slot] < max_pos_tokens
    # One process knows how many of its tokens are kept; several must count them.
    if collective.num_processes == 1:
        num_kept = int(census.pos_total.clamp(max=max_pos_tokens).sum())
    else:
        num_kept = int(kept.sum())
    (index,) = _nonzero_known(kept, num_kept)
    group = tokens.group[index]
    _, _, slot, local_count = _rank_within_group(group, num_active)
    total = tokens.total.clamp(max=max_pos_tokens)
    return _PositiveTokens(tokens.rows[index], tokens.cols[index], group, slot, local_count, tokens.offset, total)


def _mean_and_basis(
    hidden: torch.Tensor,
    tokens: _PositiveTokens,
    census: _Census,
    settings: SubspaceSettings,
    streams: Sequence[torch.Generator | None],
    collective: Collective,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Steps 3-5: each active group's mean ``mu`` of its layer-normed positives and the basis ``V_k`` of the top-k
    right singular vectors of the centred positives, over all processes' rows."""
    device, width, num_active = hidden.device, hidden.shape[-1], len(census.active_ids)
    f32 = dict(device=device, dtype=torch.float32)
    padded_rows = int(census.local_pos.clamp(max=settings.max_pos_tokens).max())  # bounds any group's rows here
    positives = torch.zeros(num_active, padded_rows, width, **f32)
    positives[tokens.group, tokens.slot] = _layer_norm_fp32(hidden[tokens.rows, tokens.cols])
    mean = collective.all_reduce_sum(positives.sum(1)) / tokens.total[:, None]
    row_is_real = torch.arange(padded_rows, device=device)[None, :] < tokens.local_count[:, None]
    # Padding rows stay exactly zero, so they add nothing to X^T X and leave the subspace unchanged.
    positives.sub_(mean[:, None, :]).mul_(row_is_real[..., None])
    kept_total = census.pos_total.clamp(max=settings.max_pos_tokens)
    group_rank = kept_total.sub(1).clamp(max=min(settings.rank, width)).tolist()  # k per group
    start = torch.zeros(num_active, width, max(group_rank), **f32)
    for index, (k, stream) in enumerate(zip(group_rank, streams, strict=True)):
        start[index, :, :k] = torch.randn(width, k, generator=stream, **f32)
    basis = _randomized_top_right_singular_vectors(positives, start, collective, settings.niter)
    return mean, basis


class _Build(NamedTuple):
    subspaces: GroupSubspaces
    negatives: _NegativeEnergies  # this process's negative tokens in the subspaces' groups
    stats: ResidualStats


def _build(
    hidden: torch.Tensor,
    valid_mask: torch.Tensor,
    group_ids: torch.Tensor,
    is_positive: torch.Tensor,
    settings: SubspaceSettings,
    num_groups: int | None,
    generator: torch.Generator | None,
    group_seed: int | None,
    collective: Collective,
) -> _Build:
    """Steps 1-7 for every group, over the rows of all processes. With ``num_groups`` the ids are global indices in
    ``[0, num_groups)`` (the same group has the same id on every process); without, the groups are those present.
    Random numbers are drawn in a fixed order (subsampling keys, then PCA starts) on every process alike."""
    _check_shapes(hidden, valid_mask, group_ids, is_positive)
    device, width = hidden.device, hidden.shape[-1]
    valid, positive = valid_mask.bool(), is_positive.bool()
    census = _group_census(hidden, valid, group_ids, positive, num_groups, collective)
    if len(census.active_ids) == 0:
        none = torch.zeros(0, device=device, dtype=torch.float32)
        subspaces = GroupSubspaces(
            torch.zeros(0, dtype=torch.long, device=device), none.view(0, width), none.view(0, width, 0), none, none
        )
        return _Build(subspaces, _no_negatives(device), _token_stats(_no_negatives(device), census.counts))
    streams = _random_streams(census.active_ids, generator, group_seed, device)
    positives = _positive_tokens(valid, positive, census, collective)
    if int(census.pos_total.max()) > settings.max_pos_tokens:
        positives = _subsample_positives(positives, census, settings.max_pos_tokens, streams, collective)
    mean, basis = _mean_and_basis(hidden, positives, census, settings, streams, collective)
    neg_rows, neg_cols = _nonzero_known(valid & (~positive & census.row_active)[:, None], int(census.local_neg.sum()))
    neg_group = census.active_index[census.row_group[neg_rows]]
    negatives = _negative_energies(hidden, neg_rows, neg_cols, neg_group, mean, basis, int(census.local_neg.max()))
    low, high = _quantile_bounds(negatives, len(census.active_ids), int(census.neg_total.max()), settings, collective)
    subspaces = GroupSubspaces(census.active_ids.to(device, non_blocking=True), mean, basis, low, high)
    # weight_sum needs min_weight, which the callers apply: they fill it in.
    return _Build(subspaces, negatives, _token_stats(negatives, census.counts))


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
    settings: SubspaceSettings = SubspaceSettings(),
    *,
    generator: torch.Generator | None = None,
    group_seed: int | None = None,
    num_groups: int | None = None,
) -> ResidualWeights:
    """Steps 1-8: ResRL's per-token weights for the negative completions of a batch that holds every group whole,
    and their statistics.

    Args:
        hidden: ``(B, T, H)`` hidden states, any float dtype; only the rows at valid tokens are read.
        valid_mask: ``(B, T)`` bool, the tokens that take part (completion tokens, minus tool output or think spans).
        group_ids: ``(B,)`` integer id of each completion's prompt group.
        is_positive: ``(B,)`` bool, whether each completion succeeded (reward above the threshold).
        settings: ``rank``, ``max_pos_tokens``, ``q_low``, ``q_high``, ``min_weight`` and ``niter`` of the steps (see
            :class:`SubspaceSettings`; the defaults are the paper's).
        generator: source of randomness for subsampling and PCA, drawn group after group in the order of the
            group ids; ``None`` uses the global RNG.
        group_seed: instead of ``generator``, give every group its own stream, seeded from ``group_seed`` and the
            group's id (:func:`group_stream_seed`). A group's weights then depend only on its own rows, its id and
            ``group_seed``: not on which other groups share the batch, nor on how many processes or micro-batches the
            rollout is split into.
        num_groups: when given, says the ids lie in ``[0, num_groups)``, which spares a ``torch.unique`` (a GPU
            synchronisation).

    Returns:
        ``ResidualWeights``: ``(B, T)`` float32 weights, in ``[min_weight, 1]`` at the valid tokens of negatives in
        usable mixed groups and exactly 1 elsewhere, and the batch's :class:`ResidualStats`.
    """
    with _exact_fp32(hidden.device.type):
        build = _build(
            hidden, valid_mask, group_ids, is_positive, settings, num_groups, generator, group_seed, SINGLE_PROCESS
        )
        negatives, subspaces = build.negatives, build.subspaces
        weights = torch.ones(valid_mask.shape, device=hidden.device, dtype=torch.float32)
        token_weight = _weights_from_energy(
            negatives.energy, subspaces.low[negatives.group], subspaces.high[negatives.group], settings.min_weight
        )
        weights[negatives.rows, negatives.cols] = token_weight
        return ResidualWeights(weights, build.stats._replace(weight_sum=token_weight.sum()))


def build_group_subspaces(
    hidden: torch.Tensor,
    valid_mask: torch.Tensor,
    group_ids: torch.Tensor,
    is_positive: torch.Tensor,
    settings: SubspaceSettings = SubspaceSettings(),
    *,
    num_groups: int,
    generator: torch.Generator | None = None,
    group_seed: int | None = None,
    collective: Collective = SINGLE_PROCESS,
) -> tuple[GroupSubspaces, ResidualStats]:
    """Each group's positive subspace and energy quantiles, from completions that may sit on several processes.

    The rollout-time half of ResRL: steps 1-5 and 7 of :func:`compute_residual_weights` for every group, where this
    process holds some rows of some groups and ``collective`` adds up what the processes hold. ``group_ids`` are
    global indices in ``[0, num_groups)``. With the same ``group_seed`` (or ``generator`` state) on every process
    the result equals that of one process holding all rows. ``settings.min_weight`` is not used here (the weights
    come from :func:`project_onto_group_subspaces`). Returns the subspaces and the statistics (group counts summed
    over processes; energy and alignment sums of this process's negatives, to be summed by the caller; no weight sum).
    """
    with _exact_fp32(hidden.device.type):
        build = _build(
            hidden, valid_mask, group_ids, is_positive, settings, num_groups, generator, group_seed, collective
        )
    return build.subspaces, build.stats


def subspace_positive_states(
    hidden: torch.Tensor,
    valid_mask: torch.Tensor,
    group_ids: torch.Tensor,
    is_positive: torch.Tensor,
    settings: SubspaceSettings = SubspaceSettings(),
    *,
    num_groups: int | None = None,
    group_seed: int | None = None,
) -> dict[int, torch.Tensor]:
    """The positive hidden states each group's subspace is built from (steps 1-2): per group that gets token
    weights, its id mapped to the ``(N, H)`` states (not layer-normed) of its valid positive tokens, subsampled to
    ``settings.max_pos_tokens`` exactly as :func:`compute_residual_weights` subsamples them with the same
    ``group_seed``. For analyses of the subspace that must see what training sees (one process's rows)."""
    _check_shapes(hidden, valid_mask, group_ids, is_positive)
    valid, positive = valid_mask.bool(), is_positive.bool()
    census = _group_census(hidden, valid, group_ids, positive, num_groups, SINGLE_PROCESS)
    if len(census.active_ids) == 0:
        return {}
    streams = _random_streams(census.active_ids, None, group_seed, hidden.device)
    tokens = _positive_tokens(valid, positive, census, SINGLE_PROCESS)
    if int(census.pos_total.max()) > settings.max_pos_tokens:
        tokens = _subsample_positives(tokens, census, settings.max_pos_tokens, streams, SINGLE_PROCESS)
    states = hidden[tokens.rows, tokens.cols]
    return {int(group): states[tokens.group == index] for index, group in enumerate(census.active_ids.tolist())}


def _row_subspaces(group_ids: torch.Tensor, subspaces: GroupSubspaces) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's index among ``subspaces`` (clamped into range) and whether its group really has a subspace there."""
    position = torch.searchsorted(subspaces.group_ids, group_ids.long()).clamp(max=len(subspaces.group_ids) - 1)
    return position, subspaces.group_ids[position] == group_ids


def _energies_at(
    hidden: torch.Tensor, position: torch.Tensor, has_subspace: torch.Tensor, subspaces: GroupSubspaces
) -> tuple[torch.Tensor, torch.Tensor]:
    # A per-row, not per-token, copy of each row's mean and basis.
    centred = _layer_norm_fp32(hidden) - subspaces.mean[position][:, None, :]
    energy, alignment = residual_energy(centred, subspaces.basis[position])
    keep = has_subspace[:, None]
    return torch.where(keep, energy, 0.0), torch.where(keep, alignment, 0.0)


def token_energies(
    hidden: torch.Tensor, group_ids: torch.Tensor, subspaces: GroupSubspaces
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Step 6 at every position of a batch: each token's residual energy against its group's stored subspace.

    ``hidden`` is ``(B, T, H)`` (any float dtype, computed in float32), ``group_ids`` ``(B,)`` global group ids as in
    ``subspaces``. Returns ``(energy, alignment, row_has_subspace)``: ``(B, T)`` float32 energies
    ``||z - V V^T z||^2 / H`` and alignments ``||V^T z||^2 / ||z||^2`` (see :func:`residual_energy`), and a ``(B,)``
    bool saying which rows' groups have a subspace. Rows without one get 0 in both; a non-finite hidden state gives
    a non-finite energy. Every position is computed, valid or not: mask the result with the valid tokens.
    """
    if hidden.dim() != 3 or group_ids.shape != hidden.shape[:1]:
        raise ValueError(
            f"hidden must be (B, T, H) and group_ids (B,), got {tuple(hidden.shape)} and {tuple(group_ids.shape)}"
        )
    with _exact_fp32(hidden.device.type):
        if len(subspaces.group_ids) == 0:
            zeros = torch.zeros(hidden.shape[:2], device=hidden.device, dtype=torch.float32)
            return zeros, zeros.clone(), torch.zeros(len(group_ids), dtype=torch.bool, device=hidden.device)
        position, has_subspace = _row_subspaces(group_ids, subspaces)
        return *_energies_at(hidden, position, has_subspace, subspaces), has_subspace


def project_onto_group_subspaces(
    hidden: torch.Tensor,
    valid_mask: torch.Tensor,
    group_ids: torch.Tensor,
    is_positive: torch.Tensor,
    subspaces: GroupSubspaces,
    settings: SubspaceSettings = SubspaceSettings(),
) -> ResidualWeights:
    """Per-token weights of the negatives in a batch that may hold any part of each group (the training-step half).

    Each valid token of a negative completion whose group has a subspace gets step 6's energy against its group's
    ``mean`` and ``basis`` and step 7's weight (``settings.min_weight``; the other settings were used when the
    subspaces were built) with its group's stored quantiles; every other entry is 1 (so is a token whose hidden state
    is not finite). Group counts in the statistics are zero: they belong to the rollout (see
    :func:`build_group_subspaces`).

    It runs without a single device-to-host synchronisation (every shape is known in advance), so it does not stall
    the training forward it is called from; the price is float32 temporaries over all ``B x T`` positions.
    """
    _check_shapes(hidden, valid_mask, group_ids, is_positive)
    with _exact_fp32(hidden.device.type):
        device = hidden.device
        weights = torch.ones(valid_mask.shape, device=device, dtype=torch.float32)
        zero = torch.zeros((), device=device, dtype=torch.float32)
        zero_counts = dict(groups=zero, mixed_groups=zero, skipped_groups=zero, positives=zero, negatives=zero)
        if len(subspaces.group_ids) == 0:
            return ResidualWeights(weights, _token_stats(_no_negatives(device), zero_counts))
        position, has_subspace = _row_subspaces(group_ids, subspaces)
        energy, alignment = _energies_at(hidden, position, has_subspace, subspaces)
        token_weight = _weights_from_energy(
            energy, subspaces.low[position][:, None], subspaces.high[position][:, None], settings.min_weight
        )
        weighted = valid_mask.bool() & (has_subspace & ~is_positive.bool())[:, None] & torch.isfinite(token_weight)
        stats = ResidualStats(
            weight_sum=(token_weight * weighted).nansum(),
            energy_sum=(energy * weighted).nansum(),
            alignment_sum=(alignment * weighted).nansum(),
            weighted_tokens=weighted.sum().float(),
            **zero_counts,
        )
        return ResidualWeights(torch.where(weighted, token_weight, weights), stats)
