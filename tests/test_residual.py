"""The ResRL weights against a direct, per-group, exact-SVD rendering of the spec."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from resrl_trl.residual import (
    SubspaceSettings,
    build_group_subspaces,
    completion_states,
    compute_residual_weights,
    project_onto_group_subspaces,
    token_energies,
)


def spec_weights(
    hidden, valid, group_ids, is_positive, rank=64, q_low=0.2, q_high=0.8, min_weight=0.1, pca_lowrank=False
):
    """Steps 1-8 of the spec, one group at a time, with torch.quantile (no subsampling) and an exact SVD, or with
    ``torch.pca_lowrank(Xc, q=k, niter=4)`` as the reference code does."""
    weights = torch.ones(valid.shape, dtype=torch.float32)
    width = hidden.shape[-1]
    for g in group_ids.unique():
        in_group = group_ids == g
        pos_rows = (in_group & is_positive).nonzero().flatten()
        neg_rows = (in_group & ~is_positive).nonzero().flatten()
        if len(pos_rows) == 0 or len(neg_rows) == 0:
            continue
        p = torch.cat([hidden[i][valid[i]] for i in pos_rows]).double()
        if p.shape[0] < 4:
            continue
        x = F.layer_norm(p, (width,), eps=1e-5)
        mu = x.mean(0)
        k = min(rank, p.shape[0] - 1, width)
        if pca_lowrank:
            v = torch.pca_lowrank((x - mu).float(), q=k, niter=4)[2].double()
        else:
            v = torch.linalg.svd(x - mu, full_matrices=False).Vh[:k].T
        energies = {}
        for i in neg_rows:
            z = F.layer_norm(hidden[i][valid[i]].double(), (width,), eps=1e-5) - mu
            energies[int(i)] = ((z - z @ v @ v.T) ** 2).sum(-1) / width
        if not energies:
            continue
        all_e = torch.cat(list(energies.values()))
        lo, hi = torch.quantile(all_e, q_low), torch.quantile(all_e, q_high)
        for i, e in energies.items():
            if hi - lo < 1e-5:
                w = torch.full_like(e, (min_weight + 1) / 2)
            else:
                w = min_weight + (1 - min_weight) * torch.clamp((e - lo) / max(hi - lo, 1e-6), 0, 1)
            weights[i, valid[i]] = w.float()
    return weights


def exact_low_rank_positives(seed=0, groups=3, per_group=4, length=12, width=32, true_rank=3):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.empty(groups * per_group, length, width)
    is_positive = torch.tensor([True, True, False, False] * groups)
    for gi in range(groups):
        basis = torch.randn(true_rank, width, generator=g)
        offset = torch.randn(width, generator=g)
        for r in range(gi * per_group, (gi + 1) * per_group):
            on = torch.randn(length, true_rank, generator=g) @ basis + offset
            if is_positive[r]:
                hidden[r] = on
            else:
                hidden[r] = on + torch.rand(length, 1, generator=g) * torch.randn(length, width, generator=g)
    valid = torch.rand(groups * per_group, length, generator=g) > 0.2
    valid[:, :2] = True
    group_ids = torch.arange(groups).repeat_interleave(per_group) * 7 + 3
    return hidden, valid, group_ids, is_positive


def test_matches_exact_spec_on_low_rank_data():
    hidden, valid, group_ids, is_positive = exact_low_rank_positives()
    # Positives lie on a 3-dim affine subspace: after layer norm and centring they span 4 dimensions, so with
    # rank 4 the subspace is well defined and the randomised PCA must find it exactly.
    gen = torch.Generator().manual_seed(0)
    got = compute_residual_weights(
        hidden, valid, group_ids, is_positive, SubspaceSettings(rank=4), generator=gen
    ).weights
    want = spec_weights(hidden, valid, group_ids, is_positive, rank=4)
    assert got.dtype == torch.float32 and got.shape == valid.shape
    torch.testing.assert_close(got, want, atol=2e-4, rtol=0)
    negatives = valid & ~is_positive[:, None]
    assert (got[negatives] >= 0.1 - 1e-6).all() and (got[negatives] <= 1 + 1e-6).all()
    assert (got[~negatives] == 1).all()
    # the weights really vary: some tokens near 0.1, some at 1
    assert got[negatives].min() < 0.11 and got[negatives].max() == 1.0


def test_default_rank_clamps_to_positive_count_and_width():
    hidden, valid, group_ids, is_positive = exact_low_rank_positives(width=16, length=6, true_rank=12)
    valid[is_positive] = False
    valid[is_positive, :3] = True  # |P| = 6 per group: k = min(64, |P| - 1, H) = 5, the whole centred span
    got = compute_residual_weights(
        hidden, valid, group_ids, is_positive, generator=torch.Generator().manual_seed(1)
    ).weights
    want = spec_weights(hidden, valid, group_ids, is_positive)
    torch.testing.assert_close(got, want, atol=2e-4, rtol=0)


def test_rank_clamped_to_hidden_width():
    hidden, valid, group_ids, is_positive = exact_low_rank_positives(width=8, length=20, true_rank=4)
    got = compute_residual_weights(hidden, valid, group_ids, is_positive, SubspaceSettings(rank=64)).weights
    # k = H: every centred vector lies in the subspace, all energies ~0 -> flat -> (0.1 + 1) / 2
    negatives = valid & ~is_positive[:, None]
    torch.testing.assert_close(got[negatives], torch.full_like(got[negatives], 0.55))


def test_all_positive_or_all_negative_groups_keep_weight_one():
    hidden, valid, group_ids, _ = exact_low_rank_positives()
    for flag in (True, False):
        is_positive = torch.full((hidden.shape[0],), flag)
        result = compute_residual_weights(hidden, valid, group_ids, is_positive)
        assert (result.weights == 1).all()
        assert result.stats.mixed_groups == 0 and result.stats.groups == 3


def test_fewer_than_four_positive_tokens_skips_group():
    hidden, valid, group_ids, is_positive = exact_low_rank_positives(groups=1)
    valid[is_positive] = False
    valid[0, :3] = True  # 3 positive tokens in all
    result = compute_residual_weights(hidden, valid, group_ids, is_positive)
    assert (result.weights == 1).all()
    assert result.stats.skipped_groups == 1 and result.stats.mixed_groups == 1
    valid[0, 3] = True  # the 4th positive token makes the group usable
    result = compute_residual_weights(hidden, valid, group_ids, is_positive)
    assert result.stats.skipped_groups == 0 and (result.weights < 1).any()


def test_flat_energies_give_midpoint_weight():
    hidden, valid, group_ids, is_positive = exact_low_rank_positives(groups=1)
    hidden[~is_positive] = hidden[0, 0].clone()  # every negative token identical -> identical energies
    weights = compute_residual_weights(hidden, valid, group_ids, is_positive, SubspaceSettings(min_weight=0.2)).weights
    negatives = valid & ~is_positive[:, None]
    torch.testing.assert_close(weights[negatives], torch.full_like(weights[negatives], 0.6))


def test_bf16_input_computed_in_fp32():
    hidden, valid, group_ids, is_positive = exact_low_rank_positives()
    bf16 = hidden.bfloat16()
    got = compute_residual_weights(
        bf16, valid, group_ids, is_positive, SubspaceSettings(rank=4), generator=torch.Generator().manual_seed(0)
    ).weights
    want = spec_weights(bf16.float(), valid, group_ids, is_positive, rank=4)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, atol=2e-3, rtol=0)


def test_non_finite_group_is_skipped_and_others_unchanged():
    hidden, valid, group_ids, is_positive = exact_low_rank_positives()
    clean = compute_residual_weights(
        hidden, valid, group_ids, is_positive, SubspaceSettings(rank=4), generator=torch.Generator().manual_seed(0)
    ).weights
    hidden[2, 0, 5] = float("nan")  # a valid negative token of group 0
    hidden[4, 1, 0] = float("inf")  # a valid positive token of group 1
    hidden[9, ~valid[9]] = float("nan")  # invalid tokens are never read
    result = compute_residual_weights(
        hidden, valid, group_ids, is_positive, SubspaceSettings(rank=4), generator=torch.Generator().manual_seed(0)
    )
    assert torch.isfinite(result.weights).all()
    assert (result.weights[:8] == 1).all()
    torch.testing.assert_close(result.weights[8:], clean[8:], atol=2e-4, rtol=0)
    assert result.stats.skipped_groups == 2
    assert all(torch.isfinite(v).all() for v in result.stats)


def test_subsampling_keeps_max_pos_tokens_uniformly_and_is_seeded():
    hidden, valid, group_ids, is_positive = exact_low_rank_positives(groups=2, length=40, width=16)
    gen = lambda s: torch.Generator().manual_seed(s)  # noqa: E731
    ten, all_tokens = SubspaceSettings(max_pos_tokens=10), SubspaceSettings(max_pos_tokens=10_000)
    a = compute_residual_weights(hidden, valid, group_ids, is_positive, ten, generator=gen(0)).weights
    b = compute_residual_weights(hidden, valid, group_ids, is_positive, ten, generator=gen(0)).weights
    c = compute_residual_weights(hidden, valid, group_ids, is_positive, ten, generator=gen(1)).weights
    full = compute_residual_weights(hidden, valid, group_ids, is_positive, all_tokens, generator=gen(0)).weights
    torch.testing.assert_close(a, b, atol=0, rtol=0)  # same seed, same subset
    assert not torch.equal(a, c)  # another seed draws another subset
    assert not torch.equal(a, full)
    # With rank 4 (the span of the layer-normed positives), any 10-token subset spans the whole positive set: the
    # weights agree with the full set's up to round-off, which shows the subset is drawn from the right tokens.
    sub = compute_residual_weights(
        hidden, valid, group_ids, is_positive, SubspaceSettings(rank=4, max_pos_tokens=10), generator=gen(3)
    ).weights
    ref = spec_weights(hidden, valid, group_ids, is_positive, rank=4)
    assert (sub - ref).abs().max() < 0.05


def test_does_not_touch_global_rng_when_given_a_generator():
    hidden, valid, group_ids, is_positive = exact_low_rank_positives(length=40, width=16)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    compute_residual_weights(
        hidden, valid, group_ids, is_positive, SubspaceSettings(max_pos_tokens=10), generator=torch.Generator()
    )
    assert torch.equal(torch.rand(3), expected)


def test_stats_are_consistent():
    hidden, valid, group_ids, is_positive = exact_low_rank_positives()
    result = compute_residual_weights(hidden, valid, group_ids, is_positive, SubspaceSettings(rank=4))
    negatives = valid & ~is_positive[:, None]
    s = result.stats
    assert s.weighted_tokens == negatives.sum()
    torch.testing.assert_close(s.weight_sum, result.weights[negatives].sum())
    assert 0 < s.alignment_sum / s.weighted_tokens < 1
    assert s.energy_sum > 0
    assert (s.positives, s.negatives) == (6, 6)


def test_shape_errors_are_clear():
    with pytest.raises(ValueError, match="hidden must be"):
        compute_residual_weights(torch.zeros(2, 3), torch.ones(2, 3, dtype=torch.bool), torch.zeros(2), torch.zeros(2))
    with pytest.raises(ValueError, match="valid_mask must be"):
        compute_residual_weights(
            torch.zeros(2, 3, 4), torch.ones(2, 4, dtype=torch.bool), torch.zeros(2), torch.zeros(2)
        )


@pytest.mark.parametrize(
    "values, field",
    [
        (dict(rank=0), "rank"),
        (dict(max_pos_tokens=3), "max_pos_tokens"),
        (dict(q_low=-0.1), "q_low"),
        (dict(q_low=0.8, q_high=0.8), "q_low < q_high"),
        (dict(q_high=1.5), "q_high"),
        (dict(min_weight=1.2), "min_weight"),
        (dict(min_weight=-0.1), "min_weight"),
        (dict(niter=-1), "niter"),
    ],
)
def test_subspace_settings_refuse_bad_values_naming_the_field(values, field):
    with pytest.raises(ValueError, match=field):
        SubspaceSettings(**values)


def test_subspace_settings_defaults_are_the_papers():
    settings = SubspaceSettings()
    assert (settings.rank, settings.max_pos_tokens, settings.q_low, settings.q_high) == (64, 4096, 0.2, 0.8)
    assert (settings.min_weight, settings.niter) == (0.1, 4)
    SubspaceSettings(rank=1, max_pos_tokens=4, q_low=0.0, q_high=1.0, min_weight=1.0, niter=0)  # the edges are valid


def test_token_energies_match_the_projection():
    """The public per-position energies are the ones the projection weights (at valid negative tokens)."""
    hidden, valid, group_ids, is_positive = exact_low_rank_positives()
    subspaces, _ = build_group_subspaces(
        hidden, valid, group_ids // 7, is_positive, SubspaceSettings(rank=4), num_groups=3, group_seed=0
    )
    keep = torch.tensor([True] * 8 + [False] * 4)  # group 2 (the last four rows) has no subspace
    subspaces = subspaces._replace(**{key: value[:2] for key, value in subspaces._asdict().items()})
    energy, alignment, has_subspace = token_energies(hidden, group_ids // 7, subspaces)
    assert energy.shape == alignment.shape == valid.shape and torch.equal(has_subspace, keep)
    assert (energy[~keep] == 0).all() and (alignment[~keep] == 0).all()
    projected = project_onto_group_subspaces(hidden, valid, group_ids // 7, is_positive, subspaces)
    weighted = valid & (keep & ~is_positive)[:, None]
    torch.testing.assert_close(projected.stats.energy_sum, energy[weighted].sum())
    torch.testing.assert_close(projected.stats.alignment_sum, alignment[weighted].sum())
    assert ((alignment[keep] >= 0) & (alignment[keep] <= 1 + 1e-6)).all()


def test_autocast_does_not_lower_precision():
    """The trainer calls the weights inside the model's autocast region: the maths must still run in fp32."""
    hidden, valid, group_ids, is_positive = exact_low_rank_positives()
    plain = compute_residual_weights(
        hidden, valid, group_ids, is_positive, SubspaceSettings(rank=4), generator=torch.Generator().manual_seed(0)
    ).weights
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = compute_residual_weights(
            hidden, valid, group_ids, is_positive, SubspaceSettings(rank=4), generator=torch.Generator().manual_seed(0)
        ).weights
    torch.testing.assert_close(autocast, plain, atol=0, rtol=0)


def test_reproduces_the_reference_randomised_pca_on_full_rank_data():
    """Hidden states with a slowly decaying spectrum (no exact low rank), where the randomised subspace (q = k, no
    oversampling) differs from the exact SVD's. From the same random start (seed s: the reference draws its
    Gaussian matrices group after group from the global RNG, we draw the same numbers from our generator) our weights
    equal those of the reference's per-group torch.pca_lowrank(Xc, q=k, niter=4)."""
    g = torch.Generator().manual_seed(0)
    groups, per_group, length, width = 3, 8, 40, 48
    scales = torch.logspace(0, -2, width)
    hidden = torch.randn(groups * per_group, length, width, generator=g) * scales + torch.randn(width, generator=g)
    valid = torch.ones(groups * per_group, length, dtype=torch.bool)
    group_ids = torch.arange(groups).repeat_interleave(per_group)
    is_positive = (torch.arange(groups * per_group) % per_group) < 3
    negatives = valid & ~is_positive[:, None]
    exact = spec_weights(hidden, valid, group_ids, is_positive, rank=8)
    for seed in range(3):
        torch.manual_seed(seed)
        reference = spec_weights(hidden, valid, group_ids, is_positive, rank=8, pca_lowrank=True).float()
        ours = compute_residual_weights(
            hidden,
            valid,
            group_ids,
            is_positive,
            SubspaceSettings(rank=8),
            generator=torch.Generator().manual_seed(seed),
        ).weights
        torch.testing.assert_close(ours, reference, atol=1e-4, rtol=0)
        assert (reference - exact)[negatives].abs().mean() > 0.01  # the case really is approximate


def test_completion_states_reads_the_position_before_or_at_each_token():
    states = torch.arange(2 * 7 * 3, dtype=torch.float32).view(2, 7, 3)  # 4 prompt + 3 completion positions
    previous, own = completion_states(states, 3), completion_states(states, 3, "own")
    torch.testing.assert_close(previous, states[:, 3:6])  # position 3 (the prompt's last) scores the first token
    torch.testing.assert_close(own, states[:, 4:7])
    assert previous.data_ptr() == states[:, 3:].data_ptr()  # a view: no hidden state is copied
    with pytest.raises(ValueError, match="must be one of"):
        completion_states(states, 3, "next")
    with pytest.raises(ValueError, match="cover the prompt and the completion"):
        completion_states(states, 7)
