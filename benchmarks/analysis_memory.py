"""Peak memory of the group-by-group analysis (resrl-inspect, analysis_report.py) at real completion lengths.

    python benchmarks/analysis_memory.py                                   # lengths 512 .. 4096, Qwen3-4B's widths
    python benchmarks/analysis_memory.py --lengths 256 512 --layers 2

For each completion length, in a fresh process: a randomly initialised model with Qwen3-4B's vocabulary (151,936),
hidden size (2,560) and layer shapes but ``--layers`` decoder blocks (the analysis keeps one block's states, so its
memory does not depend on depth; a 36-block model adds only its weights), one group of ``--group_size``
completions of that length after a 64-token prompt (random tokens, half of them "correct"), then exactly what
``experiments/analysis_report.py`` does per group: the decoder-only forward one row at a time with the block and
final-norm states captured (:func:`resrl_trl.inspector.block_states`), ResRL's weights at five ranks, the rank
variance shares on the positive tokens subsampled to ``max_pos_tokens`` as training does, held-out energies, and the
three ``(V, H)`` head-gradient sums. Reported: the process's peak resident memory above what it held once the model
was loaded (the analysis's own memory), and the same figure computed from the sizes of what it holds.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
from common import QWEN3_4B, run_in_own_process

from resrl_trl.analysis import analyse_group

GIB = 2**30


def resident(field: str) -> int:
    """A ``/proc/self/status`` memory field (``VmRSS``, ``VmHWM``) in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def predicted_bytes(length: int, group_size: int, vocab: int, hidden: int, chunk: int = 256) -> int:
    """What the analysis holds at its peak, from sizes: the group's block and final-norm states (float32, length + 1
    positions), three (V, H) float32 gradient sums, and one chunk's logits and scores (two (chunk, V) float32).
    Independent of depth: the forward keeps one block's output."""
    states = 2 * group_size * (length + 1) * hidden * 4
    return states + 3 * vocab * hidden * 4 + 2 * chunk * vocab * 4


def child(length: int, group_size: int, layers: int) -> dict:
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from resrl_trl.analysis import HeadGradients
    from resrl_trl.inspector import SampledGroups, block_states
    from resrl_trl.residual import SubspaceSettings

    torch.manual_seed(0)
    config = Qwen3Config(**(QWEN3_4B | dict(num_hidden_layers=layers)), attn_implementation="sdpa")
    model = Qwen3ForCausalLM(config).eval()
    prompt_length = 64
    ids = torch.randint(0, config.vocab_size, (group_size, prompt_length + length))
    attention_mask = torch.ones_like(ids)
    before = resident("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM, the peak, to the current resident size
    start = time.perf_counter()
    states, finals = block_states(model, ids, attention_mask, length + 1, -2, True, rows_per_forward=1)
    groups = SampledGroups(
        prompts=["p"], solutions=["s"], completion_ids=ids[:, prompt_length:],
        completion_mask=torch.ones(group_size, length, dtype=torch.bool), group_ids=torch.zeros(group_size).long(),
        rewards=(torch.arange(group_size) % 2 == 0).float(), texts=[""] * group_size, states=states,
        final_states=finals,
    )  # fmt: skip
    sums = HeadGradients(model.get_output_embeddings().weight.detach())
    found = analyse_group(groups, sums, SubspaceSettings(), seed=0)
    cosines = sums.cosines()
    peak = resident("VmHWM") - before
    predicted = predicted_bytes(length, group_size, config.vocab_size, config.hidden_size)
    return {
        "length": length,
        "peak_gib": peak / GIB,
        "predicted_gib": predicted / GIB,
        "seconds": time.perf_counter() - start,
        "subspace_tokens": found["subspace_tokens"] if found else 0,
        "cosines": cosines,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[512, 1024, 2048, 4096])
    parser.add_argument("--group_size", type=int, default=8)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--output", default="docs/runs/analysis_memory.json")
    parser.add_argument("--report", action="store_true", help="only print the table of the runs in --output")
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.child is not None:
        print(json.dumps(child(opts.child, opts.group_size, opts.layers)))
        return
    if opts.report:
        rows = json.loads(Path(opts.output).read_text())["rows"]
    else:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        rows = []
        for length in opts.lengths:
            argv = ["--child", str(length), "--group_size", str(opts.group_size), "--layers", str(opts.layers)]
            rows.append(run_in_own_process(__file__, argv))
            print(f"length {length}: {rows[-1]['peak_gib']:.2f} GiB", flush=True)
        Path(opts.output).write_text(json.dumps({"settings": vars(opts), "rows": rows}, indent=1))
    vocab, hidden = QWEN3_4B["vocab_size"], QWEN3_4B["hidden_size"]
    print(f"\nQwen3-4B widths (vocabulary {vocab}, hidden {hidden}), {opts.group_size} completions per group, CPU:\n")
    print("| completion tokens | positive tokens in the subspace | peak above the model (GiB) | computed (GiB) |")
    print("| ---: | ---: | ---: | ---: |")
    for row in rows:
        print(f"| {row['length']} | {row['subspace_tokens']} | {row['peak_gib']:.2f} | {row['predicted_gib']:.2f} |")
    measured = {row["length"] for row in rows}
    for length in [n for n in (1024, 2048, 4096, 8192) if n > max(measured)]:
        predicted = predicted_bytes(length, opts.group_size, vocab, hidden) / GIB
        print(f"| {length} (computed only) | | | {predicted:.2f} |")


if __name__ == "__main__":
    main()
