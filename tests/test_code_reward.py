"""The code reward: program extraction, the tests format, scoring of stdin/stdout cases and Python tests, partial
credit, the pool's parallelism, the refusal without isolation, and every way of gaming the harness this file knows
of, each earning 0 and followed by a correct program that still earns 1. No test asserts on elapsed time."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from resrl_trl import sandbox
from resrl_trl.code_check import CodeReward, StdioCase, extract_program, normalize_output, parse_tests
from resrl_trl.sandbox import SandboxUnavailable

REPO = Path(__file__).resolve().parents[1]
ISOLATED = sandbox.detect_backend() is not None
needs_isolation = pytest.mark.skipif(not ISOLATED, reason="no isolation on this machine (install bubblewrap)")

ADD_TESTS = "def check(candidate):\n    assert candidate(1, 2) == 3\n    assert candidate(-4, 4) == 0\n\ncheck(add)\n"
ADD = "def add(a, b):\n    return a + b\n"
SUM_CASES = json.dumps([{"input": "1 2\n", "output": "3\n"}, {"input": "40 2\n", "output": "42"}])
SUM = "a, b = map(int, input().split())\nprint(a + b)\n"


@pytest.fixture(scope="module")
def reward() -> CodeReward:
    reward = CodeReward(timeout_s=4.0, cpu_s=2.0, memory_mb=512, max_processes=8, output_bytes=64 << 10, workers=2)
    yield reward
    reward.close()


def fenced(program: str) -> str:
    return f"Here is my solution.\n```python\n{program}```\nIt adds the numbers."


# --- Extraction and the tests format (no sandbox needed). ------------------------------------------------------------


def test_the_last_python_block_wins() -> None:
    text = "```python\nx = 1\n```\nthen\n```\nx = 2\n```\nand\n```text\nnot code\n```\n"
    assert extract_program(text) == "x = 2\n"
    assert extract_program("  ```py\n  y = 3\n  ```") == "y = 3\n"  # indented fences are dedented


def test_no_fence_is_the_whole_text_and_an_unclosed_fence_counts() -> None:
    assert extract_program("print(1)\n") == "print(1)\n"
    assert extract_program("```python\nprint(1)\n```\nnow:\n```python\nprint(2)\n") == "print(2)\n"
    assert extract_program("In C:\n```cpp\nint main() {}\n```\n") == "In C:\n```cpp\nint main() {}\n```\n"


def test_parse_tests() -> None:
    cases = [StdioCase("1 2\n", "3\n"), StdioCase("40 2\n", "42")]
    assert parse_tests(SUM_CASES) == cases
    assert parse_tests(json.loads(SUM_CASES)) == cases  # the list itself
    assert parse_tests(ADD_TESTS) == ADD_TESTS
    assert parse_tests("assert add(1, 2) == 3") == "assert add(1, 2) == 3"
    for bad in ("[]", [], [{"input": "1"}], '[{"input": 1, "output": "2"}]', "def check(c):\n    pass\n", "def (", 3):
        with pytest.raises(ValueError):
            parse_tests(bad)


def test_output_comparison_ignores_trailing_whitespace_only() -> None:
    assert normalize_output("1 2  \n3\t\r\n\n\n") == normalize_output("1 2\n3") == "1 2\n3"
    assert normalize_output(" 1") != normalize_output("1") and normalize_output("1\n\n2") != normalize_output("1\n2")


def test_bad_tests_and_empty_programs_are_counted_without_a_sandbox() -> None:
    reward = CodeReward()
    assert reward.check("print(1)", "[]").reward is None
    assert reward.check("no code here ```python\n```", SUM_CASES).status == "no_code"
    assert reward.faults == {"bad_tests": 1, "no_code": 1}


def test_importing_the_rewards_does_not_import_the_code_reward() -> None:
    code = "import sys, resrl_trl.rewards as r\nprint('resrl_trl.code_check' in sys.modules, r.code_reward.__name__)"
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert output.split() == ["False", "code_reward"]


# --- Scoring in the sandbox. -----------------------------------------------------------------------------------------


@needs_isolation
def test_stdio_cases(reward: CodeReward) -> None:
    assert reward.check(fenced(SUM), SUM_CASES).reward == 1.0
    wrong = reward.check(fenced("a, b = map(int, input().split())\nprint(a * b)\n"), SUM_CASES)
    assert (wrong.reward, wrong.status, wrong.passed) == (0.0, "wrong", 0)  # stopped at the first failed case
    crash = reward.check(fenced("print(3)\nraise ValueError('late')\n"), SUM_CASES)
    assert (crash.reward, crash.status) == (0.0, "error") and "ValueError" in crash.detail
    assert reward.check(fenced("import sys\nprint(3)\nsys.exit(1)\n"), SUM_CASES).status == "error"
    for broken in ("def f(:\n", "if True:\nprint(1)\n"):  # compiled in the sandbox only, never in the trainer
        assert reward.check(fenced(broken), SUM_CASES).status == "syntax"
        assert reward.check(fenced(broken), ADD_TESTS).status == "syntax"
    messages = [{"role": "user", "content": "add"}, {"role": "assistant", "content": fenced(SUM)}]
    assert reward([messages, fenced(SUM)], [SUM_CASES, json.loads(SUM_CASES)]) == [1.0, 1.0]


@needs_isolation
def test_python_tests(reward: CodeReward) -> None:
    assert reward.check(fenced(ADD), ADD_TESTS).reward == 1.0
    assert reward.check(fenced("def add(a, b):\n    return a - b\n"), ADD_TESTS).status == "wrong"
    leetcode = "class Solution:\n    def twice(self, xs):\n        return [2 * x for x in xs]\n"
    tests = "s = Solution()\nassert s.twice([1, 2]) == [2, 4]\nassert Solution().twice([]) == []\n"
    assert reward.check(fenced(leetcode), tests).reward == 1.0
    values = "def f():\n    return {1: (2, 3.5, None), 'a': [b'x', {4}], (1, 2): frozenset({1}), 'big': 10**30}\n"
    tests = "assert f() == {1: (2, 3.5, None), 'a': [b'x', {4}], (1, 2): frozenset({1}), 'big': 10**30}\n"
    assert reward.check(fenced(values), tests).reward == 1.0
    raising = "def f(x):\n    if x < 0:\n        raise ValueError(x)\n    return x\n"
    tests = "try:\n    f(-1)\nexcept ValueError:\n    pass\nelse:\n    raise AssertionError\nassert f(2) == 2\n"
    assert reward.check(fenced(raising), tests).reward == 1.0
    main_guard = ADD + "if __name__ == '__main__':\n    input()\n"  # runs as a module: its main block does not
    assert reward.check(fenced(main_guard), ADD_TESTS).reward == 1.0


@needs_isolation
def test_partial_credit() -> None:
    partial = CodeReward(timeout_s=4.0, partial_credit=True, workers=2)
    half = "a, b = map(int, input().split())\nprint(3)\n"
    assert partial.check(fenced(half), SUM_CASES).reward == 0.5
    tests = "assert sq(2) == 4\nassert sq(3) == 10\nassert sq(4) == 16\n"
    tests += "import math\nassert math.isclose(sq(1.5), 2.25)\n"
    result = partial.check(fenced("def sq(x):\n    return x * x\n"), tests)
    assert (result.reward, result.passed, result.total) == (0.75, 3, 4)
    partial.close()


@needs_isolation
def test_the_pool_runs_programs_at_once() -> None:
    parallel = CodeReward(timeout_s=10.0, workers=4)
    program = "import time\nprint(time.time(), flush=True)\ntime.sleep(0.5)\nprint(time.time(), flush=True)\n" + ADD
    results = parallel.check_batch([fenced(program)] * 8, [ADD_TESTS] * 8)
    assert [r.reward for r in results] == [1.0] * 8
    spans = [tuple(map(float, r.output.split())) for r in results]
    overlapping = sum(a[0] < b[1] and b[0] < a[1] for i, a in enumerate(spans) for b in spans[i + 1 :])
    assert parallel.peak_concurrency >= 2 and overlapping >= 1, (parallel.peak_concurrency, spans)
    parallel.close()


def test_refuses_without_isolation_unless_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sandbox, "detect_backend", lambda refresh=False: None)
    monkeypatch.setattr(sandbox, "_DETECTED", {"reasons": {"bwrap": "not installed", "unshare": "probe failed"}})
    with pytest.raises(SandboxUnavailable, match=r"apt-get install bubblewrap.*allow_unsandboxed=True") as refused:
        CodeReward()([fenced(ADD)], [ADD_TESTS])
    assert "\n" not in str(refused.value)
    unsandboxed = CodeReward(timeout_s=4.0, memory_mb=512, workers=1, allow_unsandboxed=True)
    assert unsandboxed([fenced(ADD), fenced(SUM)], [ADD_TESTS, SUM_CASES]) == [1.0, 1.0]
    hog = unsandboxed.check(fenced("block = bytearray(2 << 30)\n"), SUM_CASES)
    assert hog.status == "memory"  # limits only: the memory bound holds ...
    peek = f"print(open({str(REPO / 'setup.cfg')!r}).read()[:10])\n"
    assert unsandboxed.check(fenced(peek), json.dumps([{"input": "", "output": "[metadata]"}])).reward == 1.0
    unsandboxed.close()  # ... but nothing is isolated: the repository is readable


# --- Gaming the harness earns nothing. -------------------------------------------------------------------------------

WRONG_ADD = "def add(a, b):\n    return 0\n"
HOSTILE = {
    "sys.exit before the tests": ("import sys\n" + WRONG_ADD + "sys.exit(0)\n", "exit"),
    "os._exit before the tests": ("import os\n" + WRONG_ADD + "os._exit(0)\n", "exit"),
    "SystemExit in the middle": ("def add(a, b):\n    raise SystemExit(0)\n", "exit"),
    "atexit printing success": (
        "import atexit, sys\natexit.register(lambda: print('PASSED\\nAll tests passed'))\n"
        + WRONG_ADD
        + "sys.exit()\n",
        "exit",
    ),
    "success markers": (
        'print(\'PASSED\\nOK\\nAll tests passed!\\n{"passed": 1, "total": 1}\')\n' + WRONG_ADD,
        "wrong",
    ),
    "an object equal to anything": (
        "class AlwaysEqual:\n    def __eq__(self, other):\n        return True\n    def __ne__(self, other):\n"
        "        return False\n    def __bool__(self):\n        return True\n"
        "def add(a, b):\n    return AlwaysEqual()\n",
        "wrong",
    ),
    "an int subclass equal to anything": (
        "class Int(int):\n    def __eq__(self, other):\n        return True\n    __hash__ = int.__hash__\n"
        "def add(a, b):\n    return Int(0)\n",
        "wrong",
    ),
    "killing its parent": ("import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\n" + WRONG_ADD, "wrong"),
    "killing everything it can": ("import os, signal\n" + WRONG_ADD + "os.kill(-1, signal.SIGKILL)\n", "killed"),
    "redefined builtins": (
        "import builtins\nclass Quiet(Exception):\n    pass\nbuiltins.AssertionError = Quiet\n"
        "builtins.abs = lambda x: 0\nbuiltins.all = lambda x: True\n" + WRONG_ADD,
        "wrong",
    ),
    "a sabotaged own process": (  # it breaks its own side of the channel: whatever the kind, it earns 0
        "import builtins, json\nbuiltins.len = lambda x: 0\nbuiltins.isinstance = lambda *a: True\n"
        "json.dumps = lambda *a, **k: '{\"value\": 3}'\n" + WRONG_ADD,
        ("wrong", "error", "exit", "protocol"),
    ),
    "redefined check and candidate": (
        "def check(candidate):\n    pass\ncandidate = check\n" + WRONG_ADD,
        "wrong",
    ),
    "a patched module the tests use": ("import math\nmath.isclose = lambda *a, **k: True\n" + WRONG_ADD, "wrong"),
    "a thread that exits and prints": (
        "import os, threading, time\ndef later():\n    time.sleep(0.05)\n    print('PASSED', flush=True)\n"
        "    os._exit(0)\nthreading.Thread(target=later, daemon=True).start()\n"
        "def add(a, b):\n    time.sleep(1)\n    return 0\n",
        "exit",
    ),
    "a thread that forges verdicts": (
        "import os, threading\ndef forge():\n    for fd in range(3, 64):\n        try:\n"
        '            os.write(fd, b\'{"passed": 2, "total": 2, "error": ""}\\n\')\n        except OSError:\n'
        "            pass\nthreading.Thread(target=forge).start()\n" + WRONG_ADD,
        "protocol",
    ),
    "StopIteration to end the tests' loops": ("def add(a, b):\n    raise StopIteration\n", "error"),
    "a trace hook that jumps over asserts": (
        "import sys\ndef jump(frame, event, arg):\n    if event == 'line' and frame.f_code.co_name == 'check':\n"
        "        frame.f_lineno = frame.f_code.co_firstlineno + 3\n    return jump\nsys.settrace(jump)\n" + WRONG_ADD,
        "wrong",
    ),
}


@needs_isolation
@pytest.mark.parametrize("attack", list(HOSTILE))
def test_gaming_earns_nothing(reward: CodeReward, attack: str) -> None:
    program, kind = HOSTILE[attack]
    tests = ADD_TESTS + "import math\nassert math.isclose(add(0.5, 0.25), 0.75)\n"
    result = reward.check(fenced(program), tests)
    assert result.reward == 0.0 and result.status in (kind if isinstance(kind, tuple) else (kind,)), result
    assert reward.check(fenced(ADD), tests).reward == 1.0  # and a correct program right after still earns 1


@needs_isolation
def test_stop_iteration_cannot_end_a_test_loop_early(reward: CodeReward) -> None:
    tests = "assert all(map(f, [1, 2, 3]))\n"  # in plain Python a StopIteration from f would end map() and pass
    assert reward.check(fenced("def f(x):\n    raise StopIteration\n"), tests).reward == 0.0
    assert reward.check(fenced("def f(x):\n    return x > 0\n"), tests).reward == 1.0


@needs_isolation
def test_the_tests_cannot_be_read(reward: CodeReward) -> None:
    marker = f"TESTS-{uuid.uuid4().hex}"
    tests = f"assert add(1, 2) == 3, {marker!r}\n"
    snoop = (
        f"""
import gc, os, sys
needle = "".join(reversed({marker[::-1]!r}))  # built here: the literal would be found in this program itself
hits = [type(o).__name__ for o in gc.get_objects() if o is not globals() and needle in repr(o)[:1000000]]
for root, dirs, files in os.walk("/"):
    dirs[:] = [d for d in dirs if not os.path.join(root, d).startswith(("/usr", "/dev", sys.base_prefix))]
    for name in files:
        try:
            with open(os.path.join(root, name), "rb") as f:
                hits += [name] if needle.encode() in f.read(1 << 20) else []
        except OSError:
            pass
hits += [sys.stdin.read()]
print(hits)
"""
        + ADD
    )
    result = reward.check(fenced(snoop), tests)
    assert result.reward == 1.0 and result.output == "['']\n", result


@needs_isolation
def test_resource_faults_are_counted(reward: CodeReward) -> None:
    before = reward.faults
    cases = [
        ("block = bytearray(2 << 30)\n", "memory"),
        ("while True:\n    pass\n", "timeout"),
        ("while True:\n    print('x' * 10000)\n", "output_limit"),
        ("import time\ntime.sleep(60)\n", "timeout"),
    ]
    for program, kind in cases:
        assert reward.check(fenced(program), SUM_CASES).status == kind
        assert reward.check(fenced(program + ADD), ADD_TESTS).status == kind
    after = reward.faults
    assert {k: after.get(k, 0) - before.get(k, 0) for k in ("memory", "timeout", "output_limit")} == {
        "memory": 2,
        "timeout": 4,
        "output_limit": 2,
    }
    assert reward.check(fenced(SUM), SUM_CASES).reward == 1.0
