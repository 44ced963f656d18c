"""ResRLTrainer with TRL's colocated vLLM generation, on vLLM's CPU build and the embedded SmolLM2-135M."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import GRPOTrainer
from vllm_support import policy_logprobs, step_logs, subprocess_env, train, vllm_logprobs

REPO = Path(__file__).resolve().parents[2]


def test_grpo_mode_gives_trl_grpo_losses_under_vllm(model_dir, tmp_path):
    """Same seed, same engine settings: vLLM samples the same completions, and the losses are TRL's to the bit."""
    ours = train(model_dir, tmp_path / "ours", advantage_mode="grpo")
    trl = train(model_dir, tmp_path / "trl", trainer_cls=GRPOTrainer)
    ours_logs, trl_logs = step_logs(ours), step_logs(trl)
    assert len(ours_logs) == len(trl_logs) == 2
    for a, b in zip(ours_logs, trl_logs, strict=True):
        assert a["reward"] == b["reward"]
        assert a["completions/mean_length"] == b["completions/mean_length"]
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-6)
    assert any(log["loss"] != 0 for log in ours_logs)  # a real update, not two all-zero advantages


# Every setting appears with every other in at least one case (full/LoRA x step/rollout x IS on/off, pairwise).
CASES = [
    ("full", "step", True),
    ("full", "rollout", False),
    ("lora", "step", False),
    ("lora", "rollout", True),
]


@pytest.mark.parametrize("tuning, placement, is_correction", CASES)
def test_resrl_with_vllm_weights_negative_tokens(model_dir, tmp_path, tuning, placement, is_correction):
    # "rollout": micro-batches of 4 rows cannot hold a group of 8, so subspaces are built once per generation; with IS
    # correction TRL runs its old-log-prob forward over the rollout, whose hidden states ResRL reuses.
    batch = (
        {"per_device_train_batch_size": 8}
        if placement == "step"
        else {
            "per_device_train_batch_size": 4,
            "gradient_accumulation_steps": 2,
        }
    )
    trainer = train(
        model_dir,
        tmp_path,
        peft=tuning == "lora",
        learning_rate=1e-4,
        vllm_importance_sampling_correction=is_correction,
        **batch,
    )
    assert trainer.args.resrl_subspace == placement
    logs = step_logs(trainer)
    assert len(logs) == 2 and all(math.isfinite(log["loss"]) for log in logs)
    assert all(("sampling/importance_sampling_ratio/mean" in log) == is_correction for log in logs)
    weighted = [log for log in logs if log["resrl/mixed_group_frac"] > 0]
    assert weighted, "the checksum reward should give at least one mixed group in two steps"
    for log in weighted:  # real token weights: strictly between the floor and 1, from non-zero residual energies
        assert 0.1 < log["resrl/neg_token_weight_mean"] < 1.0
        assert log["resrl/residual_energy_mean"] > 0
    trained = [p for n, p in trainer.model.named_parameters() if p.requires_grad]
    assert trained and all(torch.isfinite(p).all() for p in trained)


def test_step_and_rollout_placements_train_the_same_weights(model_dir, tmp_path):
    """One optimiser step per generation: whole-group micro-batches and rollout-time subspaces give one update."""
    step = train(model_dir, tmp_path / "step", max_steps=1, learning_rate=1e-4, per_device_train_batch_size=8)
    rollout = train(
        model_dir,
        tmp_path / "rollout",
        max_steps=1,
        learning_rate=1e-4,
        per_device_train_batch_size=4,
        gradient_accumulation_steps=2,
    )
    assert (step.args.resrl_subspace, rollout.args.resrl_subspace) == ("step", "rollout")
    assert step_logs(step)[0]["resrl/mixed_group_frac"] > 0
    initial = AutoModelForCausalLM.from_pretrained(model_dir).state_dict()
    moved = 0.0
    for (name, a), b in zip(step.model.state_dict().items(), rollout.model.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0, msg=name)
        moved = max(moved, float((a - initial[name]).abs().max()))
    assert moved > 1e-5  # the step changed the weights more than the tolerance


def test_trained_weights_reach_vllm(model_dir, tmp_path):
    """After training (LoRA, merged by TRL's sync) vLLM scores a fixed text as the trained policy does."""
    trainer = train(model_dir, tmp_path, peft=True, learning_rate=2e-2)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    token_ids = tokenizer("The sum of 17 and 25 is 42, so the answer is 42.")["input_ids"]
    before = policy_logprobs(AutoModelForCausalLM.from_pretrained(model_dir), token_ids)
    trainer.vllm_generation.sync_weights()  # TRL syncs before each generation; the last update has not been yet
    policy = trainer.accelerator.unwrap_model(trainer.model)
    after = policy_logprobs(policy.merge_and_unload() if hasattr(policy, "merge_and_unload") else policy, token_ids)
    served = vllm_logprobs(trainer.vllm_generation.llm, token_ids)
    change = (after - before).abs().mean()
    assert change > 0.2  # training moved the policy's scores of this text
    assert (served - after).abs().mean() < change / 4  # vLLM follows the trained policy (bf16 engine, fp32 policy)
    assert (served - before).abs().mean() > change / 2  # and not the initial one


def test_recipe_runs_with_vllm_colocate(model_dir, tmp_path):
    """The user's command, with vLLM: the embedded GGUF is served to vLLM from its plain folder."""
    out = tmp_path / "out"
    command = [
        *(sys.executable, "-m", "accelerate.commands.launch", "--config_file", "recipes/accelerate/cpu.yaml"),
        *("recipes/math.py", "--max_steps", "2", "--output_dir", str(out), "--max_completion_length", "16"),
        *("--use_vllm", "true", "--vllm_mode", "colocate"),
    ]
    result = subprocess.run(
        command, cwd=REPO, env=subprocess_env(HF_HUB_OFFLINE="1"), capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert (out / "adapter_model.safetensors").is_file()
    logged = result.stdout + result.stderr
    assert logged.count("sampling/sampling_logp_difference/mean") == 2  # both steps compared vLLM's and the policy's
