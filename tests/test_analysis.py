"""The analysis measurements (resrl_trl.analysis) against independent computations."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from resrl_trl.analysis import (
    HeadGradients,
    add_head_gradients,
    balanced_partitions,
    cosine,
    divergence_positions,
    head_gradient,
    head_gradient_in_chunks,
    head_gradient_inner,
    heldout_energies,
    interference,
    variance_share_by_rank,
    weight_correlation,
    weighted_negative_share,
)
from resrl_trl.residual import (
    SubspaceSettings,
    build_group_subspaces,
    compute_residual_weights,
    subspace_positive_states,
    token_energies,
)


def rows_in_subspace(count: int, width: int, rank: int, generator: torch.Generator) -> torch.Tensor:
    """Rows spanning a ``rank``-dimensional subspace orthogonal to the all-ones vector, so that layer norm (which
    subtracts each row's mean and rescales it) keeps every row inside it."""
    basis = torch.linalg.qr(torch.randn(width, rank + 1, generator=generator)).Q
    ones = torch.ones(width, 1) / math.sqrt(width)
    basis = basis - ones @ (ones.T @ basis)
    basis = torch.linalg.qr(basis).Q[:, :rank]
    return torch.randn(count, rank, generator=generator) @ basis.T


def test_variance_share_matches_the_eigenvalues_of_the_covariance() -> None:
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(40, 16, generator=generator) * torch.linspace(3, 0.1, 16)
    shares = variance_share_by_rank(hidden, [1, 4, 8, 64])
    x = F.layer_norm(hidden.double(), (16,), eps=1e-5)
    centred = x - x.mean(0)
    eigenvalues = torch.linalg.eigvalsh(centred.T @ centred).flip(0)
    expected = [float(eigenvalues[:k].sum() / eigenvalues.sum()) for k in (1, 4, 8, 16)]
    torch.testing.assert_close(shares.double(), torch.tensor(expected, dtype=torch.double), rtol=1e-5, atol=1e-5)
    assert float(shares[-1]) == 1.0 or abs(float(shares[-1]) - 1.0) < 1e-6  # rank clamped to the width


def test_variance_share_is_complete_at_the_data_rank() -> None:
    generator = torch.Generator().manual_seed(1)
    hidden = rows_in_subspace(50, 32, 3, generator)
    shares = variance_share_by_rank(hidden, [1, 2, 3, 8])
    assert float(shares[1]) < 0.999
    assert abs(float(shares[2]) - 1.0) < 1e-4 and abs(float(shares[3]) - 1.0) < 1e-4
    assert bool((shares[1:] >= shares[:-1] - 1e-6).all())


def test_weight_correlation() -> None:
    weights = torch.tensor([[0.1, 0.5, 1.0, 0.3], [1.0, 1.0, 1.0, 1.0]])
    mask = torch.tensor([[True, True, True, True], [False, False, False, False]])
    assert abs(weight_correlation(weights, weights, mask) - 1.0) < 1e-12
    assert abs(weight_correlation(weights, 1.1 - weights, mask) + 1.0) < 1e-12
    other = torch.tensor([[0.2, 0.1, 0.9, 0.4], [0.0, 0.0, 0.0, 0.0]])
    flat = weights[mask].double()
    expected = float(torch.corrcoef(torch.stack([flat, other[mask].double()]))[0, 1])
    assert abs(weight_correlation(weights, other, mask) - expected) < 1e-12
    assert math.isnan(weight_correlation(weights, weights, torch.zeros_like(mask)))


def test_heldout_positives_sit_inside_the_subspace_and_negatives_outside() -> None:
    generator = torch.Generator().manual_seed(2)
    width, length = 32, 12
    # group 0: three positives in a 4-dim subspace, two negatives anywhere; group 1 has one positive (no hold-out)
    pos = rows_in_subspace(3 * length, width, 4, generator).reshape(3, length, width)
    neg = torch.randn(2, length, width, generator=generator) * 2
    lone = torch.randn(3, length, width, generator=generator)
    hidden = torch.cat([pos, neg, lone])
    group_ids = torch.tensor([0, 0, 0, 0, 0, 1, 1, 1])
    is_positive = torch.tensor([True, True, True, False, False, True, False, False])
    valid = torch.ones(8, length, dtype=torch.bool)
    result = heldout_energies(hidden, valid, group_ids, is_positive, SubspaceSettings(rank=8), group_seed=3)
    assert result.positive.numel() == length  # only row 0 is held out
    assert result.negative.numel() == 2 * length  # only group 0's negatives
    assert float(result.positive.max()) < 1e-3 < float(result.negative.min())
    assert result.separation == 1.0

    # The same energies from a subspace built by hand without the held-out row.
    build_mask = valid.clone()
    build_mask[0] = False
    subspaces, _ = build_group_subspaces(
        hidden, build_mask, group_ids, is_positive, SubspaceSettings(rank=8), num_groups=2, group_seed=3
    )
    energy, _, _ = token_energies(hidden, group_ids, subspaces)
    torch.testing.assert_close(result.positive, energy[0])
    torch.testing.assert_close(result.negative, energy[3:5].flatten())


def test_head_gradient_equals_autograd() -> None:
    generator = torch.Generator().manual_seed(4)
    hidden = torch.randn(7, 5, generator=generator)
    head = torch.randn(11, 5, generator=generator, requires_grad=True)
    targets = torch.randint(0, 11, (7,), generator=generator)
    coefficients = torch.randn(7, generator=generator)
    logits = hidden @ head.T
    loss = -(coefficients * torch.log_softmax(logits, -1)[torch.arange(7), targets]).sum()
    loss.backward()
    torch.testing.assert_close(head_gradient(hidden, logits.detach(), targets, coefficients), head.grad)


def test_interference_is_the_cosine_of_the_autograd_gradients() -> None:
    generator = torch.Generator().manual_seed(5)
    batch, length, width, vocab = 4, 3, 6, 9
    hidden = torch.randn(batch, length, width, generator=generator)
    head = torch.randn(vocab, width, generator=generator)
    logits = hidden @ head.T
    targets = torch.randint(0, vocab, (batch, length), generator=generator)
    valid = torch.ones(batch, length, dtype=torch.bool)
    valid[3, 2] = False
    advantages = torch.tensor([0.8, 0.8, -0.5, -0.5])
    is_positive = advantages > 0
    weights = torch.ones(batch, length)
    weights[2:] = torch.rand(2, length, generator=generator) * 0.9 + 0.1

    def autograd_gradient(rows: list[int], scale: torch.Tensor) -> torch.Tensor:
        parameter = head.clone().requires_grad_(True)
        scores = torch.log_softmax(hidden[rows] @ parameter.T, -1).gather(-1, targets[rows][..., None])[..., 0]
        (-(advantages[rows, None] * scale[rows] * scores * valid[rows])).sum().backward()
        return parameter.grad

    positive = autograd_gradient([0, 1], torch.ones(batch, length))
    plain, weighted = interference(hidden, logits, targets, valid, advantages, is_positive, weights)
    assert abs(plain - cosine(positive, autograd_gradient([2, 3], torch.ones(batch, length)))) < 1e-5
    assert abs(weighted - cosine(positive, autograd_gradient([2, 3], weights))) < 1e-5
    same, same_weighted = interference(
        hidden, logits, targets, valid, advantages, is_positive, torch.ones_like(weights)
    )
    assert same == same_weighted


def test_balanced_partitions_have_equal_counts_and_close_sums() -> None:
    import random

    rng = random.Random(0)
    lengths = [rng.randint(100, 4000) for _ in range(64)]
    parts = balanced_partitions(lengths, 8)
    assert sorted(i for part in parts for i in part) == list(range(64))
    assert all(len(part) == 8 and part == sorted(part) for part in parts)
    sums = [sum(lengths[i] for i in part) for part in parts]
    contiguous = [sum(lengths[i * 8 : (i + 1) * 8]) for i in range(8)]
    assert max(sums) - min(sums) < (max(contiguous) - min(contiguous)) / 5
    assert balanced_partitions([5, 1, 3, 2], 1) == [[0, 1, 2, 3]]
    with pytest.raises(ValueError, match="equal size"):
        balanced_partitions([1, 2, 3], 2)


def test_weighted_negative_share_counts_negatives_beside_a_positive_of_their_group() -> None:
    group_ids = [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2]
    is_positive = [True, False, False, False, True, True, False, False, False, False, False, False]
    whole = [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]
    assert weighted_negative_share(group_ids, is_positive, whole) == 1.0  # group 2 has no positive: not counted
    split = [[0, 1, 4, 6], [2, 3, 5, 7], [8, 9, 10, 11]]
    # negatives of mixed groups: rows 1, 2, 3, 6, 7; beside a positive of their group: 1 (row 0), 6 (row 4), 7 (row 5)
    assert weighted_negative_share(group_ids, is_positive, split) == 3 / 5


def test_head_gradient_inner_product_without_the_gradients() -> None:
    generator = torch.Generator().manual_seed(6)

    def part(count: int) -> tuple[torch.Tensor, ...]:
        return (
            torch.randn(count, 5, generator=generator),
            torch.randn(count, 11, generator=generator),
            torch.randint(0, 11, (count,), generator=generator),
            torch.randn(count, generator=generator),
        )

    first, second = part(6), part(4)
    expected = (head_gradient(*first).double() * head_gradient(*second).double()).sum()
    torch.testing.assert_close(head_gradient_inner(first, second).double(), expected, rtol=1e-5, atol=1e-6)


def test_divergence_position_is_the_longest_prefix_shared_with_a_positive() -> None:
    ids = torch.tensor(
        [
            [5, 6, 7, 8, 0],  # group 0, positive
            [5, 6, 9, 9, 0],  # leaves the positive at position 2
            [4, 6, 7, 8, 0],  # leaves it at once
            [5, 6, 7, 0, 0],  # a prefix of the positive (shorter, valid tokens only): no divergence
            [5, 6, 7, 8, 1],  # group 1, positive
            [5, 6, 7, 3, 1],  # group 1: diverges at 3 from row 4 (row 6 shares only 2 tokens)
            [5, 6, 2, 8, 1],  # group 1, positive
            [1, 1, 1, 1, 1],  # group 2: no positive
        ]
    )
    valid = torch.ones_like(ids, dtype=torch.bool)
    valid[:4, 4] = False
    valid[3, 3] = False
    group_ids = torch.tensor([0, 0, 0, 0, 1, 1, 1, 2])
    is_positive = torch.tensor([True, False, False, False, True, False, True, False])
    found = divergence_positions(ids, valid, group_ids, is_positive)
    assert found.tolist() == [-1, 2, 0, -1, -1, 3, -1, -1]


def test_divergence_token_is_read_from_a_state_a_positive_shares() -> None:
    """With the reference's reading, the state that scores a negative's divergence token is a positive's state: a
    causal model that has read the same prefix. Simulated: each state is a function of the prefix before it."""
    generator = torch.Generator().manual_seed(0)
    table = torch.randn(50, 16, generator=generator)
    ids = torch.randint(10, 50, (8, 12), generator=generator)
    ids[1::2, :5] = ids[0, :5]  # every negative shares 5 tokens with positive 0, then departs
    ids[1::2, 5] = (ids[0, 5] + 1 - 10) % 40 + 10
    # state before token t: a running sum of the embeddings of tokens 0..t-1 (a "prompt" state at t = 0)
    states = torch.cat([torch.zeros(8, 1, 16), torch.cumsum(table[ids], 1)[:, :-1]], 1)
    valid = torch.ones_like(ids, dtype=torch.bool)
    group_ids, is_positive = torch.zeros(8, dtype=torch.long), torch.arange(8) % 2 == 0
    divergence = divergence_positions(ids, valid, group_ids, is_positive)
    assert set(divergence[1::2].tolist()) == {5}
    torch.testing.assert_close(states[1, 5], states[0, 5])  # the divergence token's state is positive 0's
    weights = compute_residual_weights(states, valid, group_ids, is_positive, SubspaceSettings(rank=4), group_seed=0)
    assert bool((weights.weights[1::2, 5] < weights.weights[1::2, 6:].mean()).all())


def test_head_gradient_in_chunks_equals_the_whole_gradient() -> None:
    generator = torch.Generator().manual_seed(0)
    hidden, weight = torch.randn(37, 8, generator=generator), torch.randn(20, 8, generator=generator)
    targets, coefficients = torch.randint(0, 20, (37,), generator=generator), torch.randn(37, generator=generator)
    whole = head_gradient(hidden, hidden @ weight.T / 0.7, targets, coefficients)
    chunked = head_gradient_in_chunks(hidden, weight, targets, coefficients, temperature=0.7, chunk_size=5)
    torch.testing.assert_close(chunked, whole, atol=1e-5, rtol=1e-5)
    totals = [torch.ones(20, 8), torch.zeros(20, 8)]
    add_head_gradients(totals, hidden, weight, targets, [coefficients, -2 * coefficients], 0.7, chunk_size=8)
    torch.testing.assert_close(totals[0], 1 + whole, atol=1e-5, rtol=1e-5)  # added in place, one softmax for both
    torch.testing.assert_close(totals[1], -2 * whole, atol=1e-5, rtol=1e-5)


def test_subspace_positive_states_are_the_rows_training_builds_from() -> None:
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(8, 30, 16, generator=generator)
    valid = torch.ones(8, 30, dtype=torch.bool)
    group_ids, is_positive = torch.arange(8) // 4, torch.tensor([True, True, False, False, True, False, True, False])
    settings = SubspaceSettings(rank=4, max_pos_tokens=40)  # group 0 has 60 positive tokens, group 1 60
    kept = subspace_positive_states(hidden, valid, group_ids, is_positive, settings, num_groups=2, group_seed=3)
    subspaces, _ = build_group_subspaces(hidden, valid, group_ids, is_positive, settings, num_groups=2, group_seed=3)
    assert sorted(kept) == [0, 1] and all(rows.shape == (40, 16) for rows in kept.values())
    for index, group in enumerate(subspaces.group_ids.tolist()):
        normed = F.layer_norm(kept[group], (16,), eps=1e-5)
        torch.testing.assert_close(normed.mean(0), subspaces.mean[index], atol=1e-5, rtol=1e-5)
    everything = subspace_positive_states(hidden, valid, group_ids, is_positive, SubspaceSettings(), group_seed=3)
    torch.testing.assert_close(everything[0], hidden[:2].reshape(60, 16))


def test_head_gradients_summed_group_by_group_give_the_interference_of_the_batch() -> None:
    generator = torch.Generator().manual_seed(1)
    final_hidden, weight = torch.randn(8, 6, 5, generator=generator), torch.randn(11, 5, generator=generator)
    targets = torch.randint(0, 11, (8, 6), generator=generator)
    valid = torch.ones(8, 6, dtype=torch.bool)
    valid[3, 4:] = False
    advantages = torch.randn(8, generator=generator)
    is_positive = torch.tensor([True, False, False, True, False, True, False, False])
    token_weights = torch.rand(8, 6, generator=generator)
    token_weights[is_positive] = 1.0  # as in ResRL's weights: only negative tokens are weighted
    expected = interference(
        final_hidden, final_hidden @ weight.T / 0.8, targets, valid, advantages, is_positive, token_weights
    )
    sums = HeadGradients(weight, temperature=0.8, chunk_size=4)
    for rows in (slice(0, 4), slice(4, 8)):  # two groups, added one at a time
        sums.add(final_hidden[rows], targets[rows], valid[rows], advantages[rows], is_positive[rows],
                 token_weights[rows])  # fmt: skip
    assert sums.cosines() == pytest.approx(expected, abs=1e-5)
