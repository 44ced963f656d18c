"""resrl-compare: its statistics against textbook values, its plan checks, and a whole study on a tiny model (paired
runs, resumption after an interruption, the frozen plan, the report and its picture)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import make_model

from resrl_trl.compare import load_plan, main
from resrl_trl.study_stats import detectable_effect, holm, paired_test, power, seeds_needed
from resrl_trl.testing.tiny import make_prompts_dataset, make_trainer


def test_paired_test_matches_the_formulas():
    differences = [1.0, 2.0, 3.0, 4.0]
    result = paired_test(differences)
    sd = np.std(differences, ddof=1)
    half = 3.182446305284263 * sd / 2  # t(0.975, 3)
    assert result.mean == 2.5 and result.low == pytest.approx(2.5 - half) and result.high == pytest.approx(2.5 + half)
    assert result.p_value == pytest.approx(0.030466, abs=1e-5)  # t = 3.873 with 3 degrees of freedom
    assert math.isnan(paired_test([1.0]).p_value)
    assert paired_test([0.0, 0.0]).p_value == 1.0


def test_holm_adjusts_in_step_down_order():
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, math.nan, 0.01]) == pytest.approx([0.5, math.nan, 0.02], nan_ok=True)


def test_power_and_seeds_needed_match_the_textbook():
    """A paired t-test for a standardised effect of 0.5 at alpha 0.05 needs 34 pairs for 80% power (Cohen's tables,
    G*Power); 0.8 needs 15."""
    assert seeds_needed(0.5, 1.0) == 34 and seeds_needed(8.0, 10.0) == 15
    assert power(0.5, 1.0, 34) >= 0.8 > power(0.5, 1.0, 33)
    assert detectable_effect(1.0, 34) == pytest.approx(0.4950, abs=1e-3)
    assert power(detectable_effect(3.0, 10, alpha=0.01), 3.0, 10, alpha=0.01) == pytest.approx(0.8, abs=1e-6)
    # two seeds (one degree of freedom) at a Holm level: SciPy's tails are NaN far out, the answers are not
    assert power(detectable_effect(2.0, 2, alpha=0.01), 2.0, 2, alpha=0.01) == pytest.approx(0.8, abs=1e-6)
    assert power(400.0, 1.0, 6, alpha=0.01) == 1.0
    needed = seeds_needed(10.0, 9.0, alpha=0.01)
    assert power(10.0, 9.0, needed, alpha=0.01) >= 0.8 > power(10.0, 9.0, needed - 1, alpha=0.01)


def write_plan(tmp_path: Path, tokenizer, **changes) -> Path:
    model_dir = tmp_path / "model"
    if not model_dir.exists():
        make_model(tokenizer).save_pretrained(model_dir)
        tokenizer.save_pretrained(model_dir)
    data = tmp_path / "problems.jsonl"
    data.write_text("".join(json.dumps({"problem": f"{i}+{i}?", "answer": str(2 * i)}) + "\n" for i in range(8)))
    recipe_config = tmp_path / "recipe.yaml"
    recipe_config.write_text(
        yaml.safe_dump(
            {
                "model_name_or_path": str(model_dir),
                "dataset_name": str(data),
                "use_cpu": True,
                "use_peft": True,
                "lora_target_modules": ["q_proj", "v_proj"],
                "num_generations": 4,
                "per_device_train_batch_size": 8,
                "max_completion_length": 6,
                "bf16": False,
                "max_steps": 1,
                "save_strategy": "no",
                "report_to": "none",
                "disable_tqdm": True,
            }
        )
    )
    plan = {
        "recipe": "math",
        "recipe_config": str(recipe_config),
        "recipe_args": {"loss_type": "bnpo", "delta": 3.0},
        "arms": {"resrl": {"advantage_mode": "resrl"}, "nsr": {"advantage_mode": "nsr"}},
        "comparisons": [["resrl", "nsr"]],
        "evaluations": {
            "toy": {"dataset": str(data), "max_problems": 3, "num_samples": 2, "max_tokens": 4, "problems_per_call": 2}
        },
        "primary_metric": "toy/avg@2",
        "metrics": ["toy/pass@2", "toy/distinct_answers"],
        "seeds": [0, 1],
    } | changes
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(plan))
    return path


@pytest.mark.parametrize(
    "change, message",
    [
        ({"arms": {"resrl": {}}}, "at least two"),
        ({"comparisons": [["resrl", "grpo"]]}, "not a pair of two different arms"),
        ({"primary_metric": "toy/avg"}, "metric 'toy/avg'"),
        ({"arms": {"resrl": {"seed": 3}, "nsr": {}}}, "which the study sets"),
        ({"recipe": "agent"}, "recipe must be one of"),
        ({"extra": 1}, "unknown keys"),
    ],
)
def test_a_bad_plan_is_refused_before_anything_runs(tmp_path, tokenizer, change, message):
    with pytest.raises(ValueError, match=message):
        load_plan(write_plan(tmp_path, tokenizer, **change))


def test_the_arms_of_a_seed_see_the_same_prompts_in_the_same_order(tmp_path, tokenizer):
    """What pairs the runs: TRL's sampler is seeded by ``seed``, whatever the advantage mode."""
    seen: dict[tuple[str, int], list[str]] = {}

    def recording(mode: str, seed: int):
        def reward(prompts, completions, **kwargs):
            seen.setdefault((mode, seed), []).extend(str(p) for p in prompts)
            return [0.0] * len(prompts)

        reward.__name__ = "recording"
        return reward

    for mode, seed in (("resrl", 0), ("nsr", 0), ("resrl", 1)):
        trainer = make_trainer(
            tmp_path / f"{mode}{seed}",
            tokenizer,
            make_prompts_dataset(),
            reward_funcs=recording(mode, seed),
            advantage_mode=mode,
            seed=seed,
        )
        trainer.train()
    assert seen[("resrl", 0)] == seen[("nsr", 0)] and len(seen[("resrl", 0)]) == 16
    assert seen[("resrl", 0)] != seen[("resrl", 1)]


def test_a_study_runs_pairs_resumes_and_reports(tmp_path, tokenizer, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    plan = write_plan(tmp_path, tokenizer)
    out = tmp_path / "study"
    main(["run", "--plan", str(plan), "--output_dir", str(out), "--quiet", "--threads", "1"])
    records = {
        p.parent.relative_to(out / "runs").as_posix(): json.loads(p.read_text()) for p in out.glob("runs/*/*/run.json")
    }
    assert sorted(records) == ["base/untrained", "nsr/seed0", "nsr/seed1", "resrl/seed0", "resrl/seed1"]
    assert all(r["done"] for r in records.values())
    # what the trainer and resrl-eval print goes to each run's logs, not over the study's progress bar
    assert "train_runtime" in (out / "runs/resrl/seed0/train.log").read_text()
    assert "sampling with transformers" in (out / "runs/resrl/seed0/eval/toy/eval.log").read_text()
    assert "train_runtime" not in capsys.readouterr().out
    # paired: per seed both arms start from the same adapter; different seeds start from different ones
    fingerprint = {k: r["trained"]["initial_fingerprint"] for k, r in records.items() if k != "base/untrained"}
    assert (
        fingerprint["resrl/seed0"]
        == fingerprint["nsr/seed0"]
        != fingerprint["resrl/seed1"]
        == fingerprint["nsr/seed1"]
    )
    # every run is evaluated on the same problems, with resrl-eval's settings from the plan
    eval_config = json.loads((out / "runs/resrl/seed0/eval/toy/eval_config.json").read_text())
    assert eval_config["problems_per_call"] == 2 and eval_config["adapter"].endswith("resrl/seed0/train")
    summary = records["resrl/seed0"]["summaries"]["toy"]
    assert summary["num_problems"] == 3 and summary["num_samples"] == 2

    report = json.loads((out / "report.json").read_text())
    assert report["seeds"] == [0, 1] and report["analysis"]["paired"] is True
    (test,) = report["analysis"]["tests"]["toy/avg@2"]
    values = report["values"]
    expected = [values["resrl"][str(s)]["toy/avg@2"] - values["nsr"][str(s)]["toy/avg@2"] for s in (0, 1)]
    assert test["differences"] == pytest.approx(expected)
    assert "## Power" in (out / "report.md").read_text()
    assert (out / "paired_differences.png").stat().st_size > 10_000

    # an interruption during one run's evaluation: rerun, it finishes that evaluation only and never retrains
    samples = out / "runs/nsr/seed1/eval/toy/samples.jsonl"
    whole = samples.read_text().splitlines()
    samples.write_text("\n".join(whole[:3]) + "\n")
    record = json.loads((out / "runs/nsr/seed1/run.json").read_text())
    del record["done"]
    (out / "runs/nsr/seed1/run.json").write_text(json.dumps(record))
    before = {k: (out / "runs" / k / "run.json").stat().st_mtime_ns for k in records}
    main(["run", "--plan", str(plan), "--output_dir", str(out), "--quiet", "--threads", "1"])
    after = {k: (out / "runs" / k / "run.json").stat().st_mtime_ns for k in records}
    assert [k for k in records if before[k] != after[k]] == ["nsr/seed1"]
    resumed = json.loads((out / "runs/nsr/seed1/run.json").read_text())
    assert resumed["trained"] == record["trained"] and resumed["done"]
    key = lambda line: (json.loads(line)["problem_id"], json.loads(line)["sample_index"])  # noqa: E731
    assert sorted(samples.read_text().splitlines(), key=key) == sorted(whole, key=key)

    # the plan is fixed once the study has started: another comparison is refused, more seeds are not
    changed = write_plan(tmp_path, tokenizer, comparisons=[["nsr", "resrl"]])
    with pytest.raises(SystemExit, match="planned with other"):
        main(["run", "--plan", str(changed), "--output_dir", str(out), "--quiet"])
    capsys.readouterr()
    main(["report", "--output_dir", str(out), "--effect", "5"])
    assert "power for 5 now" in capsys.readouterr().out


REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.mark.parametrize("name", ["arithmetic_cpu.yaml", "qwen3_4b_math.yaml"])
def test_shipped_plans_load_and_every_arm_parses_with_the_recipe(name, tmp_path, monkeypatch):
    """Each shipped plan passes the checks, and every arm's config (recipe config + recipe_args + arm) is one the
    recipe's own parser accepts, with the reference's loss settings and only the arm's settings differing."""
    from resrl_trl.recipes import math_recipe

    monkeypatch.chdir(REPO)
    plan = load_plan(REPO / "recipes" / "studies" / name)
    assert plan.comparisons and all(pair[0] == "resrl" for pair in plan.comparisons)
    parsed = {}
    for arm, settings in plan.arms.items():
        config = yaml.safe_load(Path(plan.recipe_config).read_text()) | plan.recipe_args | settings
        path = tmp_path / f"{arm}.yaml"
        path.write_text(yaml.safe_dump(config | {"output_dir": str(tmp_path / arm)}))
        # --use_cpu: the paper-scale config asks for bf16, which the parser checks against this machine
        parsed[arm] = math_recipe.parse_args(["--config", str(path), "--use_cpu", "true"])[1]
    for args in parsed.values():
        assert (args.loss_type, args.delta, args.epsilon, args.num_generations, args.beta) == (
            "bnpo",
            3.0,
            0.2,
            4,
            0.0,
        )
    assert parsed["resrl_own_position"].resrl_weight_position == "own"
    assert parsed["nsr"].advantage_mode == "nsr" and parsed["resrl"].resrl_weight_position == "previous"
    if name.startswith("qwen3") and SHARED_DATA.exists():
        datasets = [plan.recipe_args["dataset_name"], *(e["dataset"] for e in plan.evaluations.values())]
        assert all(Path(d).is_file() for d in datasets), datasets
        assert all(e["chat_template_kwargs"] == {"enable_thinking": False} for e in plan.evaluations.values())


def test_a_launcher_trains_and_evaluates_each_run_in_subprocesses(tmp_path, tokenizer, monkeypatch, capsys):
    """--launcher (on GPUs: accelerate launch) runs the recipe's own script per training and resrl-eval per
    evaluation; the runs are the same pairs, with the logs beside them."""
    monkeypatch.chdir(tmp_path)
    plan = write_plan(tmp_path, tokenizer, seeds=[0], evaluate_base=False)
    out = tmp_path / "study"
    main(["run", "--plan", str(plan), "--output_dir", str(out), "--quiet", "--launcher", sys.executable])
    for arm in ("resrl", "nsr"):
        run_dir = out / "runs" / arm / "seed0"
        record = json.loads((run_dir / "run.json").read_text())
        assert record["done"] and (run_dir / "train" / "adapter_config.json").is_file()
        assert "model saved to" in (run_dir / "train.log").read_text()
        assert "sampling with transformers" in (run_dir / "eval" / "toy" / "eval.log").read_text()
        assert record["summaries"]["toy"]["num_problems"] == 3
    text = capsys.readouterr().out
    assert "resrl - nsr" in text and "initial weights not fingerprinted (trained under a launcher" in text
