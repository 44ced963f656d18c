"""``resrl-plot``: Pass@k curves of several ``resrl-eval`` summaries in one PNG, and a Markdown table.

resrl-plot eval/grpo/summary.json eval/resrl/summary.json --labels GRPO ResRL --output passk.png --table table.md
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

__all__ = ["main", "markdown_table", "plot_pass_at_k"]


def _cell(metric: dict[str, Any], scale: float = 100.0, digits: int = 1) -> str:
    low, high = metric["ci95"]
    return f"{metric['mean'] * scale:.{digits}f} [{low * scale:.{digits}f}, {high * scale:.{digits}f}]"


def markdown_table(summaries: list[dict[str, Any]], labels: list[str]) -> str:
    """One row per summary: Avg@n and Pass@k in %, diversity, each with its 95% bootstrap interval."""
    ks = sorted({int(k) for s in summaries for k in s["pass@k"]})
    n_values = sorted({s["num_samples"] for s in summaries})
    avg_header = f"Avg@{n_values[0]}" if len(n_values) == 1 else "Avg@n"
    header = ["method", avg_header] + [f"Pass@{k}" for k in ks] + ["distinct answers", "answer entropy", "distinct-2"]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for label, s in zip(labels, summaries, strict=True):
        n = s["num_samples"]
        row = [label, _cell(s[f"avg@{n}"])]
        row += [_cell(s["pass@k"][str(k)]) if str(k) in s["pass@k"] else "" for k in ks]
        diversity = s["diversity"]
        row += [
            _cell(diversity["distinct_answers"], 1, 2),
            _cell(diversity["answer_entropy"], 1, 2),
            _cell(diversity["distinct_2"], 1, 3),
        ]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def plot_pass_at_k(summaries: list[dict[str, Any]], labels: list[str], output: str | Path) -> None:
    """Pass@k (%) against log2 k, one line per summary, with its 95% interval as a band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 4))
    for label, s in zip(labels, summaries, strict=True):
        ks = sorted(int(k) for k in s["pass@k"])
        x = [math.log2(k) for k in ks]
        mean = [100 * s["pass@k"][str(k)]["mean"] for k in ks]
        low = [100 * s["pass@k"][str(k)]["ci95"][0] for k in ks]
        high = [100 * s["pass@k"][str(k)]["ci95"][1] for k in ks]
        (line,) = axes.plot(x, mean, marker="o", label=label)
        axes.fill_between(x, low, high, alpha=0.2, color=line.get_color())
    axes.set_xlabel("log2 k")
    axes.set_ylabel("Pass@k (%)")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(output, dpi=120)
    plt.close(figure)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="resrl-plot", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("summaries", nargs="+", help="summary.json files written by resrl-eval")
    parser.add_argument("--labels", nargs="+", help="one label per summary (default: the folder names)")
    parser.add_argument("--output", default="pass_at_k.png", help="the PNG to write")
    parser.add_argument("--table", default=None, help="also write the Markdown table to this file")
    opts = parser.parse_args(argv)
    labels = opts.labels or [Path(p).parent.name for p in opts.summaries]
    if len(labels) != len(opts.summaries):
        parser.error(f"{len(opts.summaries)} summaries but {len(labels)} labels")
    summaries = [json.loads(Path(p).read_text()) for p in opts.summaries]
    plot_pass_at_k(summaries, labels, opts.output)
    table = markdown_table(summaries, labels)
    if opts.table:
        Path(opts.table).write_text(table + "\n")
    print(table)
    print(f"wrote {opts.output}")


if __name__ == "__main__":
    main()
