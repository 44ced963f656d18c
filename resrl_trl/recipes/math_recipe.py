"""Train a model on maths with ResRL (or GRPO) and a verifiable reward.

    accelerate launch recipes/math.py                                     # the offline CPU demo
    accelerate launch recipes/math.py --max_steps 2                       # a smoke run of it
    accelerate launch recipes/math.py --resume_from_checkpoint true       # continue from the latest checkpoint
    accelerate launch --config_file recipes/accelerate/zero3.yaml recipes/math.py \
        --config recipes/configs/qwen3_4b_math.yaml                       # the paper-aligned run

Without ``--config``, recipes/configs/demo.yaml supplies the defaults; any flag overrides a YAML value. The run writes
``metrics.jsonl`` and ``training_curves.png`` into ``output_dir``. A bad setting stops the run before training with one
message (``accelerate launch -q`` leaves out accelerate's own report of the failed command).

``recipes/math.py`` is a symbolic link to this module: Python resolves a linked script before putting its folder first
on ``sys.path``, so that folder is this package's ``recipes/``, not the repository's, where a file named ``math.py``
would hide the standard library's ``math``.
"""

from __future__ import annotations

import os
import sys
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path

from transformers.trainer_utils import get_last_checkpoint
from trl import GRPOConfig, GRPOTrainer, ModelConfig, ScriptArguments, TrlParser, get_peft_config
from trl.rewards import accuracy_reward

from resrl_trl import ResRLConfig, ResRLTrainer
from resrl_trl.callbacks import CURVES_FILE, METRICS_FILE, TrainingCurvesCallback
from resrl_trl.data import cut_long_prompts, load_math_dataset
from resrl_trl.models import load_model_and_tokenizer, plain_model_folder
from resrl_trl.rewards import LengthScaledReward, math_reward

# recipes/math.py links to this file; resolving the link finds the repository, whose recipes/configs hold the YAMLs.
DEMO_CONFIG = Path(__file__).resolve().parents[2] / "recipes" / "configs" / "demo.yaml"
TRAINERS = {"ResRLTrainer": ResRLTrainer, "GRPOTrainer": GRPOTrainer}
REWARDS = {"math": math_reward, "accuracy": accuracy_reward}


@dataclass
class MathScriptArguments(ScriptArguments):
    dataset_name: str | None = field(
        default="arithmetic",
        metadata={"help": "'arithmetic' (built in), a Hub id, or a local .parquet/.json/.jsonl/.csv file."},
    )
    trainer_cls: str = field(
        default="ResRLTrainer",
        metadata={
            "help": "ResRLTrainer, or GRPOTrainer to run TRL's own trainer unchanged (for a comparison with TRL "
            "itself; no ResRL setting may then differ from its default). For GRPO's advantages with ResRL's logging "
            "and TRL's losses, keep ResRLTrainer and pass --advantage_mode grpo."
        },
    )
    gguf_file: str | None = field(default=None, metadata={"help": "GGUF file inside --model_name_or_path."})
    reward: str = field(
        default="math", metadata={"help": "'math' (any final-answer form) or 'accuracy' (TRL's, LaTeX only)."}
    )
    length_scaled_reward: bool = field(default=False, metadata={"help": "Scale long positive rewards down."})
    length_scale_start: int = field(default=3500, metadata={"help": "Tokens up to which rewards are not scaled."})
    length_scale_end: float = field(default=0.7, metadata={"help": "Reward scale at max_completion_length."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Use only this many training rows."})
    drop_unusable_rows: bool = field(
        default=False, metadata={"help": "Leave out rows without a prompt or a reference answer instead of stopping."}
    )
    max_prompt_length: int | None = field(
        default=None,
        metadata={
            "help": "Cut longer prompts (chat template applied) from the left to this many tokens (paper: 2048)."
        },
    )


def setup(script_args: MathScriptArguments, training_args: ResRLConfig, model_args: ModelConfig) -> GRPOTrainer:
    """The trainer the arguments describe; every bad setting is found here, before training starts."""
    resume, output_dir = resume_target(training_args.resume_from_checkpoint), training_args.output_dir
    if resume is True and not (os.path.isdir(output_dir) and get_last_checkpoint(output_dir)):
        raise ValueError(
            f"--resume_from_checkpoint true: {output_dir} holds no checkpoint yet; start without the flag, or pass "
            "a checkpoint folder"
        )
    if isinstance(resume, str) and not os.path.isdir(resume):
        raise ValueError(f"--resume_from_checkpoint {resume}: no such checkpoint folder")
    if script_args.trainer_cls not in TRAINERS:
        raise ValueError(f"--trainer_cls must be one of {sorted(TRAINERS)}, got {script_args.trainer_cls!r}")
    changed = changed_resrl_settings(training_args)
    if script_args.trainer_cls == "GRPOTrainer" and changed:
        raise ValueError(
            f"--trainer_cls GRPOTrainer runs TRL's trainer unchanged, which ignores {', '.join(changed)}: drop "
            "--trainer_cls GRPOTrainer to use them (--advantage_mode grpo gives GRPO's advantages in ResRLTrainer), "
            "or leave them at their defaults"
        )
    if script_args.reward not in REWARDS:
        raise ValueError(f"--reward must be one of {sorted(REWARDS)}, got {script_args.reward!r}")
    train_dataset = load_math_dataset(
        script_args.dataset_name,
        script_args.dataset_train_split,
        script_args.dataset_config,
        training_args.seed,
        drop_unusable_rows=script_args.drop_unusable_rows,
    )
    if script_args.max_train_samples is not None:
        train_dataset = train_dataset.select(range(min(script_args.max_train_samples, len(train_dataset))))
    model_path, gguf_file = model_args.model_name_or_path, script_args.gguf_file
    if training_args.use_vllm:  # vLLM loads the policy's folder (model.name_or_path), never a GGUF
        model_path, gguf_file = plain_model_folder(model_path, gguf_file), None
    model, tokenizer = load_model_and_tokenizer(
        model_path,
        gguf_file,
        dtype=model_args.dtype,
        attn_implementation=model_args.attn_implementation,
        revision=model_args.model_revision,
    )
    if script_args.max_prompt_length is not None:
        train_dataset, cut = cut_long_prompts(
            train_dataset, tokenizer, script_args.max_prompt_length, training_args.chat_template_kwargs
        )
        print(f"{cut} of {len(train_dataset)} prompts cut to {script_args.max_prompt_length} tokens")
    reward = REWARDS[script_args.reward]
    if script_args.length_scaled_reward:
        reward = LengthScaledReward(
            reward, script_args.length_scale_start, training_args.max_completion_length, script_args.length_scale_end
        )
    return TRAINERS[script_args.trainer_cls](
        model=model,
        reward_funcs=reward,
        args=training_args,
        train_dataset=train_dataset,
        processing_class=tokenizer,
        peft_config=get_peft_config(model_args),
        callbacks=[TrainingCurvesCallback("GRPO" if script_args.trainer_cls == "GRPOTrainer" else None)],
    )


def changed_resrl_settings(args: ResRLConfig) -> list[str]:
    """The fields ResRLConfig adds to GRPOConfig whose values differ from their defaults (for ``resrl_subspace``: from
    what its default, ``"auto"``, resolves to)."""
    grpo_fields = {spec.name for spec in fields(GRPOConfig)}
    changed = []
    for spec in fields(ResRLConfig):
        if spec.name in grpo_fields:
            continue
        default = spec.default_factory() if spec.default is MISSING else spec.default
        if spec.name == "resrl_subspace" and default == "auto":  # resolved when the config was built
            default = "step" if args.per_device_train_batch_size % args.num_generations == 0 else "rollout"
        if getattr(args, spec.name) != default:
            changed.append(f"--{spec.name} {getattr(args, spec.name)}")
    return changed


def resume_target(value: str | None) -> str | bool | None:
    """``--resume_from_checkpoint``: a checkpoint folder, or ``true`` for the latest one in ``output_dir``."""
    if value is None or value.lower() in ("", "false", "no"):
        return None
    return True if value.lower() in ("true", "yes", "latest") else value


def main(script_args: MathScriptArguments, training_args: ResRLConfig, model_args: ModelConfig) -> None:
    train(setup(script_args, training_args, model_args), training_args)


def train(trainer: GRPOTrainer, training_args: ResRLConfig) -> None:
    """Train (resuming if asked), save the model, and say where the run's files are."""
    trainer.train(resume_from_checkpoint=resume_target(training_args.resume_from_checkpoint))
    trainer.save_model(training_args.output_dir)
    if not trainer.accelerator.is_main_process:
        return
    rewards = [log["reward"] for log in trainer.state.log_history if "reward" in log]
    if len(rewards) >= 2:
        span = max(1, len(rewards) // 3)
        first, last = sum(rewards[:span]) / span, sum(rewards[-span:]) / span
        print(f"mean reward: first {span} steps {first:.3f} -> last {span} steps {last:.3f}")
    out = Path(training_args.output_dir)
    print(f"model saved to {out}; metrics: {out / METRICS_FILE}; training curves: {out / CURVES_FILE}")


def parse_args(argv: list[str]) -> tuple[MathScriptArguments, ResRLConfig, ModelConfig]:
    if "--config" not in argv:
        if not DEMO_CONFIG.is_file():
            raise FileNotFoundError(
                f"no --config given, and the demo config {DEMO_CONFIG} is missing (it ships with the repository, "
                "not with the installed package): pass --config <file.yaml>"
            )
        argv = ["--config", str(DEMO_CONFIG), *argv]
    parser = TrlParser((MathScriptArguments, ResRLConfig, ModelConfig))
    return parser.parse_args_and_config(argv)


def run(argv: list[str]) -> None:
    """Parse, set up and train; a bad setting ends the run with one message on the first process, not a traceback."""
    try:
        arguments = parse_args(argv)
        trainer = setup(*arguments)
    except (ValueError, TypeError, FileNotFoundError, ModuleNotFoundError) as error:
        if os.environ.get("RANK", "0") == "0":
            print(f"recipes/math.py: error: {error}", file=sys.stderr)
        sys.exit(2)
    train(trainer, arguments[1])


if __name__ == "__main__":
    run(sys.argv[1:])
