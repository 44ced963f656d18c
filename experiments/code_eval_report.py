"""A Markdown report of ``resrl-eval`` code evaluations or ``resrl-agent-eval`` runs: one table of Avg@n and Pass@k
(with 95% bootstrap intervals over problems), program diversity (code) or tool calls per rollout (agents) per
``summary.json``, then what ended the samples.

    resrl-eval --dataset humaneval --max_problems 16 --num_samples 4 --max_tokens 256 --output_dir eval/humaneval-base
    python experiments/code_eval_report.py eval/humaneval-base eval/codeio-base

Each argument is an ``--output_dir`` of resrl-eval (or its ``summary.json``); its label is the folder's name. The
outcome table counts each output folder's samples by what ended them: passed every test, failed a test (a wrong
value), or a fault kind of the code reward (``syntax``, ``error``, ``no_code``, ``timeout``...).
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path
from typing import Any


def _cell(metric: dict[str, Any], scale: float = 100.0, digits: int = 1) -> str:
    low, high = metric["ci95"]
    return f"{metric['mean'] * scale:.{digits}f} [{low * scale:.{digits}f}, {high * scale:.{digits}f}]"


def _folder(path: str) -> Path:
    given = Path(path)
    return given.parent if given.name == "summary.json" else given


def metrics_table(folders: list[Path]) -> str:
    """Avg@n and Pass@k in %, distinct programs per problem and distinct-2 of completions, one row per folder."""
    summaries = [json.loads((folder / "summary.json").read_text()) for folder in folders]
    for folder, summary in zip(folders, summaries, strict=True):
        if "faults" not in summary:
            raise SystemExit(f"{folder}: not a code or agent evaluation (its summary has no fault counts)")
    ks = sorted({int(k) for s in summaries for k in s["pass@k"]})
    header = ["run", "dataset", "problems x n", "Avg@n"] + [f"Pass@{k}" for k in ks]
    agent = "tool_calls_per_rollout" in summaries[0]
    header += ["calls per rollout", "rollouts with calls"] if agent else ["distinct programs", "distinct-2"]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for folder, s in zip(folders, summaries, strict=True):
        n = s["num_samples"]
        row = [folder.name, str(s["settings"]["dataset"]), f"{s['num_problems']} x {n}", _cell(s[f"avg@{n}"])]
        row += [_cell(s["pass@k"][str(k)]) if str(k) in s["pass@k"] else "" for k in ks]
        if agent:
            row += [f"{s['tool_calls_per_rollout']:.2f}", f"{100 * s['rollouts_with_calls']:.0f}%"]
        else:
            row += [_cell(s["diversity"]["distinct_programs"], 1, 2), _cell(s["diversity"]["distinct_2"], 1, 3)]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def outcome_table(folders: list[Path]) -> str:
    """Samples by outcome, in % of each run's samples: passed, wrong value, each fault kind."""
    counts: list[Counter[str]] = []
    for folder in folders:
        records = [json.loads(line) for line in (folder / "samples.jsonl").read_text().splitlines() if line.strip()]
        counts.append(Counter("passed" if r["correct"] else r.get("fault") or "wrong" for r in records))
    kinds = ["passed", "wrong"] + sorted({k for c in counts for k in c} - {"passed", "wrong"})
    lines = ["| run | samples | " + " | ".join(kinds) + " |", "|" + " --- |" * (len(kinds) + 2)]
    for folder, count in zip(folders, counts, strict=True):
        total = sum(count.values())
        cells = [f"{100 * count[k] / total:.0f}% ({count[k]})" for k in kinds]
        lines.append(f"| {folder.name} | {total} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="resrl-eval --output_dir folders (or their summary.json)")
    folders = [_folder(path) for path in parser.parse_args(argv).runs]
    print(metrics_table(folders))
    print()
    print(outcome_table(folders))


if __name__ == "__main__":
    main()
