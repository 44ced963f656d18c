"""How many negatives get ResRL token weights when the reference's batch balancing splits prompt groups.

    python experiments/group_scope.py                       # writes docs/runs/group_scope.json and prints a table

The reference run (verl) uses 4 rollouts per prompt, 256 prompts per batch and micro-batches of 4 rows, and groups
rows by prompt id *inside each micro-batch*. Before each update verl's ``balance_batch`` reorders the batch: the rows
are split into one part per GPU, of equal row count and nearly equal total sequence length (Karmarkar-Karp, see
:func:`resrl_trl.analysis.balanced_partitions`), each part keeps its rows in their original order, and each GPU cuts
its part into micro-batches of 4. This script simulates that on batches with realistic lengths and success rates
and reports the share of the negatives of mixed groups whose micro-batch also holds a positive of their group: only
those get token weights. The length model is stated in the output; ``--within_group_spread`` and ``--accuracy``
vary it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from resrl_trl.analysis import balanced_partitions, weighted_negative_share


def simulated_batch(rng: np.random.Generator, prompts: int, rollouts: int, accuracy: float, spread: float):
    """Rows in the reference's order (each prompt's rollouts adjacent): group ids, correctness, sequence lengths.

    Per prompt: a success probability from a Beta distribution with mean ``accuracy`` (many prompts all right or all
    wrong, as in RLVR batches), a prompt of 60-300 tokens, and a typical response length (log-normal, median 1500
    tokens); each response varies around it by a log-normal factor of spread ``spread``, failed responses run 40%
    longer, and every response is cut at 4096 tokens.
    """
    concentration = 1.2
    success = rng.beta(accuracy * concentration, (1 - accuracy) * concentration, size=prompts)
    prompt_length = rng.integers(60, 300, size=prompts)
    typical = np.exp(rng.normal(np.log(1500), 0.5, size=prompts))
    group_ids = np.repeat(np.arange(prompts), rollouts)
    correct = rng.random(prompts * rollouts) < success[group_ids]
    response = typical[group_ids] * np.exp(rng.normal(0, spread, size=len(group_ids))) * np.where(correct, 1.0, 1.4)
    lengths = prompt_length[group_ids] + np.minimum(response, 4096).astype(int)
    return group_ids.tolist(), correct.tolist(), lengths.tolist()


def micro_batches(lengths: list[int], gpus: int, micro_batch: int, balance: bool) -> list[list[int]]:
    """Each GPU's rows, in the order they are trained, cut into micro-batches."""
    if balance:
        parts = balanced_partitions(lengths, gpus)
    else:  # contiguous slices of the batch, as without balance_batch
        size = len(lengths) // gpus
        parts = [list(range(g * size, (g + 1) * size)) for g in range(gpus)]
    return [part[i : i + micro_batch] for part in parts for i in range(0, len(part), micro_batch)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=256)
    parser.add_argument("--rollouts", type=int, default=4)
    parser.add_argument("--micro_batch", type=int, default=4)
    parser.add_argument("--gpus", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
    parser.add_argument("--accuracy", type=float, nargs="+", default=[0.3, 0.5, 0.7])
    parser.add_argument("--within_group_spread", type=float, nargs="+", default=[0.1, 0.35, 0.7])
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default="docs/runs/group_scope.json")
    opts = parser.parse_args()

    rows = []
    for accuracy in opts.accuracy:
        for spread in opts.within_group_spread:
            rng = np.random.default_rng(opts.seed)
            batches = [
                simulated_batch(rng, opts.prompts, opts.rollouts, accuracy, spread) for _ in range(opts.batches)
            ]
            for gpus in opts.gpus:
                shares = {}
                for balance in (False, True):
                    values = [
                        weighted_negative_share(g, c, micro_batches(n, gpus, opts.micro_batch, balance))
                        for g, c, n in batches
                    ]
                    shares["balanced" if balance else "contiguous"] = float(np.mean(values))
                rows.append({"accuracy": accuracy, "within_group_spread": spread, "gpus": gpus, **shares})

    Path(opts.output).parent.mkdir(parents=True, exist_ok=True)
    Path(opts.output).write_text(json.dumps({"settings": vars(opts), "rows": rows}, indent=1))
    print(
        f"Share of mixed-group negatives that get token weights ({len(opts.accuracy) * len(opts.within_group_spread)} "
        "length/accuracy models: mean [min, max]):\n"
    )
    print("| GPUs | balance_batch on | balance_batch off |")
    print("| ---: | ---: | ---: |")
    for gpus in opts.gpus:
        cells = []
        for key in ("balanced", "contiguous"):
            values = [100 * row[key] for row in rows if row["gpus"] == gpus]
            cells.append(f"{np.mean(values):.1f}% [{min(values):.1f}, {max(values):.1f}]")
        print(f"| {gpus} | {cells[0]} | {cells[1]} |")


if __name__ == "__main__":
    main()
