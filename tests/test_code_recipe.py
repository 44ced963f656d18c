"""The code recipe: its defaults, its flags reaching the dataset and the reward, its one-line errors, and a real run
of a tiny local model on the built-in task."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import make_model
from safetensors.torch import load_file

from resrl_trl import sandbox
from resrl_trl.recipes import code_recipe as recipe
from resrl_trl.recipes import common

REPO = Path(__file__).resolve().parents[1]


def test_no_arguments_means_the_offline_code_demo():
    script_args, training_args, model_args = recipe.parse_args([])
    assert script_args.dataset_name == "code_basic" and script_args.trainer_cls == "ResRLTrainer"
    assert not script_args.partial_credit and not script_args.allow_unsandboxed
    assert model_args.model_name_or_path is None and model_args.use_peft  # embedded GGUF + LoRA
    assert training_args.use_cpu and training_args.num_generations == 8
    assert training_args.output_dir == "outputs/code_demo"
    script_args, training_args, _ = recipe.parse_args(["--max_steps", "2", "--dataset_name", "humaneval"])
    assert training_args.max_steps == 2 and script_args.dataset_name == "humaneval"


def test_the_script_is_a_link_and_runs_beside_the_standard_librarys_code_module():
    """recipes/code.py links into the package, so the repository's recipes/ folder, whose code.py would hide the
    standard library's `code` module, is never first on sys.path."""
    script = REPO / "recipes" / "code.py"
    assert script.is_symlink() and os.readlink(script) == "../resrl_trl/recipes/code_recipe.py"
    assert script.resolve() == Path(recipe.__file__).resolve()
    result = subprocess.run(
        [sys.executable, "recipes/code.py", "--help"], cwd=REPO, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for flag in ("--dataset_name", "--partial_credit", "--allow_unsandboxed", "--drop_unusable_rows", "--resrl_rank"):
        assert flag in result.stdout


def test_a_missing_demo_config_names_the_flag(monkeypatch, tmp_path):
    monkeypatch.setattr(recipe, "DEMO_CONFIG", tmp_path / "code_demo.yaml")
    with pytest.raises(FileNotFoundError, match="pass --config"):
        recipe.parse_args([])


@pytest.fixture
def model_dir(tmp_path, tokenizer) -> Path:
    folder = tmp_path / "model"
    make_model(tokenizer).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_flags_reach_the_dataset_and_the_reward(model_dir, tmp_path):
    args = recipe.parse_args(
        [
            *("--model_name_or_path", str(model_dir), "--output_dir", str(tmp_path / "out")),
            *("--max_train_samples", "3", "--partial_credit", "true", "--allow_unsandboxed", "true"),
            *(
                "--num_generations",
                "4",
                "--per_device_train_batch_size",
                "8",
                "--lora_target_modules",
                "q_proj",
                "v_proj",
            ),
        ]
    )
    trainer = recipe.setup(*args)
    assert len(trainer.train_dataset) == 3 and set(trainer.train_dataset.column_names) >= {"prompt", "tests"}
    (reward,) = trainer.reward_funcs
    assert reward.partial_credit and reward.sandbox.allow_unsandboxed
    # the reward the trainer holds scores a program against the dataset's tests
    row = trainer.train_dataset[0]
    assert reward(["```python\nprint('no function here')\n```"], [row["tests"]]) == [0.0]


def test_recipe_trains_a_local_model_on_code_and_saves_the_adapter(model_dir, tmp_path):
    """A random tiny model never writes a passing program: every reward is 0, and NSR (A = -1 for failures) still
    trains the adapter. The run leaves the adapter, metrics.jsonl with the code reward's column, the curves and a
    model card."""
    out = tmp_path / "out"
    args = recipe.parse_args(
        [
            *("--model_name_or_path", str(model_dir), "--output_dir", str(out), "--advantage_mode", "nsr"),
            *("--max_steps", "2", "--num_generations", "4", "--per_device_train_batch_size", "8"),
            *("--max_completion_length", "8", "--lora_target_modules", "q_proj", "v_proj"),
        ]
    )
    recipe.main(*args)
    adapter = load_file(out / "adapter_model.safetensors")
    assert any(t.abs().max() > 0 for name, t in adapter.items() if "lora_B" in name)
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in logged if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2]
    assert all(r["rewards/code_reward/mean"] == 0.0 and r["reward"] == 0.0 for r in steps)
    assert (out / "training_curves.png").stat().st_size > 10_000
    card = (out / "README.md").read_text()
    assert "ResRL" in card and "| `advantage_mode` | `nsr` |" in card


def test_a_machine_without_a_sandbox_is_one_message(monkeypatch, capsys):
    """No isolation and no --allow_unsandboxed: refused before anything loads, in one line naming the fix."""
    monkeypatch.setattr(sandbox, "detect_backend", lambda: None)
    with pytest.raises(SystemExit) as stopped:
        recipe.run(["--max_steps", "1"])
    assert stopped.value.code == 2
    error = capsys.readouterr().err
    assert error.startswith("recipes/code.py: error: no sandbox") and "allow_unsandboxed" in error
    assert error.count("\n") == 1


def run_recipe(*flags: str) -> subprocess.CompletedProcess:
    """The recipe as a user runs it (accelerate launch -q), in its own process."""
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "-q",
        "--config_file",
        "recipes/accelerate/cpu.yaml",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    return subprocess.run([*command, "recipes/code.py", *flags], cwd=REPO, env=env, capture_output=True, text=True)


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--no_such_flag", "1"], "--no_such_flag"),
        (["--dataset_name", "no/such.parquet"], "no/such.parquet"),
        (["--trainer_cls", "PPOTrainer"], "--trainer_cls must be one of"),
    ],
)
def test_a_bad_setting_is_one_message(flags, message):
    result = run_recipe(*flags)
    assert result.returncode != 0
    parts = result.stderr.split("recipes/code.py: error:")
    assert len(parts) == 2 and message in parts[1] and parts[1].strip().count("\n") == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr


def test_both_recipes_share_their_machinery():
    """The maths recipe's checks, trainer and run are the shared ones: one implementation for both."""
    from resrl_trl.recipes import math_recipe

    assert issubclass(recipe.CodeScriptArguments, common.RecipeArguments)
    assert issubclass(math_recipe.MathScriptArguments, common.RecipeArguments)
    assert math_recipe.changed_resrl_settings is common.changed_resrl_settings
    assert math_recipe.train is common.train
