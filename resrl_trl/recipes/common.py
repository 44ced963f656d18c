"""What the training recipes share: their common flags, the checks made before anything loads, the model, the
trainer, the run, and the one-line errors. A recipe adds its dataset and reward, and nothing else.

A recipe's ``main()`` parses ``(its script arguments, ResRLConfig, ModelConfig)`` with TRL's ``TrlParser``: every
field is a flag or a YAML key, and without ``--config`` the recipe's default YAML (in the repository's
``recipes/configs``) supplies the values that flags do not override.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

from datasets import Dataset
from transformers.trainer_utils import get_last_checkpoint
from trl import GRPOConfig, GRPOTrainer, ModelConfig, ScriptArguments, TrlParser, get_peft_config

from resrl_trl import ResRLConfig, ResRLTrainer
from resrl_trl.callbacks import CURVES_FILE, METRICS_FILE, TrainingCurvesCallback
from resrl_trl.data import cut_long_prompts
from resrl_trl.models import load_model_and_tokenizer, plain_model_folder
from resrl_trl.rewards import LengthScaledReward
from resrl_trl.tool_chat import add_tool_calling

__all__ = [
    "CONFIGS",
    "SETTING_ERRORS",
    "TRAINERS",
    "RecipeArguments",
    "build_trainer",
    "changed_resrl_settings",
    "check_run_settings",
    "parse_args",
    "resume_target",
    "run",
    "train",
]

# A recipe's module lies in resrl_trl/recipes and its script links to it; the YAMLs are in the repository's recipes/.
CONFIGS = Path(__file__).resolve().parents[2] / "recipes" / "configs"
TRAINERS = {"ResRLTrainer": ResRLTrainer, "GRPOTrainer": GRPOTrainer}
# What a bad setting raises before training starts: each ends the run with one message, not a traceback.
SETTING_ERRORS: tuple[type[BaseException], ...] = (ValueError, TypeError, FileNotFoundError, ModuleNotFoundError)

Arguments = tuple[Any, ResRLConfig, ModelConfig]


@dataclass
class RecipeArguments(ScriptArguments):
    """The flags every recipe has besides ResRLConfig's and ModelConfig's; a recipe's own class adds its dataset's
    default and its reward's settings."""

    trainer_cls: str = field(
        default="ResRLTrainer",
        metadata={
            "help": "ResRLTrainer, or GRPOTrainer to run TRL's own trainer unchanged (for a comparison with TRL "
            "itself; no ResRL setting may then differ from its default). For GRPO's advantages with ResRL's logging "
            "and TRL's losses, keep ResRLTrainer and pass --advantage_mode grpo."
        },
    )
    gguf_file: str | None = field(default=None, metadata={"help": "GGUF file inside --model_name_or_path."})
    length_scaled_reward: bool = field(default=False, metadata={"help": "Scale long positive rewards down."})
    length_scale_start: int = field(default=3500, metadata={"help": "Tokens up to which rewards are not scaled."})
    length_scale_end: float = field(default=0.7, metadata={"help": "Reward scale at max_completion_length."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Use only this many training rows."})
    drop_unusable_rows: bool = field(
        default=False,
        metadata={"help": "Leave out rows that cannot be trained on (no prompt, no reference) instead of stopping."},
    )
    max_prompt_length: int | None = field(
        default=None,
        metadata={
            "help": "Cut longer prompts (chat template applied) from the left to this many tokens (paper: 2048)."
        },
    )


def check_run_settings(script_args: RecipeArguments, training_args: ResRLConfig) -> None:
    """Refuse, before anything loads, a resume target that does not exist and a trainer that cannot run the
    settings."""
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


def build_trainer(
    script_args: RecipeArguments,
    training_args: ResRLConfig,
    model_args: ModelConfig,
    train_dataset: Dataset,
    reward: Callable[..., list[float | None]],
    environment_factory: Any = None,
) -> GRPOTrainer:
    """The trainer for ``train_dataset`` and ``reward``: the model (a plain folder for vLLM), prompts cut to
    ``max_prompt_length``, the length scaling of the reward, LoRA from ``model_args``, and the metrics callback.
    With an ``environment_factory`` (the agent recipe), TRL runs its tool loop, and a ChatML template without a
    tools branch gets one (:func:`resrl_trl.tool_chat.add_tool_calling`)."""
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
    if environment_factory is not None:
        tokenizer = add_tool_calling(tokenizer)
    if script_args.max_prompt_length is not None:
        train_dataset, cut = cut_long_prompts(
            train_dataset, tokenizer, script_args.max_prompt_length, training_args.chat_template_kwargs
        )
        print(f"{cut} of {len(train_dataset)} prompts cut to {script_args.max_prompt_length} tokens")
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
        **({"environment_factory": environment_factory} if environment_factory is not None else {}),
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
            default = args.auto_subspace
        if getattr(args, spec.name) != default:
            changed.append(f"--{spec.name} {getattr(args, spec.name)}")
    return changed


def resume_target(value: str | None) -> str | bool | None:
    """``--resume_from_checkpoint``: a checkpoint folder, or ``true`` for the latest one in ``output_dir``."""
    if value is None or value.lower() in ("", "false", "no"):
        return None
    return True if value.lower() in ("true", "yes", "latest") else value


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


def parse_args(argv: list[str], script_class: type, default_config: Path) -> Arguments:
    """``(script_class instance, ResRLConfig, ModelConfig)`` from ``argv``, starting from ``default_config`` when
    ``argv`` names no ``--config``."""
    if "--config" not in argv:
        if not default_config.is_file():
            raise FileNotFoundError(
                f"no --config given, and the default config {default_config} is missing (it ships with the "
                "repository, not with the installed package): pass --config <file.yaml>"
            )
        argv = ["--config", str(default_config), *argv]
    parser = TrlParser((script_class, ResRLConfig, ModelConfig))
    return parser.parse_args_and_config(argv)


def run(
    argv: list[str],
    parse: Callable[[list[str]], Arguments],
    setup: Callable[..., GRPOTrainer],
    script: str,
    errors: tuple[type[BaseException], ...] = (),
) -> None:
    """Parse, set up and train; a bad setting (:data:`SETTING_ERRORS`, or one of the recipe's own ``errors``) ends
    the run with one message on the first process (``<script>: error: ...``), not a traceback."""
    try:
        arguments = parse(argv)
        trainer = setup(*arguments)
    except (*SETTING_ERRORS, *errors) as error:
        if os.environ.get("RANK", "0") == "0":
            print(f"{script}: error: {error}", file=sys.stderr)
        sys.exit(2)
    train(trainer, arguments[1])
