"""A paired, multi-seed comparison of GRPO, NSR, W-REINFORCE, ResRL and ResRL's two ablations.

    python benchmarks/powered_comparison.py --task arithmetic --seeds 0 1 2 3 4      # train + evaluate, resumable
    python benchmarks/powered_comparison.py --task math_short --seeds 0 1 2 3 4
    python benchmarks/powered_comparison.py --report arithmetic math_short          # paired differences -> docs

Every run trains a fresh LoRA adapter on the embedded SmolLM2-135M-Instruct, in this process, with the same settings;
only ``advantage_mode`` differs. Runs are *paired by seed*: for a given seed every method sees the same training
prompts in the same order (TRL's sampler is seeded by ``seed``), starts from the same LoRA initialisation, and is
evaluated on the same problems with the same sampling seeds. The seed-to-seed spread of training is the noise the
comparison must beat, so the confidence intervals are over seeds: for each seed, the difference between a method
and the reference (GRPO or ResRL), then a Student-t 95% interval of the mean difference.

Tasks: ``arithmetic`` is the built-in task (its test split is disjoint from training). ``math_short`` is MATH
(../shared/data/math) restricted to short Level 1-2 problems whose reference answer is an integer, trained on the
train split and evaluated on the test split, with the same "Give a short answer." instruction.

Each finished run leaves ``<work>/<task>/<method>-seed<k>/summary.json`` (and its samples), so an interrupted study
continues where it stopped.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from datasets import Dataset, load_dataset
from peft import LoraConfig

ROOT = Path(__file__).resolve().parents[1]
SHARED_MATH = ROOT.parent / "shared" / "data" / "math"
METHODS = ("grpo", "nsr", "w_reinforce", "resrl", "resrl_pos_only", "resrl_tokens_only")
REFERENCES = ("grpo", "resrl")
LABELS = {
    "grpo": "GRPO",
    "nsr": "NSR",
    "w_reinforce": "W-REINFORCE",
    "resrl": "ResRL",
    "resrl_pos_only": "ResRL pos-only",
    "resrl_tokens_only": "ResRL tokens-only",
}
# Student-t 0.975 quantiles by degrees of freedom (scipy is not a dependency); beyond the table, a series in 1/df.
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}


def t_975(df: int) -> float:
    """The 0.975 quantile of Student's t with ``df`` degrees of freedom (Cornish-Fisher series beyond the table)."""
    if df in T_975:
        return T_975[df]
    z = 1.959964
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def math_short(split: str, seed: int) -> Dataset:
    """Short MATH problems (Level 1 or 2, under 70 characters, integer answer) as prompt/solution rows, shuffled by
    ``seed``: the part of MATH where a 135M model writing 16 tokens is sometimes right."""
    from resrl_trl.data import ARITHMETIC_INSTRUCTION

    path = SHARED_MATH / f"{split}.parquet"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: the MATH task needs ../shared/data beside the repository")
    rows = load_dataset("parquet", data_files=str(path), split="train")

    def usable(row: dict[str, Any]) -> bool:
        target = row["reward_model"]["ground_truth"]
        target = target["target"] if isinstance(target, dict) else target
        short = len(row["prompt"][-1]["content"]) < 70
        return row["level"] in ("Level 1", "Level 2") and short and str(target).lstrip("-").isdigit()

    rows = rows.filter(usable).shuffle(seed=seed)
    return Dataset.from_dict(
        {
            "prompt": [
                [{"role": "user", "content": f"{row['prompt'][-1]['content']} {ARITHMETIC_INSTRUCTION}"}]
                for row in rows
            ],
            "solution": [str(row["reward_model"]["ground_truth"]["target"]) for row in rows],
        }
    )


def task_data(task: str, seed: int) -> tuple[Dataset, Dataset]:
    """(training rows in seed ``seed``'s order, the fixed evaluation problems)."""
    from resrl_trl.data import arithmetic_dataset

    if task == "arithmetic":
        return arithmetic_dataset("train", seed=seed), arithmetic_dataset("test", seed=0)
    if task == "math_short":
        return math_short("train", seed), math_short("test", 0)
    raise ValueError(f"--task must be arithmetic or math_short, not {task!r}")


def train_adapter(base: torch.nn.Module, tokenizer: Any, method: str, seed: int, opts: argparse.Namespace, out: Path):
    """A fresh LoRA adapter trained with ``method``; returns (the trained PEFT model, training seconds, logs)."""
    from resrl_trl import ResRLConfig, ResRLTrainer
    from resrl_trl.rewards import math_reward

    train_rows, _ = task_data(opts.task, seed)
    args = ResRLConfig(
        output_dir=str(out / "trainer"),
        advantage_mode=method,
        seed=seed,
        use_cpu=True,
        bf16=False,
        gradient_checkpointing=False,  # a 135M model needs no activation checkpointing
        num_generations=opts.num_generations,
        per_device_train_batch_size=opts.num_generations * opts.prompts_per_step,
        max_completion_length=opts.max_tokens,
        temperature=opts.temperature,
        beta=0.0,
        learning_rate=opts.learning_rate,
        lr_scheduler_type="constant",
        max_steps=opts.max_steps,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
    )
    lora = LoraConfig(
        r=16,
        lora_alpha=32,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        task_type="CAUSAL_LM",
    )
    # TRL seeds with args.seed before wrapping the model in LoRA: every method of a seed starts from the same adapter.
    trainer = ResRLTrainer(
        model=copy.deepcopy(base),
        reward_funcs=math_reward,
        args=args,
        train_dataset=train_rows,
        processing_class=tokenizer,
        peft_config=lora,
    )
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    return trainer.model, seconds, logs


@torch.no_grad()
def evaluate_model(model: torch.nn.Module, tokenizer: Any, seed: int, opts: argparse.Namespace, out: Path) -> dict:
    """Sample ``num_samples`` completions per evaluation problem and summarise them with resrl-eval's metrics.

    Several problems share one ``generate`` call (a CPU runs one large batch much faster than many small ones); the
    sampling seed depends only on ``seed`` and the batch, so every method of a seed gets the same random stream.
    """
    from resrl_trl.metrics import summarize
    from resrl_trl.rewards import math_reward

    _, problems = task_data(opts.task, seed)
    problems = problems.select(range(min(opts.eval_problems, len(problems))))
    model.eval()
    records = []
    per_call = max(1, opts.eval_batch // opts.num_samples)
    for first in range(0, len(problems), per_call):
        rows = problems.select(range(first, min(first + per_call, len(problems))))
        texts = [
            tokenizer.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=False) for row in rows
        ]
        encoded = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        torch.manual_seed(seed * 1_000_003 + first)
        output = model.generate(
            **encoded,
            do_sample=True,
            temperature=opts.temperature,
            top_p=1.0,
            top_k=0,
            max_new_tokens=opts.max_tokens,
            num_return_sequences=opts.num_samples,
            pad_token_id=tokenizer.pad_token_id,
        )
        completions = tokenizer.batch_decode(output[:, encoded["input_ids"].shape[1] :], skip_special_tokens=True)
        for offset, row in enumerate(rows):
            for sample_index in range(opts.num_samples):
                text = completions[offset * opts.num_samples + sample_index]
                answer, reward, _ = math_reward.check(text, row["solution"])
                records.append(
                    {
                        "problem_id": str(first + offset),
                        "sample_index": sample_index,
                        "completion": text,
                        "answer": answer,
                        "correct": reward is not None and reward > 0,
                    }
                )
    with (out / "samples.jsonl").open("w") as sink:
        sink.writelines(json.dumps(record) + "\n" for record in records)
    return summarize(records, seed=seed)


def run_study(opts: argparse.Namespace) -> None:
    from resrl_trl.models import load_model_and_tokenizer

    torch.set_num_threads(opts.threads)
    base, tokenizer = load_model_and_tokenizer()
    work = Path(opts.work_dir) / opts.task
    for seed in opts.seeds:
        for method in ["base", *opts.methods]:
            out = work / f"{method}-seed{seed}"
            if (out / "summary.json").exists():
                continue
            if method == "base" and seed != opts.seeds[0]:
                continue  # the untrained model once is enough for reference
            out.mkdir(parents=True, exist_ok=True)
            start = time.perf_counter()
            seconds, logs = 0.0, []
            model = base
            if method != "base":
                model, seconds, logs = train_adapter(base, tokenizer, method, seed, opts, out)
            summary = evaluate_model(model, tokenizer, seed, opts, out)
            summary["run"] = {
                "task": opts.task,
                "method": method,
                "seed": seed,
                "train_seconds": round(seconds, 1),
                "total_seconds": round(time.perf_counter() - start, 1),
                "settings": {k: v for k, v in vars(opts).items() if k not in ("seeds", "methods", "report")},
                "train_logs": logs,
            }
            (out / "summary.json").write_text(json.dumps(summary, indent=1))
            print(
                f"{opts.task} {method} seed {seed}: avg@{opts.num_samples} "
                f"{summary[f'avg@{opts.num_samples}']['mean']:.3f} in {summary['run']['total_seconds']:.0f}s",
                flush=True,
            )
            del model


# --- The report: paired differences over seeds. ---


def metric_values(summary: dict) -> dict[str, float]:
    """The compared metrics of one run: Avg@n and Pass@k in %, distinct final answers per problem as a count."""
    n = summary["num_samples"]
    values = {f"Avg@{n}": 100 * summary[f"avg@{n}"]["mean"]}
    for k in ("4", str(n)):  # Pass@1 equals Avg@n
        values[f"Pass@{k}"] = 100 * summary["pass@k"][k]["mean"]
    values["distinct answers"] = summary["diversity"]["distinct_answers"]["mean"]
    return values


def paired_interval(differences: list[float]) -> tuple[float, float, float]:
    """Mean of the per-seed differences and its Student-t 95% interval."""
    values = np.asarray(differences, dtype=float)
    mean = float(values.mean())
    if len(values) < 2:
        return mean, math.nan, math.nan
    half = t_975(len(values) - 1) * float(values.std(ddof=1)) / math.sqrt(len(values))
    return mean, mean - half, mean + half


def report(tasks: list[str], work_dir: str) -> str:
    """Markdown tables: per-method means over seeds, and paired differences against GRPO and ResRL."""
    sections = []
    for task in tasks:
        runs: dict[str, dict[int, dict]] = {}
        folder = Path(work_dir) / task  # a run's summary.json per folder, or the copies in docs/runs/powered
        for path in sorted(folder.glob("*/summary.json")) or sorted(folder.glob("*.json")):
            summary = json.loads(path.read_text())
            runs.setdefault(summary["run"]["method"], {})[summary["run"]["seed"]] = summary
        methods = [m for m in METHODS if m in runs]
        if not methods:
            continue
        seeds = sorted(set.intersection(*(set(runs[m]) for m in methods)))
        if not seeds:
            continue
        some = runs[methods[0]][seeds[0]]
        metrics = list(metric_values(some))
        settings = some["run"]["settings"]
        lines = [
            f"### {task}: {len(seeds)} seeds ({', '.join(map(str, seeds))}), {settings['max_steps']} steps, "
            f"{some['num_problems']} evaluation problems x {some['num_samples']} samples",
            "",
            "Mean over seeds (each seed's value in brackets):",
            "",
            "| method | " + " | ".join(metrics) + " |",
            "| --- |" + " ---: |" * len(metrics),
        ]
        if "base" in runs:  # evaluated once per seed that ran it: the evaluation sampling seeds differ
            bases = [metric_values(runs["base"][s]) for s in sorted(runs["base"])]
            cells = [
                f"{np.mean([b[m] for b in bases]):.1f} ({', '.join(f'{b[m]:.1f}' for b in bases)})" for m in metrics
            ]
            label = f"base model (evaluated with seeds {', '.join(map(str, sorted(runs['base'])))})"
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        for method in methods:
            per_seed = [metric_values(runs[method][s]) for s in seeds]
            cells = [
                f"{np.mean([v[m] for v in per_seed]):.1f} ({', '.join(f'{v[m]:.1f}' for v in per_seed)})"
                for m in metrics
            ]
            lines.append(f"| {LABELS[method]} | " + " | ".join(cells) + " |")
        for reference in REFERENCES:
            if reference not in runs:
                continue
            lines += [
                "",
                f"Paired difference against {LABELS[reference]} (method minus {LABELS[reference]}; mean over seeds "
                "[95% t-interval over seeds]; * = the interval excludes 0, with no correction for the number of "
                "comparisons):",
                "",
                "| method | " + " | ".join(metrics) + " |",
                "| --- |" + " ---: |" * len(metrics),
            ]
            for method in methods:
                if method == reference:
                    continue
                cells = []
                for metric in metrics:
                    diffs = [
                        metric_values(runs[method][s])[metric] - metric_values(runs[reference][s])[metric]
                        for s in seeds
                    ]
                    mean, low, high = paired_interval(diffs)
                    star = "*" if low > 0 or high < 0 else ""
                    cells.append(f"{mean:+.1f} [{low:+.1f}, {high:+.1f}]{star}")
                lines.append(f"| {LABELS[method]} | " + " | ".join(cells) + " |")
        minutes = sum(r["run"]["total_seconds"] for m in runs.values() for r in m.values()) / 60
        lines += ["", f"Compute: {minutes:.0f} minutes on this machine for the {sum(map(len, runs.values()))} runs."]
        sections.append("\n".join(lines))
    return "\n\n".join(sections)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="arithmetic", choices=["arithmetic", "math_short"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--max_steps", type=int, default=5)
    parser.add_argument("--prompts_per_step", type=int, default=4)
    parser.add_argument("--num_generations", type=int, default=4, help="completions per prompt (paper: 4)")
    parser.add_argument("--max_tokens", type=int, default=16, help="completion length in training and evaluation")
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--learning_rate", type=float, default=5e-4)
    parser.add_argument("--eval_problems", type=int, default=16)
    parser.add_argument("--num_samples", type=int, default=8)
    parser.add_argument("--eval_batch", type=int, default=32, help="sequences per generate call in evaluation")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--work_dir", default="outputs/powered")
    parser.add_argument("--report", nargs="*", metavar="TASK", help="only write the report of these tasks' runs")
    parser.add_argument("--report_file", default="docs/runs/powered_comparison.md")
    opts = parser.parse_args()
    os.chdir(ROOT)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    if opts.report is not None:
        text = report(opts.report or ["arithmetic", "math_short"], opts.work_dir)
        Path(opts.report_file).write_text(text + "\n")
        print(text)
        return
    run_study(opts)


if __name__ == "__main__":
    main()
