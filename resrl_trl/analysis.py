"""Measurements that ask where ResRL's effect comes from, as pure tensor functions (no TRL imports).

Three questions a reader of the paper asks and it does not answer:

- **Rank.** How much of the positive tokens' variance does a rank-``k`` subspace keep (:func:`variance_share_by_rank`),
  and how much do the negatives' weights depend on the rank (:func:`weight_correlation` of the weights at rank ``k``
  with those at the paper's rank 64)?
- **Information kept.** Does the subspace separate successful from failed reasoning? Held-out positive tokens, left
  out of the subspace they are measured against, should have lower residual energy than negative tokens
  (:func:`heldout_energies`).
- **Gradient interference.** Positive and negative completions pull the shared output head in different directions.
  :func:`head_gradient` is the exact gradient of a policy-gradient loss at the output head ``W`` (``logits = h W^T``);
  :func:`cosine` compares the positives' and the negatives' gradients, with and without ResRL's token weights.

Everything runs in float32 and follows the conventions of :mod:`resrl_trl.residual` (layer norm without affine
parameters, eps 1e-5). :func:`analyse_group` puts them together for one sampled group, as
``experiments/analysis_report.py`` and ``benchmarks/analysis_memory.py`` run them.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import replace
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

from .advantages import group_normalised_advantages
from .residual import (
    LAYER_NORM_EPS,
    SubspaceSettings,
    build_group_subspaces,
    compute_residual_weights,
    subspace_positive_states,
    token_energies,
)

__all__ = [
    "RANKS",
    "analyse_group",
    "balanced_partitions",
    "HeadGradients",
    "HeldOutEnergies",
    "add_head_gradients",
    "cosine",
    "divergence_positions",
    "head_gradient",
    "head_gradient_in_chunks",
    "head_gradient_inner",
    "heldout_energies",
    "interference",
    "positive_negative_cosines",
    "variance_share_by_rank",
    "weight_correlation",
    "weighted_negative_share",
]


def variance_share_by_rank(positive_hidden: torch.Tensor, ranks: Sequence[int]) -> torch.Tensor:
    """Share of a group's centred positive-token variance inside its top-``k`` subspace, for each ``k`` in ``ranks``.

    ``positive_hidden`` is ``(N, H)``: the hidden states of one group's valid positive tokens. As in the weighting,
    rows are layer-normed and centred; the share is ``sum_{i<=k} s_i^2 / sum_i s_i^2`` over the exact singular values
    ``s`` of the centred matrix, with ``k`` clamped to ``min(rank, N - 1, H)`` (the rank the weighting would use).
    Returns ``(len(ranks),)`` float32 values in ``[0, 1]``; NaN when the group has no variance.
    """
    x = F.layer_norm(positive_hidden.float(), (positive_hidden.shape[-1],), eps=LAYER_NORM_EPS)
    centred = x - x.mean(0, keepdim=True)
    energy = torch.linalg.svdvals(centred).square()
    cumulative = torch.cumsum(energy, 0)
    limit = min(positive_hidden.shape[0] - 1, positive_hidden.shape[1])
    total = cumulative[-1]
    shares = [
        cumulative[max(min(k, limit), 1) - 1] / total if total > 0 else torch.tensor(float("nan")) for k in ranks
    ]
    return torch.stack(shares).float()


def weight_correlation(weights: torch.Tensor, reference: torch.Tensor, mask: torch.Tensor) -> float:
    """Pearson correlation of two weight maps over the masked entries (the tokens that received weights).

    NaN when fewer than two entries are masked or either map is constant there.
    """
    a, b = weights[mask].double(), reference[mask].double()
    if a.numel() < 2:
        return float("nan")
    a, b = a - a.mean(), b - b.mean()
    denominator = a.norm() * b.norm()
    return float((a @ b) / denominator) if denominator > 0 else float("nan")


class HeldOutEnergies(NamedTuple):
    positive: torch.Tensor
    """``(P,)`` residual energies of the held-out positive tokens, against subspaces built without them."""
    negative: torch.Tensor
    """``(M,)`` residual energies of the negative tokens of the same groups, against the same subspaces."""
    separation: float
    """The probability that a negative token's energy exceeds a held-out positive token's of the same group (ties
    count half), pooled over groups: 0.5 means no separation, 1 perfect separation."""


def heldout_energies(
    hidden: torch.Tensor,
    valid_mask: torch.Tensor,
    group_ids: torch.Tensor,
    is_positive: torch.Tensor,
    settings: SubspaceSettings | None = None,
    *,
    group_seed: int = 0,
) -> HeldOutEnergies:
    """Residual energies of held-out positives and of negatives, each against the subspace of the other positives.

    In every group with at least two positive completions and one negative, the first positive completion (lowest
    row) is held out: the group's subspace (spec steps 1-5) is built from its other positives exactly as the
    weighting builds it, then step 6's energy is measured for the held-out positive's valid tokens and for the
    group's valid negative tokens.

    Args:
        hidden: ``(B, T, H)`` hidden states aligned with the completion tokens, as the weighting reads them.
        valid_mask: ``(B, T)`` bool.
        group_ids: ``(B,)`` group ids in ``[0, num_groups)``.
        is_positive: ``(B,)`` bool.
        settings: the subspace settings (default: the paper's; only rank, max_pos_tokens and niter matter here).
        group_seed: seed of each group's random stream (see :func:`resrl_trl.residual.group_stream_seed`).
    """
    group_ids, is_positive, valid_mask = group_ids.long(), is_positive.bool(), valid_mask.bool()
    num_groups = int(group_ids.max()) + 1 if group_ids.numel() else 0
    rows = torch.arange(len(group_ids), device=group_ids.device)
    held_out = torch.zeros_like(is_positive)
    for group in range(num_groups):
        positives = rows[(group_ids == group) & is_positive]
        if len(positives) >= 2 and bool(((group_ids == group) & ~is_positive).any()):
            held_out[positives[0]] = True
    settings = settings or SubspaceSettings()
    build_mask = valid_mask & ~held_out[:, None]  # the held-out rows take no part in the build
    subspaces, _ = build_group_subspaces(
        hidden, build_mask, group_ids, is_positive, settings, num_groups=num_groups, group_seed=group_seed
    )
    energy, _, has_subspace = token_energies(hidden, group_ids, subspaces)
    groups_with_holdout = torch.zeros(num_groups, dtype=torch.bool, device=group_ids.device)
    groups_with_holdout[group_ids[held_out]] = True
    usable = has_subspace & groups_with_holdout[group_ids]
    positive_tokens = valid_mask & (held_out & usable)[:, None]
    negative_tokens = valid_mask & (~is_positive & usable)[:, None]
    pairs = wins = 0.0
    for group in group_ids[held_out & usable].unique().tolist():
        in_group = (group_ids == group)[:, None]
        pos = energy[positive_tokens & in_group].double()
        neg = energy[negative_tokens & in_group].double()
        greater = (neg[:, None] > pos[None, :]).double().sum() + 0.5 * (neg[:, None] == pos[None, :]).double().sum()
        wins += float(greater)
        pairs += pos.numel() * neg.numel()
    separation = wins / pairs if pairs else float("nan")
    return HeldOutEnergies(energy[positive_tokens], energy[negative_tokens], separation)


def head_gradient(
    final_hidden: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor, coefficients: torch.Tensor
) -> torch.Tensor:
    r"""Gradient, at the output head ``W`` (``logits = h W^T``), of ``L = -sum_t c_t log softmax(logits_t)[y_t]``.

    ``dL/dlogits_t = c_t (softmax(logits_t) - onehot(y_t))``, so ``dL/dW = sum_t c_t (p_t - e_{y_t}) h_t^T``.
    With ``c_t`` a token's advantage (times its ResRL weight), ``L`` is the policy-gradient loss at ratio 1 (the
    first step on fresh samples, where clipping is inactive).

    Args:
        final_hidden: ``(N, H)`` the head's inputs at the scored positions.
        logits: ``(N, V)`` the head's outputs at those positions.
        targets: ``(N,)`` the token each position scores.
        coefficients: ``(N,)`` per-token loss coefficients (advantage, times weight).

    Returns:
        ``(V, H)`` float32 gradient.
    """
    probabilities = torch.softmax(logits.float(), dim=-1)
    probabilities[torch.arange(len(targets), device=targets.device), targets] -= 1.0
    probabilities.mul_(coefficients.float()[:, None])
    return probabilities.mT @ final_hidden.float()


@torch.no_grad()
def add_head_gradients(
    totals: Sequence[torch.Tensor],
    final_hidden: torch.Tensor,
    head_weight: torch.Tensor,
    targets: torch.Tensor,
    coefficients: Sequence[torch.Tensor],
    temperature: float = 1.0,
    chunk_size: int = 256,
) -> None:
    """Add :func:`head_gradient` for each ``(N,)`` coefficient map to the matching ``(V, H)`` float32 tensor of
    ``totals``, in place, with the logits ``final_hidden @ head_weight^T / temperature`` formed ``chunk_size`` tokens
    at a time (one softmax serves every map). Memory beyond ``totals``: ``O(chunk_size V)``, whatever the number of
    tokens ``N``, so a group of 4096-token completions fits where its ``(N, V)`` logits would not. The chain rule's
    ``1 / temperature`` factor is left out: a cosine does not see it."""
    weight = head_weight.float()
    for start in range(0, len(targets), chunk_size):
        rows = slice(start, start + chunk_size)
        hidden = final_hidden[rows].float()
        logits = hidden @ weight.mT
        if temperature != 1.0:
            logits /= temperature
        scores = torch.softmax(logits, dim=-1)  # d(-log p_y)/dlogits = p - e_y
        del logits
        scores[torch.arange(len(scores), device=scores.device), targets[rows]] -= 1.0
        for total, coefficient in zip(totals, coefficients, strict=True):
            total.addmm_((scores * coefficient[rows].float()[:, None]).mT, hidden)  # no (V, H) temporary


def head_gradient_in_chunks(
    final_hidden: torch.Tensor,
    head_weight: torch.Tensor,
    targets: torch.Tensor,
    coefficients: torch.Tensor,
    temperature: float = 1.0,
    chunk_size: int = 256,
) -> torch.Tensor:
    """:func:`head_gradient` from the head's weight instead of the logits (see :func:`add_head_gradients`): the same
    ``(V, H)`` float32 gradient up to summation order and the ``1 / temperature`` factor."""
    total = torch.zeros(head_weight.shape, device=head_weight.device, dtype=torch.float32)
    add_head_gradients([total], final_hidden, head_weight, targets, [coefficients], temperature, chunk_size)
    return total


def cosine(a: torch.Tensor, b: torch.Tensor, chunk: int = 2**22) -> float:
    """Cosine similarity of two tensors viewed as flat vectors (NaN if either is zero), accumulated in float64
    ``chunk`` elements at a time: a (V, H) head gradient is never copied whole."""
    a, b = a.flatten(), b.flatten()
    dot = a_norm = b_norm = 0.0
    for start in range(0, a.numel(), chunk):
        x, y = a[start : start + chunk].double(), b[start : start + chunk].double()
        dot, a_norm, b_norm = dot + float(x @ y), a_norm + float(x @ x), b_norm + float(y @ y)
    denominator = (a_norm * b_norm) ** 0.5
    return dot / denominator if denominator > 0 else float("nan")


def _gradient_kernel(
    first: tuple[torch.Tensor, torch.Tensor, torch.Tensor], second: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
) -> torch.Tensor:
    """``K[s, t] = (g_s . g_t)(h_s . h_t)`` for tokens given as ``(final_hidden, probabilities, targets)``, where
    ``g_s = p_s - e_{y_s}`` and ``g_s . g_t = p_s . p_t - p_s[y_t] - p_t[y_s] + [y_s = y_t]``."""
    (h_a, p_a, y_a), (h_b, p_b, y_b) = first, second
    products = p_a @ p_b.mT
    products -= p_a.index_select(1, y_b)  # p_s[y_t]
    products -= p_b.index_select(1, y_a).mT  # p_t[y_s]
    products += (y_a[:, None] == y_b[None, :]).float()
    return products * (h_a.float() @ h_b.float().mT)


def head_gradient_inner(
    first: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    second: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
) -> torch.Tensor:
    """The inner product of two :func:`head_gradient` results, without forming either ``(V, H)`` gradient.

    Each argument is ``(final_hidden (N, H), logits (N, V), targets (N,), coefficients (N,))``.
    ``<G_a, G_b> = sum_{s in a, t in b} c_s c_t (g_s . g_t)(h_s . h_t)`` with ``g_s = softmax(logits_s) - e_{y_s}``:
    memory ``O(N V + N_a N_b)`` instead of ``O(V H)``.
    """
    (h_a, z_a, y_a, c_a), (h_b, z_b, y_b, c_b) = first, second
    kernel = _gradient_kernel((h_a, torch.softmax(z_a.float(), -1), y_a), (h_b, torch.softmax(z_b.float(), -1), y_b))
    return c_a.float() @ kernel @ c_b.float()


@torch.no_grad()
def positive_negative_cosines(
    final_hidden: torch.Tensor,
    logits: torch.Tensor,
    targets: torch.Tensor,
    valid_mask: torch.Tensor,
    is_positive: torch.Tensor,
    *coefficients: torch.Tensor,
) -> list[float]:
    """Cosines between the head gradients of the positive and of the negative completions' tokens, one per map of
    ``(B, T)`` loss coefficients (each token's advantage, times its weight); the other arguments are as in
    :func:`interference`. The token kernels of :func:`head_gradient_inner` depend only on the tokens, so they are
    computed once (one softmax per token) and shared by every coefficient map.
    """
    mask = valid_mask.bool()
    rows_positive = is_positive.bool()[:, None].expand_as(mask)
    positive, negative = mask & rows_positive, mask & ~rows_positive

    def tokens(select: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return final_hidden[select], torch.softmax(logits[select].float(), -1), targets[select]

    pos, neg = tokens(positive), tokens(negative)
    pos_pos, neg_neg, pos_neg = _gradient_kernel(pos, pos), _gradient_kernel(neg, neg), _gradient_kernel(pos, neg)
    cosines = []
    for coefficient in coefficients:
        c_pos, c_neg = coefficient[positive].float(), coefficient[negative].float()
        norms = (c_pos @ pos_pos @ c_pos) * (c_neg @ neg_neg @ c_neg)
        cosines.append(float((c_pos @ pos_neg @ c_neg) / norms.sqrt()) if norms > 0 else float("nan"))
    return cosines


def interference(
    final_hidden: torch.Tensor,
    logits: torch.Tensor,
    targets: torch.Tensor,
    valid_mask: torch.Tensor,
    advantages: torch.Tensor,
    is_positive: torch.Tensor,
    token_weights: torch.Tensor,
) -> tuple[float, float]:
    """Cosine between the positive and the negative completions' head gradients, without and with token weights.

    Args:
        final_hidden: ``(B, T, H)`` head inputs at the positions that score the completion tokens.
        logits: ``(B, T, V)`` head outputs at those positions.
        targets: ``(B, T)`` completion token ids.
        valid_mask: ``(B, T)`` bool, the tokens in the loss.
        advantages: ``(B,)`` sequence advantages.
        is_positive: ``(B,)`` bool.
        token_weights: ``(B, T)`` ResRL's weights (1 where a token is not weighted).

    Returns:
        ``(plain, weighted)``: the cosine of ``dL_pos/dW`` with ``dL_neg/dW``, where the negatives' coefficients are
        their advantages, then their advantages times ``token_weights``. A negative cosine means the two parts of the
        update pull the head in opposing directions; positives' scaling (``pos_weight``) does not change a cosine.
    """
    coefficient = advantages.float()[:, None].expand_as(targets)
    plain, weighted = positive_negative_cosines(
        final_hidden, logits, targets, valid_mask, is_positive, coefficient, coefficient * token_weights.float()
    )
    return plain, weighted


# --- Where a failed completion departs from the successful ones. ---


def divergence_positions(
    completion_ids: torch.Tensor, valid_mask: torch.Tensor, group_ids: torch.Tensor, is_positive: torch.Tensor
) -> torch.Tensor:
    """Each negative completion's divergence token: the first position at which it leaves every positive
    completion's prefix in its group (the length of its longest common prefix with any positive).

    ResRL reads token ``t``'s weight from the state before it (``resrl_weight_position="previous"``), which has read
    only the tokens before ``t``. Up to and including the divergence token, that state is one a positive completion
    also has (same prompt, same prefix), so it lies in the positives' subspace.

    Args:
        completion_ids: ``(B, T)`` token ids.
        valid_mask: ``(B, T)`` bool; each row's valid tokens form a prefix (the completion mask).
        group_ids: ``(B,)`` prompt group of each row.
        is_positive: ``(B,)`` bool.

    Returns:
        ``(B,)`` long: the divergence position of each negative row; -1 for positive rows, for rows of groups with no
        positive, and for a negative whose valid tokens are all a prefix of some positive's.
    """
    valid = valid_mask.bool()
    positive = is_positive.bool()
    out = torch.full((len(group_ids),), -1, dtype=torch.long, device=completion_ids.device)
    for group in group_ids.unique().tolist():
        in_group = group_ids == group
        pos, neg = (in_group & positive).nonzero().flatten(), (in_group & ~positive).nonzero().flatten()
        if len(pos) == 0 or len(neg) == 0:
            continue
        same = completion_ids[neg][:, None, :] == completion_ids[pos][None, :, :]
        same &= valid[neg][:, None, :] & valid[pos][None, :, :]
        longest = same.long().cumprod(-1).sum(-1).amax(1)  # (negatives,) longest shared prefix with a positive
        out[neg] = torch.where(longest < valid[neg].sum(1), longest, -1)
    return out


class HeadGradients:
    """Running sums, over the groups of one step, of the head gradients (:func:`head_gradient_in_chunks`) of the
    positive completions' tokens and of the negative completions' tokens without and with ResRL's token weights:
    three ``(V, H)`` float32 tensors, whatever the number or length of the completions. :meth:`cosines` then gives
    what :func:`interference` gives for all the groups at once."""

    def __init__(self, head_weight: torch.Tensor, temperature: float = 1.0, chunk_size: int = 256) -> None:
        self.head_weight, self.temperature, self.chunk_size = head_weight, temperature, chunk_size
        self.positive, self.negative, self.negative_weighted = (
            torch.zeros(head_weight.shape, device=head_weight.device, dtype=torch.float32) for _ in range(3)
        )

    def add(
        self,
        final_hidden: torch.Tensor,
        targets: torch.Tensor,
        valid_mask: torch.Tensor,
        advantages: torch.Tensor,
        is_positive: torch.Tensor,
        token_weights: torch.Tensor,
    ) -> None:
        """Add a batch's tokens; the arguments are those of :func:`interference`, without logits."""
        mask, rows_positive = valid_mask.bool(), is_positive.bool()[:, None].expand_as(valid_mask)
        coefficient = advantages.float()[:, None].expand_as(targets)
        positive, negative = mask & rows_positive, mask & ~rows_positive
        settings = (self.head_weight, self.temperature, self.chunk_size)
        add_head_gradients(
            [self.positive], final_hidden[positive], settings[0], targets[positive], [coefficient[positive]],
            *settings[1:],
        )  # fmt: skip
        plain = coefficient[negative]
        add_head_gradients(
            [self.negative, self.negative_weighted], final_hidden[negative], settings[0], targets[negative],
            [plain, plain * token_weights[negative].float()], *settings[1:],
        )  # fmt: skip

    def cosines(self) -> tuple[float, float]:
        """``(plain, weighted)``: the cosine of the positives' gradient with the negatives', without and with token
        weights (NaN where a side has no tokens)."""
        return cosine(self.positive, self.negative), cosine(self.positive, self.negative_weighted)


# --- Group scope: which negatives get token weights when micro-batches hold partial groups. ---


def balanced_partitions(lengths: Sequence[int], num_parts: int) -> list[list[int]]:
    """Split items into ``num_parts`` parts of equal count with nearly equal sums of ``lengths``.

    The largest-differencing (Karmarkar-Karp) heuristic with equal part sizes, as verl's ``balance_batch`` applies it
    to sequence lengths before each update: items sorted by length are dealt ``num_parts`` at a time into partial
    solutions (one item per part), and the two partial solutions with the largest spread are repeatedly merged,
    the heaviest part of one with the lightest of the other. Each returned part lists item indices in increasing
    order (the order the rows then keep on their GPU). Ties between equal lengths or spreads may be broken
    differently from verl's code, which changes which rows share a part but not the balance.
    """

    if len(lengths) % num_parts:
        raise ValueError(f"{len(lengths)} items do not split into {num_parts} parts of equal size")
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    heap: list[tuple[int, int, list[tuple[int, list[int]]]]] = []
    for tie, start in enumerate(range(0, len(order), num_parts)):
        parts = [(lengths[i], [i]) for i in order[start : start + num_parts]]
        spread = max(s for s, _ in parts) - min(s for s, _ in parts)
        heapq.heappush(heap, (-spread, tie, parts))
    tie = len(heap)
    while len(heap) > 1:
        _, _, first = heapq.heappop(heap)
        _, _, second = heapq.heappop(heap)
        first = sorted(first, key=lambda part: -part[0])
        second = sorted(second, key=lambda part: part[0])
        merged = [(a[0] + b[0], a[1] + b[1]) for a, b in zip(first, second, strict=True)]
        spread = max(s for s, _ in merged) - min(s for s, _ in merged)
        heapq.heappush(heap, (-spread, tie, merged))
        tie += 1
    return [sorted(items) for _, items in heap[0][2]]


def weighted_negative_share(
    group_ids: Sequence[int], is_positive: Sequence[bool], micro_batches: Sequence[Sequence[int]]
) -> float:
    """Share of the negatives of mixed groups that get token weights when each micro-batch groups its own rows.

    A negative gets weights when its micro-batch also holds a positive of its group (the reference groups rows by
    prompt id inside each micro-batch). Mixed groups are counted over the whole batch. NaN without such negatives.
    """
    positives_of: dict[int, int] = {}
    for group, positive in zip(group_ids, is_positive, strict=True):
        positives_of[group] = positives_of.get(group, 0) + int(positive)
    eligible = weighted = 0
    for rows in micro_batches:
        present = {group_ids[r] for r in rows if is_positive[r]}
        for r in rows:
            if not is_positive[r] and positives_of[group_ids[r]] > 0:
                eligible += 1
                weighted += group_ids[r] in present
    return weighted / eligible if eligible else float("nan")


RANKS = (8, 16, 32, 64, 128)
"""The ranks the analysis compares (the paper's 64 among them)."""


def analyse_group(groups: Any, sums: HeadGradients, settings: SubspaceSettings, seed: int) -> dict | None:
    """One group's rank, weight-correlation and held-out numbers (None unless it gets token weights); adds its
    head gradients to ``sums``. Holds one group's states and three (V, H) gradient sums, nothing more."""
    is_positive = groups.rewards > 0
    hidden, mask, group_ids = groups.hidden, groups.completion_mask, groups.group_ids
    weights = {
        rank: compute_residual_weights(
            hidden, mask, group_ids, is_positive, replace(settings, rank=rank), group_seed=seed
        ).weights
        for rank in RANKS
    }
    advantages = group_normalised_advantages(groups.rewards.nan_to_num(0.0), group_ids)
    sums.add(groups.final_hidden, groups.completion_ids, mask, advantages, is_positive, weights[64])
    kept = subspace_positive_states(hidden, mask, group_ids, is_positive, settings, group_seed=seed)
    if not kept:
        return None
    (positive_hidden,) = kept.values()  # the positive tokens training builds the subspace from (subsampled)
    held = heldout_energies(hidden, mask, group_ids, is_positive, settings, group_seed=seed)
    weighted = mask & ~is_positive[:, None]
    return {
        "positive_tokens": int((mask & is_positive[:, None]).sum()),
        "subspace_tokens": int(positive_hidden.shape[0]),
        "negative_tokens": int(weighted.sum()),
        "variance_share": variance_share_by_rank(positive_hidden, RANKS).tolist(),
        "weight_correlation_with_rank_64": [weight_correlation(weights[r], weights[64], weighted) for r in RANKS],
        "heldout_positive_energy": held.positive.tolist(),
        "negative_energy": held.negative.tolist(),
        "separation": held.separation,
    }
