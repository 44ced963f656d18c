"""resrl_subspace="rollout": subspaces built once per generation from whole groups, any micro-batch size."""

from __future__ import annotations

import logging

import pytest
import torch
from conftest import make_trainer
from peft import LoraConfig

import resrl_trl.placement as placement_module
from resrl_trl import ResRLTrainer
from resrl_trl.trainer import GROUP_IDS_KEY


def record_row_weights(monkeypatch) -> dict[tuple, torch.Tensor]:
    """Per completion row seen in training (keyed by group id and token ids): its (T,) ResRL weights."""
    rows: dict[tuple, torch.Tensor] = {}
    pending: list[torch.Tensor] = []
    real_apply = ResRLTrainer._apply_residual_weights

    def apply(self, hidden, inputs):
        stats = real_apply(self, hidden, inputs)
        weights = pending.pop()
        for group, ids, row in zip(
            inputs[GROUP_IDS_KEY].tolist(), inputs["completion_ids"].tolist(), weights, strict=True
        ):
            rows.setdefault((group, tuple(ids)), row.clone())
        return stats

    def spy(real):
        def wrapped(*args, **kwargs):
            result = real(*args, **kwargs)
            pending.append(result.weights)
            return result

        return wrapped

    monkeypatch.setattr(ResRLTrainer, "_apply_residual_weights", apply)
    for name in ("compute_residual_weights", "project_onto_group_subspaces"):
        monkeypatch.setattr(placement_module, name, spy(getattr(placement_module, name)))
    return rows


def train_and_record(tmp_path, tokenizer, dataset, monkeypatch, **overrides):
    rows = record_row_weights(monkeypatch)
    trainer = make_trainer(tmp_path, tokenizer, dataset, max_steps=1, resrl_rank=4, **overrides)
    trainer.train()
    monkeypatch.undo()
    return trainer, rows


def test_micro_batches_smaller_than_a_group_get_the_in_step_weights(tmp_path, tokenizer, prompts_dataset, monkeypatch):
    """One optimisation step per generation: in-step subspaces on micro-batches of 8 (two whole groups) and rollout
    subspaces with micro-batches of 2 (half a group each, four accumulated) give the same weights to every row."""
    _, in_step = train_and_record(tmp_path / "step", tokenizer, prompts_dataset, monkeypatch)
    trainer, rollout = train_and_record(
        tmp_path / "rollout",
        tokenizer,
        prompts_dataset,
        monkeypatch,
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


def test_own_weight_position_gives_the_same_weights_in_both_placements(
    tmp_path, tokenizer, prompts_dataset, monkeypatch
):
    """resrl_weight_position="own" keeps the placements' parity, and its weights differ from the reference
    reading's (the previous position's state)."""
    _, in_step = train_and_record(
        tmp_path / "step", tokenizer, prompts_dataset, monkeypatch, resrl_weight_position="own"
    )
    trainer, rollout = train_and_record(
        tmp_path / "rollout", tokenizer, prompts_dataset, monkeypatch, resrl_weight_position="own",
        per_device_train_batch_size=2, gradient_accumulation_steps=4,
    )  # fmt: skip
    _, previous = train_and_record(tmp_path / "previous", tokenizer, prompts_dataset, monkeypatch)
    assert trainer.args.resrl_subspace == "rollout"
    assert rollout.keys() == in_step.keys() == previous.keys() and len(rollout) > 1
    weighted = differs = 0
    for key, weights in in_step.items():
        torch.testing.assert_close(rollout[key], weights, atol=1e-4, rtol=0)
        weighted += int((weights < 1).sum())
        differs += int(((weights - previous[key]).abs() > 1e-3).sum())
    assert weighted > 0 and differs > 0


def test_rollout_reuses_trl_old_logprob_forward(tmp_path, tokenizer, prompts_dataset, monkeypatch):
    """When TRL runs its own no-grad forward over the rollout (here: four optimiser steps per generation), the hidden
    states come from it, equal those of a forward of ResRL's own, and no extra forward runs."""
    built = []
    real_build = placement_module.build_group_subspaces

    def spy(hidden, valid, *args, **kwargs):
        built.append((hidden.clone(), valid.clone()))
        return real_build(hidden, valid, *args, **kwargs)

    monkeypatch.setattr(placement_module, "build_group_subspaces", spy)
    own_forward = []
    real_own = placement_module.RolloutPlacement._completion_hidden_states
    monkeypatch.setattr(
        placement_module.RolloutPlacement,
        "_completion_hidden_states",
        lambda *a, **k: own_forward.append(1) or real_own(*a, **k),
    )
    own_hidden = []
    real_generate = ResRLTrainer._generate_and_score_completions

    def generate(self, inputs):
        batch = real_generate(self, inputs)
        rows = torch.arange(len(batch["completion_ids"]))
        own_hidden.append(real_own(self._placement, batch, rows, num_chunks=2))  # same policy: no step has run yet
        return batch

    monkeypatch.setattr(ResRLTrainer, "_generate_and_score_completions", generate)
    trainer = make_trainer(
        tmp_path, tokenizer, prompts_dataset, per_device_train_batch_size=2, steps_per_generation=4, max_steps=1
    )
    assert trainer._placement.name == "rollout" and trainer._placement._trl_runs_rollout_forward()
    trainer.train()
    assert len(built) == 1 and len(own_forward) == 0
    (hidden, valid), own = built[0], own_hidden[0]
    torch.testing.assert_close(own[valid], hidden[valid], atol=1e-5, rtol=0)


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
    tmp_path, tokenizer, prompts_dataset, monkeypatch, caplog
):
    """If the prediction of TRL's old-log-prob forward is wrong (forced here), the hidden states captured are those of
    the reference forward (LoRA with the adapter off, beta > 0): they are discarded, with a warning, for ResRL's own
    forward."""
    monkeypatch.setattr(placement_module.RolloutPlacement, "_trl_runs_rollout_forward", lambda self: True)
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
    with caplog.at_level(logging.WARNING, logger="resrl_trl.placement"):
        trainer.train()
    assert "TRL ran no old-log-prob forward" in caplog.text
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in trainer.state.log_history if "loss" in h)
