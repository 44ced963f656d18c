"""Baselines and ablations: advantages exactly as the spec's formulas, on hand-made rewards and in the trainer."""

from __future__ import annotations

import pytest
import torch
from conftest import COMMON, make_model, make_trainer, parity_reward, record_training_forwards
from trl import GRPOTrainer

from resrl_trl import ResRLConfig, ResRLTrainer
from resrl_trl.advantages import group_normalised_advantages, reinforce_advantages
from resrl_trl.trainer import GROUP_IDS_KEY, IS_POSITIVE_KEY


def test_reinforce_advantages_on_hand_made_rewards():
    rewards = torch.tensor([1.0, 0.0, 1.0, float("nan"), 0.0])
    positive = rewards > 0
    assert reinforce_advantages(rewards, positive, "psr").tolist() == [1.0, 0.0, 1.0, 0.0, 0.0]
    assert reinforce_advantages(rewards, positive, "nsr").tolist() == [0.0, -1.0, 0.0, 0.0, -1.0]
    got = reinforce_advantages(rewards, positive, "w_reinforce", w_reinforce_lambda=0.25).tolist()
    assert got == [0.25, -1.0, 0.25, 0.0, -1.0]  # the unscorable completion (NaN) gets 0, as in TRL
    with pytest.raises(ValueError, match="psr"):
        reinforce_advantages(rewards, positive, "grpo")


def test_group_normalised_advantages_are_grpos_per_group():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.5, 2.0])
    group_ids = torch.tensor([3, 3, 3, 3, 0, 0, 0, 7, 7])
    got = group_normalised_advantages(rewards, group_ids)
    for group in group_ids.unique():
        rows = group_ids == group
        values = rewards[rows]
        torch.testing.assert_close(got[rows], (values - values.mean()) / (values.std() + 1e-4))


def first_step_advantages(tmp_path, tokenizer, dataset, monkeypatch, **overrides) -> tuple[torch.Tensor, ...]:
    """(advantages, is_positive, group_ids) that TRL's loss receives in the first micro-batch of a 1-step run."""
    seen = []
    real = GRPOTrainer._compute_loss

    def spy(self, model, inputs):
        seen.append((inputs["advantages"].clone(), inputs[IS_POSITIVE_KEY].clone(), inputs[GROUP_IDS_KEY].clone()))
        return real(self, model, inputs)

    monkeypatch.setattr(GRPOTrainer, "_compute_loss", spy)
    args = ResRLConfig(output_dir=str(tmp_path / "out"), **{**COMMON, "max_steps": 1, **overrides})
    trainer = ResRLTrainer(
        model=make_model(tokenizer),
        reward_funcs=parity_reward,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
    )
    trainer.train()
    return seen[0]


@pytest.mark.parametrize("mode, correct, wrong", [("psr", 1.0, 0.0), ("nsr", 0.0, -1.0), ("w_reinforce", 0.1, -1.0)])
def test_reinforce_modes_in_the_trainer(mode, correct, wrong, tmp_path, tokenizer, prompts_dataset, monkeypatch):
    advantages, positive, _ = first_step_advantages(
        tmp_path, tokenizer, prompts_dataset, monkeypatch, advantage_mode=mode
    )
    assert advantages.dim() == 1 and positive.any() and (~positive).any()
    torch.testing.assert_close(advantages, torch.where(positive, correct, wrong))


def test_grpo_and_positive_scaling_modes(tmp_path, tokenizer, prompts_dataset, monkeypatch):
    grpo, positive, groups = first_step_advantages(
        tmp_path, tokenizer, prompts_dataset, monkeypatch, advantage_mode="grpo"
    )
    # TRL's group-normalised advantages (rows in TRL's own shuffled order): zero mean in each group, and in mixed
    # groups positive exactly for the correct completions
    group_sum = torch.zeros(int(groups.max()) + 1).index_add_(0, groups, grpo)
    torch.testing.assert_close(group_sum, torch.zeros_like(group_sum), atol=1e-5, rtol=0)
    positives_in_group = torch.zeros(len(group_sum)).index_add_(0, groups, positive.float())
    mixed = ((positives_in_group > 0) & (positives_in_group < 4))[groups]
    assert mixed.any() and torch.equal((grpo > 0)[mixed], positive[mixed])
    scaled, positive_again, _ = first_step_advantages(
        tmp_path, tokenizer, prompts_dataset, monkeypatch, advantage_mode="resrl_pos_only", resrl_pos_weight=0.5
    )
    assert torch.equal(positive, positive_again)  # same seed, same completions
    torch.testing.assert_close(scaled, torch.where(positive, 0.5 * grpo, grpo))


def test_in_step_subspaces_need_whole_groups_and_auto_builds_them_at_rollout(tmp_path):
    settings = dict(COMMON, per_device_train_batch_size=2, steps_per_generation=2)
    with pytest.raises(ValueError, match="multiple of num_generations"):
        ResRLConfig(output_dir=str(tmp_path), advantage_mode="resrl_tokens_only", resrl_subspace="step", **settings)
    assert ResRLConfig(output_dir=str(tmp_path), **settings).resrl_subspace == "rollout"
    assert ResRLConfig(output_dir=str(tmp_path), **COMMON).resrl_subspace == "step"
    ResRLConfig(output_dir=str(tmp_path), advantage_mode="nsr", resrl_subspace="step", **settings)
    with pytest.raises(ValueError, match="advantage_mode must be one of"):
        ResRLConfig(output_dir=str(tmp_path), advantage_mode="ppo", **COMMON)


@pytest.mark.parametrize("mode", ["nsr", "w_reinforce", "resrl", "resrl_pos_only", "resrl_tokens_only"])
def test_completions_table_shows_the_advantages_used(mode, tmp_path, tokenizer, prompts_dataset):
    """TRL logs GRPO's advantages into its completions table before ResRL replaces them: the table must show the
    method's sequence advantages (before token weights). Same seed: the same completions as GRPOTrainer's."""
    grpo = make_trainer(tmp_path / "grpo", tokenizer, prompts_dataset, cls=GRPOTrainer, max_steps=1)
    grpo.train()
    ours = make_trainer(
        tmp_path / "ours", tokenizer, prompts_dataset, advantage_mode=mode, max_steps=1, resrl_rank=4,
        log_completions=True,
    )  # fmt: skip
    forwards = record_training_forwards(ours.placement) if ours.placement is not None else []
    ours.train()
    rewards = torch.tensor(ours._logs["rewards"]["parity_reward"])
    assert torch.equal(rewards, torch.tensor(grpo._logs["rewards"]["parity_reward"]))
    trl_advantages = torch.tensor(list(grpo._logs["advantages"]))
    positive = rewards > 0
    expected = {
        "nsr": rewards - 1,
        "w_reinforce": torch.where(positive, 0.1, -1.0),
        "resrl": torch.where(positive, 0.1 * trl_advantages, trl_advantages),
        "resrl_pos_only": torch.where(positive, 0.1 * trl_advantages, trl_advantages),
        "resrl_tokens_only": trl_advantages,
    }[mode]
    table = torch.tensor(list(ours._logs["advantages"]))
    torch.testing.assert_close(table, expected.float())
    if forwards:  # the table holds exactly what the training forwards read (in the rollout's order, not theirs)
        read = torch.cat([forward["before"] for forward in forwards])
        assert torch.equal(read.sort().values, table.sort().values)
