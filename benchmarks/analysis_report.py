"""Rank, information and gradient-interference measurements of ResRL's weighting on sampled groups.

    python benchmarks/analysis_report.py                               # embedded SmolLM2-135M, arithmetic prompts
    python benchmarks/analysis_report.py --adapter outputs/demo --num_prompts 64

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

Writes the raw numbers to ``--output`` (JSON) and prints Markdown tables.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import torch

from resrl_trl.analysis import heldout_energies, interference, variance_share_by_rank, weight_correlation
from resrl_trl.data import load_math_dataset
from resrl_trl.inspector import sample_groups
from resrl_trl.models import load_model_and_tokenizer
from resrl_trl.residual import SubspaceSettings, compute_residual_weights
from resrl_trl.rewards import math_reward

RANKS = (8, 16, 32, 64, 128)


def grpo_advantages(rewards: torch.Tensor, group_ids: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """TRL's default advantages: reward minus the group mean, over the group standard deviation."""
    advantages = torch.zeros_like(rewards)
    for group in group_ids.unique():
        rows = group_ids == group
        values = rewards[rows]
        advantages[rows] = (values - values.mean()) / (values.std() + eps)
    return advantages


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None)
    parser.add_argument("--gguf_file", default=None)
    parser.add_argument("--adapter", default=None)
    parser.add_argument("--dataset", default="arithmetic")
    parser.add_argument("--split", default="train")
    parser.add_argument("--num_prompts", type=int, default=48)
    parser.add_argument("--num_generations", type=int, default=8)
    parser.add_argument("--prompts_per_step", type=int, default=4)
    parser.add_argument("--max_tokens", type=int, default=40)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default="docs/runs/analysis.json")
    opts = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

    rows = load_math_dataset(opts.dataset, opts.split, seed=opts.seed)
    rows = rows.select(range(min(opts.num_prompts, len(rows))))
    model, tokenizer = load_model_and_tokenizer(opts.model, opts.gguf_file)
    if opts.adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, opts.adapter)
    model.eval()
    steps = []
    for start in range(0, len(rows), opts.prompts_per_step):
        chunk = rows.select(range(start, min(start + opts.prompts_per_step, len(rows))))
        steps.append(
            sample_groups(
                model,
                tokenizer,
                chunk["prompt"],
                chunk["solution"],
                math_reward,
                num_generations=opts.num_generations,
                max_tokens=opts.max_tokens,
                temperature=opts.temperature,
                seed=opts.seed * 7919 + start,
                with_head=True,
            )  # fmt: skip
        )
        print(f"sampled {start + len(chunk)} of {len(rows)} prompts", flush=True)

    paper = SubspaceSettings()
    report: dict = {"settings": vars(opts), "ranks": list(RANKS), "groups": [], "steps": []}
    for index, groups in enumerate(steps):
        is_positive = groups.rewards > 0
        num_groups = len(groups.prompts)
        weights = {
            rank: compute_residual_weights(
                groups.hidden,
                groups.completion_mask,
                groups.group_ids,
                is_positive,
                SubspaceSettings(rank=rank),
                group_seed=opts.seed,
                num_groups=num_groups,
            ).weights  # fmt: skip
            for rank in RANKS
        }
        for group in range(num_groups):
            in_group = groups.group_ids == group
            positives, negatives = in_group & is_positive, in_group & ~is_positive
            if not positives.any() or not negatives.any():
                continue
            positive_hidden = groups.hidden[positives][groups.completion_mask[positives]]
            weighted = groups.completion_mask & negatives[:, None]
            report["groups"].append(
                {
                    "positive_tokens": int(positive_hidden.shape[0]),
                    "negative_tokens": int(weighted.sum()),
                    "variance_share": variance_share_by_rank(positive_hidden, RANKS).tolist(),
                    "weight_correlation_with_rank_64": [
                        weight_correlation(weights[rank], weights[64], weighted) for rank in RANKS
                    ],
                }
            )
        held = heldout_energies(
            groups.hidden, groups.completion_mask, groups.group_ids, is_positive, paper, group_seed=opts.seed
        )
        advantages = grpo_advantages(groups.rewards.nan_to_num(0.0), groups.group_ids)
        plain, weighted_cosine = interference(  # the sampling distribution: logits over the temperature, as in TRL
            groups.final_hidden, groups.logits / opts.temperature, groups.completion_ids, groups.completion_mask,
            advantages, is_positive, weights[64],
        )  # fmt: skip
        report["steps"].append(
            {
                "step": index,
                "positives": int(is_positive.sum()),
                "negatives": int((~is_positive).sum()),
                "heldout_positive_energy": held.positive.tolist(),
                "negative_energy": held.negative.tolist(),
                "separation": held.separation,
                "cosine_plain": plain,
                "cosine_weighted": weighted_cosine,
            }
        )
    Path(opts.output).parent.mkdir(parents=True, exist_ok=True)
    Path(opts.output).write_text(json.dumps(report, indent=1))
    print_tables(report)


def print_tables(report: dict) -> None:
    groups = report["groups"]
    if not groups:
        print("No prompt group held both a positive and a negative completion: sample more prompts.")
        return
    median_tokens = np.median([g["positive_tokens"] for g in groups])
    print(f"\n{len(groups)} mixed groups; positive tokens per group: median {median_tokens:.0f}")
    print("\n| rank | variance share kept (mean over groups) | weight correlation with rank 64 (mean) |")
    print("| ---: | ---: | ---: |")
    for i, rank in enumerate(report["ranks"]):
        share = np.nanmean([g["variance_share"][i] for g in groups])
        corr = np.nanmean([g["weight_correlation_with_rank_64"][i] for g in groups])
        print(f"| {rank} | {share:.3f} | {corr:.3f} |")
    positive = [e for s in report["steps"] for e in s["heldout_positive_energy"]]
    negative = [e for s in report["steps"] for e in s["negative_energy"]]
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
