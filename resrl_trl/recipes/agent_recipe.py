"""Train a model to use tools over several turns with ResRL (or GRPO): function calling over BFCL's stateful APIs,
or text games.

    accelerate launch recipes/agent.py                                    # the offline CPU demo (files_demo)
    accelerate launch recipes/agent.py --max_steps 2                      # a smoke run of it
    accelerate launch recipes/agent.py --dataset_name bfcl_multi_turn_base    # BFCL v4 multi-turn (train split)
    accelerate launch recipes/agent.py --dataset_name text_games          # TextWorld games built here
    accelerate launch --config_file recipes/accelerate/zero3.yaml recipes/agent.py \
        --config recipes/configs/qwen3_4b_agent.yaml                      # the paper's scale, on 8 GPUs

Without ``--config``, recipes/configs/agent_demo.yaml supplies the defaults; any flag overrides a YAML value. TRL
runs the multi-turn loop (``environment_factory``): each rollout gets its own environment, the model's calls run on
it, their results come back as tool turns that stay out of the loss and out of ResRL's subspaces and weights, and
the loop stops when a reply makes no call or after ``--max_tool_calling_iterations`` replies that did. The reward is
:class:`~resrl_trl.agent_env.AgentReward` (BFCL's multi-turn check, or the game won; malformed or unknown calls, an
unfinished loop and the time limits earn 0). SmolLM2's chat template gets a tools branch
(:mod:`resrl_trl.tool_chat`). Everything else (flags, checks, files written, one-line errors) is the maths
recipe's (:mod:`resrl_trl.recipes.common`).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

from trl import GRPOTrainer, ModelConfig

from resrl_trl import ResRLConfig
from resrl_trl.agent_env import AgentReward
from resrl_trl.agent_tasks import AGENT_DATASETS, environment_factories, load_agent_tasks
from resrl_trl.recipes import common

DEMO_CONFIG = common.CONFIGS / "agent_demo.yaml"


@dataclass
class AgentScriptArguments(common.RecipeArguments):
    dataset_name: str | None = field(
        default="files_demo",
        metadata={"help": f"One of {', '.join(AGENT_DATASETS)}."},
    )
    num_tasks: int = field(
        default=256,
        metadata={"help": "Generated tasks (files_demo) or games built (text_games); BFCL uses its whole split."},
    )
    call_time_s: float = field(default=5.0, metadata={"help": "Time limit of one tool call, in seconds."})
    episode_time_s: float = field(default=60.0, metadata={"help": "Tool time allowed to one rollout, in seconds."})


def setup(script_args: AgentScriptArguments, training_args: ResRLConfig, model_args: ModelConfig) -> GRPOTrainer:
    """The trainer the arguments describe; every bad setting is found here, before training starts."""
    common.check_run_settings(script_args, training_args)
    if script_args.max_prompt_length is not None:
        raise ValueError(
            "--max_prompt_length cuts message text, but an agent prompt's length is mostly its tools' schemas: "
            "leave it unset (bound the conversation with --max_completion_length and --max_tool_calling_iterations)"
        )
    if training_args.max_tool_calling_iterations is None:
        raise ValueError(
            "--max_tool_calling_iterations is unset, so a rollout could call tools until its token budget runs out: "
            "set it (the demo uses 4)"
        )
    for limit in ("call_time_s", "episode_time_s"):
        if getattr(script_args, limit) <= 0:
            raise ValueError(f"--{limit} must be positive, got {getattr(script_args, limit)}")
    train_dataset = load_agent_tasks(
        script_args.dataset_name, script_args.dataset_train_split, training_args.seed, script_args.num_tasks
    )
    factories = environment_factories(train_dataset, script_args.call_time_s, script_args.episode_time_s)
    return common.build_trainer(
        script_args, training_args, model_args, train_dataset, AgentReward(), environment_factory=factories
    )


def main(script_args: AgentScriptArguments, training_args: ResRLConfig, model_args: ModelConfig) -> None:
    common.train(setup(script_args, training_args, model_args), training_args)


def parse_args(argv: list[str]) -> tuple[AgentScriptArguments, ResRLConfig, ModelConfig]:
    return common.parse_args(argv, AgentScriptArguments, DEMO_CONFIG)


def run(argv: list[str]) -> None:
    """Parse, set up and train; a bad setting ends the run with one message."""
    common.run(argv, parse_args, setup, "recipes/agent.py")


__all__ = ["AgentScriptArguments", "main", "parse_args", "run", "setup"]

if __name__ == "__main__":
    run(sys.argv[1:])
