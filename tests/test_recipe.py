"""The math recipe: its defaults, its errors, and a real run from a local model folder (the Hub-id code path)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import make_model
from safetensors.torch import load_file

from resrl_trl.recipes import math_recipe as recipe

REPO = Path(__file__).resolve().parents[1]


def test_no_arguments_means_the_offline_demo():
    script_args, training_args, model_args = recipe.parse_args([])
    assert script_args.dataset_name == "arithmetic" and script_args.trainer_cls == "ResRLTrainer"
    assert model_args.model_name_or_path is None and model_args.use_peft  # embedded GGUF + LoRA
    assert training_args.use_cpu and training_args.num_generations == 8
    script_args, training_args, _ = recipe.parse_args(["--max_steps", "2", "--trainer_cls", "GRPOTrainer"])
    assert training_args.max_steps == 2 and script_args.trainer_cls == "GRPOTrainer"


def test_the_script_is_a_link_whose_folder_hides_no_module():
    """Run as a script, recipes/math.py puts the folder of the file it links to first on sys.path: that folder must
    not hold a module named like one of the standard library's (as recipes/math.py would be)."""
    script = REPO / "recipes" / "math.py"
    assert script.is_symlink() and script.resolve() == Path(recipe.__file__).resolve()
    names = {path.stem for path in script.resolve().parent.iterdir() if path.suffix == ".py"}
    assert names == {"__init__", "common", "math_recipe", "code_recipe", "agent_recipe"}
    assert not names & set(sys.stdlib_module_names)


def test_the_script_runs_with_the_standard_librarys_math():
    result = subprocess.run(
        [sys.executable, "recipes/math.py", "--help"], cwd=REPO, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "--trainer_cls" in result.stdout and "--advantage_mode" in result.stdout


def test_a_missing_demo_config_names_the_flag(monkeypatch, tmp_path):
    """Installed without the repository, the recipe has no demo config to start from: it says to pass --config."""
    monkeypatch.setattr(recipe, "DEMO_CONFIG", tmp_path / "demo.yaml")
    with pytest.raises(FileNotFoundError, match="pass --config"):
        recipe.parse_args([])
    assert recipe.parse_args(["--config", str(REPO / "recipes" / "configs" / "demo.yaml")])[0].dataset_name


@pytest.mark.parametrize(
    "flags, refused",
    [
        (["--advantage_mode", "grpo"], "--advantage_mode grpo"),
        (["--resrl_rank", "8"], "--resrl_rank 8"),
        (["--resrl_subspace", "rollout"], "--resrl_subspace rollout"),
        (["--resrl_subspace", "step"], None),  # what the default, auto, resolves to with whole groups
        (["--resrl_rank", "64", "--resrl_q_low", "0.2"], None),  # the defaults, spelled out (as the paper's config)
        (["--learning_rate", "0.1"], None),
    ],
)
def test_trl_trainer_refuses_resrl_settings(flags, refused):
    """--trainer_cls GRPOTrainer is TRL unchanged: a ResRL setting changed with it would be silently ignored."""
    args = recipe.parse_args(["--trainer_cls", "GRPOTrainer", *flags])
    if refused is None:
        assert recipe.changed_resrl_settings(args[1]) == []
        return
    with pytest.raises(ValueError, match="GRPOTrainer") as error:
        recipe.setup(*args)
    assert refused in str(error.value) and "--advantage_mode grpo" in str(error.value)
    assert recipe.changed_resrl_settings(recipe.parse_args(flags)[1])  # ResRLTrainer takes them


def test_unknown_trainer_is_refused():
    args = recipe.parse_args(["--trainer_cls", "PPOTrainer"])
    with pytest.raises(ValueError, match="--trainer_cls must be one of"):
        recipe.main(*args)


@pytest.mark.parametrize("trainer_cls, mode", [("ResRLTrainer", "nsr"), ("GRPOTrainer", "resrl")])
def test_recipe_trains_a_local_model_with_lora_and_saves_the_adapter(tmp_path, tokenizer, trainer_cls, mode):
    """A random tiny model never answers correctly: every reward is 0. GRPO's group-normalised advantages are then 0
    and the adapter stays at its initialisation; NSR still pushes down the wrong answers (A = -1) and trains it."""
    model_dir = tmp_path / "model"
    make_model(tokenizer).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    out = tmp_path / "out"
    args = recipe.parse_args(
        [
            "--model_name_or_path",
            str(model_dir),
            "--trainer_cls",
            trainer_cls,
            "--advantage_mode",
            mode,
            "--output_dir",
            str(out),
            "--max_steps",
            "2",
            "--num_generations",
            "4",
            "--per_device_train_batch_size",
            "8",
            "--max_completion_length",
            "8",
            "--lora_target_modules",
            "q_proj",
            "v_proj",
        ]
    )
    recipe.main(*args)
    assert (out / "adapter_config.json").is_file()
    # LoRA's B matrices start at zero, so a non-zero B in the saved adapter means the run updated it
    adapter = load_file(out / "adapter_model.safetensors")
    lora_b = [t for name, t in adapter.items() if "lora_B" in name]
    assert lora_b and any(t.abs().max() > 0 for t in lora_b) == (mode == "nsr")
    # the run's metrics, its training curves, and a model card that names the method
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged if "loss" in r] == [1, 2] and all("reward" in r for r in logged if "loss" in r)
    assert (out / "training_curves.png").stat().st_size > 10_000
    card = (out / "README.md").read_text()
    if trainer_cls == "ResRLTrainer":
        assert "ResRL" in card and "2605.00380" in card and "| `advantage_mode` | `nsr` |" in card
    assert not (out / ".resrl-staging").exists()


def run_recipe(*flags: str, launcher: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """The recipe as a user runs it (accelerate launch), in its own process."""
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", "recipes/accelerate/cpu.yaml"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    return subprocess.run(
        [*command, *launcher, "recipes/math.py", *flags],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )


def step_losses(output_dir: Path) -> list[tuple[int, float]]:
    """(step, loss) of every training log line of the run's metrics.jsonl, in file order."""
    lines = (output_dir / "metrics.jsonl").read_text().splitlines()
    return [(r["step"], r["loss"]) for r in map(json.loads, lines) if "loss" in r]


def test_recipe_resumes_from_a_checkpoint(tmp_path, tokenizer):
    """Killed after step 3 (checkpoint-2 its latest), resumed with --resume_from_checkpoint true: steps 3-4 repeat the
    uninterrupted run's losses, checkpoint-2 is left as it was, and metrics.jsonl holds each step once (the stopped
    run's step 3 is dropped, since it runs again)."""
    model_dir = tmp_path / "model"
    make_model(tokenizer).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    common = [
        *("--model_name_or_path", str(model_dir), "--advantage_mode", "nsr", "--num_generations", "4"),
        *("--per_device_train_batch_size", "8", "--max_completion_length", "8", "--lr_scheduler_type", "constant"),
        *("--save_strategy", "steps", "--save_steps", "2", "--lora_target_modules", "q_proj", "v_proj"),
    ]
    parts = tmp_path / "parts"
    refused = run_recipe(*common, "--output_dir", str(parts), "--resume_from_checkpoint", "true")
    assert refused.returncode != 0 and "holds no checkpoint yet" in refused.stderr
    whole = run_recipe(*common, "--max_steps", "4", "--output_dir", str(tmp_path / "whole"))
    assert whole.returncode == 0, whole.stderr[-3000:]
    stopped = run_recipe(*common, "--max_steps", "3", "--output_dir", str(parts))
    assert stopped.returncode == 0, stopped.stderr[-3000:]
    # Transformers saves a last checkpoint when a run ends; a run killed during step 3 has none: remove it.
    shutil.rmtree(parts / "checkpoint-3")
    checkpoint = parts / "checkpoint-2"
    before = {f.name: (f.stat().st_mtime_ns, f.read_bytes()) for f in checkpoint.iterdir() if f.is_file()}
    resumed = run_recipe(*common, "--max_steps", "4", "--output_dir", str(parts), "--resume_from_checkpoint", "true")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    full, steps = step_losses(tmp_path / "whole"), step_losses(parts)
    assert [step for step, _ in steps] == [1, 2, 3, 4] and any(loss for _, loss in full)
    for (step, loss), (_, expected) in zip(steps[2:], full[2:], strict=True):
        assert loss == pytest.approx(expected, abs=1e-6), step
    after = {f.name: (f.stat().st_mtime_ns, f.read_bytes()) for f in checkpoint.iterdir() if f.is_file()}
    assert after == before
    assert (parts / "checkpoint-4").is_dir() and not (parts / ".resrl-staging").exists()


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--trainer_cls", "PPOTrainer"], "--trainer_cls must be one of"),
        (["--resrl_q_low", "0.9", "--resrl_q_high", "0.1"], "resrl_q_low"),
        (["--dataset_name", "no/such.parquet"], "no/such.parquet"),
    ],
)
def test_a_bad_setting_is_one_message(flags, message):
    """One line from the recipe, no traceback of its own; `accelerate launch -q` adds none of accelerate's either."""
    result = run_recipe(*flags, launcher=("-q",))
    assert result.returncode != 0
    parts = result.stderr.split("recipes/math.py: error:")
    assert len(parts) == 2 and message in parts[1], result.stderr[-3000:]
    assert "Traceback" not in result.stderr
