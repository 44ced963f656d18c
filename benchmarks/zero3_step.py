"""ResRL against plain TRL GRPO under DeepSpeed ZeRO-3: step time and peak memory, with micro-batches that hold a
whole group (in-step subspaces) and part of one (rollout subspaces), and the time of the weights alone.

    python benchmarks/zero3_step.py --model random-qwen3-1.7b --completion_len 4096   # on a GPU
    python benchmarks/zero3_step.py --model tiny --device cpu --completion_len 64     # a smoke run on the CPU

The model is partitioned by ``deepspeed.initialize`` (ZeRO-3, one process, every weight partitioned), in bf16 on a
GPU, with gradient checkpointing; ``TRL``'s ``_compute_loss`` (the training forward, where ResRL's hook works),
``engine.backward`` and an AdamW ``engine.step`` make one step, on a fixed batch of one group of ``group_size``
completions (a third of them positive). Variants, each in its own process so peak memory is its own:

- ``grpo_whole`` / ``resrl_whole``: one micro-batch of the whole group (ResRL: ``resrl_subspace="step"``);
- ``grpo_part`` / ``resrl_part``: micro-batches of ``part_size`` rows (ResRL: ``resrl_subspace="rollout"``); a
  step is all ``group_size / part_size`` micro-batches and one optimiser step. ResRL's rollout-time build (a no-grad
  forward over the group's completions, then the subspace) is timed apart, once per generation, and included in
  ``resrl_part``'s step time.

The last line printed is one JSON object with every figure; ``--render FILE`` turns a saved output into Markdown rows.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from step_overhead import QWEN3_1_7B, _tokenizer  # noqa: E402

VARIANTS = ("grpo_whole", "resrl_whole", "grpo_part", "resrl_part")


def build_model(name: str, dtype: torch.dtype, device: str):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    settings = dict(QWEN3_1_7B)
    if name == "tiny":
        settings.update(
            vocab_size=512,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
        )
    config = Qwen3Config(**settings)
    config.dtype = dtype
    with torch.device(device):
        return Qwen3ForCausalLM(config).to(dtype)


def make_group(group_size: int, prompt_len: int, completion_len: int, vocab: int, device: str) -> dict:
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(completion_len // 2, completion_len + 1, (group_size,), generator=g)
    completion_mask = (torch.arange(completion_len)[None, :] < lengths[:, None]).long()
    is_positive = torch.arange(group_size) % 3 == 0
    rewards = is_positive.float()
    advantages = (rewards - rewards.mean()) / (rewards.std() + 1e-4)
    data = {
        "prompt_ids": torch.randint(100, vocab, (group_size, prompt_len), generator=g),
        "prompt_mask": torch.ones(group_size, prompt_len, dtype=torch.long),
        "completion_ids": torch.randint(100, vocab, (group_size, completion_len), generator=g),
        "completion_mask": completion_mask,
        "advantages": advantages,
        "resrl_group_ids": torch.zeros(group_size, dtype=torch.long),
        "resrl_is_positive": is_positive,
    }
    return {k: v.to(device) for k, v in data.items()}


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run_variant(opts: argparse.Namespace) -> dict:
    import deepspeed
    from datasets import Dataset
    from transformers.integrations import HfDeepSpeedConfig
    from trl import GRPOConfig, GRPOTrainer

    from resrl_trl import ResRLConfig, ResRLTrainer

    for key, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"), ("MASTER_ADDR", "127.0.0.1")):
        os.environ.setdefault(key, value)
    os.environ.setdefault("MASTER_PORT", str(29500 + os.getpid() % 1000))
    on_gpu = opts.device.startswith("cuda")
    deepspeed.init_distributed(dist_backend="nccl" if on_gpu else "gloo")
    dtype = torch.bfloat16 if on_gpu else torch.float32
    resrl, whole = opts.variant.startswith("resrl"), opts.variant.endswith("whole")
    micro = opts.group_size if whole else opts.part_size
    ds_config = {
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": opts.group_size // micro,
        "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0},
        "bf16": {"enabled": dtype == torch.bfloat16},
        "zero_allow_untested_optimizer": True,
    }
    zero3_marker = HfDeepSpeedConfig(ds_config)  # noqa: F841  (as accelerate's DeepSpeed plugin: ZeRO-3 is on)
    model = build_model(opts.model, dtype, opts.device)
    common = dict(
        output_dir="/tmp/resrl-zero3-bench",
        report_to="none",
        num_generations=opts.group_size,
        per_device_train_batch_size=micro,
        steps_per_generation=opts.group_size // micro,
        max_completion_length=opts.completion_len,
        gradient_checkpointing=True,
        bf16=dtype == torch.bfloat16,
        use_cpu=not on_gpu,
        beta=0.0,
    )
    args = ResRLConfig(**common, resrl_subspace="step" if whole else "rollout") if resrl else GRPOConfig(**common)
    trainer = (ResRLTrainer if resrl else GRPOTrainer)(
        model=model,
        reward_funcs=lambda completions, **kw: [0.0] * len(completions),
        args=args,
        train_dataset=Dataset.from_dict({"prompt": ["x"] * 8}),
        processing_class=_tokenizer(),
    )
    model.activation_checkpointing_enable()  # as Trainer.train() does
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config)
    trainer.model = trainer.model_wrapped = engine
    trainer.current_gradient_accumulation_steps = opts.group_size // micro
    engine.train()
    group = make_group(opts.group_size, opts.prompt_len, opts.completion_len, model.config.vocab_size, opts.device)
    group["num_items_in_batch"] = group["completion_mask"].sum()
    parts = [
        {k: v[i : i + micro] if v.dim() else v for k, v in group.items()} for i in range(0, opts.group_size, micro)
    ]
    timings: dict[str, list[float]] = {"build_s": []}

    def step() -> None:
        if resrl and not whole:  # once per generation: the group's subspace from all its completions
            sync(opts.device)
            start = time.perf_counter()
            trainer._placement.finish_rollout(group, group["resrl_is_positive"], opts.group_size, "train")
            sync(opts.device)
            timings["build_s"].append(time.perf_counter() - start)
        for part in parts:
            loss = trainer._compute_loss(engine, part)
            engine.backward(loss)
            engine.step()

    for _ in range(opts.warmup):
        step()
    timings["build_s"].clear()
    sync(opts.device)
    if on_gpu:
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(opts.steps):
        start = time.perf_counter()
        step()
        sync(opts.device)
        times.append(time.perf_counter() - start)
    median = sorted(times)[len(times) // 2]
    result = {
        "step_s": median,
        "peak_mem_mb": torch.cuda.max_memory_allocated() / 2**20 if on_gpu else None,
    }
    if timings["build_s"]:
        result["rollout_build_s"] = sorted(timings["build_s"])[len(timings["build_s"]) // 2]
    if resrl:
        result.update(time_weights_alone(trainer, engine, group, opts))
    return result


def time_weights_alone(trainer, engine, group: dict, opts: argparse.Namespace) -> dict:
    """The ResRL maths alone on this group's hidden states: in-step weights, rollout build, projection."""
    from resrl_trl.residual import build_group_subspaces, compute_residual_weights, project_onto_group_subspaces

    rows = torch.arange(opts.group_size, device=opts.device)
    with torch.no_grad():
        num_chunks = opts.group_size // opts.part_size
        hidden = trainer._placement._completion_hidden_states(group, rows, num_chunks=num_chunks)
    valid, ids, positive = group["completion_mask"].bool(), group["resrl_group_ids"], group["resrl_is_positive"]
    subspaces, _ = build_group_subspaces(hidden, valid, ids, positive, num_groups=1, group_seed=0)
    calls = {
        "weights_in_step_s": lambda: compute_residual_weights(hidden, valid, ids, positive, group_seed=0),
        "weights_build_s": lambda: build_group_subspaces(hidden, valid, ids, positive, num_groups=1, group_seed=0),
        "weights_project_s": lambda: project_onto_group_subspaces(hidden, valid, ids, positive, subspaces),
    }
    out = {}
    for name, call in calls.items():
        call()
        sync(opts.device)
        runs = []
        for _ in range(5):
            start = time.perf_counter()
            call()
            sync(opts.device)
            runs.append(time.perf_counter() - start)
        out[name] = sorted(runs)[2]
    return out


def format_markdown(summary: dict) -> str:
    """The summary as Markdown table rows: one per micro-batch kind."""
    raw, rows = summary["raw"], []
    for kind, label in (("whole", "whole group (in-step)"), ("part", f"{summary['part_size']} rows (rollout)")):
        grpo, resrl = raw.get(f"grpo_{kind}"), raw.get(f"resrl_{kind}")
        if not (grpo and resrl):
            continue
        build = resrl.get("rollout_build_s")
        rows.append(
            f"| {summary['device']} | {summary['model']} | {summary['group']} | {label} | {grpo['step_s']:.3f} | "
            f"{resrl['step_s']:.3f} | **{summary[f'time_ratio_{kind}']:.3f}** | "
            f"{'-' if build is None else f'{build:.3f}'} | {grpo['peak_mem_mb']:.0f} | {resrl['peak_mem_mb']:.0f} | "
            f"**{summary[f'peak_mem_ratio_{kind}']:.3f}** | {resrl['weights_in_step_s'] * 1e3:.1f} | "
            f"{resrl['weights_build_s'] * 1e3:.1f} | {resrl['weights_project_s'] * 1e3:.1f} |"
        )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="random-qwen3-1.7b", choices=["random-qwen3-1.7b", "tiny"])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--group_size", type=int, default=8)
    parser.add_argument("--part_size", type=int, default=2)
    parser.add_argument("--prompt_len", type=int, default=256)
    parser.add_argument("--completion_len", type=int, default=4096)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--render", help="print the Markdown rows of a saved run's output file, and exit")
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.render:
        print(format_markdown(json.loads(Path(opts.render).read_text().strip().splitlines()[-1])))
        return
    if opts.variant:
        print(json.dumps(run_variant(opts)))
        return
    results = {}
    for variant in opts.variants.split(","):
        proc = subprocess.run(
            [sys.executable, __file__, *sys.argv[1:], "--variant", variant], capture_output=True, text=True
        )
        if proc.returncode != 0:
            sys.exit(f"variant {variant} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
        results[variant] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(variant, results[variant], flush=True)
    summary = {
        "device": torch.cuda.get_device_name() if opts.device.startswith("cuda") else "cpu",
        "model": opts.model,
        "group": f"{opts.group_size} x ({opts.prompt_len} + {opts.completion_len}) tokens",
        "part_size": opts.part_size,
    }
    for kind in ("whole", "part"):
        grpo, resrl = results.get(f"grpo_{kind}"), results.get(f"resrl_{kind}")
        if grpo and resrl:
            summary[f"time_ratio_{kind}"] = resrl["step_s"] / grpo["step_s"]
            if grpo["peak_mem_mb"]:
                summary[f"peak_mem_ratio_{kind}"] = resrl["peak_mem_mb"] / grpo["peak_mem_mb"]
    summary["raw"] = results
    if opts.device.startswith("cuda"):
        print(format_markdown(summary))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
