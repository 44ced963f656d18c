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
import sys
import time
from pathlib import Path

import torch
from common import (
    bench_trainer,
    build_model,
    device_name,
    median_seconds,
    peak_memory_mb,
    run_in_own_process,
    sync,
    synthetic_rollout,
)

from resrl_trl.placement import Rollout, RolloutPlacement

VARIANTS = ("grpo_whole", "resrl_whole", "grpo_part", "resrl_part")


def run_variant(opts: argparse.Namespace) -> dict:
    import deepspeed
    from transformers.integrations import HfDeepSpeedConfig

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
    trainer = bench_trainer(
        model,
        resrl,
        dict(resrl_subspace="step" if whole else "rollout"),
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
    model.activation_checkpointing_enable()  # as Trainer.train() does
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config)
    trainer.model = trainer.model_wrapped = engine
    trainer.current_gradient_accumulation_steps = opts.group_size // micro
    engine.train()
    is_positive = torch.arange(opts.group_size) % 3 == 0  # a third of the group
    group = synthetic_rollout(
        is_positive, opts.group_size, opts.prompt_len, opts.completion_len, model.config.vocab_size, opts.device
    )
    parts = [
        {k: v[i : i + micro] if v.dim() else v for k, v in group.items()} for i in range(0, opts.group_size, micro)
    ]
    build_times: list[float] = []

    def step() -> None:
        if resrl and not whole:  # once per generation: the group's subspace from all its completions
            sync(opts.device)
            start = time.perf_counter()
            valid = group["completion_mask"].bool()
            rollout = Rollout(group, valid, group["resrl_is_positive"], opts.group_size, "train", micro)
            trainer.placement.finish_rollout(rollout)
            sync(opts.device)
            build_times.append(time.perf_counter() - start)
        for part in parts:
            loss = trainer._compute_loss(engine, part)
            engine.backward(loss)
            engine.step()

    def after_warmup() -> None:
        build_times.clear()
        if on_gpu:
            torch.cuda.reset_peak_memory_stats()

    result = {
        "step_s": median_seconds(step, opts.steps, opts.device, warmup=opts.warmup, after_warmup=after_warmup),
        "peak_mem_mb": peak_memory_mb(opts.device) if on_gpu else None,
    }
    if build_times:
        result["rollout_build_s"] = sorted(build_times)[len(build_times) // 2]
    if resrl:
        result.update(time_weights_alone(trainer, engine, group, opts))
    return result


def time_weights_alone(trainer, engine, group: dict, opts: argparse.Namespace) -> dict:
    """The ResRL maths alone on this group's hidden states: in-step weights, rollout build, projection."""
    from resrl_trl.residual import build_group_subspaces, compute_residual_weights, project_onto_group_subspaces

    rows = torch.arange(opts.group_size, device=opts.device)

    # The decoder stack, no LM head, as the trainer's run_decoder (the engine holds the weights in the run's dtype,
    # so no autocast; no gradients, so no checkpointing).
    def run_decoder(chunks: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        for input_ids, attention_mask in chunks:
            engine.module.get_decoder()(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)

    with torch.no_grad():
        num_chunks = opts.group_size // opts.part_size
        # A rollout placement's forward reads the hidden states, whichever placement the variant trains with.
        placement = trainer.placement
        twin = RolloutPlacement(
            placement.block, placement.settings, placement.weight_position, placement.seeds, run_decoder=run_decoder
        )
        hidden = twin.completion_hidden_states(group, rows, num_chunks=num_chunks)
    valid, ids, positive = group["completion_mask"].bool(), group["resrl_group_ids"], group["resrl_is_positive"]
    subspaces, _ = build_group_subspaces(hidden, valid, ids, positive, num_groups=1, group_seed=0)
    calls = {
        "weights_in_step_s": lambda: compute_residual_weights(hidden, valid, ids, positive, group_seed=0),
        "weights_build_s": lambda: build_group_subspaces(hidden, valid, ids, positive, num_groups=1, group_seed=0),
        "weights_project_s": lambda: project_onto_group_subspaces(hidden, valid, ids, positive, subspaces),
    }
    return {name: median_seconds(call, 5, opts.device) for name, call in calls.items()}


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
        results[variant] = run_in_own_process(__file__, [*sys.argv[1:], "--variant", variant])
        print(variant, results[variant], flush=True)
    summary = {
        "device": device_name(opts.device),
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
