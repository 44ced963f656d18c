"""Train a model on maths with ResRL (or GRPO) and a verifiable reward.

    accelerate launch recipes/math.py                                     # the offline CPU demo
    accelerate launch recipes/math.py --max_steps 2                       # a smoke run of it
    accelerate launch --config_file recipes/accelerate/zero3.yaml recipes/math.py \
        --config recipes/configs/qwen3_4b_math.yaml                       # the paper-aligned run

Without ``--config``, recipes/configs/demo.yaml supplies the defaults; any flag overrides a YAML value.
"""

from __future__ import annotations

import os
import sys

# Run as a script, this file's folder comes first on sys.path, where "math.py" would hide the standard library's math.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

from dataclasses import dataclass, field
from pathlib import Path

from trl import GRPOTrainer, ModelConfig, ScriptArguments, TrlParser, get_peft_config
from trl.rewards import accuracy_reward

from resrl_trl import ResRLConfig, ResRLTrainer
from resrl_trl.data import load_math_dataset
from resrl_trl.models import load_model_and_tokenizer, plain_model_folder
from resrl_trl.rewards import LengthScaledReward, math_reward

DEMO_CONFIG = Path(__file__).parent / "configs" / "demo.yaml"
TRAINERS = {"ResRLTrainer": ResRLTrainer, "GRPOTrainer": GRPOTrainer}
REWARDS = {"math": math_reward, "accuracy": accuracy_reward}


@dataclass
class MathScriptArguments(ScriptArguments):
    dataset_name: str | None = field(
        default="arithmetic",
        metadata={"help": "'arithmetic' (built in), a Hub id, or a local .parquet/.json/.jsonl/.csv file."},
    )
    trainer_cls: str = field(default="ResRLTrainer", metadata={"help": "ResRLTrainer or GRPOTrainer."})
    gguf_file: str | None = field(default=None, metadata={"help": "GGUF file inside --model_name_or_path."})
    reward: str = field(
        default="math", metadata={"help": "'math' (any final-answer form) or 'accuracy' (TRL's, LaTeX only)."}
    )
    length_scaled_reward: bool = field(default=False, metadata={"help": "Scale long positive rewards down."})
    length_scale_start: int = field(default=3500, metadata={"help": "Tokens up to which rewards are not scaled."})
    length_scale_end: float = field(default=0.7, metadata={"help": "Reward scale at max_completion_length."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Use only this many training rows."})


def main(script_args: MathScriptArguments, training_args: ResRLConfig, model_args: ModelConfig) -> None:
    if script_args.trainer_cls not in TRAINERS:
        raise ValueError(f"--trainer_cls must be one of {sorted(TRAINERS)}, got {script_args.trainer_cls!r}")
    if script_args.reward not in REWARDS:
        raise ValueError(f"--reward must be one of {sorted(REWARDS)}, got {script_args.reward!r}")
    train_dataset = load_math_dataset(
        script_args.dataset_name, script_args.dataset_train_split, script_args.dataset_config, training_args.seed
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
    reward = REWARDS[script_args.reward]
    if script_args.length_scaled_reward:
        reward = LengthScaledReward(
            reward, script_args.length_scale_start, training_args.max_completion_length, script_args.length_scale_end
        )
    trainer = TRAINERS[script_args.trainer_cls](
        model=model,
        reward_funcs=reward,
        args=training_args,
        train_dataset=train_dataset,
        processing_class=tokenizer,
        peft_config=get_peft_config(model_args),
    )
    trainer.train()
    trainer.save_model(training_args.output_dir)
    rewards = [log["reward"] for log in trainer.state.log_history if "reward" in log]
    if len(rewards) >= 2 and trainer.accelerator.is_main_process:
        span = max(1, len(rewards) // 3)
        first, last = sum(rewards[:span]) / span, sum(rewards[-span:]) / span
        print(
            f"mean reward: first {span} steps {first:.3f} -> last {span} steps {last:.3f}; saved to "
            f"{training_args.output_dir}"
        )


def parse_args(argv: list[str]) -> tuple[MathScriptArguments, ResRLConfig, ModelConfig]:
    if "--config" not in argv:
        argv = ["--config", str(DEMO_CONFIG), *argv]
    parser = TrlParser((MathScriptArguments, ResRLConfig, ModelConfig))
    return parser.parse_args_and_config(argv)


if __name__ == "__main__":
    main(*parse_args(sys.argv[1:]))
