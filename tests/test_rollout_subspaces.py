"""resrl_subspace="rollout": subspaces built once per generation from whole groups, any micro-batch size."""

from __future__ import annotations

import logging

import pytest
import torch
from conftest import make_trainer, record_training_forwards
from peft import LoraConfig

from resrl_trl import ResRLTrainer
from resrl_trl.placement import RolloutPlacement
from resrl_trl.trainer import GROUP_IDS_KEY


def train_and_record(tmp_path, tokenizer, dataset, **overrides) -> tuple[ResRLTrainer, dict[tuple, torch.Tensor]]:
    """Train one step; per completion row seen in training (keyed by group id and token ids): its (T,) weights."""
    trainer = make_trainer(tmp_path, tokenizer, dataset, max_steps=1, resrl_rank=4, **overrides)
    forwards = record_training_forwards(trainer.placement)
    trainer.train()
    rows: dict[tuple, torch.Tensor] = {}
    for forward in forwards:
        for group, ids, row in zip(
            forward[GROUP_IDS_KEY].tolist(), forward["completion_ids"].tolist(), forward["result"].weights, strict=True
        ):
            rows.setdefault((group, tuple(ids)), row.clone())
    return trainer, rows


def test_micro_batches_smaller_than_a_group_get_the_in_step_weights(tmp_path, tokenizer, prompts_dataset):
    """One optimisation step per generation: in-step subspaces on micro-batches of 8 (two whole groups) and rollout
    subspaces with micro-batches of 2 (half a group each, four accumulated) give the same weights to every row."""
    _, in_step = train_and_record(tmp_path / "step", tokenizer, prompts_dataset)
    trainer, rollout = train_and_record(
        tmp_path / "rollout",
        tokenizer,
        prompts_dataset,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=4,
    )
    assert trainer.args.resrl_subspace == "rollout"  # chosen by "auto"
    assert rollout.keys() == in_step.keys() and len(rollout) > 1
    weighted = 0
    for key, weights in in_step.items():
        torch.testing.assert_close(rollout[key], weights, atol=1e-4, rtol=0)
        weighted += int((weights < 1).sum())
    assert weighted > 0, "the parity reward should give mixed groups"


def test_own_weight_position_gives_the_same_weights_in_both_placements(tmp_path, tokenizer, prompts_dataset):
    """resrl_weight_position="own" keeps the placements' parity, and its weights differ from the reference
    reading's (the previous position's state)."""
    _, in_step = train_and_record(tmp_path / "step", tokenizer, prompts_dataset, resrl_weight_position="own")
    trainer, rollout = train_and_record(
        tmp_path / "rollout", tokenizer, prompts_dataset, resrl_weight_position="own",
        per_device_train_batch_size=2, gradient_accumulation_steps=4,
    )  # fmt: skip
    _, previous = train_and_record(tmp_path / "previous", tokenizer, prompts_dataset)
    assert trainer.args.resrl_subspace == "rollout"
    assert rollout.keys() == in_step.keys() == previous.keys() and len(rollout) > 1
    weighted = differs = 0
    for key, weights in in_step.items():
        torch.testing.assert_close(rollout[key], weights, atol=1e-4, rtol=0)
        weighted += int((weights < 1).sum())
        differs += int(((weights - previous[key]).abs() > 1e-3).sum())
    assert weighted > 0 and differs > 0


def test_rollout_reuses_trl_old_logprob_forward(tmp_path, tokenizer, prompts_dataset):
    """When TRL runs its own no-grad forward over the rollout (here: four optimiser steps per generation), the hidden
    states come from it: no extra forward runs, and the subspaces equal those a forward of ResRL's own builds."""
    trainer = make_trainer(
        tmp_path, tokenizer, prompts_dataset, per_device_train_batch_size=2, steps_per_generation=4, max_steps=1
    )
    placement = trainer.placement
    assert isinstance(placement, RolloutPlacement)
    real_decoder, own_forwards, twin_subspaces = placement.run_decoder, [], []
    placement.run_decoder = lambda chunks: own_forwards.append(len(chunks)) or real_decoder(chunks)
    # A twin built from the same parts that always runs its own forward, at the same seam (no step has run yet).
    twin = RolloutPlacement(
        placement.block, placement.settings, placement.weight_position, placement.seeds, run_decoder=real_decoder
    )
    real_finish = placement.finish_rollout

    def finish_both(rollout):
        twin.start_rollout(trl_runs_old_logprob_forward=False)
        twin.finish_rollout(rollout)
        twin_subspaces.append(twin.subspaces[rollout.mode])
        return real_finish(rollout)

    placement.finish_rollout = finish_both
    trainer.train()
    assert own_forwards == [] and len(twin_subspaces) == 1
    got, own = placement.subspaces["train"], twin_subspaces[0]
    assert len(got.group_ids) > 0 and torch.equal(got.group_ids, own.group_ids)
    for field in ("mean", "low", "high"):
        torch.testing.assert_close(getattr(got, field), getattr(own, field), atol=1e-5, rtol=1e-4)
    projector = got.basis @ got.basis.transpose(1, 2)
    torch.testing.assert_close(projector, own.basis @ own.basis.transpose(1, 2), atol=1e-4, rtol=0)


def test_rollout_mode_trains_with_micro_batches_of_one(tmp_path, tokenizer, prompts_dataset):
    trainer = make_trainer(
        tmp_path,
        tokenizer,
        prompts_dataset,
        per_device_train_batch_size=1,
        steps_per_generation=8,
        gradient_accumulation_steps=2,
        max_steps=4,
    )
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    history = [h for h in trainer.state.log_history if "loss" in h]
    assert len(history) == 4 and all(torch.isfinite(torch.tensor(h["loss"])) for h in history)
    mixed = [h for h in history if h.get("resrl/mixed_group_frac", 0) > 0]
    assert mixed and all(0.1 <= h["resrl/neg_token_weight_mean"] <= 1.0 for h in history)
    assert all(h["resrl/positives"] + h["resrl/negatives"] == 8 for h in history if "resrl/positives" in h)
    assert any(not torch.equal(p, before[n]) for n, p in trainer.model.named_parameters())


@pytest.mark.parametrize("mode", ["step", "rollout"])
def test_both_placements_train_with_whole_groups(tmp_path, tokenizer, prompts_dataset, mode):
    trainer = make_trainer(tmp_path, tokenizer, prompts_dataset, resrl_subspace=mode, max_steps=2)
    trainer.train()
    assert trainer.args.resrl_subspace == mode
    history = [h for h in trainer.state.log_history if "loss" in h]
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in history)
    weighted = [h["resrl/neg_token_weight_mean"] for h in history if h["resrl/mixed_group_frac"] > 0]
    assert weighted and all(0.1 <= w < 1.0 for w in weighted)  # real token weights, not all 1


def test_logged_token_metrics_are_token_means_in_both_placements(tmp_path, tokenizer, prompts_dataset):
    """The same completions and weights log the same values: micro-batches without weighted tokens (frequent with
    half-group micro-batches) must not count as a mean of 0."""
    keys = ("resrl/neg_token_weight_mean", "resrl/residual_energy_mean", "resrl/neg_alignment_mean", "reward")
    logged = {}
    for name, batch in {
        "step": {"per_device_train_batch_size": 8},
        "rollout": {"per_device_train_batch_size": 2, "gradient_accumulation_steps": 4},
    }.items():
        trainer = make_trainer(tmp_path / name, tokenizer, prompts_dataset, max_steps=2, resrl_rank=4, **batch)
        trainer.train()
        assert trainer.args.resrl_subspace == name
        logged[name] = [{k: h.get(k) for k in keys} for h in trainer.state.log_history if "loss" in h]
    assert len(logged["step"]) == 2 and any(h["resrl/neg_token_weight_mean"] for h in logged["step"])
    for step, rollout in zip(logged["step"], logged["rollout"], strict=True):
        for key in keys:
            assert rollout[key] == pytest.approx(step[key], abs=1e-4), key


def test_a_forward_that_is_not_the_old_logprob_one_never_builds_subspaces(
    tmp_path, tokenizer, prompts_dataset, caplog
):
    """If the prediction of TRL's old-log-prob forward is wrong (forced here), the hidden states captured are those of
    the reference forward (LoRA with the adapter off, beta > 0): they are discarded, with a warning, for ResRL's own
    forward."""
    trainer = make_trainer(
        tmp_path,
        tokenizer,
        prompts_dataset,
        peft_config=LoraConfig(r=4, target_modules=["q_proj", "v_proj"]),
        per_device_train_batch_size=2,
        gradient_accumulation_steps=4,
        beta=0.04,
        max_steps=1,
        resrl_rank=4,
    )
    start_rollout = trainer.placement.start_rollout
    trainer.placement.start_rollout = lambda trl_runs_old_logprob_forward: start_rollout(True)  # a wrong prediction
    with caplog.at_level(logging.WARNING, logger="resrl_trl.placement"):
        trainer.train()
    assert "TRL ran no old-log-prob forward" in caplog.text
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in trainer.state.log_history if "loss" in h)
