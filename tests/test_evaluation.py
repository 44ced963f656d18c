"""Metrics against brute force, and resrl-eval / resrl-plot end to end on a tiny local model."""

from __future__ import annotations

import importlib.util
import itertools
import json
import math
from fractions import Fraction
from pathlib import Path

import pytest
from conftest import make_model

from resrl_trl.evaluation import main as eval_main
from resrl_trl.metrics import answer_entropy, distinct_n, pass_at_k, powers_of_two_up_to, summarize
from resrl_trl.plot import main as plot_main

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.mark.parametrize("n", [1, 2, 3, 5, 7])
def test_pass_at_k_equals_brute_force_enumeration(n):
    for c in range(n + 1):
        outcomes = [True] * c + [False] * (n - c)
        for k in range(1, n + 1):
            subsets = list(itertools.combinations(outcomes, k))
            brute = sum(any(s) for s in subsets) / len(subsets)
            assert pass_at_k(n, c, k) == pytest.approx(brute, abs=1e-12)


def test_pass_at_k_exact_for_hundreds_of_samples():
    for n, c, k in [(256, 3, 128), (512, 1, 64), (300, 150, 299), (200, 0, 5), (200, 198, 3)]:
        exact = 1 - Fraction(math.comb(n - c, k), math.comb(n, k))
        assert pass_at_k(n, c, k) == pytest.approx(float(exact), rel=1e-12, abs=1e-15)
    with pytest.raises(ValueError):
        pass_at_k(4, 5, 1)


def test_summary_on_hand_made_samples():
    def rec(pid, correct, answer, completion="x"):
        return {"problem_id": pid, "correct": correct, "answer": answer, "completion": completion}

    records = [rec("a", True, "4"), rec("a", False, "5"), rec("a", True, "4"), rec("a", False, "")]
    records += [rec("b", False, "1", "same words"), rec("b", False, "1", "same words")] * 2
    summary = summarize(records, bootstrap=200)
    assert summary["num_samples"] == 4 and summary["num_problems"] == 2
    assert summary["avg@4"]["mean"] == pytest.approx((2 / 4 + 0) / 2)
    assert summary["pass@k"]["1"]["mean"] == pytest.approx(0.25)
    assert summary["pass@k"]["4"]["mean"] == pytest.approx(0.5)
    assert list(summary["pass@k"]) == ["1", "2", "4"]
    low, high = summary["pass@k"]["2"]["ci95"]
    assert low <= summary["pass@k"]["2"]["mean"] <= high
    assert summary["diversity"]["distinct_answers"]["mean"] == pytest.approx((3 + 1) / 2)
    assert answer_entropy(["1", "1", "1"]) == 0 and answer_entropy(["1", "2"]) == pytest.approx(math.log(2))
    assert distinct_n(["a b a b"], 2) == pytest.approx(2 / 3) and distinct_n(["a"], 2) == 1.0
    assert powers_of_two_up_to(16) == [1, 2, 4, 8, 16] and powers_of_two_up_to(12) == [1, 2, 4, 8, 12]
    with pytest.raises(ValueError, match="same number of samples"):
        summarize(records[:-1])


@pytest.fixture
def tiny_model_dir(tmp_path, tokenizer):
    folder = tmp_path / "model"
    make_model(tokenizer).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def run_eval(model, dataset, out, num_samples, **extra):
    argv = [
        "--model",
        model,
        "--dataset",
        dataset,
        "--num_samples",
        str(num_samples),
        "--max_tokens",
        "6",
        "--max_problems",
        "3",
        "--batch_size",
        "3",
        "--output_dir",
        str(out),
        "--quiet",
    ]
    for key, value in extra.items():
        argv += [f"--{key}", str(value)]
    eval_main(argv)
    lines = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    return lines, json.loads((out / "summary.json").read_text())


def test_eval_writes_samples_and_summary_and_resumes_without_resampling(tmp_path, tiny_model_dir):
    dataset = tmp_path / "problems.jsonl"
    dataset.write_text("".join(json.dumps({"problem": f"{i}+{i}?", "answer": str(2 * i)}) + "\n" for i in range(5)))
    out = tmp_path / "eval"
    lines, summary = run_eval(tiny_model_dir, str(dataset), out, 4)
    assert len(lines) == 12 and {(r["problem_id"], r["sample_index"]) for r in lines} == {
        (str(p), k) for p in range(3) for k in range(4)
    }
    assert set(lines[0]) >= {"problem_id", "sample_index", "completion", "answer", "correct"}
    assert summary["num_problems"] == 3 and list(summary["pass@k"]) == ["1", "2", "4"]

    # an interruption: the last sample of problem 2 was lost, and the last line was cut short
    text = (out / "samples.jsonl").read_text().splitlines()
    (out / "samples.jsonl").write_text("\n".join(text[:-1]) + '\n{"problem_id": "2", "sampl')
    lines_after, summary = run_eval(tiny_model_dir, str(dataset), out, 6)
    kept = [json.loads(line) for line in text[:-1]]
    assert lines_after[: len(kept)] == kept  # what it had is never sampled again
    new = [(r["problem_id"], r["sample_index"]) for r in lines_after[len(kept) :]]
    assert sorted(new) == sorted([(p, k) for p in "01" for k in (4, 5)] + [("2", k) for k in (3, 4, 5)])
    assert summary["num_samples"] == 6 and list(summary["pass@k"]) == ["1", "2", "4", "6"]

    with pytest.raises(ValueError, match="other settings"):
        run_eval(tiny_model_dir, str(dataset), out, 6, temperature=1.0)


@pytest.mark.skipif(not SHARED_DATA.exists(), reason="../shared/data is not beside the repository")
def test_eval_on_amc23_and_plot(tmp_path, tiny_model_dir):
    summaries = []
    for name, seed in (("first", 0), ("second", 1)):
        _, summary = run_eval(
            tiny_model_dir, str(SHARED_DATA / "amc23" / "test.parquet"), tmp_path / name, 2, seed=seed
        )
        assert summary["num_problems"] == 3
        summaries.append(str(tmp_path / name / "summary.json"))
    png, table = tmp_path / "passk.png", tmp_path / "table.md"
    plot_main([*summaries, "--labels", "A", "B", "--output", str(png), "--table", str(table)])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = table.read_text().splitlines()
    assert (
        rows[0].startswith("| method | Avg@2 | Pass@1 | Pass@2 |") and rows[2].startswith("| A |") and len(rows) == 4
    )


def test_vllm_lora_rank_and_backend_choice(tmp_path):
    from resrl_trl.evaluation import _adapter_rank, choose_backend

    for rank, served in [(4, 8), (8, 8), (12, 16), (320, 320)]:
        (tmp_path / "adapter_config.json").write_text(json.dumps({"r": rank}))
        assert _adapter_rank(str(tmp_path)) == served
    (tmp_path / "adapter_config.json").write_text(json.dumps({"r": 600}))
    with pytest.raises(ValueError, match="up to 512"):
        _adapter_rank(str(tmp_path))
    assert choose_backend("transformers") == ("transformers", "asked for with --backend")
    if importlib.util.find_spec("vllm") is None:  # this environment: the vLLM tests run in their own
        assert choose_backend("auto") == ("transformers", "vLLM is not installed")
        with pytest.raises(RuntimeError, match="--backend vllm needs vLLM"):
            choose_backend("vllm")


def test_problems_sampled_together_resume_to_the_same_draws(tmp_path, tiny_model_dir):
    """--problems_per_call draws fixed chunks of problems in one call: an interrupted run, resumed, holds exactly
    the samples of an uninterrupted one, and a run with another value is refused as other settings."""
    dataset = tmp_path / "problems.jsonl"
    dataset.write_text("".join(json.dumps({"problem": f"{i}+{i}?", "answer": str(2 * i)}) + "\n" for i in range(5)))
    whole, _ = run_eval(tiny_model_dir, str(dataset), tmp_path / "whole", 3, problems_per_call=2, max_problems=5)
    assert sorted((r["problem_id"], r["sample_index"]) for r in whole) == [
        (str(p), k) for p in range(5) for k in range(3)
    ]
    out = tmp_path / "cut"
    run_eval(tiny_model_dir, str(dataset), out, 3, problems_per_call=2, max_problems=5)
    lines = (out / "samples.jsonl").read_text().splitlines()
    (out / "samples.jsonl").write_text("\n".join(lines[:4]) + "\n")  # problem 1 lost two of its samples
    resumed, _ = run_eval(tiny_model_dir, str(dataset), out, 3, problems_per_call=2, max_problems=5)
    key = lambda r: (r["problem_id"], r["sample_index"])  # noqa: E731
    assert sorted(resumed, key=key) == sorted(whole, key=key)
    with pytest.raises(ValueError, match="other settings"):
        run_eval(tiny_model_dir, str(dataset), out, 3, problems_per_call=3, max_problems=5)
