"""The rollout-time split of ResRL's weights: subspaces built from groups spread over processes, negatives projected
in any micro-batch. Processes are simulated by threads that add their tensors up, as an all-reduce does."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from resrl_trl.residual import (
    Collective,
    SubspaceSettings,
    build_group_subspaces,
    compute_residual_weights,
    project_onto_group_subspaces,
)


class ThreadAllReduce:
    """An all-reduce (sum) between ``num_processes`` threads, adding the parts in process order on every thread."""

    def __init__(self, num_processes: int) -> None:
        self.num_processes = num_processes
        self.parts: list[torch.Tensor | None] = [None] * num_processes
        self.barrier = threading.Barrier(num_processes)
        self.calls = [0] * num_processes

    def collective(self, process_index: int) -> Collective:
        def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
            self.calls[process_index] += 1
            self.parts[process_index] = tensor.clone()
            self.barrier.wait()
            total = sum(self.parts[1:], self.parts[0].clone())
            self.barrier.wait()  # nobody overwrites a part before all have read them
            return total

        return Collective(all_reduce_sum, process_index, self.num_processes)


def rollout_batch(seed=0, groups=4, group_size=6, length=20, width=24):
    """Full-rank hidden states, ragged valid masks, and groups of every kind (mixed, all +, all -)."""
    g = torch.Generator().manual_seed(seed)
    batch = groups * group_size
    hidden = torch.randn(batch, length, width, generator=g) * torch.logspace(0, -1.5, width) + 0.3
    lengths = torch.randint(3, length + 1, (batch,), generator=g)
    valid = torch.arange(length)[None, :] < lengths[:, None]
    group_ids = torch.arange(groups).repeat_interleave(group_size)
    is_positive = torch.rand(batch, generator=g) < 0.5
    is_positive[:group_size] = True  # group 0 all positive
    is_positive[group_size : 2 * group_size] = False  # group 1 all negative
    is_positive[2 * group_size : 2 * group_size + 2] = torch.tensor([True, False])  # group 2 mixed
    is_positive[3 * group_size : 3 * group_size + 2] = torch.tensor([True, False])  # group 3 mixed
    return hidden, valid, group_ids, is_positive


SETTINGS = [SubspaceSettings(rank=4), SubspaceSettings(rank=4, max_pos_tokens=15), SubspaceSettings(rank=64)]


@pytest.mark.parametrize("settings", SETTINGS)
def test_rollout_split_equals_in_step_weights(settings):
    """With the hidden states of the same policy (one optimisation step per generation), building the subspaces at
    rollout time and projecting in the step gives the in-step weights, from the same random stream."""
    hidden, valid, group_ids, is_positive = rollout_batch()
    in_step = compute_residual_weights(
        hidden, valid, group_ids, is_positive, settings, generator=torch.Generator().manual_seed(3)
    )
    subspaces, stats = build_group_subspaces(
        hidden, valid, group_ids, is_positive, settings, num_groups=4, generator=torch.Generator().manual_seed(3)
    )
    assert subspaces.group_ids.tolist() == [2, 3]
    projected = project_onto_group_subspaces(hidden, valid, group_ids, is_positive, subspaces)
    torch.testing.assert_close(projected.weights, in_step.weights, atol=1e-5, rtol=0)
    assert (in_step.weights < 1).any()
    assert stats.mixed_groups == in_step.stats.mixed_groups == 2
    assert projected.stats.weighted_tokens == in_step.stats.weighted_tokens


def test_any_micro_batch_gets_the_weights_of_the_whole_batch():
    """A micro-batch holding part of a group (here: rows in a random order, 5 at a time) weights its negatives with
    the group's subspace and quantiles, as if the whole group were present."""
    hidden, valid, group_ids, is_positive = rollout_batch(seed=1)
    subspaces, _ = build_group_subspaces(
        hidden,
        valid,
        group_ids,
        is_positive,
        SubspaceSettings(rank=4),
        num_groups=4,
        generator=torch.Generator().manual_seed(0),
    )
    whole = project_onto_group_subspaces(hidden, valid, group_ids, is_positive, subspaces).weights
    order = torch.randperm(len(group_ids), generator=torch.Generator().manual_seed(5))
    for rows in order.split(5):
        part = project_onto_group_subspaces(hidden[rows], valid[rows], group_ids[rows], is_positive[rows], subspaces)
        torch.testing.assert_close(part.weights, whole[rows], atol=1e-6, rtol=0)


@pytest.mark.parametrize("cuts", [[14], [8, 16], [3, 9, 15, 20]])
@pytest.mark.parametrize("settings", SETTINGS)
def test_groups_spread_over_processes_give_the_one_process_result(cuts, settings):
    """Contiguous slices of the rollout on each process, cut inside the mixed groups (as TRL deals rows out when a
    process holds fewer rows than a group): the subspaces, quantiles and weights equal one process's."""
    hidden, valid, group_ids, is_positive = rollout_batch(seed=2)
    reference, reference_stats = build_group_subspaces(
        hidden, valid, group_ids, is_positive, settings, num_groups=4, generator=torch.Generator().manual_seed(7)
    )
    reference_weights = project_onto_group_subspaces(hidden, valid, group_ids, is_positive, reference).weights
    slices = torch.arange(len(group_ids)).tensor_split(cuts)
    num_processes = len(slices)
    reduce = ThreadAllReduce(num_processes)

    def process(index: int):
        rows = slices[index]
        subspaces, stats = build_group_subspaces(
            hidden[rows],
            valid[rows],
            group_ids[rows],
            is_positive[rows],
            settings,
            num_groups=4,
            generator=torch.Generator().manual_seed(7),
            collective=reduce.collective(index),
        )
        weights = project_onto_group_subspaces(
            hidden[rows], valid[rows], group_ids[rows], is_positive[rows], subspaces
        )
        return subspaces, stats, weights.weights

    with ThreadPoolExecutor(num_processes) as pool:
        results = list(pool.map(process, range(num_processes)))
    assert len(set(reduce.calls)) == 1  # every process made the same collective calls
    for subspaces, stats, _ in results:
        assert subspaces.group_ids.tolist() == reference.group_ids.tolist()
        torch.testing.assert_close(subspaces.mean, reference.mean, atol=1e-5, rtol=0)
        # The bases agree as subspaces (columns may differ in sign): compare the projectors.
        torch.testing.assert_close(
            subspaces.basis @ subspaces.basis.mT, reference.basis @ reference.basis.mT, atol=1e-4, rtol=0
        )
        torch.testing.assert_close(subspaces.low, reference.low, atol=1e-5, rtol=0)
        torch.testing.assert_close(subspaces.high, reference.high, atol=1e-5, rtol=0)
        assert stats.mixed_groups == reference_stats.mixed_groups
        assert stats.positives == reference_stats.positives
    weights = torch.cat([w for _, _, w in results])
    torch.testing.assert_close(weights, reference_weights, atol=1e-4, rtol=0)


def test_no_mixed_group_gives_no_subspaces_and_unit_weights():
    hidden, valid, group_ids, _ = rollout_batch()
    all_negative = torch.zeros(len(group_ids), dtype=torch.bool)
    subspaces, stats = build_group_subspaces(hidden, valid, group_ids, all_negative, num_groups=4)
    assert len(subspaces.group_ids) == 0 and stats.mixed_groups == 0
    result = project_onto_group_subspaces(hidden, valid, group_ids, all_negative, subspaces)
    assert torch.equal(result.weights, torch.ones_like(result.weights))


@pytest.mark.parametrize("settings", SETTINGS)
def test_group_seed_makes_each_group_independent_of_the_batch(settings):
    """With per-group streams a group's weights are the same alone or among other groups (its rows in the same
    order: subsampling keys follow the rows)."""
    hidden, valid, group_ids, is_positive = rollout_batch(seed=4)
    together = compute_residual_weights(hidden, valid, group_ids, is_positive, settings, group_seed=11).weights
    for group in (2, 3):
        rows = (group_ids == group).nonzero().flatten()
        alone = compute_residual_weights(
            hidden[rows], valid[rows], group_ids[rows], is_positive[rows], settings, group_seed=11
        ).weights
        torch.testing.assert_close(alone, together[rows], atol=1e-5, rtol=0)
    other_seed = compute_residual_weights(hidden, valid, group_ids, is_positive, settings, group_seed=12).weights
    if settings.rank == 4:  # a truncated randomised PCA depends on its random start
        assert not torch.allclose(other_seed, together, atol=1e-4)


def test_projection_leaves_non_finite_tokens_at_one():
    hidden, valid, group_ids, is_positive = rollout_batch()
    subspaces, _ = build_group_subspaces(
        hidden, valid, group_ids, is_positive, SubspaceSettings(rank=4), num_groups=4, group_seed=0
    )
    clean = project_onto_group_subspaces(hidden, valid, group_ids, is_positive, subspaces)
    negative_row = int(((group_ids == 2) & ~is_positive).nonzero()[0])
    hidden = hidden.clone()
    hidden[negative_row, 0] = float("nan")
    faulty = project_onto_group_subspaces(hidden, valid, group_ids, is_positive, subspaces)
    assert torch.isfinite(faulty.weights).all() and faulty.weights[negative_row, 0] == 1
    others = torch.ones_like(valid)
    others[negative_row, 0] = False
    assert torch.equal(faulty.weights[others], clean.weights[others])
    assert all(torch.isfinite(value) for value in faulty.stats)
