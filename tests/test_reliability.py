"""Faults lose nothing: resume after a kill, checkpoints that appear only complete, non-finite values, long runs."""

from __future__ import annotations

import os
import resource
import threading

import pytest
import torch
from conftest import checksum_reward, make_trainer
from transformers import TrainerCallback

from resrl_trl import ResRLTrainer
from resrl_trl.rewards import MathReward
from resrl_trl.safety import STAGING_DIR
from resrl_trl.testing.faults import CHECKPOINTED, HOSTILE, KillAtStep, Killed, losses


@pytest.mark.parametrize("subspace", ["step", "rollout"])
def test_resumed_run_repeats_the_uninterrupted_losses(tmp_path, tokenizer, prompts_dataset, subspace):
    settings = dict(CHECKPOINTED, resrl_subspace=subspace)
    whole = make_trainer(tmp_path / "whole", tokenizer, prompts_dataset, **settings)
    whole.train()
    killed = make_trainer(tmp_path / "killed", tokenizer, prompts_dataset, **settings)
    killed.add_callback(KillAtStep(3))
    with pytest.raises(Killed):
        killed.train()
    run_dir = killed.args.output_dir
    assert sorted(d for d in os.listdir(run_dir) if d.startswith("checkpoint")) == ["checkpoint-2"]
    resumed = make_trainer(tmp_path / "killed", tokenizer, prompts_dataset, **settings)
    resumed.train(resume_from_checkpoint=True)
    expected, got = losses(whole), losses(resumed)
    assert sorted(got) == [1, 2, 3, 4]  # 1-2 from checkpoint-2's state, 3-4 trained after the resume
    for step in (3, 4):  # same data, same sampled completions, same ResRL random streams
        assert got[step] == pytest.approx(expected[step], rel=1e-6, abs=1e-7)
    assert resumed.seeds.generations == whole.seeds.generations


def test_a_checkpoint_killed_while_written_never_replaces_the_last_good_one(
    tmp_path, tokenizer, prompts_dataset, monkeypatch
):
    trainer = make_trainer(tmp_path, tokenizer, prompts_dataset, **CHECKPOINTED)
    real_save_rng = ResRLTrainer._save_rng_state

    def dies_in_the_second_checkpoint(self, output_dir):
        if self.state.global_step == 4:
            raise Killed  # the weights of checkpoint-4 are written, the rest is not
        real_save_rng(self, output_dir)

    monkeypatch.setattr(ResRLTrainer, "_save_rng_state", dies_in_the_second_checkpoint)
    with pytest.raises(Killed):
        trainer.train()
    run_dir = trainer.args.output_dir
    assert sorted(d for d in os.listdir(run_dir) if d.startswith("checkpoint")) == ["checkpoint-2"]
    assert os.path.isdir(os.path.join(run_dir, STAGING_DIR, "checkpoint-4"))  # the partial write, set aside
    monkeypatch.undo()
    resumed = make_trainer(tmp_path, tokenizer, prompts_dataset, **CHECKPOINTED)
    resumed.train(resume_from_checkpoint=True)  # resumes from checkpoint-2
    assert sorted(losses(resumed)) == [1, 2, 3, 4]
    assert sorted(d for d in os.listdir(run_dir) if d.startswith("checkpoint")) == ["checkpoint-2", "checkpoint-4"]
    assert os.path.isfile(os.path.join(run_dir, "checkpoint-4", "resrl_state.json"))


def test_non_finite_hidden_states_and_rewards_never_reach_the_weights(tmp_path, tokenizer, prompts_dataset):
    """Step 2's hidden states of one completion are NaN (from the hooked block on), and a reward is infinite: the
    group is left at weight 1 and counted, the infinite reward's completion takes no part, the NaN loss skips its
    optimiser step with a warning, and training goes on with finite weights."""
    calls = {"n": 0}

    def reward(completions, **kwargs):
        calls["n"] += 1
        values = [float(len(c[-1]["content"]) % 2 == 0) for c in completions]
        if calls["n"] == 3:
            values[0] = float("inf")
        return values

    trainer = make_trainer(tmp_path, tokenizer, prompts_dataset, max_steps=4, resrl_rank=4)
    trainer.reward_funcs = [reward]
    trainer.reward_func_names = ["reward"]
    block = trainer.placement.block
    poisoned = {"step": None}

    def poison(module, args, output):  # registered before ResRL's hook, so ResRL reads the NaN
        if trainer.state.global_step == 1 and trainer.model.training and torch.is_grad_enabled():
            hidden = output[0] if isinstance(output, tuple) else output
            hidden[2, :] = float("nan")
            poisoned["step"] = 2

    handle = block.register_forward_hook(poison)
    weights_before_step_2 = {}

    class Snapshot(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001, ANN003, ANN201
            if state.global_step == 1:
                weights_before_step_2.update({n: p.detach().clone() for n, p in trainer.model.named_parameters()})
            if state.global_step == 2:
                for name, param in trainer.model.named_parameters():
                    assert torch.equal(param, weights_before_step_2[name]), "a NaN step changed the weights"

    trainer.add_callback(Snapshot())
    trainer.train()
    handle.remove()
    assert poisoned["step"] == 2
    history = {h["step"]: h for h in trainer.state.log_history if "loss" in h}
    assert history[2]["resrl/skipped_groups"] >= 1
    assert history[2]["resrl/nonfinite_losses"] == 1
    # the skipped step skipped the learning-rate schedule too (linear decay moves at every real step; each step logs
    # the rate it was taken with)
    rates = [history[step]["learning_rate"] for step in (1, 2, 3, 4)]
    assert rates[0] > rates[1] == rates[2] > rates[3]
    assert history[3]["resrl/nonfinite_rewards"] == 1
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    assert torch.isfinite(torch.tensor(history[4]["loss"]))


def test_long_run_memory_is_flat_and_hooks_do_not_accumulate(tmp_path, tokenizer, prompts_dataset):
    trainer = make_trainer(
        tmp_path,
        tokenizer,
        prompts_dataset,
        max_steps=200,
        logging_steps=10,
        max_completion_length=8,
        learning_rate=1e-6,  # slow enough that groups stay mixed, so ResRL's weights run on every step
    )
    trainer.reward_funcs, trainer.reward_func_names = [checksum_reward], ["checksum_reward"]
    model = trainer.model
    samples: dict[int, tuple[float, int]] = {}

    def hooks() -> int:
        return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules())

    class Probe(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001, ANN003, ANN201
            if state.global_step % 50 == 0:
                samples[state.global_step] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, hooks())

    before = hooks()
    trainer.add_callback(Probe())
    trainer.train()
    assert sorted(samples) == [50, 100, 150, 200]
    # ResRL's hook lives only inside each training forward; training adds transformers' one input-grad hook.
    assert {h for _, h in samples.values()} == {before + 1}
    assert all(h["resrl/mixed_group_frac"] > 0 for h in trainer.state.log_history if "resrl/mixed_group_frac" in h)
    growth_mb = samples[200][0] - samples[50][0]
    assert growth_mb < 20, f"peak RSS grew by {growth_mb:.1f} MB over 150 steps"


def test_hostile_completions_are_bounded_and_counted():
    """Completions built to hang or exhaust the parser score 0 and are counted; normal answers still score, also
    when the checks run off the main thread (where math-verify's own signal-based time-outs cannot work)."""
    reward = MathReward(timeout_s=2.0, memory_mb=1024)
    results = {name: reward.check(text, "12") for name, text in HOSTILE.items()}
    assert results["power tower"][1:] == (0.0, "timeout")
    assert results["huge factorial"][1:] == (0.0, "timeout")
    assert results["deep nesting"][1:] == (0.0, "timeout")
    assert results["100k characters"][1] == 0.0 and len(results["100k characters"][0]) <= 200
    assert results["empty"][1:] == (0.0, "empty")
    assert results["invalid UTF-8"][1:] == (1.0, "ok")  # the bytes are replaced, the answer is still read
    assert results["truncated"][1] == 0.0
    assert reward.faults == {"timeout": 3, "empty": 1}
    from_thread: list = []
    worker = threading.Thread(
        target=lambda: from_thread.append(reward(["The answer is 12.", HOSTILE["power tower"]], ["12", "12"]))
    )
    worker.start()
    worker.join()
    assert from_thread == [[1.0, 0.0]] and reward.faults["timeout"] == 4


def test_training_goes_on_through_a_hanging_answer_check(tmp_path, tokenizer, prompts_dataset):
    class OneHostileCompletion(MathReward):
        def __call__(self, completions, solution, **kwargs):
            completions = [HOSTILE["power tower"], *completions[1:]]
            return super().__call__(completions, ["12"] * len(completions))

    reward = OneHostileCompletion(timeout_s=1.0, memory_mb=1024)
    trainer = make_trainer(tmp_path, tokenizer, prompts_dataset, max_steps=2)
    trainer.reward_funcs = [reward]
    trainer.reward_func_names = ["math_reward"]
    trainer.train()
    history = [h for h in trainer.state.log_history if "loss" in h]
    assert len(history) == 2 and all(h["resrl/answer_check_timeout"] == 1 for h in history)
