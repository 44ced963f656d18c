"""The math recipe: its defaults, its errors, and a real run from a local model folder (the Hub-id code path)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
from conftest import make_model
from safetensors.torch import load_file

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "math.py"


def load_recipe():
    spec = importlib.util.spec_from_file_location("math_recipe", RECIPE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_no_arguments_means_the_offline_demo():
    recipe = load_recipe()
    script_args, training_args, model_args = recipe.parse_args([])
    assert script_args.dataset_name == "arithmetic" and script_args.trainer_cls == "ResRLTrainer"
    assert model_args.model_name_or_path is None and model_args.use_peft  # embedded GGUF + LoRA
    assert training_args.use_cpu and training_args.num_generations == 8
    script_args, training_args, _ = recipe.parse_args(["--max_steps", "2", "--trainer_cls", "GRPOTrainer"])
    assert training_args.max_steps == 2 and script_args.trainer_cls == "GRPOTrainer"


def test_unknown_trainer_is_refused():
    recipe = load_recipe()
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
    recipe = load_recipe()
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


def test_paper_config_parses_to_the_reference_defaults():
    recipe = load_recipe()
    config = str(RECIPE.parent / "configs" / "qwen3_4b_math.yaml")
    script_args, args, model_args = recipe.parse_args(["--config", config, "--use_cpu", "true"])  # no GPU here
    assert model_args.model_name_or_path == "Qwen/Qwen3-4B" and script_args.length_scaled_reward
    assert (args.num_generations, args.per_device_train_batch_size, args.beta) == (4, 4, 0.0)
    assert (args.learning_rate, args.temperature, args.max_completion_length) == (1e-6, 0.6, 4096)
    assert (args.resrl_rank, args.resrl_min_weight, args.resrl_pos_weight, args.resrl_hidden_layer) == (
        64,
        0.1,
        0.1,
        -2,
    )
