"""Maths datasets in the form TRL's GRPOTrainer wants: a ``prompt`` (chat messages) and a ``solution`` column.

Accepted inputs (see :func:`load_math_dataset`):

- ``"arithmetic"``: a built-in, seeded, offline task of small sums, differences and products, with disjoint
  ``train`` and ``test`` splits;
- a Hugging Face Hub dataset id, or a local ``.parquet`` / ``.json`` / ``.jsonl`` / ``.csv`` file, in either form:
  - verl: ``prompt`` (a list of ``{role, content}`` messages) and ``reward_model.ground_truth`` (an answer string
    or ``{"target": answer, ...}``);
  - problem/answer: a question column (``problem``, ``question`` or a string ``prompt``) and an answer column
    (``answer``, ``solution``, ``target`` or ``ground_truth``).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

from datasets import Dataset, load_dataset

__all__ = [
    "ARITHMETIC",
    "arithmetic_dataset",
    "check_rows",
    "cut_long_prompts",
    "is_messages",
    "load_math_dataset",
    "load_rows",
    "prompt_problem",
    "to_prompt_solution",
]

ARITHMETIC = "arithmetic"
QUESTION_COLUMNS = ("problem", "question", "prompt")
ANSWER_COLUMNS = ("answer", "solution", "target", "ground_truth")
LOCAL_FORMATS = {".parquet": "parquet", ".json": "json", ".jsonl": "json", ".csv": "csv"}
ARITHMETIC_TEST_SIZE = 200
ARITHMETIC_INSTRUCTION = "Give a short answer."


def _arithmetic_problems() -> list[tuple[str, str]]:
    """Every problem of the task, in a fixed order: (question, answer)."""
    problems = [(f"What is {a} + {b}?", str(a + b)) for a in range(1, 10) for b in range(1, 10)]
    problems += [(f"What is {a} + {b}?", str(a + b)) for a in range(10, 50) for b in range(1, 10)]
    problems += [(f"What is {a} - {b}?", str(a - b)) for a in range(10, 21) for b in range(1, 10)]
    problems += [(f"What is {a} times {b}?", str(a * b)) for a in range(2, 10) for b in range(2, 6)]
    return problems


def arithmetic_dataset(split: str = "train", size: int | None = None, seed: int = 0) -> Dataset:
    """The built-in arithmetic task: questions a 135M instruct model answers correctly only part of the time.

    The ``test`` split holds 200 problems never seen in ``train``; the partition is fixed, ``seed`` only orders
    (and, with ``size``, samples) the rows of a split.
    """
    problems = _arithmetic_problems()
    random.Random(1234).shuffle(problems)  # fixed partition, independent of `seed`
    splits = {"test": problems[:ARITHMETIC_TEST_SIZE], "train": problems[ARITHMETIC_TEST_SIZE:]}
    if split not in splits:
        raise ValueError(f"the arithmetic task has splits {sorted(splits)}, not {split!r}")
    rows = list(splits[split])
    random.Random(seed).shuffle(rows)
    if size is not None:
        rows = rows[:size]
    return Dataset.from_dict(
        {
            "prompt": [[{"role": "user", "content": f"{q} {ARITHMETIC_INSTRUCTION}"}] for q, _ in rows],
            "solution": [a for _, a in rows],
        }
    )


def _ground_truth(value: Any) -> str:
    if value is None:
        return ""  # reported by check_rows, with the row's index
    if isinstance(value, dict):
        if "target" not in value:
            raise ValueError(f"reward_model.ground_truth is a dict without 'target' (keys: {sorted(value)})")
        value = value["target"]
    if isinstance(value, list | tuple):  # some verl files hold a list of acceptable answers
        value = value[0] if value else ""
    return "" if value is None else str(value)


def to_prompt_solution(dataset: Dataset) -> Dataset:
    """Convert a verl-form or problem/answer-form dataset to ``prompt`` + ``solution`` columns."""
    columns = set(dataset.column_names)
    if "prompt" in columns and "solution" in columns and is_messages(dataset[0]["prompt"]):
        return dataset.select_columns(["prompt", "solution"])
    if "prompt" in columns and "reward_model" in columns:

        def from_verl(row: dict[str, Any]) -> dict[str, Any]:
            reward_model = row["reward_model"]
            if not isinstance(reward_model, dict) or "ground_truth" not in reward_model:
                return {"prompt": [], "solution": ""}  # reported by check_rows, with the row's index
            prompt = row["prompt"]
            if isinstance(prompt, str):
                prompt = [{"role": "user", "content": prompt}]
            return {"prompt": list(prompt), "solution": _ground_truth(reward_model["ground_truth"])}

        return dataset.map(from_verl, remove_columns=dataset.column_names)
    question = next((c for c in QUESTION_COLUMNS if c in columns), None)
    answer = next((c for c in ANSWER_COLUMNS if c in columns), None)
    if question is not None and answer is not None:

        def from_pairs(row: dict[str, Any]) -> dict[str, Any]:
            prompt = row[question]
            if not is_messages(prompt):
                prompt = [{"role": "user", "content": str(prompt)}]
            return {"prompt": prompt, "solution": _ground_truth(row[answer])}

        return dataset.map(from_pairs, remove_columns=dataset.column_names)
    raise ValueError(
        f"unrecognised dataset schema: columns {sorted(columns)}. Accepted forms: verl (`prompt` messages + "
        "`reward_model.ground_truth`, a string or {'target': ...}); problem/answer (one of "
        f"{list(QUESTION_COLUMNS)} + one of {list(ANSWER_COLUMNS)}); or TRL's `prompt` + `solution`"
    )


def is_messages(value: Any) -> bool:
    """Whether ``value`` is a conversation: a list of ``{role, content}`` messages."""
    return isinstance(value, list) and all(isinstance(m, dict) and "content" in m for m in value)


def load_math_dataset(
    name_or_path: str,
    split: str = "train",
    config: str | None = None,
    seed: int = 0,
    drop_unusable_rows: bool = False,
) -> Dataset:
    """Load ``name_or_path`` (``"arithmetic"``, a local file, or a Hub id) as ``prompt`` + ``solution`` rows.

    Rows that cannot be trained on (see :func:`check_rows`) are refused, or left out with ``drop_unusable_rows``.
    """
    if name_or_path == ARITHMETIC:
        return arithmetic_dataset(split, seed=seed)
    dataset = load_rows(name_or_path, split, config)
    return check_rows(to_prompt_solution(dataset), name_or_path, drop=drop_unusable_rows)


def load_rows(name_or_path: str, split: str = "train", config: str | None = None) -> Dataset:
    """The rows of a local ``.parquet`` / ``.json`` / ``.jsonl`` / ``.csv`` file or of a Hub dataset, as stored;
    an empty dataset is refused."""
    path = Path(name_or_path)
    if path.suffix in LOCAL_FORMATS:
        if not path.is_file():
            raise FileNotFoundError(f"dataset file {name_or_path} does not exist")
        # A local file holds one split, whatever `split` says.
        dataset = load_dataset(LOCAL_FORMATS[path.suffix], data_files=str(path), split="train")
    else:
        dataset = load_dataset(name_or_path, config, split=split)
    if len(dataset) == 0:
        raise ValueError(f"dataset {name_or_path} (split {split!r}) has no rows")
    return dataset


def prompt_problem(prompt: Any) -> str | None:
    """What makes ``prompt`` unusable (not a non-empty list of messages, or a message without text), or None."""
    if not is_messages(prompt) or not prompt:
        return "the prompt is not a non-empty list of messages"
    if not all(isinstance(m["content"], str) and m["content"].strip() for m in prompt):
        return "a prompt message has no text"
    return None


def _row_problem(row: dict[str, Any]) -> str | None:
    if problem := prompt_problem(row["prompt"]):
        return problem
    solution = row["solution"]
    if not isinstance(solution, str) or not solution.strip():
        return "no reference answer (empty, missing or null)"
    return None


def check_rows(
    dataset: Dataset,
    name: str = "the dataset",
    drop: bool = False,
    row_problem: Callable[[dict[str, Any]], str | None] = _row_problem,
) -> Dataset:
    """Refuse, before training starts, rows that cannot be trained on: an empty prompt, a message without text, an
    empty reference answer (or whatever ``row_problem``, which says what is wrong with a row or returns None, finds).
    The error lists the first offending rows and what is wrong with each. With ``drop``, such rows are left out
    instead (and counted in a printed line)."""
    problems = [(index, problem) for index, row in enumerate(dataset) if (problem := row_problem(row))]
    if problems and drop:
        bad = {index for index, _ in problems}
        print(f"{name}: left out {len(bad)} of {len(dataset)} rows that cannot be used")
        return dataset.select([i for i in range(len(dataset)) if i not in bad])
    if problems:
        listed = "\n  - ".join(f"row {index}: {problem}" for index, problem in problems[:5])
        more = f"\n  ... and {len(problems) - 5} more" if len(problems) > 5 else ""
        raise ValueError(
            f"{name} has {len(problems)} rows that cannot be used:\n  - {listed}{more}\nFix them, or leave them out "
            "with drop_unusable_rows=True (recipe: --drop_unusable_rows true)"
        )
    return dataset


def _templated_length(tokenizer: Any, messages: list[dict[str, str]], template_kwargs: dict[str, Any]) -> int:
    encoded = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, **template_kwargs)
    return len(encoded["input_ids"] if hasattr(encoded, "keys") else encoded)


def cut_long_prompts(
    dataset: Dataset, tokenizer: Any, max_tokens: int, chat_template_kwargs: dict[str, Any] | None = None
) -> tuple[Dataset, int]:
    """Prompts of at most ``max_tokens`` tokens once the chat template is applied; returns the rows and how many
    were cut.

    As the reference run cuts an over-long prompt from the left, a longer prompt here loses the start of its
    messages' text, first message first, until it fits. Unlike a cut of the templated token sequence, the template's
    own tokens (the role headers) are kept, so the model still sees a well-formed conversation.
    """
    template_kwargs = chat_template_kwargs or {}

    def cut(row: dict[str, Any]) -> dict[str, Any]:
        messages = [dict(m) for m in row["prompt"]]
        index, rounds = 0, 0
        while (excess := _templated_length(tokenizer, messages, template_kwargs) - max_tokens) > 0:
            rounds += 1
            if index == len(messages) or rounds > 4 * len(messages) + 4:
                raise ValueError(
                    f"a prompt cannot be cut to max_prompt_length={max_tokens} tokens: the chat template alone is "
                    "longer; raise max_prompt_length"
                )
            ids = tokenizer.encode(messages[index]["content"], add_special_tokens=False)
            if excess >= len(ids):
                messages[index]["content"], index = "", index + 1
            else:  # measured again: decoding and encoding again can merge tokens differently
                messages[index]["content"] = tokenizer.decode(ids[excess:])
        return {"prompt": messages, "prompt_was_cut": messages != row["prompt"]}

    if not dataset or not isinstance(dataset[0]["prompt"], list):
        raise ValueError("cut_long_prompts needs conversational prompts (a list of {role, content} messages)")
    cut_rows = dataset.map(cut, desc="cutting long prompts")
    count = sum(cut_rows["prompt_was_cut"])
    return cut_rows.remove_columns("prompt_was_cut"), count
