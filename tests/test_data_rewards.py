"""Datasets in every accepted form, the maths reward, and the length-scaled reward."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from resrl_trl.data import arithmetic_dataset, load_math_dataset, to_prompt_solution
from resrl_trl.rewards import LengthScaledReward, math_reward

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def test_arithmetic_splits_are_disjoint_seeded_and_mixed():
    train, test = arithmetic_dataset("train"), arithmetic_dataset("test")
    assert len(test) == 200 and len(train) > 300
    questions = lambda d: {m[0]["content"] for m in d["prompt"]}  # noqa: E731
    assert not questions(train) & questions(test)
    assert arithmetic_dataset("train", seed=3)["solution"] == arithmetic_dataset("train", seed=3)["solution"]
    assert arithmetic_dataset("train", seed=3)["solution"] != arithmetic_dataset("train", seed=4)["solution"]
    assert len(arithmetic_dataset("train", size=10)) == 10
    with pytest.raises(ValueError, match="splits"):
        arithmetic_dataset("validation")


@pytest.mark.skipif(not SHARED_DATA.exists(), reason="../shared/data is not beside the repository")
def test_verl_parquet_with_target_dict():
    dataset = load_math_dataset(str(SHARED_DATA / "amc23" / "test.parquet"))
    assert len(dataset) == 40 and dataset.column_names == ["prompt", "solution"]
    assert dataset[0]["prompt"][-1]["role"] == "user" and dataset[0]["solution"]


@pytest.mark.skipif(not SHARED_DATA.exists(), reason="../shared/data is not beside the repository")
def test_math_train_rows_without_answers_are_refused_or_left_out():
    path = str(SHARED_DATA / "math" / "train.parquet")
    with pytest.raises(ValueError, match=r"has 4 rows that cannot be used(.|\n)*row 5341(.|\n)*drop_unusable_rows"):
        load_math_dataset(path)
    dataset = load_math_dataset(path, drop_unusable_rows=True)
    assert len(dataset) == 7500 - 4 and all(s.strip() for s in dataset["solution"])


def test_verl_string_ground_truth_and_problem_answer_forms(tmp_path):
    verl = tmp_path / "verl.parquet"
    pd.DataFrame(
        {
            "prompt": [[{"role": "user", "content": "1+1?"}]],
            "reward_model": [{"ground_truth": "2", "style": "rule"}],
        }
    ).to_parquet(verl)
    dataset = load_math_dataset(str(verl))
    assert dataset[0] == {"prompt": [{"role": "user", "content": "1+1?"}], "solution": "2"}

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text('{"problem": "2+2?", "answer": 4}\n{"problem": "3+3?", "answer": 6}\n')
    dataset = load_math_dataset(str(pairs))
    assert dataset["solution"] == ["4", "6"]
    assert dataset[1]["prompt"] == [{"role": "user", "content": "3+3?"}]


def test_unknown_schema_names_columns_and_forms(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('[{"text": "hello", "label": 1}]')
    with pytest.raises(ValueError, match=r"columns \['label', 'text'\].*verl"):
        load_math_dataset(str(bad))
    with pytest.raises(FileNotFoundError):
        load_math_dataset(str(tmp_path / "missing.parquet"))


def test_to_prompt_solution_keeps_trl_form():
    from datasets import Dataset

    dataset = Dataset.from_dict({"prompt": [[{"role": "user", "content": "q"}]], "solution": ["1"], "x": [0]})
    assert to_prompt_solution(dataset).column_names == ["prompt", "solution"]


def test_math_reward_on_answer_forms():
    completions = [
        "The answer is 12.",
        "7 + 5 = 12",
        r"so \boxed{12}",
        "It is 13.",
        "",
        r"The answer is $\frac{24}{2}$",
        "1,2",
    ]
    assert math_reward(completions, ["12"] * 7) == [1.0, 1.0, 1.0, 0.0, 0.0, 1.0, 0.0]
    # only the final answer counts: restating the question, or an expression equal to the answer, earns nothing
    assert math_reward(["The answer to 6 + 6 is 13.", "6 + 6", r"\boxed{13}, not 12"], ["12"] * 3) == [0.0] * 3
    # bare LaTeX references (as in MATH) are read inside math delimiters
    assert math_reward([r"The answer is $\frac{\sqrt{7}}{14}$", "x is 0.5"], [r"\frac{\sqrt{7}}{14}", r"\frac12"]) == [
        1.0,
        1.0,
    ]
    conversational = [[{"role": "assistant", "content": "The answer is 12."}]]
    assert math_reward(conversational, ["12"]) == [1.0]
    assert math_reward(["12"], [""]) == [None]  # an unusable reference is left out, not scored 0


def test_length_scaled_reward():
    reward = LengthScaledReward(math_reward, start_length=10, max_length=20, end_scale=0.7)
    ids = [[0] * 5, [0] * 15, [0] * 20, [0] * 30, [0] * 15]
    got = reward(["12", "12", "12", "12", "13"], completion_ids=ids, solution=["12"] * 5)
    assert got == pytest.approx([1.0, 0.85, 0.7, 0.7, 0.0])
    with pytest.raises(ValueError):
        LengthScaledReward(math_reward, start_length=20, max_length=10)


def test_malformed_rows_are_refused_before_training_with_their_indices(tmp_path):
    rows = [
        {"problem": "What is 1 + 1?", "answer": "2"},
        {"problem": "What is 2 + 2?", "answer": None},
        {"problem": "", "answer": "3"},
        {"problem": "What is 3 + 3?", "answer": "  "},
    ]
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    with pytest.raises(ValueError, match=r"row 1: no reference answer(.|\n)*row 2: a prompt message has no text"):
        load_math_dataset(str(path))
    verl = pd.DataFrame(
        {"prompt": [[{"role": "user", "content": "What is 1 + 1?"}]] * 2, "reward_model": [{"ground_truth": "2"}, {}]}
    )
    verl.to_parquet(tmp_path / "verl.parquet")
    with pytest.raises(ValueError, match="row 1: no reference answer"):
        load_math_dataset(str(tmp_path / "verl.parquet"))
