"""Are the tokens where failed completions start to fail spared? Weights of divergence tokens against the rest.

    python experiments/divergence_weights.py --output docs/runs/divergence_base.json                 # embedded model
    python experiments/divergence_weights.py --adapter outputs/demo --output docs/runs/divergence_demo.json

Samples ``num_generations`` completions for each of ``num_prompts`` arithmetic training prompts at training's
temperature, one group at a time, reads the hidden states training reads, and computes ResRL's weights (the paper's
settings) twice: from the state before each token (``resrl_weight_position="previous"``, the reference's reading)
and from the token's own state (``"own"``, the ablation). In every group with token weights, each failed completion's
divergence token is the first at which it leaves every successful completion's text
(:func:`resrl_trl.analysis.divergence_positions`). Reported per reading: the mean weight of divergence tokens, of the
tokens before them (text a successful completion also wrote) and of the tokens after them, the share of divergence
tokens at the smallest weight, and the difference "divergence minus after" with a 95% bootstrap interval that
resamples groups (tokens of one group are not independent). Writes the raw per-token numbers to ``--output``.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import torch

from resrl_trl.analysis import divergence_positions
from resrl_trl.inspector import add_group_sampling_arguments, iter_groups, load_policy_and_prompts
from resrl_trl.residual import WEIGHT_POSITIONS, SubspaceSettings, compute_residual_weights
from resrl_trl.rewards import math_reward

PARTS = ("before", "divergence", "after")


def token_parts(groups, weights: torch.Tensor, divergence: torch.Tensor) -> dict[str, list[float]]:
    """The weights of the weighted negative tokens of diverging completions, split by where they sit."""
    out: dict[str, list[float]] = {part: [] for part in PARTS}
    for row in (divergence >= 0).nonzero().flatten().tolist():
        valid = groups.completion_mask[row]
        row_weights = weights[row][valid]
        point = int(divergence[row])
        out["before"] += row_weights[:point].tolist()
        out["divergence"].append(float(row_weights[point]))
        out["after"] += row_weights[point + 1 :].tolist()
    return out


def bootstrap_difference(groups: list[dict], rounds: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Mean weight of divergence tokens minus that of tokens after them, pooled, with a 95% interval resampling
    groups with replacement."""

    def difference(sample: list[dict]) -> float:
        divergence = [w for g in sample for w in g["divergence"]]
        after = [w for g in sample for w in g["after"]]
        return float(np.mean(divergence) - np.mean(after)) if divergence and after else float("nan")

    rng = np.random.default_rng(seed)
    draws = [difference([groups[i] for i in rng.integers(0, len(groups), len(groups))]) for _ in range(rounds)]
    low, high = np.nanpercentile(draws, [2.5, 97.5])
    return difference(groups), float(low), float(high)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_group_sampling_arguments(parser, num_prompts=64, max_tokens=32)
    parser.add_argument("--output", default="docs/runs/divergence.json")
    opts = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(os.cpu_count() or 1)

    model, tokenizer, rows = load_policy_and_prompts(opts)
    settings = SubspaceSettings()
    report: dict = {"settings": vars(opts), "groups": {position: [] for position in WEIGHT_POSITIONS}}
    sampled = iter_groups(
        model, tokenizer, rows["prompt"], rows["solution"], math_reward, num_generations=opts.num_generations,
        max_tokens=opts.max_tokens, temperature=opts.temperature, seed=opts.seed,
    )  # fmt: skip
    for index, groups in enumerate(sampled):
        is_positive = groups.rewards > 0
        divergence = divergence_positions(groups.completion_ids, groups.completion_mask, groups.group_ids, is_positive)
        for position in WEIGHT_POSITIONS:
            weights = compute_residual_weights(
                groups.hidden_at(position), groups.completion_mask, groups.group_ids, is_positive, settings,
                group_seed=opts.seed,
            )  # fmt: skip
            if weights.stats.weighted_tokens > 0 and bool((divergence >= 0).any()):
                parts = token_parts(groups, weights.weights, divergence)
                report["groups"][position].append({"group": index, **parts})
        print(f"sampled {index + 1} of {len(rows)} prompts", flush=True)
    Path(opts.output).parent.mkdir(parents=True, exist_ok=True)
    Path(opts.output).write_text(json.dumps(report, indent=1))
    print_table(report, settings.min_weight)


def print_table(report: dict, min_weight: float) -> None:
    label = report["settings"]["adapter"] or "base model"
    print(f"\n{label}: {report['settings']['num_prompts']} prompts x {report['settings']['num_generations']} samples")
    print("\n| reading | groups | diverging negatives | weight before | weight at divergence | weight after | "
          "divergence at min weight | divergence - after [95% CI] |")  # fmt: skip
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for position, groups in report["groups"].items():
        if not groups:
            print(f"| {position} | 0 | | | | | | |")
            continue
        pooled = {part: [w for g in groups for w in g[part]] for part in PARTS}
        at_min = np.mean(np.array(pooled["divergence"]) <= min_weight + 1e-6)
        mean, low, high = bootstrap_difference(groups)
        means = " | ".join(f"{np.mean(pooled[part]):.3f}" if pooled[part] else "" for part in PARTS)
        print(
            f"| {position} | {len(groups)} | {len(pooled['divergence'])} | {means} | {at_min:.0%} | "
            f"{mean:+.3f} [{low:+.3f}, {high:+.3f}] |"
        )


if __name__ == "__main__":
    main()
