"""Input/output cases for reasoning-gym's CodeI/O problems, computed in a separate process.

Each CodeI/O problem ships a reference solution (``main_solution(**inputs)``) and an input generator
(``generate_inputs(rng)``). :func:`reference_cases` runs them in ``python -m resrl_trl.codeio_worker``: the
reference code is package data, but it is still code written by a model, so it runs in a process of its own whose
address space is bounded, with a time limit per problem, stdout and stdin detached, in a scratch folder. One JSON
line comes back per problem; a worker that dies or hangs costs that problem only and is replaced.

A case is kept only when it survives a JSON round trip (what the tests will pass and compare) and when it is small.
A problem is left out when its reference fails, is slow, or answers a case differently in three runs with the
random generators seeded differently (a solution that draws random numbers cannot be tested), or names its
working folder in an answer.
"""

from __future__ import annotations

import io
import json
import os
import random
import resource
import select
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["reference_cases"]

PROBLEM_TIMEOUT_S = 10.0  # inputs and outputs of one problem, in the worker
SLOWEST_CALL_S = 0.25  # slower references make tests that overrun the sandbox's time limit (5 s per test run)
MAX_CASE_CHARS = 1500  # JSON of one case's inputs and output
MEMORY_MB = 4096
RUNS = 3  # of the reference on each case, with the random generators seeded differently each time


class _OverTime(BaseException):  # not an Exception: reference code that catches those must not swallow it
    pass


def _plain(value: Any) -> Any:
    """``value`` with tuples as lists: what a JSON round trip gives back, and what the tests accept either way."""
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _reseed(run: int) -> None:
    """Seed the random generators a reference may draw from, differently for each run."""
    random.seed(run)
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        numpy.random.seed(run)


def _json(value: Any) -> str | None:
    """``value`` as strict JSON (no NaN or infinity), or None when it has none."""
    try:
        return json.dumps(value, allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        return None


def _cases_of(task: dict[str, Any]) -> list[list[str]]:
    """Up to ``task["count"]`` distinct ``[inputs JSON, output JSON]`` pairs of one problem."""
    namespace: dict[str, Any] = {"Random": random.Random, "__name__": "codeio_reference"}
    exec(f"{task['code']}\n\n{task['generator']}", namespace, namespace)  # noqa: S102  (package data, own process)
    generate = namespace.get("generate_inputs") or namespace.get("generate_input")
    solve = namespace.get("main_solution")
    if not callable(generate) or not callable(solve):
        raise ValueError("no generate_inputs or main_solution")
    rng = random.Random(task["seed"])
    random.seed(task["seed"])  # for generators that draw from the global generator instead of `rng`
    cases: list[list[str]] = []
    seen: set[str] = set()
    for _ in range(3 * task["count"]):
        if len(cases) == task["count"]:
            break
        inputs = generate(rng)
        if not isinstance(inputs, dict):
            continue
        inputs_json = _json(inputs)  # before the call: a solution may change its inputs
        if inputs_json is None or inputs_json in seen or _plain(json.loads(inputs_json)) != _plain(inputs):
            continue
        outputs = []
        for run in range(RUNS):
            _reseed(run)  # a solution that draws random numbers shows it by answering differently
            start = time.perf_counter()
            output = solve(**json.loads(inputs_json))
            if time.perf_counter() - start > SLOWEST_CALL_S:
                raise ValueError("the reference solution is too slow")
            outputs.append(_json(output))
        if len(set(outputs)) > 1:
            raise ValueError("the reference solution is not deterministic")
        output_json = outputs[0]
        if output_json is None or _plain(json.loads(output_json)) != _plain(output):
            continue
        if os.getcwd() in output_json:  # a path of the scratch folder: the answer depends on where it runs
            raise ValueError("the reference's output depends on its working folder")
        if len(inputs_json) + len(output_json) > MAX_CASE_CHARS:
            continue
        seen.add(inputs_json)
        cases.append([inputs_json, output_json])
    return cases


def _on_alarm(*_: Any) -> None:
    raise _OverTime


def _serve() -> None:
    """The worker: one task per stdin line, one ``{"index", "cases", "error"}`` line per task on the saved stdout."""
    limit = MEMORY_MB * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    out = os.fdopen(os.dup(1), "w")
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 1)  # whatever the reference code prints, even from C, never reaches the protocol
    tasks = [json.loads(line) for line in sys.stdin]
    sys.stdin, sys.stdout = io.StringIO(), io.StringIO()
    signal.signal(signal.SIGALRM, _on_alarm)
    for task in tasks:
        cases, error = [], None
        try:
            signal.setitimer(signal.ITIMER_REAL, PROBLEM_TIMEOUT_S)
            cases = _cases_of(task)
        except _OverTime:
            error = "timeout"
        except BaseException as caught:  # noqa: BLE001  (whatever the reference raises costs this problem only)
            error = f"{type(caught).__name__}: {caught}"[:200]
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            sys.stdout = io.StringIO()
        out.write(json.dumps({"index": task["index"], "cases": cases, "error": error}) + "\n")
        out.flush()


def _run_worker(tasks: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Results of ``tasks`` in order, from one worker; stops early when the worker dies or stops answering."""
    package_root = str(Path(__file__).resolve().parents[1])
    # the worker runs in a scratch folder: it finds this package through PYTHONPATH, installed or not
    python_path = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": python_path}
    with tempfile.TemporaryDirectory(prefix="codeio-") as scratch:
        process = subprocess.Popen(
            [sys.executable, "-m", "resrl_trl.codeio_worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            cwd=scratch,
            env=env,
        )
        assert process.stdin is not None and process.stdout is not None
        try:
            process.stdin.write("".join(json.dumps(task) + "\n" for task in tasks))
            process.stdin.close()
            for _ in tasks:
                # the worker's own alarm ends a slow problem; this bounds one stuck in C code, where it cannot
                ready, _, _ = select.select([process.stdout], [], [], 3 * PROBLEM_TIMEOUT_S + 30)
                line = process.stdout.readline() if ready else ""
                if not line:
                    return
                yield json.loads(line)
        finally:
            process.kill()
            process.wait()


def reference_cases(tasks: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """``{index: {"cases": [[inputs JSON, output JSON], ...], "error": str | None}}`` for each task.

    A task is ``{"index", "code", "generator", "seed", "count"}``. A problem whose worker died or hung is reported
    with an error and the rest go on in a new worker.
    """
    results: dict[int, dict[str, Any]] = {}
    pending = list(tasks)
    while pending:
        for result in _run_worker(pending):
            results[result["index"]] = {"cases": result["cases"], "error": result["error"]}
        pending = [task for task in pending if task["index"] not in results]
        if pending:  # the first unanswered task killed or hung its worker
            results[pending[0]["index"]] = {"cases": [], "error": "the reference solution crashed or hung"}
            pending = pending[1:]
    return results


if __name__ == "__main__":
    _serve()
