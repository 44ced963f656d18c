"""The shipped configs, parsed by their recipe's own parser: the paper's run equals the spec's reference table, and
the code and agent configs keep the maths configs' algorithm settings."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest

from resrl_trl.recipes import agent_recipe, code_recipe, math_recipe

CONFIGS = Path(__file__).resolve().parents[1] / "recipes" / "configs"

# ../shared/spec/resrl.md, "Reference defaults (paper-aligned math run)", with the TRL names it gives.
REFERENCE = {
    "beta": 0.0,
    "scale_rewards": "group",
    "num_generations": 4,
    "loss_type": "bnpo",
    "epsilon": 0.2,
    "delta": 3.0,
    "vllm_importance_sampling_correction": False,
    "max_completion_length": 4096,
    "learning_rate": 1e-6,
    "warmup_steps": 10,
    "weight_decay": 0.1,
    "max_grad_norm": 1.0,
    "num_train_epochs": 1,
    "temperature": 1.0,
    "top_p": 1.0,
    "top_k": 0,
    "chat_template_kwargs": {"enable_thinking": False},
    "resrl_rank": 64,
    "resrl_max_pos_tokens": 4096,
    "resrl_q_low": 0.2,
    "resrl_q_high": 0.8,
    "resrl_min_weight": 0.1,
    "resrl_pos_weight": 0.1,
    "resrl_pca_niter": 4,
    "resrl_hidden_layer": -2,
    "resrl_positive_threshold": 0.0,
    "advantage_mode": "resrl",
}
REFERENCE_SCRIPT = {
    "max_prompt_length": 2048,
    "length_scaled_reward": True,
    "length_scale_start": 3500,
    "length_scale_end": 0.7,
}
GPUS = 8  # the config's batch layout is for 8 GPUs


def parse(name: str):
    # --use_cpu: the configs ask for bf16, which the parser checks against the hardware it runs on
    recipe = math_recipe
    if name.startswith("code_") or "_code" in name:
        recipe = code_recipe
    elif name.startswith("agent_") or "_agent" in name:
        recipe = agent_recipe
    return recipe.parse_args(["--config", str(CONFIGS / name), "--use_cpu", "true"])


def test_paper_config_equals_the_reference_table():
    script_args, args, model_args = parse("qwen3_4b_math.yaml")
    assert model_args.model_name_or_path == "Qwen/Qwen3-4B"
    for name, value in REFERENCE.items():
        assert getattr(args, name) == (pytest.approx(value) if isinstance(value, float) else value), name
    for name, value in REFERENCE_SCRIPT.items():
        assert getattr(script_args, name) == value, name
    assert str(args.lr_scheduler_type.value) == "constant_with_warmup"
    assert args.use_vllm and args.vllm_mode == "colocate"
    # micro-batch 4 rows, 64 prompts per optimiser step, 256 prompts per generation (on 8 GPUs)
    assert args.per_device_train_batch_size == 4
    per_step = GPUS * args.per_device_train_batch_size * args.gradient_accumulation_steps
    per_generation = GPUS * args.per_device_train_batch_size * args.steps_per_generation
    assert (per_step // args.num_generations, per_generation // args.num_generations) == (64, 256)


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_every_config_parses_and_keeps_groups_whole(name):
    """Each config parses, its micro-batches hold whole groups (the paper's in-step subspaces), and it saves at
    generation boundaries."""
    _, args, _ = parse(name)
    assert args.per_device_train_batch_size % args.num_generations == 0
    assert args.resrl_subspace == "step"
    # checkpoints at the start of a generation, so that a resumed run repeats the uninterrupted one
    steps_per_generation = args.steps_per_generation * args.num_iterations // args.gradient_accumulation_steps
    assert args.save_strategy != "steps" or args.save_steps % steps_per_generation == 0


def test_one_gpu_config_is_lora_with_colocated_vllm():
    _, args, model_args = parse("qwen3_1.7b_lora_1gpu.yaml")
    assert model_args.use_peft and model_args.model_name_or_path == "Qwen/Qwen3-1.7B"
    assert args.use_vllm and args.vllm_mode == "colocate" and args.loss_type == "bnpo" and args.delta == 3.0


# What a code config may change from its maths twin: the data, the reward, where it writes.
DATA_AND_REWARD = {"dataset_name", "dataset_config", "reward", "partial_credit", "allow_unsandboxed", "output_dir"}


@pytest.mark.parametrize(
    "code, maths",
    [("qwen3_4b_code.yaml", "qwen3_4b_math.yaml"), ("qwen3_1.7b_code_lora_1gpu.yaml", "qwen3_1.7b_lora_1gpu.yaml")],
)
def test_code_configs_keep_the_maths_algorithm_settings(code, maths):
    """Every training, model and shared script setting of a code config equals its maths config's (for the paper's
    run: the reference table above), so a code run is the same algorithm on other data."""
    code_script, code_args, code_model = parse(code)
    maths_script, maths_args, maths_model = parse(maths)
    assert code_script.dataset_name == "codeio" and not code_script.partial_credit
    assert vars(code_model) == vars(maths_model)
    settings = {spec.name for spec in fields(code_args)} - DATA_AND_REWARD
    assert "resrl_rank" in settings and "delta" in settings
    assert {name for name in settings if getattr(code_args, name) != getattr(maths_args, name)} == set()
    shared = set(vars(code_script)) & set(vars(maths_script)) - DATA_AND_REWARD
    assert {name for name in shared if getattr(code_script, name) != getattr(maths_script, name)} == set()
    assert shared >= set(REFERENCE_SCRIPT) | {"max_prompt_length", "trainer_cls"}


# What the agent config changes besides the data and the reward: the tool loop's bounds. Its prompts are not cut
# (the recipe refuses --max_prompt_length: an agent prompt is mostly its tools' schemas).
AGENT_LOOP = {"max_tool_calling_iterations", "call_time_s", "episode_time_s", "num_tasks", "max_prompt_length"}


def test_agent_config_keeps_the_maths_algorithm_settings():
    """The GPU agent config runs the paper's algorithm (every other training, model and shared script setting equal
    to qwen3_4b_math.yaml's) on BFCL's training split, with vLLM colocated and a bounded tool loop."""
    agent_script, agent_args, agent_model = parse("qwen3_4b_agent.yaml")
    maths_script, maths_args, maths_model = parse("qwen3_4b_math.yaml")
    assert agent_script.dataset_name == "bfcl_multi_turn_base" and agent_script.dataset_train_split == "train"
    assert agent_args.use_vllm and agent_args.vllm_mode == "colocate"
    assert agent_args.max_tool_calling_iterations == 8 and agent_script.max_prompt_length is None
    assert vars(agent_model) == vars(maths_model)
    settings = {spec.name for spec in fields(agent_args)} - DATA_AND_REWARD - AGENT_LOOP
    assert {name for name in settings if getattr(agent_args, name) != getattr(maths_args, name)} == set()
    shared = set(vars(agent_script)) & set(vars(maths_script)) - DATA_AND_REWARD - AGENT_LOOP
    assert {name for name in shared if getattr(agent_script, name) != getattr(maths_script, name)} == set()
