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

import sys
from dataclasses import dataclass, field

from trl import GRPOTrainer, ModelConfig
from trl.rewards import accuracy_reward

from resrl_trl import ResRLConfig
from resrl_trl.data import load_math_dataset
from resrl_trl.recipes import common
from resrl_trl.recipes.common import changed_resrl_settings, resume_target, train  # noqa: F401  (the recipe's API)
from resrl_trl.rewards import math_reward

DEMO_CONFIG = common.CONFIGS / "demo.yaml"
REWARDS = {"math": math_reward, "accuracy": accuracy_reward}


@dataclass
class MathScriptArguments(common.RecipeArguments):
    dataset_name: str | None = field(
        default="arithmetic",
        metadata={"help": "'arithmetic' (built in), a Hub id, or a local .parquet/.json/.jsonl/.csv file."},
    )
    reward: str = field(
        default="math", metadata={"help": "'math' (any final-answer form) or 'accuracy' (TRL's, LaTeX only)."}
    )


def setup(script_args: MathScriptArguments, training_args: ResRLConfig, model_args: ModelConfig) -> GRPOTrainer:
    """The trainer the arguments describe; every bad setting is found here, before training starts."""
    common.check_run_settings(script_args, training_args)
    if script_args.reward not in REWARDS:
        raise ValueError(f"--reward must be one of {sorted(REWARDS)}, got {script_args.reward!r}")
    train_dataset = load_math_dataset(
        script_args.dataset_name,
        script_args.dataset_train_split,
        script_args.dataset_config,
        training_args.seed,
        drop_unusable_rows=script_args.drop_unusable_rows,
    )
    return common.build_trainer(script_args, training_args, model_args, train_dataset, REWARDS[script_args.reward])


def main(script_args: MathScriptArguments, training_args: ResRLConfig, model_args: ModelConfig) -> None:
    train(setup(script_args, training_args, model_args), training_args)


def parse_args(argv: list[str]) -> tuple[MathScriptArguments, ResRLConfig, ModelConfig]:
    return common.parse_args(argv, MathScriptArguments, DEMO_CONFIG)


def run(argv: list[str]) -> None:
    """Parse, set up and train; a bad setting ends the run with one message, not a traceback."""
    common.run(argv, parse_args, setup, "recipes/math.py")


if __name__ == "__main__":
    run(sys.argv[1:])
