"""The agent recipe: its defaults, its script link, its one-line errors, and a real run of a tiny local model in
the files_demo environments that leaves the adapter, metrics, curves and model card."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from resrl_trl.agent_env import AgentReward
from resrl_trl.models import embedded_model
from resrl_trl.recipes import agent_recipe as recipe
from resrl_trl.recipes import common

REPO = Path(__file__).resolve().parents[1]


def test_no_arguments_means_the_offline_agent_demo():
    script_args, training_args, model_args = recipe.parse_args([])
    assert script_args.dataset_name == "files_demo" and script_args.trainer_cls == "ResRLTrainer"
    assert model_args.model_name_or_path is None and model_args.use_peft  # embedded GGUF + LoRA
    assert training_args.use_cpu and training_args.num_generations == 8
    assert training_args.max_tool_calling_iterations == 2 and training_args.output_dir == "outputs/agent_demo"
    assert issubclass(recipe.AgentScriptArguments, common.RecipeArguments)


def test_the_script_is_a_link_and_lists_its_flags():
    script = REPO / "recipes" / "agent.py"
    assert script.is_symlink() and os.readlink(script) == "../resrl_trl/recipes/agent_recipe.py"
    result = subprocess.run(
        [sys.executable, "recipes/agent.py", "--help"], cwd=REPO, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for flag in (
        "--dataset_name",
        "--num_tasks",
        "--call_time_s",
        "--episode_time_s",
        "--max_tool_calling_iterations",
    ):
        assert flag in result.stdout


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A tiny random model with SmolLM2's tokenizer (ChatML, whose template the recipe gives a tools branch)."""
    folder = tmp_path_factory.mktemp("agent_model")
    tokenizer = AutoTokenizer.from_pretrained(embedded_model()[0], gguf_file=embedded_model()[1])
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def small_run(model_dir: Path, out: Path, *extra: str) -> list[str]:
    return [
        *("--model_name_or_path", str(model_dir), "--output_dir", str(out), "--num_tasks", "4"),
        *("--max_steps", "1", "--num_generations", "4", "--per_device_train_batch_size", "4"),
        *("--max_completion_length", "24", "--lora_target_modules", "q_proj", "v_proj"),
        *extra,
    ]


def test_setup_wires_environments_reward_and_tool_template(model_dir, tmp_path):
    trainer = recipe.setup(*recipe.parse_args(small_run(model_dir, tmp_path / "out", "--call_time_s", "2")))
    (reward,) = trainer.reward_funcs
    assert isinstance(reward, AgentReward)
    assert len(trainer.train_dataset) == 4 and set(trainer.train_dataset.column_names) >= {"prompt", "task"}
    (name,) = trainer.environment_factories
    environment = trainer.environment_factories[name]()
    assert environment.call_time_s == 2.0 and sorted(t.__name__ for t in trainer._env_tools[name]) == [
        "cd", "ls", "mkdir", "touch",
    ]  # fmt: skip
    assert "<tool_call>" in trainer.processing_class.chat_template


def test_recipe_trains_a_local_model_and_leaves_its_files(model_dir, tmp_path):
    """A random tiny model makes no valid call: every reward is 0, and NSR still trains the adapter; the run writes
    the adapter, metrics.jsonl with the agent reward's column and the tool metrics, the curves and a model card."""
    out = tmp_path / "out"
    recipe.main(*recipe.parse_args(small_run(model_dir, out, "--advantage_mode", "nsr", "--max_steps", "2")))
    adapter = load_file(out / "adapter_model.safetensors")
    assert any(t.abs().max() > 0 for name, t in adapter.items() if "lora_B" in name)
    steps = [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2]
    assert all(r["rewards/agent_reward/mean"] == 0.0 and "tools/call_frequency" in r for r in steps)
    assert (out / "training_curves.png").stat().st_size > 10_000
    assert "ResRL" in (out / "README.md").read_text()


def run_recipe(*flags: str) -> subprocess.CompletedProcess:
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "-q",
        "--config_file",
        "recipes/accelerate/cpu.yaml",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    return subprocess.run([*command, "recipes/agent.py", *flags], cwd=REPO, env=env, capture_output=True, text=True)


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--dataset_name", "webshop"], "unknown agent dataset 'webshop'"),
        (["--max_prompt_length", "512"], "--max_prompt_length cuts message text"),
        (["--max_tool_calling_iterations", "null"], "--max_tool_calling_iterations is unset"),
        (["--call_time_s", "0"], "--call_time_s must be positive"),
        (["--dataset_train_split", "validation"], "splits 'train' and 'test'"),
    ],
)
def test_a_bad_setting_is_one_message(flags, message):
    result = run_recipe(*flags)
    assert result.returncode != 0
    parts = result.stderr.split("recipes/agent.py: error:")
    assert len(parts) == 2 and message in parts[1] and parts[1].strip().count("\n") == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr


def test_text_games_train_through_the_same_recipe(model_dir, tmp_path, monkeypatch):
    """--dataset_name text_games builds TextWorld games here (cached) and trains a step in them: one tool, act."""
    monkeypatch.setenv("RESRL_TRL_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "out"
    args = recipe.parse_args(small_run(model_dir, out, "--dataset_name", "text_games", "--num_tasks", "1"))
    trainer = recipe.setup(*args)
    assert list(trainer.environment_factories) == ["text_game"]
    assert [t.__name__ for t in trainer._env_tools["text_game"]] == ["act"]
    assert "Objective:" in trainer.train_dataset[0]["prompt"][-1]["content"]
    trainer.train()
    steps = [h for h in trainer.state.log_history if "loss" in h]
    assert steps and steps[0]["rewards/agent_reward/mean"] == 0.0
