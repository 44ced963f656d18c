"""Rollout and step time of ResRLTrainer with TRL's colocated vLLM against transformers' generate, on the CPU.

    make benchmark-vllm          # = python benchmarks/vllm_rollout.py in the vLLM environment (.venv-vllm)

Both variants train the embedded SmolLM2-135M-Instruct (full fine-tuning, fp32 policy) on the same prompts with the
same settings (2 prompts x 8 completions of up to 64 tokens per step), one after the other in this process,
alternating for ``--rounds`` rounds so that drift of the machine hits both alike. The rollout time is the time of
``_generate_and_score_completions`` (generation, rewards, advantages, ResRL's group bookkeeping, vLLM's weight sync);
the step time is TRL's logged ``step_time``. The first step of each run (engine start, warm-up) is left out.
vLLM's CPU build needs the weight-sync patch the vLLM tests use (resrl_trl/testing/vllm_cpu.py); run nothing else
meanwhile: vLLM pins its threads to the cores. The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

from common import REPO

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")


def run(use_vllm: bool, model_dir: str, opts: argparse.Namespace) -> dict[str, list[float]]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from resrl_trl import ResRLConfig, ResRLTrainer
    from resrl_trl.data import load_math_dataset
    from resrl_trl.rewards import math_reward

    args = ResRLConfig(
        output_dir=str(REPO / "outputs" / "vllm_rollout"),
        use_cpu=True,
        bf16=False,
        seed=0,
        num_generations=8,
        per_device_train_batch_size=16,
        max_completion_length=opts.max_completion_length,
        temperature=1.0,
        learning_rate=1e-6,
        max_steps=opts.steps,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        use_vllm=use_vllm,
        vllm_mode="colocate",
        vllm_importance_sampling_correction=False,  # as the reference run: no extra old-log-prob forward
    )
    trainer = ResRLTrainer(
        model=AutoModelForCausalLM.from_pretrained(model_dir),
        reward_funcs=math_reward,
        args=args,
        train_dataset=load_math_dataset("arithmetic", "train", None, 0).select(range(2 * opts.steps)),
        processing_class=AutoTokenizer.from_pretrained(model_dir, padding_side="left"),
    )
    rollout_times: list[float] = []
    generate = trainer._generate_and_score_completions

    def timed(inputs: Any) -> Any:
        start = time.perf_counter()
        output = generate(inputs)
        rollout_times.append(time.perf_counter() - start)
        return output

    trainer._generate_and_score_completions = timed
    trainer.train()
    logs = [log for log in trainer.state.log_history if "step_time" in log]
    lengths = [log["completions/mean_length"] for log in logs]
    result = {
        "rollout_s": rollout_times[1:],
        "step_s": [log["step_time"] for log in logs][1:],
        "mean_length": lengths[1:],
    }
    del trainer
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=5, help="training steps per run (the first is left out)")
    parser.add_argument("--rounds", type=int, default=2, help="runs of each variant, alternating")
    parser.add_argument("--max_completion_length", type=int, default=64)
    parser.add_argument("--output", default=str(REPO / "docs" / "runs" / "vllm_rollout_cpu.json"))
    opts = parser.parse_args()

    import torch

    from resrl_trl.models import plain_model_folder
    from resrl_trl.testing import vllm_cpu

    vllm_cpu.install()
    model_dir = plain_model_folder()
    figures: dict[str, dict[str, list[float]]] = {"transformers": {}, "vllm": {}}
    for _ in range(opts.rounds):
        for name in figures:
            for key, values in run(name == "vllm", model_dir, opts).items():
                figures[name].setdefault(key, []).extend(values)
    summary: dict[str, Any] = {
        "setting": {
            "model": "SmolLM2-135M-Instruct (embedded), full fine-tuning, fp32 policy; vLLM at its default dtype",
            "completions_per_step": 16,
            "max_completion_length": opts.max_completion_length,
            "steps_timed": (opts.steps - 1) * opts.rounds,
            "threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(),
        }
    }
    for name, values in figures.items():
        summary[name] = {f"{key}_median": statistics.median(v) for key, v in values.items()} | {"raw": values}
    for key in ("rollout_s", "step_s"):
        summary[f"{key}_ratio_vllm_over_transformers"] = (
            summary["vllm"][f"{key}_median"] / summary["transformers"][f"{key}_median"]
        )
    Path(opts.output).parent.mkdir(parents=True, exist_ok=True)
    Path(opts.output).write_text(json.dumps(summary, indent=2))
    print(json.dumps({k: v for k, v in summary.items()}, default=str))


if __name__ == "__main__":
    main()
