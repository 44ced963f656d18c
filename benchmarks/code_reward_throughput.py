"""Throughput of the code reward on this machine's cores: one generation of 64 completions with 10 tests each (three
correct programs for one wrong), per isolating backend available here and without isolation for comparison,
printed as a Markdown table and a JSON line.

    python benchmarks/code_reward_throughput.py

Two workloads: stdin/stdout (10 cases, each a run of the program) and Python tests (10 asserts, one run of the
program beside its judge). Programs per second is the generation's size over the median wall time of scoring it
(``workers`` sandboxes at a time, default one per core). The overhead is the median time of an empty program checked
alone: through the sandbox (one run) and through the reward (a judged one-assert test).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import time

from resrl_trl.code_check import CodeReward
from resrl_trl.sandbox import BACKENDS, Sandbox, probe

SORT = "import sys\nnumbers = list(map(int, sys.stdin.read().split()))[1:]\nprint(*sorted(numbers))\n"
SORT_WRONG = "import sys\nnumbers = list(map(int, sys.stdin.read().split()))[1:]\nprint(*sorted(numbers)[::-1])\n"
MEDIAN = "def median(xs):\n    xs = sorted(xs)\n    n = len(xs)\n"
MEDIAN += "    return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2\n"
MEDIAN_WRONG = "def median(xs):\n    return sorted(xs)[len(xs) // 2]\n"


def fenced(program: str) -> str:
    return f"Let me solve it.\n```python\n{program}```\n"


def stdio_generation(size: int, tests: int) -> tuple[list[str], list[str], list[float]]:
    cases = []
    for i in range(tests):
        numbers = [(i * 7919 + j * 104729) % 1000 - 500 for j in range(5 + i)]
        text = f"{len(numbers)}\n{' '.join(map(str, numbers))}\n"
        cases.append({"input": text, "output": " ".join(map(str, sorted(numbers))) + "\n"})
    column = json.dumps(cases)
    correct = [i % 4 != 3 for i in range(size)]
    completions = [fenced(SORT if ok else SORT_WRONG) for ok in correct]
    return completions, [column] * size, [float(ok) for ok in correct]


def python_generation(size: int, tests: int) -> tuple[list[str], list[str], list[float]]:
    lines = []
    for i in range(tests):
        xs = [(i * 31 + j * 17) % 23 for j in range(2 + i)]
        ordered = sorted(xs)
        n = len(ordered)
        expected = ordered[n // 2] if n % 2 else (ordered[n // 2 - 1] + ordered[n // 2]) / 2
        lines.append(f"assert median({xs}) == {expected!r}")
    column = "\n".join(lines) + "\n"
    correct = [i % 4 != 3 for i in range(size)]
    completions = [fenced(MEDIAN if ok else MEDIAN_WRONG) for ok in correct]
    return completions, [column] * size, [float(ok) for ok in correct]


def median_seconds(action: object, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        action()  # type: ignore[operator]
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(backend: str, workers: int, size: int, tests: int, repeats: int) -> list[dict]:
    reward = CodeReward(workers=workers, backend=backend, allow_unsandboxed=backend == "none")
    sandbox = Sandbox(reward.limits, backend=backend, allow_unsandboxed=backend == "none")
    empty_run_ms = 1000 * median_seconds(lambda: sandbox.run(""), 3 * repeats)
    empty_judged_ms = 1000 * median_seconds(lambda: reward.check("x = 1\n", "assert x == 1\n"), 3 * repeats)
    rows = []
    for workload, generation in (("stdin/stdout", stdio_generation), ("Python tests", python_generation)):
        completions, column, expected = generation(size, tests)
        got = reward(completions, column)  # warm-up, and the check that the figures are for correct scoring
        if got != expected:
            raise SystemExit(f"{backend} {workload}: rewards {got} differ from the expected {expected}")
        seconds = median_seconds(lambda c=completions, t=column: reward(c, t), repeats)
        rows.append(
            {
                "backend": backend,
                "workload": workload,
                "completions": size,
                "tests": tests,
                "workers": workers,
                "batch_s": round(seconds, 3),
                "programs_per_s": round(size / seconds, 1),
                "empty_run_ms": round(empty_run_ms, 1),
                "empty_judged_ms": round(empty_judged_ms, 1),
                "peak_concurrency": reward.peak_concurrency,
            }
        )
    reward.close()
    return rows


def machine() -> str:
    bwrap = shutil.which("bwrap")
    version = subprocess.run([bwrap, "--version"], capture_output=True, text=True).stdout.strip() if bwrap else "none"
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "")
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())  # other jobs on the machine slow every figure down
    return (
        f"{os.cpu_count()} cores ({cpu}), load average {load}, Linux {platform.release()}, {version}, "
        f"Python {platform.python_version()}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--completions", type=int, default=64)
    parser.add_argument("--tests", type=int, default=10)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--backends", nargs="+", default=[*BACKENDS, "none"], choices=[*BACKENDS, "none"])
    args = parser.parse_args()
    rows = []
    for backend in args.backends:
        reason = None if backend == "none" else probe(backend)
        if reason is not None:
            print(f"<!-- {backend}: unavailable ({reason}) -->")
            continue
        rows += measure(backend, args.workers, args.completions, args.tests, args.repeats)
    print(f"Machine: {machine()} (after the runs)\n")
    columns = ["backend", "workload", "completions x tests", "workers", "batch s", "programs/s"]
    columns += ["empty program ms (sandbox run)", "empty program ms (judged check)"]
    print("| " + " | ".join(columns) + " |")
    print("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for row in rows:
        name = "none (limits only)" if row["backend"] == "none" else row["backend"]
        print(
            f"| {name} | {row['workload']} | {row['completions']} x {row['tests']} | {row['workers']} | "
            f"{row['batch_s']:.2f} | **{row['programs_per_s']:.1f}** | {row['empty_run_ms']:.0f} | "
            f"{row['empty_judged_ms']:.0f} |"
        )
    print()
    print(json.dumps({"machine": machine(), "rows": rows}))


if __name__ == "__main__":
    main()
