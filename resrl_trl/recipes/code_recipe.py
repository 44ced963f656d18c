"""Train a model on programming problems with ResRL (or GRPO), rewarded by running its code against tests.

    accelerate launch recipes/code.py                                     # the offline CPU demo (code_basic)
    accelerate launch recipes/code.py --max_steps 2                       # a smoke run of it
    accelerate launch recipes/code.py --dataset_name codeio               # reasoning-gym's CodeI/O problems
    accelerate launch --config_file recipes/accelerate/zero3.yaml recipes/code.py \
        --config recipes/configs/qwen3_4b_code.yaml                       # the paper's settings, on 8 GPUs

Without ``--config``, recipes/configs/code_demo.yaml supplies the defaults; any flag overrides a YAML value. The
datasets are those of :func:`resrl_trl.code_data.load_code_dataset`; the reward is a
:class:`~resrl_trl.code_check.CodeReward` (programs run in a sandbox; ``--partial_credit`` pays the fraction of tests
passed, ``--allow_unsandboxed`` runs them without isolation where the machine has none). Everything else (flags,
checks, files written, one-line errors) is the maths recipe's (:mod:`resrl_trl.recipes.common`).

``recipes/code.py`` is a symbolic link to this module, for the reason ``recipes/math.py`` is one: the repository's
``recipes/`` folder would otherwise come first on ``sys.path`` with a ``code.py`` that hides the standard library's
``code`` module.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

from trl import GRPOTrainer, ModelConfig

from resrl_trl import ResRLConfig
from resrl_trl.code_data import load_code_dataset
from resrl_trl.recipes import common
from resrl_trl.rewards import CodeReward
from resrl_trl.sandbox import SandboxUnavailable

DEMO_CONFIG = common.CONFIGS / "code_demo.yaml"


@dataclass
class CodeScriptArguments(common.RecipeArguments):
    dataset_name: str | None = field(
        default="code_basic",
        metadata={
            "help": "'code_basic' (built in), 'codeio' (reasoning-gym), 'humaneval', a Hub id, or a local "
            ".parquet/.json/.jsonl/.csv file with stdin/stdout cases or Python tests."
        },
    )
    partial_credit: bool = field(
        default=False, metadata={"help": "Pay the fraction of tests passed instead of 1 only when all pass."}
    )
    allow_unsandboxed: bool = field(
        default=False,
        metadata={
            "help": "Where neither bubblewrap nor user namespaces work, run programs with resource limits only, "
            "without isolation (trusted models only)."
        },
    )


def setup(script_args: CodeScriptArguments, training_args: ResRLConfig, model_args: ModelConfig) -> GRPOTrainer:
    """The trainer the arguments describe; every bad setting is found here, before training starts."""
    common.check_run_settings(script_args, training_args)
    reward = CodeReward(partial_credit=script_args.partial_credit, allow_unsandboxed=script_args.allow_unsandboxed)
    reward.sandbox.backend  # noqa: B018  (a machine without isolation is refused now, not at the first step)
    train_dataset = load_code_dataset(
        script_args.dataset_name,
        script_args.dataset_train_split,
        script_args.dataset_config,
        training_args.seed,
        drop_unusable_rows=script_args.drop_unusable_rows,
        max_rows=script_args.max_train_samples,
    )
    return common.build_trainer(script_args, training_args, model_args, train_dataset, reward)


def main(script_args: CodeScriptArguments, training_args: ResRLConfig, model_args: ModelConfig) -> None:
    common.train(setup(script_args, training_args, model_args), training_args)


def parse_args(argv: list[str]) -> tuple[CodeScriptArguments, ResRLConfig, ModelConfig]:
    return common.parse_args(argv, CodeScriptArguments, DEMO_CONFIG)


def run(argv: list[str]) -> None:
    """Parse, set up and train; a bad setting, or a machine without a sandbox, ends the run with one message."""
    common.run(argv, parse_args, setup, "recipes/code.py", errors=(SandboxUnavailable,))


if __name__ == "__main__":
    run(sys.argv[1:])
