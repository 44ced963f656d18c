"""``resrl-plot``: Pass@k curves of ``resrl-eval`` summaries, or training curves of runs, in one PNG.

resrl-plot eval/grpo/summary.json eval/resrl/summary.json --labels GRPO ResRL --output passk.png --table table.md
resrl-plot outputs/grpo/metrics.jsonl outputs/resrl/metrics.jsonl --labels GRPO ResRL --output curves.png

Labels of the form "METHOD (detail)" share METHOD's colour; the details are told apart by line style.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

__all__ = ["main", "markdown_table", "plot_pass_at_k", "plot_training_curves", "read_metrics"]

METHOD_LABELS = {
    "resrl": "ResRL",
    "grpo": "GRPO",
    "psr": "PSR",
    "nsr": "NSR",
    "w_reinforce": "W-REINFORCE",
    "resrl_pos_only": "ResRL positives only",
    "resrl_tokens_only": "ResRL tokens only",
}
LINE_STYLES = ("-", "--", ":", "-.")
# The panels of the training curves: (logged key, title, y label).
CURVES = (
    ("reward", "Reward", "mean reward"),
    ("completions/mean_length", "Completion length", "tokens (mean)"),
    ("resrl/neg_token_weight_mean", "Negative-token weight", "mean weight of weighted tokens"),
    ("resrl/neg_alignment_mean", "Alignment with the positive subspace", "share of centred energy inside"),
)


def _styles(labels: list[str]) -> list[dict[str, Any]]:
    """One colour per method (the part of a label before " ("), one line style per run of that method."""
    import matplotlib.pyplot as plt

    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    methods: dict[str, int] = {}
    seen: dict[str, int] = {}
    styles = []
    for label in labels:
        method = label.split(" (")[0]
        colour = methods.setdefault(method, len(methods))
        index = seen[method] = seen.get(method, -1) + 1
        styles.append({"color": palette[colour % len(palette)], "linestyle": LINE_STYLES[index % len(LINE_STYLES)]})
    return styles


def _legend(figure: Any, axes: Any) -> None:
    """The legend beside the plot, never over the data."""
    handles, labels = axes.get_legend_handles_labels()
    figure.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)


def _cell(metric: dict[str, Any], scale: float = 100.0, digits: int = 1) -> str:
    low, high = metric["ci95"]
    return f"{metric['mean'] * scale:.{digits}f} [{low * scale:.{digits}f}, {high * scale:.{digits}f}]"


def markdown_table(summaries: list[dict[str, Any]], labels: list[str]) -> str:
    """One row per summary: Avg@n and Pass@k in %, diversity, each with its 95% bootstrap interval."""
    ks = sorted({int(k) for s in summaries for k in s["pass@k"]})
    n_values = sorted({s["num_samples"] for s in summaries})
    avg_header = f"Avg@{n_values[0]}" if len(n_values) == 1 else "Avg@n"
    # maths summaries count final answers; code summaries count programs (whitespace collapsed)
    kind = "answer" if all("distinct_answers" in s["diversity"] for s in summaries) else "program"
    header = (
        ["method", avg_header] + [f"Pass@{k}" for k in ks] + [f"distinct {kind}s", f"{kind} entropy", "distinct-2"]
    )
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for label, s in zip(labels, summaries, strict=True):
        n = s["num_samples"]
        row = [label, _cell(s[f"avg@{n}"])]
        row += [_cell(s["pass@k"][str(k)]) if str(k) in s["pass@k"] else "" for k in ks]
        diversity = s["diversity"]
        row += [
            _cell(diversity[f"distinct_{kind}s"], 1, 2) if f"distinct_{kind}s" in diversity else "",
            _cell(diversity[f"{kind}_entropy"], 1, 2) if f"{kind}_entropy" in diversity else "",
            _cell(diversity["distinct_2"], 1, 3),
        ]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def plot_pass_at_k(summaries: list[dict[str, Any]], labels: list[str], output: str | Path) -> None:
    """Pass@k (%) against k on a log2 axis, one line per summary, with its 95% interval as a band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7.5, 4.2))
    all_ks: set[int] = set()
    for label, s, style in zip(labels, summaries, _styles(labels), strict=True):
        ks = sorted(int(k) for k in s["pass@k"])
        all_ks.update(ks)
        mean = [100 * s["pass@k"][str(k)]["mean"] for k in ks]
        low = [100 * s["pass@k"][str(k)]["ci95"][0] for k in ks]
        high = [100 * s["pass@k"][str(k)]["ci95"][1] for k in ks]
        axes.plot(ks, mean, marker="o", label=label, **style)
        axes.fill_between(ks, low, high, alpha=0.08, color=style["color"], linewidth=0)
    axes.set_xscale("log", base=2)
    ticks = sorted(all_ks)
    axes.set_xticks(ticks, [str(k) for k in ticks])
    axes.minorticks_off()
    axes.set_xlabel("k (samples per problem)")
    axes.set_ylabel("Pass@k (%)")
    axes.set_ylim(0, 100)
    axes.grid(alpha=0.3)
    _legend(figure, axes)
    figure.tight_layout()
    figure.savefig(output, dpi=120, bbox_inches="tight")
    plt.close(figure)


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The training logs of a run's ``metrics.jsonl``, one dict per logged step (evaluation and summary logs left
    out)."""
    records = []
    for line in Path(path).read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line cut short by an interruption
            continue
        if "loss" in record and "step" in record:
            records.append(record)
    return records


def plot_training_curves(runs: list[list[dict[str, Any]]], labels: list[str], output: str | Path) -> None:
    """Reward, completion length and ResRL's token-weight statistics against the optimiser step, one line per run.

    A run that does not log a quantity (GRPO has no token weights) is absent from that panel, which says so.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    figure, grid = plt.subplots(2, 2, figsize=(10, 6.5), sharex=True)
    styles = _styles(labels)
    for axes, (key, title, ylabel) in zip(grid.flat, CURVES, strict=True):
        drawn = 0
        for records, label, style in zip(runs, labels, styles, strict=True):
            points = [(r["step"], r[key]) for r in records if r.get(key) is not None]
            if points:
                steps, values = zip(*points, strict=True)
                axes.plot(steps, values, marker="." if len(points) < 60 else None, label=label, **style)
                drawn += 1
        if not drawn:
            axes.text(0.5, 0.5, "not logged by these runs", ha="center", va="center", transform=axes.transAxes)
        axes.set_title(title)
        axes.set_ylabel(ylabel)
        axes.grid(alpha=0.3)
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    grid[0][0].set_ylim(bottom=0)
    grid[1][0].set_ylim(0, 1.05)
    grid[1][1].set_ylim(0, 1.05)
    for axes in grid[1]:
        axes.set_xlabel("optimiser step")
    handles: dict[str, Any] = {}
    for axes in grid.flat:
        for handle, label in zip(*axes.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, handle)
    figure.legend(handles.values(), handles.keys(), loc="upper center", ncol=min(len(handles), 4), frameon=False)
    figure.tight_layout(rect=(0, 0, 1, 0.94))
    figure.savefig(output, dpi=120)
    plt.close(figure)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="resrl-plot", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "files", nargs="+", help="summary.json files written by resrl-eval, or metrics.jsonl files of training runs"
    )
    parser.add_argument("--labels", nargs="+", help="one label per file (default: the folder names)")
    parser.add_argument("--output", default=None, help="the PNG to write (pass_at_k.png or training_curves.png)")
    parser.add_argument("--table", default=None, help="also write the Markdown table (summaries) to this file")
    opts = parser.parse_args(argv)
    labels = opts.labels or [Path(p).parent.name for p in opts.files]
    if len(labels) != len(opts.files):
        parser.error(f"{len(opts.files)} files but {len(labels)} labels")
    curves = [p.endswith(".jsonl") for p in opts.files]
    if any(curves) and not all(curves):
        parser.error("give either summary.json files (Pass@k) or metrics.jsonl files (training curves), not both")
    if all(curves):
        output = opts.output or "training_curves.png"
        plot_training_curves([read_metrics(p) for p in opts.files], labels, output)
        print(f"wrote {output}")
        return
    output = opts.output or "pass_at_k.png"
    summaries = [json.loads(Path(p).read_text()) for p in opts.files]
    plot_pass_at_k(summaries, labels, output)
    table = markdown_table(summaries, labels)
    if opts.table:
        Path(opts.table).write_text(table + "\n")
    print(table)
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
