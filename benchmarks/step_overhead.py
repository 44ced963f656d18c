"""Overhead of ResRL over plain TRL GRPO: training-step time and peak memory on the same batch.

    python benchmarks/step_overhead.py                      # embedded SmolLM2-135M on the CPU
    python benchmarks/step_overhead.py --model random-smollm2 --device cuda --dtype bfloat16

Each variant (GRPO / ResRL, without and with gradient checkpointing, see `--checkpointing_modes`) runs in its own
process, so peak memory is that variant's alone (peak RSS on CPU, peak allocated CUDA memory on a GPU). A step is
TRL's `_compute_loss` (the one training forward, where ResRL's hook computes the weights), `backward()` and an AdamW
step, on one fixed batch of whole groups. The script also times the weights alone, vectorised over groups against a
loop over groups. The last line printed is one JSON object with every figure; `time_ratio` and `peak_mem_ratio` are
ResRL / GRPO without gradient checkpointing (`_ckpt`: with it).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from common import (
    MODELS,
    bench_trainer,
    build_model,
    device_name,
    median_seconds,
    peak_memory_mb,
    run_in_own_process,
    synthetic_rollout,
)


def run_variant(opts: argparse.Namespace) -> dict:
    """One process: build the trainer, time `steps` training steps after `warmup`."""
    dtype = getattr(torch, opts.dtype)
    model = build_model(opts.model, dtype, opts.device)
    on_gpu = opts.device.startswith("cuda")
    resrl = opts.variant == "resrl"
    trainer = bench_trainer(
        model,
        resrl,
        output_dir="/tmp/resrl-bench",
        report_to="none",
        num_generations=opts.group_size,
        per_device_train_batch_size=opts.groups * opts.group_size,
        max_completion_length=opts.completion_len,
        gradient_checkpointing=opts.checkpointing,
        bf16=dtype == torch.bfloat16 and on_gpu,
        use_cpu=not on_gpu,
    )
    trainer.current_gradient_accumulation_steps = 1
    model = trainer.model
    if opts.checkpointing:
        model.activation_checkpointing_enable()  # as Trainer.train() does
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-6)
    batch_size = opts.groups * opts.group_size
    is_positive = (torch.arange(batch_size) % opts.group_size) < opts.group_size // 3  # a third of each group
    batch = synthetic_rollout(
        is_positive, opts.group_size, opts.prompt_len, opts.completion_len, model.config.vocab_size, opts.device
    )

    def step() -> None:
        loss = trainer._compute_loss(model, batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    reset_peak = torch.cuda.reset_peak_memory_stats if on_gpu else None
    step_s = median_seconds(step, opts.steps, opts.device, warmup=opts.warmup, after_warmup=reset_peak)
    result = {"step_s": step_s, "peak_mem_mb": peak_memory_mb(opts.device)}
    if resrl:
        result.update(time_weights(trainer, batch, opts))
    return result


def time_weights(trainer, batch: dict, opts: argparse.Namespace) -> dict:
    """The weights alone, on the hidden states of this batch: all groups at once vs one call per group."""
    from resrl_trl.capture import capture_outputs
    from resrl_trl.residual import compute_residual_weights

    captured = []
    with torch.no_grad(), capture_outputs(trainer.placement.block, captured.append):
        ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], 1)
        trainer.model(input_ids=ids, attention_mask=torch.ones_like(ids))
    hidden = captured[0][:, opts.prompt_len - 1 : -1].detach()
    valid, groups, pos = batch["completion_mask"].bool(), batch["resrl_group_ids"], batch["resrl_is_positive"]

    def vectorised() -> None:
        compute_residual_weights(hidden, valid, groups, pos)

    def per_group() -> None:
        for g in groups.unique():
            rows = groups == g
            compute_residual_weights(hidden[rows], valid[rows], groups[rows], pos[rows])

    return {
        "weights_vectorised_s": median_seconds(vectorised, 5, opts.device),
        "weights_per_group_loop_s": median_seconds(per_group, 5, opts.device),
    }


def format_markdown(summary: dict) -> str:
    """The summary as Markdown table rows: one row per checkpointing mode that was run."""
    raw = summary["raw"]
    rows = []
    for suffix, label in (("", "off"), ("_ckpt", "on")):
        if f"resrl{suffix}" not in raw:
            continue
        grpo, resrl = raw[f"grpo{suffix}"], raw[f"resrl{suffix}"]
        rows.append(
            f"| {summary['device']} | {summary['model']} {summary['dtype']} | {summary['batch']} x "
            f"{summary['prompt_len']}+{summary['completion_len']} tok | {label} | {grpo['step_s']:.3f} | "
            f"{resrl['step_s']:.3f} | **{summary['time_ratio' + suffix]:.3f}** | {grpo['peak_mem_mb']:.0f} | "
            f"{resrl['peak_mem_mb']:.0f} | **{summary['peak_mem_ratio' + suffix]:.3f}** | "
            f"{resrl['weights_vectorised_s'] * 1e3:.1f} | {resrl['weights_per_group_loop_s'] * 1e3:.1f} |"
        )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="embedded", choices=[m for m in MODELS if m != "tiny"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--groups", type=int, default=2)
    parser.add_argument("--group_size", type=int, default=8)
    parser.add_argument("--prompt_len", type=int, default=48)
    parser.add_argument("--completion_len", type=int, default=192)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--checkpointing_modes", default="off,on", help="which of off/on to run, comma-separated")
    parser.add_argument("--render", help="print the Markdown rows of a saved run's output file, and exit")
    parser.add_argument("--variant", choices=["grpo", "resrl"], help=argparse.SUPPRESS)
    parser.add_argument("--checkpointing", action="store_true", help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.render:
        last = Path(opts.render).read_text().strip().splitlines()[-1]
        print(format_markdown(json.loads(last)))
        return
    if opts.variant:
        print(json.dumps(run_variant(opts)))
        return

    results = {}
    modes = opts.checkpointing_modes.split(",")
    for checkpointing in [mode == "on" for mode in modes]:
        for variant in ("grpo", "resrl"):
            argv = [*sys.argv[1:], "--variant", variant, *(["--checkpointing"] if checkpointing else [])]
            key = f"{variant}{'_ckpt' if checkpointing else ''}"
            results[key] = run_in_own_process(__file__, argv)
            print(key, results[key], flush=True)
    summary = {
        "device": device_name(opts.device),
        "model": opts.model,
        "dtype": opts.dtype,
        "batch": f"{opts.groups} groups x {opts.group_size}",
        "prompt_len": opts.prompt_len,
        "completion_len": opts.completion_len,
    }
    for suffix in ("", "_ckpt"):
        if f"resrl{suffix}" in results:
            resrl, grpo = results[f"resrl{suffix}"], results[f"grpo{suffix}"]
            summary[f"time_ratio{suffix}"] = resrl["step_s"] / grpo["step_s"]
            summary[f"peak_mem_ratio{suffix}"] = resrl["peak_mem_mb"] / grpo["peak_mem_mb"]
            summary[f"weights_speedup_vs_group_loop{suffix}"] = (
                resrl["weights_per_group_loop_s"] / resrl["weights_vectorised_s"]
            )
    summary["raw"] = results
    print(format_markdown(summary))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
