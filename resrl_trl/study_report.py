"""The report of a ``resrl-compare`` study: tables, tests, power analysis and the picture of the paired differences.

Reads only the study's folder (``plan.json`` and every ``runs/<arm>/<seed>/run.json``), so a report can be written
again, or from a copy of the run records, without any model.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from .study_stats import detectable_effect, holm, paired_test, power, seeds_needed

__all__ = ["collect", "metric_value", "plot_differences", "write_report"]

BASE = "base"


def metric_value(summary: dict[str, Any], kind: str) -> float:
    """A metric of a resrl-eval summary: ``avg@n`` and ``pass@k`` in percent, ``distinct_*`` per problem."""
    if kind.startswith("distinct_"):
        return float(summary["diversity"][kind]["mean"])
    head, _, k = kind.partition("@")
    if head == "avg":
        if int(k) != summary["num_samples"]:
            raise ValueError(f"avg@{k} asked, but the evaluation drew {summary['num_samples']} samples per problem")
        return 100 * float(summary[f"avg@{k}"]["mean"])
    if k not in summary["pass@k"]:
        raise ValueError(f"pass@{k} is not in the summary (it has {sorted(summary['pass@k'], key=int)})")
    return 100 * float(summary["pass@k"][k]["mean"])


def collect(output_dir: Path) -> dict[str, Any]:
    """The plan, each finished run's metric values (``values[arm][seed][metric]``), the base model's, the initial
    adapter fingerprints, and the compute each run took."""
    plan_path = output_dir / "plan.json"
    if not plan_path.exists():
        raise FileNotFoundError(f"{output_dir} holds no study (no plan.json): run resrl-compare run first")
    frozen = json.loads(plan_path.read_text())
    plan = frozen["plan"]
    metrics = [plan["primary_metric"], *(m for m in plan["metrics"] if m != plan["primary_metric"])]
    values: dict[str, dict[int, dict[str, float]]] = {arm: {} for arm in plan["arms"]}
    base: dict[str, float] | None = None
    fingerprints: dict[int, dict[str, str | None]] = {}
    logs: dict[str, dict[int, list[dict[str, float]]]] = {arm: {} for arm in plan["arms"]}
    seconds = {"train": 0.0, "eval": 0.0}
    for path in sorted(output_dir.glob("runs/*/*/run.json")):
        record = json.loads(path.read_text())
        if not record.get("done"):
            continue
        row = {m: metric_value(record["summaries"][m.split("/")[0]], m.split("/", 1)[1]) for m in metrics}
        seconds["eval"] += record.get("eval_seconds", 0.0)
        if record["arm"] == BASE:
            base = row
            continue
        if record["arm"] not in values:
            continue
        values[record["arm"]][record["seed"]] = row
        logs[record["arm"]][record["seed"]] = record["trained"].get("logs", [])
        fingerprints.setdefault(record["seed"], {})[record["arm"]] = record["trained"].get("initial_fingerprint")
        seconds["train"] += record["trained"].get("train_seconds", 0.0)
    seeds = sorted(set.intersection(*(set(v) for v in values.values()))) if values else []
    return {
        "frozen_at": frozen["frozen_at"],
        "plan": plan,
        "metrics": metrics,
        "values": values,
        "base": base,
        "seeds": seeds,
        "fingerprints": fingerprints,
        "logs": logs,
        "seconds": seconds,
    }


def analyse(study: dict[str, Any], effect: float | None = None) -> dict[str, Any]:
    """Paired differences, p-values with Holm's correction (per metric, over the plan's comparisons) and the power
    analysis of the primary metric."""
    plan, seeds, values = study["plan"], study["seeds"], study["values"]
    effect = plan["effect"] if effect is None else effect
    comparisons = [tuple(pair) for pair in plan["comparisons"]]
    alpha_each = plan["alpha"] / len(comparisons)  # Holm's first step; its power is at least Bonferroni's
    results: dict[str, list[dict[str, Any]]] = {}
    for metric in study["metrics"]:
        rows = []
        for a, b in comparisons:
            differences = [values[a][s][metric] - values[b][s][metric] for s in seeds]
            test = paired_test(differences)
            rows.append({"a": a, "b": b, "differences": differences, **test._asdict()})
        for row, adjusted in zip(rows, holm([row["p_value"] for row in rows]), strict=True):
            row["holm_p"] = adjusted
            row["significant"] = bool(adjusted < plan["alpha"])
        results[metric] = rows
    power_rows = []
    for row in results[plan["primary_metric"]]:
        sd, n = row["sd"], row["n"]
        known = n >= 2 and math.isfinite(sd)
        power_rows.append(
            {
                "a": row["a"],
                "b": row["b"],
                "sd": sd,
                "power_now": power(effect, sd, n, alpha_each) if known else math.nan,
                "seeds_needed": seeds_needed(effect, sd, alpha_each, plan["power"]) if known else None,
                "detectable": detectable_effect(sd, n, alpha_each, plan["power"]) if known else math.inf,
            }
        )
    # True: every seed's adapters match; False: some differ; None: none was fingerprinted (trained under a launcher,
    # or full fine-tuning, where every arm starts from the base model)
    seen = [{f for f in by_arm.values() if f not in (None, "full")} for by_arm in study["fingerprints"].values()]
    paired = None if not any(seen) else all(len(fingerprints) <= 1 for fingerprints in seen)
    return {"effect": effect, "alpha_each": alpha_each, "tests": results, "power": power_rows, "paired": paired}


def _format(value: float, signed: bool = False) -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    return f"{value:+.1f}" if signed else f"{value:.1f}"


def _p(value: float) -> str:
    return "n/a" if not math.isfinite(value) else ("<0.001" if value < 0.001 else f"{value:.3f}")


def markdown(study: dict[str, Any], analysis: dict[str, Any]) -> str:
    """The report's text."""
    plan, seeds, values = study["plan"], study["seeds"], study["values"]
    n = len(seeds)
    lines = [
        f"# {plan.get('description') or 'Paired comparison'}",
        "",
        f"Plan frozen at {study['frozen_at']} (before the first run); {n} complete seeds "
        f"({', '.join(map(str, seeds))}); primary metric `{plan['primary_metric']}`; "
        f"{len(plan['comparisons'])} comparisons named in the plan, Holm's correction over them per metric at alpha "
        f"{plan['alpha']}.",
        "",
        "## Per-seed values",
        "",
    ]
    for metric in study["metrics"]:
        lines += [f"`{metric}`" + (" (primary)" if metric == plan["primary_metric"] else ""), ""]
        lines += ["| arm | mean | " + " | ".join(f"seed {s}" for s in seeds) + " |"]
        lines += ["| --- | ---: |" + " ---: |" * n]
        if study["base"] is not None:
            lines.append(f"| untrained model | {_format(study['base'][metric])} |" + " |" * n)
        for arm in plan["arms"]:
            per_seed = [values[arm][s][metric] for s in seeds]
            mean = sum(per_seed) / n if n else math.nan
            lines.append(f"| {arm} | {_format(mean)} | " + " | ".join(_format(v) for v in per_seed) + " |")
        lines.append("")
    lines += [
        "## Paired differences",
        "",
        "Per seed, arm A's value minus arm B's; the mean over seeds with its 95% Student-t interval, the paired "
        "t-test's p-value, and Holm's adjusted p-value over the plan's comparisons (per metric). **bold**: "
        f"significant after the correction. Only the primary metric (`{plan['primary_metric']}`) is confirmatory; the "
        "others are secondary.",
        "",
        "| A - B | metric | mean [95% CI] | p | Holm p |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for metric, rows in analysis["tests"].items():
        for row in rows:
            cell = f"{_format(row['mean'], True)} [{_format(row['low'], True)}, {_format(row['high'], True)}]"
            if row["significant"]:
                cell = f"**{cell}**"
            lines.append(
                f"| {row['a']} - {row['b']} | `{metric}` | {cell} | {_p(row['p_value'])} | {_p(row['holm_p'])} |"
            )
    effect, alpha_each = analysis["effect"], analysis["alpha_each"]
    lines += [
        "",
        "## Power",
        "",
        f"For `{plan['primary_metric']}`, from the standard deviation of the paired differences over these {n} seeds: "
        f"the power of the paired t-test at level {alpha_each:.4g} (alpha / {len(plan['comparisons'])}, Holm's first "
        f"step) to detect a true difference of {effect:g}, the seeds it needs for {plan['power']:.0%} power, and the "
        f"smallest difference {n} seeds detect with {plan['power']:.0%} power.",
        "",
        f"| A - B | SD of differences | power for {effect:g} now | seeds for {effect:g} | detectable with {n} seeds |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for row in analysis["power"]:
        needed = row["seeds_needed"]
        needed_text = "n/a" if needed is None else (f"{needed}" if needed <= 100_000 else "> 100000")
        power_text = "n/a" if not math.isfinite(row["power_now"]) else f"{row['power_now']:.2f}"
        lines.append(
            f"| {row['a']} - {row['b']} | {_format(row['sd'])} | {power_text} | {needed_text} | "
            f"{_format(row['detectable'])} |"
        )
    lines += training_signal(study)
    train_minutes, eval_minutes = study["seconds"]["train"] / 60, study["seconds"]["eval"] / 60
    lines += [
        "",
        "## Checks",
        "",
        "- Pairing: "
        + {
            True: "within every seed, every arm started from the same initial adapter (fingerprints equal).",
            False: "**the initial adapters of one seed differ between arms: the runs are not paired.**",
            None: "initial weights not fingerprinted (trained under a launcher, or full fine-tuning).",
        }[analysis["paired"]],
        f"- Compute: {train_minutes:.0f} min training, {eval_minutes:.0f} min evaluating (run records' wall times).",
        "",
    ]
    return "\n".join(lines)


def _mean_over_runs(runs: list[list[dict[str, float]]], key: str, last: int = 0) -> float:
    """The mean over runs of each run's mean of ``key`` over its logged steps (its ``last`` steps when given)."""
    per_run = [sum(entry[key] for entry in run[-last:]) / len(run[-last:]) for run in runs]
    return sum(per_run) / len(per_run)


def training_signal(study: dict[str, Any]) -> list[str]:
    """Lines of a table of what each arm's training saw (means over the complete seeds): the mean reward over all
    steps and over the last three, and the share of groups whose rewards differ (the only groups a group-normalised
    advantage learns from). A study whose arms saw no mixed group compared nothing."""
    rows = []
    for arm, by_seed in study["logs"].items():
        runs = [by_seed.get(seed, []) for seed in study["seeds"]]
        if not runs or not all(runs):
            continue
        mixed = 1 - _mean_over_runs(runs, "frac_reward_zero_std")
        rows.append(
            f"| {arm} | {_mean_over_runs(runs, 'reward'):.3f} | {_mean_over_runs(runs, 'reward', 3):.3f} | "
            f"{mixed:.2f} |"
        )
    if not rows:
        return []
    return [
        "",
        "## Training signal",
        "",
        "Means over the complete seeds of each run's training logs: the mean reward over all steps and over the last "
        "three, and the share of prompt groups with both a correct and a wrong completion.",
        "",
        "| arm | reward (all steps) | reward (last 3) | mixed groups |",
        "| --- | ---: | ---: | ---: |",
        *rows,
    ]


def plot_differences(study: dict[str, Any], analysis: dict[str, Any], path: Path) -> None:
    """One panel per metric: each comparison's per-seed differences (dots), their mean and 95% interval (bar)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = list(analysis["tests"])
    figure, axes = plt.subplots(
        1, len(metrics), figsize=(4.6 * len(metrics), 0.9 + 0.55 * len(study["plan"]["comparisons"])), squeeze=False
    )
    for ax, metric in zip(axes[0], metrics, strict=True):
        rows = analysis["tests"][metric]
        points = [v for row in rows for v in (*row["differences"], row["mean"])] + [0.0]
        span = (max(points) - min(points)) or 1.0
        left, right = min(points) - 0.35 * span, max(points) + 0.35 * span  # intervals past these get an arrow
        for y, row in enumerate(rows):
            colour = "tab:red" if row["significant"] else "tab:blue"
            ax.scatter(row["differences"], [y + 0.22] * len(row["differences"]), s=14, color="0.45", zorder=2)
            if math.isfinite(row["low"]):
                ax.plot([max(row["low"], left), min(row["high"], right)], [y, y], color=colour, linewidth=2.5)
                for end, edge, marker in ((row["low"], left, "<"), (row["high"], right, ">")):
                    if (end < edge) if marker == "<" else (end > edge):
                        ax.scatter([edge], [y], marker=marker, color=colour, s=40, zorder=3)
            ax.scatter([row["mean"]], [y], color=colour, s=40, zorder=4, marker="D")
            ax.annotate(
                f"Holm p {_p(row['holm_p'])}",
                (1.0, y),
                xycoords=("axes fraction", "data"),
                xytext=(4, 0),
                textcoords="offset points",
                va="center",
                fontsize=8,
            )
        ax.set_xlim(left, right)
        ax.axvline(0.0, color="black", linewidth=0.8)
        ax.set_yticks(range(len(rows)), [f"{row['a']} - {row['b']}" for row in rows])
        ax.set_ylim(len(rows) - 0.5, -0.5)
        primary = " (primary)" if metric == study["plan"]["primary_metric"] else ""
        ax.set_title(f"{metric}{primary}", fontsize=10)
        ax.set_xlabel("A - B: per seed (grey), mean and 95% CI")
        ax.grid(axis="x", alpha=0.3)
    figure.suptitle(f"Paired differences over {len(study['seeds'])} seeds (red: significant after Holm)", fontsize=11)
    figure.tight_layout()
    figure.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(figure)


def write_report(output_dir: Path, effect: float | None = None) -> str:
    """Write ``report.md``, ``report.json`` and ``paired_differences.png`` into ``output_dir``; returns the text."""
    study = collect(output_dir)
    if not study["seeds"]:
        return f"{output_dir}: no seed has finished every arm yet"
    analysis = analyse(study, effect)
    text = markdown(study, analysis)
    (output_dir / "report.md").write_text(text)
    serialisable = {k: v for k, v in study.items() if k not in ("fingerprints", "logs")} | {"analysis": analysis}
    (output_dir / "report.json").write_text(json.dumps(serialisable, indent=1, default=str))
    plot_differences(study, analysis, output_dir / "paired_differences.png")
    return text
