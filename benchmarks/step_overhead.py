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
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

SMOLLM2_135M = dict(  # SmolLM2-135M's architecture, for a randomly initialised model of the same size
    vocab_size=49152,
    hidden_size=576,
    intermediate_size=1536,
    num_hidden_layers=30,
    num_attention_heads=9,
    num_key_value_heads=3,
    max_position_embeddings=8192,
    tie_word_embeddings=True,
    rope_theta=100000.0,
)


QWEN3_1_7B = dict(  # Qwen3-1.7B's architecture
    vocab_size=151936,
    hidden_size=2048,
    intermediate_size=6144,
    num_hidden_layers=28,
    num_attention_heads=16,
    num_key_value_heads=8,
    head_dim=128,
    max_position_embeddings=40960,
    tie_word_embeddings=True,
    rope_theta=1e6,
)


def build_model(name: str, dtype: torch.dtype, device: str):
    """The embedded GGUF, or a randomly initialised model of a real architecture (speed and memory do not depend on
    the weights' values)."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM

    if name == "embedded":
        from resrl_trl.models import load_model_and_tokenizer

        model, _ = load_model_and_tokenizer(dtype=dtype)
        return model
    torch.manual_seed(0)
    config = LlamaConfig(**SMOLLM2_135M) if name == "random-smollm2" else Qwen3Config(**QWEN3_1_7B)
    config.dtype = dtype
    with torch.device(device):
        return (LlamaForCausalLM if name == "random-smollm2" else Qwen3ForCausalLM)(config).to(dtype)


def make_batch(groups: int, group_size: int, prompt_len: int, completion_len: int, vocab: int, device: str):
    g = torch.Generator().manual_seed(0)
    batch = groups * group_size
    lengths = torch.randint(completion_len // 2, completion_len + 1, (batch,), generator=g)
    completion_mask = (torch.arange(completion_len)[None, :] < lengths[:, None]).long()
    is_positive = (torch.arange(batch) % group_size) < group_size // 3  # a third of each group succeeds
    rewards = is_positive.float()
    grouped = rewards.view(groups, group_size)
    advantages = ((grouped - grouped.mean(1, keepdim=True)) / (grouped.std(1, keepdim=True) + 1e-4)).flatten()
    data = {
        "prompt_ids": torch.randint(100, vocab, (batch, prompt_len), generator=g),
        "prompt_mask": torch.ones(batch, prompt_len, dtype=torch.long),
        "completion_ids": torch.randint(100, vocab, (batch, completion_len), generator=g),
        "completion_mask": completion_mask,
        "advantages": advantages,
        "num_items_in_batch": completion_mask.sum(),
        "resrl_group_ids": torch.arange(batch) // group_size,
        "resrl_is_positive": is_positive,
    }
    return {k: v.to(device) for k, v in data.items()}


def peak_memory_mb(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux


def run_variant(opts: argparse.Namespace) -> dict:
    """One process: build the trainer, time `steps` training steps after `warmup`."""
    from datasets import Dataset
    from transformers import AutoTokenizer  # noqa: F401  (imported before timing)
    from trl import GRPOConfig, GRPOTrainer

    from resrl_trl import ResRLConfig, ResRLTrainer

    dtype = getattr(torch, opts.dtype)
    model = build_model(opts.model, dtype, opts.device)
    on_gpu = opts.device.startswith("cuda")
    common = dict(
        output_dir="/tmp/resrl-bench",
        report_to="none",
        num_generations=opts.group_size,
        per_device_train_batch_size=opts.groups * opts.group_size,
        max_completion_length=opts.completion_len,
        gradient_checkpointing=opts.checkpointing,
        bf16=dtype == torch.bfloat16 and on_gpu,
        use_cpu=not on_gpu,
    )
    resrl = opts.variant == "resrl"
    args = ResRLConfig(**common) if resrl else GRPOConfig(**common)
    dataset = Dataset.from_dict({"prompt": ["x"] * 8})
    cls = ResRLTrainer if resrl else GRPOTrainer
    trainer = cls(
        model=model,
        reward_funcs=lambda completions, **kw: [0.0] * len(completions),
        args=args,
        train_dataset=dataset,
        processing_class=_tokenizer(),
    )
    trainer.current_gradient_accumulation_steps = 1
    model = trainer.model
    if opts.checkpointing:
        model.activation_checkpointing_enable()  # as Trainer.train() does
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-6)
    batch = make_batch(
        opts.groups, opts.group_size, opts.prompt_len, opts.completion_len, model.config.vocab_size, opts.device
    )

    def step() -> None:
        loss = trainer._compute_loss(model, batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(opts.warmup):
        step()
    if on_gpu:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(opts.steps):
        start = time.perf_counter()
        step()
        if on_gpu:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    result = {"step_s": sorted(times)[len(times) // 2], "peak_mem_mb": peak_memory_mb(opts.device)}
    if resrl:
        result.update(time_weights(trainer, batch, opts))
    return result


def time_weights(trainer, batch: dict, opts: argparse.Namespace) -> dict:
    """The weights alone, on the hidden states of this batch: all groups at once vs one call per group."""
    from resrl_trl.residual import compute_residual_weights

    captured = []
    handle = trainer._resrl_layer.register_forward_hook(
        lambda m, a, o: captured.append(o[0] if isinstance(o, tuple) else o)
    )
    with torch.no_grad():
        ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], 1)
        trainer.model(input_ids=ids, attention_mask=torch.ones_like(ids))
    handle.remove()
    hidden = captured[0][:, opts.prompt_len - 1 : -1].detach()
    valid, groups, pos = batch["completion_mask"].bool(), batch["resrl_group_ids"], batch["resrl_is_positive"]
    sync = torch.cuda.synchronize if opts.device.startswith("cuda") else (lambda: None)

    def vectorised() -> None:
        compute_residual_weights(hidden, valid, groups, pos)

    def per_group() -> None:
        for g in groups.unique():
            rows = groups == g
            compute_residual_weights(hidden[rows], valid[rows], groups[rows], pos[rows])

    out = {}
    for name, fn in (("weights_vectorised_s", vectorised), ("weights_per_group_loop_s", per_group)):
        fn()
        sync()
        runs = []
        for _ in range(5):
            start = time.perf_counter()
            fn()
            sync()
            runs.append(time.perf_counter() - start)
        out[name] = sorted(runs)[2]
    return out


def _tokenizer():
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel({"<pad>": 0, "x": 1}, unk_token="x")),
        pad_token="<pad>",
        eos_token="<pad>",
        padding_side="left",
    )
    return tok


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
    parser.add_argument("--model", default="embedded", choices=["embedded", "random-smollm2", "random-qwen3-1.7b"])
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
            argv = [sys.executable, __file__, *sys.argv[1:], "--variant", variant]
            if checkpointing:
                argv.append("--checkpointing")
            proc = subprocess.run(argv, capture_output=True, text=True)
            if proc.returncode != 0:
                sys.exit(f"variant {variant} (checkpointing={checkpointing}) failed:\n{proc.stderr[-4000:]}")
            out = proc.stdout
            key = f"{variant}{'_ckpt' if checkpointing else ''}"
            results[key] = json.loads(out.strip().splitlines()[-1])
            print(key, results[key], flush=True)
    summary = {
        "device": torch.cuda.get_device_name() if opts.device.startswith("cuda") else "cpu",
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
