"""Train GRPO, NSR, W-REINFORCE and ResRL the same way, evaluate each, and write docs/results.md.

    python experiments/compare_methods.py                     # the embedded SmolLM2-135M + LoRA, on the CPU
    python experiments/compare_methods.py --seeds 0 1 --max_steps 40 --max_problems 100

Every method runs `recipes/math.py` from `recipes/configs/demo.yaml` (same model, LoRA, data, sampling, clipped loss,
budget and seed); only `--advantage_mode` differs. Each adapter, and the untrained base model, is then evaluated by
`resrl-eval` on the held-out arithmetic test split with n samples per problem, and `resrl-plot` draws the Pass@k
curves. Runs and evaluations already finished (their summary exists) are reused, so the script can be resumed.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

METHODS = ("grpo", "nsr", "w_reinforce", "resrl")
LABELS = {"base": "base model", "grpo": "GRPO", "nsr": "NSR", "w_reinforce": "W-REINFORCE", "resrl": "ResRL"}


REPO = Path(__file__).resolve().parents[1]


def run(argv: list[str], log: Path) -> float:
    """Run a command, its output to ``log``; returns the seconds it took."""
    start = time.perf_counter()
    with log.open("w") as sink:
        subprocess.run(
            argv,
            check=True,
            stdout=sink,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"},
        )
    return time.perf_counter() - start


def summaries_from_results(text: str) -> tuple[list[str], list[dict]]:
    """Labels and Pass@k summaries (means and 95% intervals) read back from the per-run table of a results page this
    script wrote, so its picture can be drawn again without the evaluation folders."""
    lines = [line for line in text.splitlines() if line.startswith("|")]
    header_index = next(i for i, line in enumerate(lines) if "Pass@2" in line)
    header = [cell.strip() for cell in lines[header_index].strip("|").split("|")]
    labels, summaries = [], []
    for line in lines[header_index + 2 :]:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if len(cells) != len(header) or "[" not in cells[1]:
            break
        pass_at_k = {}
        for name, cell in zip(header, cells, strict=True):
            if name.startswith("Pass@"):
                mean, interval = cell.split(" [")
                low, high = interval.rstrip("]").split(", ")
                pass_at_k[name[5:]] = {"mean": float(mean) / 100, "ci95": [float(low) / 100, float(high) / 100]}
        labels.append(cells[0])
        summaries.append({"pass@k": pass_at_k})
    return labels, summaries


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--replot", action="store_true", help="only draw docs/results_pass_at_k.png again from the results page"
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--max_steps", type=int, default=20)
    parser.add_argument("--num_samples", type=int, default=16)
    parser.add_argument("--max_problems", type=int, default=40)
    parser.add_argument("--max_tokens", type=int, default=24, help="as max_completion_length in training")
    parser.add_argument("--work_dir", default="outputs/compare")
    parser.add_argument("--results", default="docs/results.md")
    opts = parser.parse_args()
    os.chdir(REPO)  # every path below, and in the commands written to the results, is relative to the repository
    if opts.replot:
        from resrl_trl.plot import plot_pass_at_k

        plot_pass_at_k(*reversed(summaries_from_results(Path(opts.results).read_text())), "docs/results_pass_at_k.png")
        return
    work = Path(opts.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    commands: list[str] = []
    summaries: dict[str, str] = {}
    eval_common = [
        "--dataset",
        "arithmetic",
        "--split",
        "test",
        "--num_samples",
        str(opts.num_samples),
        "--max_problems",
        str(opts.max_problems),
        "--max_tokens",
        str(opts.max_tokens),
        "--temperature",
        "0.7",
        "--quiet",
    ]
    for seed in opts.seeds:
        runs = [("base", None)] + [(method, work / f"{method}-seed{seed}") for method in METHODS]
        for method, adapter in runs:
            key = f"{method}-seed{seed}"
            if adapter is not None:
                train = [
                    sys.executable,
                    "recipes/math.py",
                    "--advantage_mode",
                    method,
                    "--seed",
                    str(seed),
                    "--max_steps",
                    str(opts.max_steps),
                    "--max_completion_length",
                    str(opts.max_tokens),
                    "--output_dir",
                    str(adapter),
                ]
                commands.append(shlex.join(["python", *train[1:]]))
                if not (adapter / "adapter_model.safetensors").exists():
                    timings[key] = run(train, work / f"{key}.train.log")
                    (work / f"{key}.train_seconds").write_text(f"{timings[key]:.0f}")
                else:
                    timings[key] = float((work / f"{key}.train_seconds").read_text())
            out = work / f"eval-{key}"
            evaluate = [
                sys.executable,
                "-m",
                "resrl_trl.evaluation",
                *eval_common,
                "--seed",
                str(seed),
                "--output_dir",
                str(out),
            ]
            if adapter is not None:
                evaluate += ["--adapter", str(adapter)]
            commands.append(shlex.join(["resrl-eval", *evaluate[3:]]))
            if not (out / "summary.json").exists():
                run(evaluate, work / f"{key}.eval.log")
            summaries[key] = str(out / "summary.json")

    keys = list(summaries)
    labels = [f"{LABELS[k.rsplit('-seed', 1)[0]]} (seed {k.rsplit('-seed', 1)[1]})" for k in keys]
    png = Path("docs") / "results_pass_at_k.png"
    plot = [
        sys.executable,
        "-m",
        "resrl_trl.plot",
        *summaries.values(),
        "--labels",
        *labels,
        "--output",
        str(png),
        "--table",
        str(work / "table.md"),
    ]
    commands.append(shlex.join(["resrl-plot", *plot[3:]]))
    run(plot, work / "plot.log")
    table = (work / "table.md").read_text()
    train_rows = "\n".join(
        f"| {LABELS[k.rsplit('-seed', 1)[0]]} | {k.rsplit('-seed', 1)[1]} | {v / 60:.1f} |" for k, v in timings.items()
    )
    settings = json.loads(Path(summaries[keys[0]]).read_text())
    Path(opts.results).write_text(
        RESULTS.format(
            table=table,
            pooled=pooled_table(summaries, opts.seeds, opts.num_samples),
            work=opts.work_dir,
            train_rows=train_rows,
            commands="\n".join(commands),
            steps=opts.max_steps,
            problems=settings["num_problems"],
            n=opts.num_samples,
            seeds=" ".join(map(str, opts.seeds)),
            tokens=opts.max_tokens,
        )
    )
    print(table)


def pooled_table(summaries: dict[str, str], seeds: list[int], n: int) -> str:
    """Per method: each metric's mean over seeds, and its value in each seed (in %)."""
    metrics = [(f"Avg@{n}", lambda s: s[f"avg@{n}"]["mean"])] + [
        (f"Pass@{k}", lambda s, k=k: s["pass@k"][str(k)]["mean"]) for k in (1, 4, n)
    ]
    header = "| method | " + " | ".join(name for name, _ in metrics) + " |"
    rows = [header, "| --- |" + " ---: |" * len(metrics)]
    for method in ("base", *METHODS):
        runs = [json.loads(Path(summaries[f"{method}-seed{seed}"]).read_text()) for seed in seeds]
        cells = []
        for _, read in metrics:
            values = [100 * read(run) for run in runs]
            cells.append(f"{sum(values) / len(values):.1f} ({', '.join(f'{v:.1f}' for v in values)})")
        rows.append(f"| {LABELS[method]} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


RESULTS = """# Results: GRPO, NSR, W-REINFORCE and ResRL on the built-in arithmetic task

Produced by `python experiments/compare_methods.py --seeds {seeds} --max_steps {steps} --max_problems {problems}
--work_dir {work}` (all figures below are that script's output).

Setting: the embedded SmolLM2-135M-Instruct with LoRA (r=16), `recipes/configs/demo.yaml` (2 prompts x 8
completions per step, lr 5e-4, temperature 0.7, completions of at most {tokens} tokens), {steps} training steps per
method, on 2 CPU cores. Only `--advantage_mode` differs between methods. Evaluation: the held-out arithmetic `test`
split (disjoint from training), the first {problems} problems, n = {n} samples per problem at temperature 0.7,
scored by the training reward. Values in %.

Mean over seeds (each seed's value in brackets):

{pooled}

Each run, with 95% bootstrap intervals over problems (diversity: per problem):

{table}

![Pass@k](results_pass_at_k.png)

Training time (minutes):

| method | seed | train min |
| --- | --- | ---: |
{train_rows}

## Commands

```bash
{commands}
```

## What the numbers do and do not show

NOTES
"""


if __name__ == "__main__":
    main()
