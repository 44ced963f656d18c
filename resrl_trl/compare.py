"""``resrl-compare``: train methods x seeds through a recipe, evaluate every run the same way, and compare them in
pairs, with the comparisons, metrics and effect of interest fixed in a plan before anything runs.

    resrl-compare run --plan recipes/studies/arithmetic_cpu.yaml --output_dir outputs/study_arithmetic
    resrl-compare run --plan recipes/studies/arithmetic_cpu.yaml --output_dir outputs/study_arithmetic --seeds 5 6
    resrl-compare report --output_dir outputs/study_arithmetic

The plan (a YAML file) names the recipe and its config, the arms (each a set of recipe settings, e.g.
``{advantage_mode: nsr}``), the comparisons (pairs of arms), the evaluations (``resrl-eval`` settings), the primary
metric, the effect the power analysis sizes for, and the seeds. ``run`` copies the plan into ``output_dir`` first
(``plan.json``, with the time it was frozen) and refuses to continue a study under a different plan, so the
comparisons cannot change after the results are seen; only the seeds may grow.

Runs are *paired by seed*: for one seed, every arm trains from the same initial weights (TRL seeds before the LoRA
adapter is made; the adapter's fingerprint is recorded and checked), on the same prompts in the same order (the
recipe's data and TRL's sampler are seeded by ``seed``), and is evaluated on the same problems with the same
sampling seeds. Each run leaves ``runs/<arm>/seed<k>/`` (the recipe's config and output, ``eval/<name>/`` from
resrl-eval, ``run.json``); a run that finished is never redone, an interrupted one continues (its evaluation where
it stopped, its training from its last checkpoint when the recipe saves any). Several processes may share one study
if they run different ``--seeds``.

``report`` writes ``report.md``, ``report.json`` and ``paired_differences.png``: per-seed values, each comparison's
mean paired difference with its t-interval over seeds, paired t-test p-values with Holm's correction over the plan's
comparisons (per metric; the primary metric is the confirmatory one), and the power analysis: the seeds needed to
detect the plan's effect with 80% power, and the effect the seeds run can detect. Run on a pilot (two or three
seeds), it says how many seeds the study needs.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import shlex
import subprocess
import sys
import time
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml
from tqdm.auto import tqdm

__all__ = ["Plan", "build_parser", "load_plan", "main", "run_study"]

PLAN_FILE = "plan.json"
RUN_FILE = "run.json"
BASE = "base"  # the untrained model, evaluated once for reference
RECIPES = ("math", "code")  # the recipes whose runs resrl-eval scores
# Settings the study sets for every run: an arm may not change them.
STUDY_SETTINGS = ("seed", "output_dir", "resume_from_checkpoint")


@dataclass
class Plan:
    """What a study compares, fixed before its first run (every field is a key of the plan's YAML).

    Args:
        recipe (`str`): ``"math"`` or ``"code"``, the recipe every run goes through.
        recipe_config (`str`): the recipe's YAML (relative to the current folder), e.g. ``recipes/configs/demo.yaml``.
        arms (`dict[str, dict]`): name -> the recipe settings that make the arm, e.g. ``{advantage_mode: nsr}``.
        comparisons (`list[list[str]]`): the pairs ``[A, B]`` of arms tested (A minus B); Holm's correction covers
            them.
        evaluations (`dict[str, dict]`): name -> ``resrl-eval`` settings (dataset, num_samples, max_tokens, ...).
        primary_metric (`str`): the confirmatory metric, ``<evaluation>/avg@n`` (also ``pass@k``, ``distinct_answers``,
            ``distinct_programs``).
        metrics (`list[str]`, defaults to none): secondary metrics, reported with the same tests.
        recipe_args (`dict`, defaults to none): recipe settings shared by every arm, over the recipe config's.
        effect (`float`, defaults to 10.0): the true difference (in the primary metric's units, points for avg/pass)
            the power analysis sizes the study for.
        alpha (`float`, defaults to 0.05): the family-wise error rate of each metric's comparisons.
        power (`float`, defaults to 0.8): the power the seed count is sized for.
        evaluate_base (`bool`, defaults to True): also evaluate the untrained model once, for reference.
        seeds (`list[int]`, defaults to [0, 1]): the seeds ``run`` takes without ``--seeds`` (the pilot's).
        description (`str`): the report's title.
    """

    recipe: str
    recipe_config: str
    arms: dict[str, dict[str, Any]]
    comparisons: list[list[str]]
    evaluations: dict[str, dict[str, Any]]
    primary_metric: str
    metrics: list[str] = field(default_factory=list)
    recipe_args: dict[str, Any] = field(default_factory=dict)
    effect: float = 10.0
    alpha: float = 0.05
    power: float = 0.8
    evaluate_base: bool = True
    seeds: list[int] = field(default_factory=lambda: [0, 1])
    description: str = ""

    def frozen(self) -> dict[str, Any]:
        """The plan without its seeds, with the values of its recipe config: what a study may not change once it
        has started."""
        path = Path(self.recipe_config)
        if not path.is_file():
            raise FileNotFoundError(f"recipe_config {self.recipe_config} not found (relative to the current folder)")
        values = yaml.safe_load(path.read_text()) or {}
        return {k: v for k, v in asdict(self).items() if k != "seeds"} | {"recipe_config_values": values}

    @property
    def all_metrics(self) -> list[str]:
        return [self.primary_metric, *(m for m in self.metrics if m != self.primary_metric)]


def load_plan(path: str | Path) -> Plan:
    """Read and check a plan: known keys, at least two arms, comparisons between arms, metrics of its evaluations."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"plan {path} not found: pass a plan YAML file (see recipes/studies/)")
    text = Path(path).read_text()
    raw = yaml.safe_load(text) or {}
    known = set(Plan.__dataclass_fields__)
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ValueError(f"plan {path}: unknown keys {unknown}; a plan has {sorted(known)}")
    try:
        plan = Plan(**raw)
    except TypeError as error:
        raise ValueError(f"plan {path}: {error}") from None
    problems = []
    if plan.recipe not in RECIPES:
        problems.append(f"recipe must be one of {list(RECIPES)} (runs scored by resrl-eval), got {plan.recipe!r}")
    if len(plan.arms) < 2 or BASE in plan.arms:
        problems.append(f"arms: name at least two, none called {BASE!r} (the untrained model's name)")
    for arm, settings in plan.arms.items():
        fixed = sorted(set(settings or {}) & set(STUDY_SETTINGS))
        if fixed:
            problems.append(f"arm {arm} sets {fixed}, which the study sets for every run")
    for pair in plan.comparisons:
        if len(pair) != 2 or not set(pair) <= set(plan.arms) or pair[0] == pair[1]:
            problems.append(f"comparison {pair} is not a pair of two different arms of {sorted(plan.arms)}")
    if not plan.comparisons:
        problems.append("comparisons: name the pairs of arms to compare (before running)")
    for metric in plan.all_metrics:
        name, _, kind = metric.partition("/")
        if name not in plan.evaluations or not _metric_kind_ok(kind):
            problems.append(
                f"metric {metric!r}: write <evaluation>/avg@<n>, /pass@<k>, /distinct_answers or /distinct_programs, "
                f"with an evaluation of {sorted(plan.evaluations)}"
            )
    if plan.effect <= 0 or not 0 < plan.alpha < 1 or not 0 < plan.power < 1:
        problems.append("effect must be > 0, alpha and power in (0, 1)")
    if problems:
        raise ValueError(f"plan {path}: " + "; ".join(problems))
    return plan


def _metric_kind_ok(kind: str) -> bool:
    if kind in ("distinct_answers", "distinct_programs"):
        return True
    head, _, k = kind.partition("@")
    return head in ("avg", "pass") and k.isdigit() and int(k) >= 1


# --- Running the study ---


def freeze_plan(plan: Plan, output_dir: Path) -> None:
    """Write the plan into ``output_dir`` before the first run, or refuse a study planned differently."""
    path = output_dir / PLAN_FILE
    if path.exists():
        found = json.loads(path.read_text())
        changed = sorted(k for k, v in plan.frozen().items() if found["plan"].get(k) != v)
        if changed:
            raise ValueError(
                f"{output_dir} holds a study planned with other {changed}: a plan is fixed before its first run. "
                "Use another --output_dir for a new plan (only --seeds may be added to a study)"
            )
        return
    output_dir.mkdir(parents=True, exist_ok=True)
    record = {"frozen_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "plan": plan.frozen()}
    path.write_text(json.dumps(record, indent=2))


def _embedded_folder(config: dict[str, Any]) -> dict[str, Any]:
    """The embedded GGUF written out once as a plain folder: the same weights, loaded in a second, not 20."""
    if config.get("model_name_or_path") is None and config.get("gguf_file") is None:
        from .models import plain_model_folder

        return config | {"model_name_or_path": plain_model_folder()}
    return config


def run_config(plan: Plan, arm: str, seed: int, train_dir: Path) -> dict[str, Any]:
    """The recipe config of one run: the recipe's YAML, the plan's recipe_args, the arm's settings, the seed."""
    config = yaml.safe_load(Path(plan.recipe_config).read_text()) or {}
    config |= plan.recipe_args | (plan.arms[arm] or {})
    return _embedded_folder(config) | {"seed": seed, "output_dir": str(train_dir)}


def trainable_fingerprint(model: Any, max_elements: int = 200_000_000) -> str:
    """A hash of the trainable parameters (a LoRA adapter's initial weights); "full" when they are the whole model
    (full fine-tuning starts from the base model in every arm) or too many to hash quickly."""
    parameters = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    if sum(p.numel() for _, p in parameters) > max_elements or all(p.requires_grad for p in model.parameters()):
        return "full"
    digest = hashlib.sha256()
    for name, parameter in sorted(parameters, key=lambda item: item[0]):
        digest.update(name.encode())
        digest.update(parameter.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def _last_checkpoint(train_dir: Path) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(str(train_dir)) if train_dir.is_dir() else None


def recipe_module(plan: Plan) -> Any:
    """The module of the plan's recipe (its ``parse_args``, ``setup``, and the script a launcher runs)."""
    from .recipes import code_recipe, math_recipe

    return {"math": math_recipe, "code": code_recipe}[plan.recipe]


def train_in_process(plan: Plan, config_path: Path, train_dir: Path) -> dict[str, Any]:
    """Train one run with the recipe's own parse and setup, in this process; returns what run.json keeps."""
    import torch

    recipe = recipe_module(plan)
    script_args, training_args, model_args = recipe.parse_args(["--config", str(config_path)])
    trainer = recipe.setup(script_args, training_args, model_args)
    checkpoint = _last_checkpoint(train_dir)
    fingerprint = None if checkpoint else trainable_fingerprint(trainer.model)
    start = time.perf_counter()
    trainer.train(resume_from_checkpoint=checkpoint)
    seconds = time.perf_counter() - start
    trainer.save_model(str(train_dir))
    logs = [
        {k: v for k, v in entry.items() if k in LOGGED} for entry in trainer.state.log_history if "reward" in entry
    ]
    del trainer
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return {"initial_fingerprint": fingerprint, "resumed_from": checkpoint, "train_seconds": seconds, "logs": logs}


LOGGED = ("step", "reward", "reward_std", "frac_reward_zero_std", "resrl/mixed_group_frac", "loss", "entropy")


def train_with_launcher(plan: Plan, config_path: Path, train_dir: Path, launcher: str) -> dict[str, Any]:
    """Train one run as ``<launcher> recipes/<recipe>.py --config <run config>`` (e.g. ``accelerate launch
    --config_file recipes/accelerate/zero3.yaml``), resuming from the run's last checkpoint if it has one."""
    script = recipe_module(plan).__file__
    checkpoint = _last_checkpoint(train_dir)
    command = [*shlex.split(launcher), script, "--config", str(config_path)]
    if checkpoint:
        command += ["--resume_from_checkpoint", checkpoint]
    start = time.perf_counter()
    with (train_dir.parent / "train.log").open("a") as log:
        subprocess.run(command, check=True, stdout=log, stderr=subprocess.STDOUT)
    return {"initial_fingerprint": None, "resumed_from": checkpoint, "train_seconds": time.perf_counter() - start}


def evaluate_run(
    plan: Plan, name: str, model: dict[str, str | None], out: Path, in_process: bool = True
) -> dict[str, Any]:
    """One of the plan's evaluations of ``model`` (``model``/``gguf_file``/``adapter`` flags of resrl-eval) with
    resrl-eval, in this process or (``in_process=False``, beside a launcher on GPUs, so that vLLM's memory is given
    back before the next training) in a subprocess; it resumes where it stopped."""
    from .evaluation import SUMMARY_FILE, build_parser, evaluate

    flags = ["--output_dir", str(out), "--quiet"]
    for key, value in model.items():
        if value is not None:
            flags += [f"--{key}", value]
    for key, value in plan.evaluations[name].items():
        flags += [f"--{key}", json.dumps(value) if isinstance(value, dict | list) else str(value)]
    out.mkdir(parents=True, exist_ok=True)
    with (out / "eval.log").open("a") as log:
        if in_process:
            with redirect_stdout(log), redirect_stderr(log):
                return evaluate(build_parser().parse_args(flags))
        subprocess.run([sys.executable, "-m", "resrl_trl.evaluation", *flags], check=True, stdout=log, stderr=log)
    return json.loads((out / SUMMARY_FILE).read_text())


def base_model_of(plan: Plan) -> tuple[str | None, str | None]:
    """``(model_name_or_path, gguf_file)`` the plan's runs start from."""
    config = yaml.safe_load(Path(plan.recipe_config).read_text()) or {}
    config = _embedded_folder(config | plan.recipe_args)
    return config.get("model_name_or_path"), config.get("gguf_file")


def _claim(run_dir: Path) -> bool:
    """Claim a run for this process (another live process may hold it when several share a study)."""
    lock = run_dir / "running.pid"
    if lock.exists():
        try:
            pid = int(lock.read_text())
            os.kill(pid, 0)
            if pid != os.getpid():
                return False
        except (ValueError, ProcessLookupError, PermissionError):
            pass  # a stale claim of a process that died: take the run over
    run_dir.mkdir(parents=True, exist_ok=True)
    lock.write_text(str(os.getpid()))
    return True


def run_one(plan: Plan, output_dir: Path, arm: str, seed: int | None, opts: argparse.Namespace, bar: Any) -> None:
    """Train (unless ``arm`` is the base model) and evaluate one run, skipping what it already finished."""
    run_dir = output_dir / "runs" / arm / (f"seed{seed}" if seed is not None else "untrained")
    record_path = run_dir / RUN_FILE
    record = json.loads(record_path.read_text()) if record_path.exists() else {}
    if record.get("done") or not _claim(run_dir):
        return
    record |= {"arm": arm, "seed": seed}
    train_dir = run_dir / "train"
    base_model, gguf_file = base_model_of(plan)
    if arm != BASE and "trained" not in record:
        config_path = run_dir / "recipe.yaml"
        config_path.write_text(yaml.safe_dump(run_config(plan, arm, seed, train_dir), sort_keys=False))
        bar.set_description(f"{arm} seed {seed}: training")
        if opts.launcher:
            record["trained"] = train_with_launcher(plan, config_path, train_dir, opts.launcher)
        else:  # the trainer's own printing goes to the run's log, the study's progress bar stays readable
            with (run_dir / "train.log").open("a") as log, redirect_stdout(log), redirect_stderr(log):
                record["trained"] = train_in_process(plan, config_path, train_dir)
        record_path.write_text(json.dumps(record, indent=1))
    model = {"model": base_model, "gguf_file": gguf_file}
    if arm != BASE and (train_dir / "adapter_config.json").exists():
        model["adapter"] = str(train_dir)
    elif arm != BASE:  # full fine-tuning: the run's output is the whole model
        model = {"model": str(train_dir)}
    start = time.perf_counter()
    record["summaries"] = {}
    for name in plan.evaluations:
        bar.set_description(f"{arm} seed {seed}: evaluating {name}" if seed is not None else f"{arm}: {name}")
        out = run_dir / "eval" / name
        record["summaries"][name] = evaluate_run(plan, name, model, out, in_process=opts.launcher is None)
    record["eval_seconds"] = time.perf_counter() - start
    record["done"] = True
    record_path.write_text(json.dumps(record, indent=1))
    (run_dir / "running.pid").unlink(missing_ok=True)


def run_study(plan: Plan, output_dir: Path, seeds: list[int], opts: argparse.Namespace) -> None:
    """Every arm for every seed, seed by seed (so that each finished seed completes its pairs)."""
    import torch

    freeze_plan(plan, output_dir)
    torch.set_num_threads(opts.threads)
    jobs: list[tuple[str, int | None]] = [(BASE, None)] if plan.evaluate_base else []
    jobs += [(arm, seed) for seed in seeds for arm in plan.arms]
    with tqdm(total=len(jobs), desc="study", unit="run", disable=opts.quiet) as bar:
        for arm, seed in jobs:
            run_one(plan, output_dir, arm, seed, opts, bar)
            bar.update(1)


# --- The command ---


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="resrl-compare", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="train and evaluate the plan's arms x seeds, then write the report")
    run.add_argument("--plan", required=True, help="the study's plan (YAML)")
    run.add_argument("--output_dir", required=True)
    run.add_argument("--seeds", type=int, nargs="+", help="run these seeds instead of the plan's (to add seeds)")
    run.add_argument(
        "--launcher",
        default=None,
        help="train each run in a subprocess started with this command, e.g. 'accelerate launch --config_file "
        "recipes/accelerate/zero3.yaml', and evaluate it in another (default: both in this process)",
    )
    run.add_argument("--threads", type=int, default=torch_threads(), help="CPU threads for torch in this process")
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    report = commands.add_parser("report", help="write report.md, report.json and paired_differences.png")
    report.add_argument("--output_dir", required=True)
    report.add_argument("--effect", type=float, default=None, help="size the power analysis for this effect instead")
    return parser


def torch_threads() -> int:
    return max(1, os.cpu_count() or 1)


def main(argv: list[str] | None = None) -> None:
    opts = build_parser().parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        if opts.command == "run":
            plan = load_plan(opts.plan)
            run_study(plan, Path(opts.output_dir), opts.seeds or plan.seeds, opts)
        from .study_report import write_report

        text = write_report(Path(opts.output_dir), getattr(opts, "effect", None))
    except (ValueError, FileNotFoundError) as error:
        sys.exit(f"resrl-compare: {error}")
    print(text)


if __name__ == "__main__":
    main()
