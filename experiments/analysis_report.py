"""Rank, information and gradient-interference measurements of ResRL's weighting on sampled groups.

    python experiments/analysis_report.py                               # embedded SmolLM2-135M, arithmetic prompts
    python experiments/analysis_report.py --adapter outputs/demo --num_prompts 64

Samples ``num_generations`` completions for each of ``num_prompts`` prompts at training's temperature, reads the
hidden states training reads (and the output head's inputs and logits), and reports, over the groups that hold both
positive and negative completions:

1. rank: the share of the positive tokens' centred variance kept by ranks 8-128 (each clamped as the weighting clamps
   it), and the correlation of the negatives' weights at each rank with the weights at the paper's rank 64;
2. information kept: held-out positive tokens' residual energy against the negatives' (one positive completion per
   group left out of the subspace), and the probability that a negative token's energy exceeds a held-out positive
   token's;
3. gradient interference: per step (``prompts_per_step`` groups), the cosine between the positive and the negative
   completions' policy-gradient at the output head, with GRPO advantages, without and with ResRL's token weights.

Writes the raw numbers to ``--output`` (JSON) and prints Markdown tables. It works one group at a time: sampling, a
decoder-only forward (no logits kept), the group's measurements, and its head gradients added to three ``(V, H)``
sums formed from 256-token chunks of logits, so memory does not grow with the number of groups and only linearly
with completion length (``benchmarks/analysis_memory.py`` measures it). The rank measurement uses the positive tokens
training builds from: subsampled to ``max_pos_tokens`` as training subsamples them.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np

from resrl_trl.analysis import RANKS, HeadGradients, analyse_group
from resrl_trl.inspector import add_group_sampling_arguments, iter_groups, load_policy_and_prompts
from resrl_trl.residual import SubspaceSettings
from resrl_trl.rewards import math_reward


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_group_sampling_arguments(parser, num_prompts=48, max_tokens=40)
    parser.add_argument("--prompts_per_step", type=int, default=4)
    parser.add_argument("--output", default="docs/runs/analysis.json")
    opts = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

    model, tokenizer, rows = load_policy_and_prompts(opts)
    head_weight = model.get_output_embeddings().weight.detach()
    settings = SubspaceSettings()
    report: dict = {"settings": vars(opts), "ranks": list(RANKS), "groups": [], "steps": []}
    for start in range(0, len(rows), opts.prompts_per_step):
        chunk = rows.select(range(start, min(start + opts.prompts_per_step, len(rows))))
        sums = HeadGradients(head_weight, opts.temperature)  # the sampling distribution's logits, as in TRL
        positives = negatives = 0
        step_groups = []
        sampled = iter_groups(
            model, tokenizer, chunk["prompt"], chunk["solution"], math_reward, num_generations=opts.num_generations,
            max_tokens=opts.max_tokens, temperature=opts.temperature, seed=opts.seed * 7919 + start,
            with_head=True, rows_per_forward=1,
        )  # fmt: skip
        for groups in sampled:  # one group's states at a time
            positives += int((groups.rewards > 0).sum())
            negatives += int((~(groups.rewards > 0)).sum())
            found = analyse_group(groups, sums, settings, opts.seed)
            if found is not None:
                step_groups.append(found)
        plain, weighted_cosine = sums.cosines()
        pairs = [len(g["heldout_positive_energy"]) * len(g["negative_energy"]) for g in step_groups]
        separations = [g["separation"] * n for g, n in zip(step_groups, pairs, strict=True) if n]
        report["groups"] += step_groups
        report["steps"].append(
            {
                "step": len(report["steps"]),
                "positives": positives,
                "negatives": negatives,
                "separation": sum(separations) / sum(pairs) if sum(pairs) else float("nan"),
                "cosine_plain": plain,
                "cosine_weighted": weighted_cosine,
            }
        )
        print(f"sampled {start + len(chunk)} of {len(rows)} prompts", flush=True)
    Path(opts.output).parent.mkdir(parents=True, exist_ok=True)
    Path(opts.output).write_text(json.dumps(report, indent=1))
    print_tables(report)


def print_tables(report: dict) -> None:
    groups = report["groups"]
    if not groups:
        print("No prompt group held both a positive and a negative completion: sample more prompts.")
        return
    median_tokens = np.median([g["positive_tokens"] for g in groups])
    median_kept = np.median([g["subspace_tokens"] for g in groups])
    print(
        f"\n{len(groups)} mixed groups; positive tokens per group: median {median_tokens:.0f} ({median_kept:.0f} "
        "after the max_pos_tokens subsample that training applies)"
    )
    print("\n| rank | variance share kept (mean over groups) | weight correlation with rank 64 (mean) |")
    print("| ---: | ---: | ---: |")
    for i, rank in enumerate(report["ranks"]):
        share = np.nanmean([g["variance_share"][i] for g in groups])
        corr = np.nanmean([g["weight_correlation_with_rank_64"][i] for g in groups])
        print(f"| {rank} | {share:.3f} | {corr:.3f} |")
    positive = [e for g in groups for e in g["heldout_positive_energy"]]
    negative = [e for g in groups for e in g["negative_energy"]]
    separations = [s["separation"] for s in report["steps"] if s["separation"] == s["separation"]]
    print(
        f"\nHeld-out positive tokens: mean energy {np.mean(positive):.4f} (n={len(positive)}); negative tokens: "
        f"{np.mean(negative):.4f} (n={len(negative)}); P(negative > positive) per step: mean "
        f"{np.mean(separations):.3f} over {len(separations)} steps"
    )
    print("\n| step | positives | negatives | cosine, plain | cosine, ResRL weights |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    for s in report["steps"]:
        cosines = f"{s['cosine_plain']:.3f} | {s['cosine_weighted']:.3f}"
        print(f"| {s['step']} | {s['positives']} | {s['negatives']} | {cosines} |")
    both = [(s["cosine_plain"], s["cosine_weighted"]) for s in report["steps"] if s["positives"] and s["negatives"]]
    if not both:
        print("\nNo step held both positive and negative completions: no interference to measure.")
        return
    plain, weighted = np.array(both).T
    closer = int(np.sum(np.abs(weighted) < np.abs(plain)))
    print(
        f"\nMean over {len(both)} steps: plain {plain.mean():.3f}, weighted {weighted.mean():.3f}, weighted - plain "
        f"{np.mean(weighted - plain):+.3f} (weighted closer to 0 in {closer} steps)"
    )


if __name__ == "__main__":
    main()
