"""The code reward: run a completion's program against its row's tests in the sandbox, pay for passing them.

The ``tests`` column
--------------------
One value per row, read by :func:`parse_tests` (data loaders must produce exactly this):

- **stdin/stdout cases** (CodeForces style): a JSON string encoding ``[{"input": "...", "output": "..."}, ...]``,
  or that list itself. The program runs once per case with ``input`` on its stdin, as ``__main__``; it passes the
  case when it exits with status 0 and its stdout equals ``output`` once trailing whitespace is stripped from every
  line and trailing blank lines are dropped, on both sides. The comparison is of strings, in the trainer.
- **Python tests** (HumanEval/MBPP style): any other string: Python source that raises when the program is wrong,
  run after the program with the program's top-level names in scope, e.g. ``def check(candidate): ...`` followed by
  ``check(add)`` (the call must be there), or plain ``assert add(1, 2) == 3`` lines. Each top-level statement other
  than a definition, import or assignment is one test: a ``check(...)`` call is one, each top-level ``assert`` is
  one, and there must be at least one. The program runs as a module named ``solution`` (so its
  ``if __name__ == "__main__":`` block does not run). The tests see the program's top-level names except those
  that shadow a builtin or a standard-library module: in the tests, ``len``, ``math``... are always Python's own
  (so a task whose function is named like one cannot be judged).

Programs get the standard library only. The program is the completion's last fenced Python block (a fence with
``python``/``py``/``python3`` or no language; a final fence left unclosed counts), else the whole completion. It is
compiled in the sandbox only: no model-written text is ever parsed in the trainer's process.

Scoring: 1.0 when every test ran and passed, else 0.0; with ``partial_credit``, the fraction of tests (cases)
passed. A row whose tests cannot be read scores None (TRL leaves it out). Every completion that did not end in a
normal pass or fail is counted in :attr:`CodeReward.faults` by kind: ``no_code``, ``syntax``, ``timeout`` (wall or
CPU time), ``memory``, ``output_limit``, ``exit`` (the program ended before its tests did), ``error`` (it raised
something other than an assertion), ``protocol`` (it tampered with its channel to the tests), ``killed`` (it
killed the tests' process), ``harness`` (the sandbox failed) and ``bad_tests``.

How Python tests are judged, and why gaming them earns nothing
--------------------------------------------------------------
The tests never run in the program's process. Inside the sandbox (:mod:`resrl_trl.sandbox`) the program runs in one
process and the tests in another, the *judge*, which never executes program code: each of the program's top-level
names that the tests use is, in the judge, a proxy; calling it (or reading an attribute or an item) sends the
arguments to the program's process as plain data, runs the real function there and sends back the value as plain
data, which the judge rebuilds from builtin types only (None, bool, int, float, complex, str, bytes, list, tuple,
set, frozenset, dict). Anything else comes back as an opaque proxy that equals nothing but itself. So:

- **Exiting early** (``sys.exit``, ``os._exit``, ``SystemExit``, ``atexit``, a signal, a crash) leaves the judge's
  calls unanswered: every test not yet passed fails, and the run pays 0.
- **Printing** ``PASSED`` or anything else does nothing: the verdict is a JSON line the judge writes on a pipe
  (fd 5) that only the judge holds; the program's stdout is kept for logs (:attr:`CodeCheck.output`), not read.
- **Objects that claim to equal anything** (``__eq__`` always true, ``__bool__``, arithmetic dunders) never reach
  the tests: the judge compares rebuilt builtin values, so ``assert candidate(x) == y`` holds only if the values
  are equal.
- **Redefining builtins, modules, ``check`` or ``AssertionError``**, background threads, trace hooks or timers
  change the program's process only; the tests run with the judge's own builtins, their own ``check``, and their
  module names (``math``, ...) bound to the judge's own imports. The tests' source is never in the program's
  process or on any disk it can see, so it cannot be read.
- **Killing its parent** fails (the supervisor is the PID namespace's init); killing the judge, or writing garbage
  to the pipes, ends in no verdict or a protocol error: 0 either way. A well-formed reply written ahead of time is
  only the program answering the judge's call, which it cannot see the expected value of. Neither process can read
  or trace the other's memory.

What stays the tests' responsibility: a test that computes its expected value with one of the *program's* own
functions (HumanEval/32 checks ``find_zero`` with the prompt's ``poly``) trusts the program for that value.
Arguments passed to the program must be plain data too (or values it returned); a test that passes a function
fails.
"""

from __future__ import annotations

import ast
import functools
import inspect
import json
import os
import signal
import textwrap
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from .sandbox import Limits, RunResult, Sandbox

__all__ = [
    "CodeCheck",
    "CodeReward",
    "StdioCase",
    "code_reward",
    "extract_program",
    "normalize_output",
    "parse_tests",
    "split_tests",
]

PYTHON_FENCES = ("", "python", "py", "python3", "py3")
SETUP_STATEMENTS = (
    ast.Import,
    ast.ImportFrom,
    ast.FunctionDef,
    ast.AsyncFunctionDef,
    ast.ClassDef,
    ast.Assign,
    ast.AnnAssign,
    ast.AugAssign,
    ast.Pass,
    ast.Global,
)
NORMAL = ("ok", "wrong")  # the outcomes that are not faults
MAX_DETAIL_CHARS = 300


@dataclass(frozen=True)
class StdioCase:
    """One stdin/stdout case: ``input`` is fed on stdin, ``output`` is the expected stdout."""

    input: str
    output: str


@dataclass
class CodeCheck:
    """The outcome of one completion: its reward, ``status`` (``"ok"``, ``"wrong"`` or a fault kind), tests passed
    out of ``total``, a short ``detail`` and the start of the program's output (of its first run)."""

    reward: float | None
    status: str
    passed: int = 0
    total: int = 0
    detail: str = ""
    output: str = ""


def completion_text(completion: Any) -> str:
    """A completion's text: a string, bytes, or TRL's conversational form (the last message's content)."""
    if isinstance(completion, bytes):
        return completion.decode("utf-8", errors="replace")
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and completion and isinstance(completion[-1], dict):
        return str(completion[-1].get("content") or "")
    raise TypeError(f"a completion must be a string or a list of messages, got {type(completion).__name__}")


def extract_program(text: str) -> str:
    """The last fenced Python block of ``text`` (a final unclosed fence counts), else the whole text."""
    blocks: list[tuple[str, list[str]]] = []
    current: tuple[str, list[str]] | None = None
    for line in text.splitlines():
        stripped = line.strip()
        if current is None:
            if stripped.startswith("```"):
                words = stripped[3:].split()
                current = (words[0].lower() if words else "", [])
        elif stripped.startswith("```"):
            blocks.append(current)
            current = None
        else:
            current[1].append(line)
    if current is not None:
        blocks.append(current)
    python = [lines for language, lines in blocks if language in PYTHON_FENCES]
    return textwrap.dedent("\n".join(python[-1])) + "\n" if python else text


def parse_tests(value: Any) -> list[StdioCase] | str:
    """A row's ``tests``: a list of :class:`StdioCase`, or Python test source (checked, returned as it is).

    Raises ValueError when the value is neither (see the module docstring for the format).
    """
    cases = value
    if isinstance(value, str):
        text = value.strip()
        if not text.startswith("["):
            split_tests(value)  # raises when it is not usable Python tests
            return value
        try:
            cases = json.loads(text)
        except ValueError:
            split_tests(value)
            return value
    if not isinstance(cases, (list, tuple)) or not cases:
        raise ValueError(f"tests must be Python source or a non-empty list of cases, got {type(value).__name__}")
    parsed = []
    for case in cases:
        if not (isinstance(case, dict) and isinstance(case.get("input"), str) and isinstance(case.get("output"), str)):
            raise ValueError(f'each stdin/stdout case must be {{"input": str, "output": str}}, got {str(case)[:80]}')
        parsed.append(StdioCase(case["input"], case["output"]))
    return parsed


def split_tests(source: str) -> tuple[list[tuple[bool, str]], list[str]]:
    """Python tests as ``(is_test, statement source)`` steps, and every name the tests read."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError, RecursionError, MemoryError) as error:
        raise ValueError(f"the Python tests do not parse: {error}") from None
    steps = [(not _is_setup(node), ast.unparse(node)) for node in tree.body]
    if not any(is_test for is_test, _ in steps):
        raise ValueError("the Python tests contain no test (a definition alone checks nothing: call it)")
    return steps, sorted({node.id for node in ast.walk(tree) if isinstance(node, ast.Name)})


@functools.lru_cache(maxsize=256)  # a generation's completions share their row's tests: read them once
def _read_tests(value: Any) -> tuple[list[StdioCase] | str, list[tuple[bool, str]], list[str]]:
    spec = parse_tests(value)
    steps, wanted = split_tests(spec) if isinstance(spec, str) else ([], [])
    return spec, steps, wanted


def _is_setup(node: ast.stmt) -> bool:
    return isinstance(node, SETUP_STATEMENTS) or (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant))


def normalize_output(text: str) -> str:
    """``text`` with trailing whitespace stripped from every line and trailing blank lines dropped."""
    lines = [line.rstrip() for line in text.split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    return "\n".join(lines)


# --- Code that runs inside the sandbox (shipped as source, like resrl_trl.sandbox's supervisor). --------------------


def _wire_encode(value: Any, handle: Callable[[Any], int]) -> Any:
    """Plain builtin data as JSON (tagged lists); anything else as a reference that ``handle`` gives."""
    kind = type(value)
    if value is None or kind is bool or kind is str:
        return value
    if kind is int:
        return value if -(1 << 53) < value < (1 << 53) else ["i", hex(value)]
    if kind is float:
        return ["f", repr(value)]
    if kind is complex:
        return ["c", repr(value.real), repr(value.imag)]
    if kind is bytes:
        return ["b", value.hex()]
    tags = {list: "l", tuple: "t", set: "s", frozenset: "fs"}
    if kind in tags:
        return [tags[kind], [_wire_encode(item, handle) for item in value]]
    if kind is dict:
        return ["d", [[_wire_encode(k, handle), _wire_encode(v, handle)] for k, v in value.items()]]
    return ["h", handle(value)]


def _wire_decode(data: Any, handle: Callable[[int], Any]) -> Any:
    """The value :func:`_wire_encode` encoded, built from builtin types only; references through ``handle``."""
    kind = type(data)
    if data is None or kind is bool or kind is int or kind is str:
        return data
    if kind is list and len(data) >= 2 and type(data[0]) is str:
        tag, body = data[0], data[1]
        if tag in ("l", "t", "s", "fs") and type(body) is list:
            items = [_wire_decode(item, handle) for item in body]
            return {"l": list, "t": tuple, "s": set, "fs": frozenset}[tag](items)
        if tag == "d" and type(body) is list:
            return {_wire_decode(k, handle): _wire_decode(v, handle) for k, v in body}
        if tag == "h" and type(body) is int:
            return handle(body)
        if type(body) is str:
            if tag == "i":
                return int(body, 16)
            if tag == "f":
                return float(body)
            if tag == "b":
                return bytes.fromhex(body)
            if tag == "c" and len(data) == 3 and type(data[2]) is str:
                return complex(float(body), float(data[2]))
    raise ValueError(f"not a wire value: {str(data)[:80]}")


def _serve(program: str) -> None:
    """(Inside, the program's process) Run the program, then answer the judge's requests (fd 3 in, fd 4 out)."""
    import builtins
    import json
    import sys

    objects: list[Any] = []

    def keep(value: Any) -> int:
        objects.append(value)
        return len(objects) - 1

    def send(message: dict) -> None:
        for stream in (sys.stdout, sys.stderr):  # the run ends with a kill: keep what the program printed so far
            try:
                stream.flush()
            except BaseException:  # noqa: BLE001, S110
                pass
        data = (json.dumps(message) + "\n").encode()
        while data:
            data = data[os.write(4, data) :]

    def failure(error: BaseException) -> dict:
        return {"raised": type(error).__name__, "message": str(error)[:300]}

    namespace = {"__name__": "solution", "__builtins__": builtins}
    try:
        exec(compile(program, "<program>", "exec", dont_inherit=True), namespace)
    except SystemExit:
        send({"exited": True})
        return
    except BaseException as error:  # noqa: BLE001  (reported to the judge as the program's failure)
        import traceback

        traceback.print_exc()
        send(failure(error))
        return

    def refuse(value: Any) -> int:
        raise TypeError

    names = {}
    for name, value in list(namespace.items()):
        if name.startswith("__"):
            continue
        if type(value) is type(json):
            names[name] = ["m", value.__name__]
            continue
        try:  # small plain data by value; functions, classes, objects and large values by reference
            sized = type(value) in (str, bytes, list, tuple, set, frozenset, dict)
            if sized and len(value) > 1000:
                raise TypeError
            names[name] = _wire_encode(value, refuse)
        except (TypeError, ValueError, RecursionError):
            names[name] = ["h", keep(value)]
    send({"ready": names})
    with os.fdopen(3, "rb") as requests:
        for line in requests:
            try:
                request = json.loads(line)
                target, op = objects[request["ref"]], request["op"]
                fetch = objects.__getitem__
                if op == "call":
                    kwargs = {key: _wire_decode(v, fetch) for key, v in request["kwargs"].items()}
                    value = target(*[_wire_decode(a, fetch) for a in request["args"]], **kwargs)
                elif op == "getattr":
                    value = getattr(target, request["name"])
                elif op == "getitem":
                    value = target[_wire_decode(request["key"], fetch)]
                else:
                    value = {"len": len, "bool": bool, "list": list}[op](target)
                reply = {"value": _wire_encode(value, keep)}
            except SystemExit:
                send({"exited": True})
                return
            except BaseException as error:  # noqa: BLE001  (the call failed: the judge raises it in the test)
                reply = failure(error)
            send(reply)


def _judge(steps: list[tuple[bool, str]], wanted: list[str], stop_on_failure: bool) -> None:
    """(Inside, the judge's process, which never runs program code) Run the tests against proxies of the program's
    names, then write the verdict on fd 5."""
    import builtins
    import importlib
    import json
    import sys

    replies = os.fdopen(3, "rb")
    stopped = [""]  # why the program stopped answering: "exit" or "protocol"
    verdict: dict[str, Any] = {"passed": 0, "total": sum(1 for is_test, _ in steps if is_test), "error": ""}

    class ProgramStopped(BaseException):
        """The program exited, crashed or broke the protocol: no later call can be answered."""

    class ProgramError(Exception):
        """An exception the program raised that is not one of Python's own."""

    def report(**fields: Any) -> None:
        data = json.dumps({**verdict, **fields, "stopped": stopped[0]}).encode()
        while data:
            data = data[os.write(5, data) :]
        os._exit(0)

    def stop(why: str) -> ProgramStopped:
        stopped[0] = stopped[0] or why
        return ProgramStopped(f"the program {'exited' if stopped[0] == 'exit' else 'broke its channel'} mid-tests")

    def receive() -> dict:
        line = replies.readline()
        if not line:
            raise stop("exit")
        try:
            message = json.loads(line)
        except ValueError:
            raise stop("protocol") from None
        if type(message) is not dict:
            raise stop("protocol")
        if message.get("exited"):
            raise stop("exit")
        return message

    def rebuild(message: dict) -> Exception:
        name, text = message.get("raised"), str(message.get("message", ""))[:300]
        error = getattr(builtins, name, None) if type(name) is str else None
        if isinstance(error, type) and issubclass(error, Exception) and not issubclass(error, StopIteration):
            try:
                return error(text)
            except Exception:  # noqa: BLE001  (one that needs other arguments: a generic error instead)
                pass
        return ProgramError(f"{str(name)[:60]}: {text}")

    def call(op: str, ref: int, **fields: Any) -> Any:
        if stopped[0]:
            raise stop(stopped[0])
        data = (json.dumps({"op": op, "ref": ref, **fields}) + "\n").encode()
        try:
            while data:
                data = data[os.write(4, data) :]
        except OSError:
            raise stop("exit") from None
        message = receive()
        if "raised" in message:
            raise rebuild(message)
        try:
            return _wire_decode(message["value"], Remote)
        except (KeyError, ValueError, TypeError, RecursionError):
            raise stop("protocol") from None

    def send_value(value: Any) -> Any:
        def reference(item: Any) -> int:
            if type(item) is Remote:
                return item._ref
            raise TypeError(f"only plain data can be passed to the program, not {type(item).__name__}")

        return _wire_encode(value, reference)

    class Remote:
        """One of the program's objects: calls, attributes, items, length, truth and iteration are asked of the
        program; it equals nothing but itself."""

        __slots__ = ("_ref",)

        def __init__(self, ref: int) -> None:
            self._ref = ref

        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            encoded = {key: send_value(value) for key, value in kwargs.items()}
            return call("call", self._ref, args=[send_value(a) for a in args], kwargs=encoded)

        def __getattr__(self, name: str) -> Any:
            if name.startswith("__"):
                raise AttributeError(name)
            return call("getattr", self._ref, name=name)

        def __getitem__(self, key: Any) -> Any:
            return call("getitem", self._ref, key=send_value(key))

        def __len__(self) -> int:
            value = call("len", self._ref)
            if type(value) is not int:
                raise TypeError("len() of a program object must be an int")
            return value

        def __bool__(self) -> bool:
            value = call("bool", self._ref)
            if type(value) is not bool:
                raise TypeError("bool() of a program object must be a bool")
            return value

        def __iter__(self) -> Any:
            value = call("list", self._ref)
            if type(value) is not list:
                raise TypeError("list() of a program object must be a list")
            return iter(value)

        def __eq__(self, other: object) -> bool:
            return self is other

        def __ne__(self, other: object) -> bool:
            return self is not other

        __hash__ = object.__hash__

        def __repr__(self) -> str:
            return f"<program object {self._ref}>"

    try:
        first = receive()
    except ProgramStopped as error:
        report(error="ProgramStopped", message=str(error))
    if "raised" in first:
        report(error=str(first["raised"])[:60], message=str(first.get("message", ""))[:300])
    names = first.get("ready")
    if type(names) is not dict:
        stopped[0] = "protocol"
        report(error="ProgramStopped")
    namespace: dict[str, Any] = {"__name__": "__main__", "__builtins__": builtins}
    for name in wanted:  # the program's names the tests read, except Python's own
        if name not in names or name.startswith("__") or hasattr(builtins, name):
            continue
        value = names[name]
        try:
            if name in sys.stdlib_module_names:  # a module name: the judge's own import, whatever the program bound
                namespace[name] = importlib.import_module(name)
            elif type(value) is list and value[:1] == ["m"]:
                if type(value[1]) is str and value[1].split(".")[0] in sys.stdlib_module_names:
                    namespace[name] = importlib.import_module(value[1])
            else:
                namespace[name] = _wire_decode(value, Remote)
        except Exception:  # noqa: BLE001, S112  (a name that cannot be bound: the tests that read it fail)
            continue
    for is_test, source in steps:
        try:
            exec(compile(source, "<tests>", "exec", dont_inherit=True), namespace)
            ok = not stopped[0]  # a test that swallowed the program's exit did not pass
        except BaseException as error:  # noqa: BLE001  (a failed test)
            ok = False
            if not verdict["error"]:
                verdict["error"], verdict["message"] = type(error).__name__, str(error)[:300]
        if ok and is_test:
            verdict["passed"] += 1
        if not ok and (stop_on_failure or not is_test or stopped[0]):
            break
    report()


@functools.lru_cache(maxsize=1)
def _sources() -> tuple[str, str]:
    """The program-side server and the judge, as source to run in the sandbox."""
    header = "from __future__ import annotations\nimport os\nimport sys\nfrom typing import Any\n\n"
    wire = inspect.getsource(_wire_encode) + "\n\n" + inspect.getsource(_wire_decode)
    return (
        header + wire + "\n\n" + inspect.getsource(_serve),
        header + wire + "\n\n" + inspect.getsource(_judge),
    )


# --- The trainer's side. ---------------------------------------------------------------------------------------------


class CodeReward:
    """The code reward with TRL's reward-function signature: ``code_reward(completions, tests, **kwargs)``.

    Each completion's program (:func:`extract_program`) runs against its row's ``tests`` (:func:`parse_tests`) in its
    own sandbox (:class:`~resrl_trl.sandbox.Sandbox`), ``workers`` at a time (default: the CPU count), bounded per
    run by ``timeout_s`` of wall time, ``cpu_s`` of CPU time per process (default: ``timeout_s``), ``memory_mb`` of
    address space per process, ``max_processes`` processes and threads, ``output_bytes`` of output and
    ``scratch_mb`` of scratch space. A run is one stdin/stdout case, or the program with all of its Python tests.
    Without ``partial_credit`` the cases stop at the first failure. Pays 1.0 when every test passed, else 0.0
    (``partial_credit``: the fraction passed); None for a row whose tests cannot be read. Non-normal outcomes are
    counted in :attr:`faults`. Without isolation on the machine the first call raises
    :class:`~resrl_trl.sandbox.SandboxUnavailable` (one line naming the fix), unless ``allow_unsandboxed``. The
    worker threads start on first use; :meth:`close` stops them.
    """

    __name__ = "code_reward"

    def __init__(
        self,
        timeout_s: float = 5.0,
        cpu_s: float | None = None,
        memory_mb: int = 1024,
        max_processes: int = 32,
        output_bytes: int = 1 << 20,
        scratch_mb: int = 64,
        workers: int | None = None,
        partial_credit: bool = False,
        allow_unsandboxed: bool = False,
        backend: str | None = None,
    ) -> None:
        self.limits = Limits(timeout_s, cpu_s or timeout_s, memory_mb, max_processes, output_bytes, scratch_mb)
        self.workers = workers or os.cpu_count() or 1
        self.partial_credit = partial_credit
        self.sandbox = Sandbox(self.limits, backend=backend, allow_unsandboxed=allow_unsandboxed)
        self._faults: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._active = self._peak = 0
        self._pool: ThreadPoolExecutor | None = None  # started on first use: creating the reward costs nothing

    @property
    def faults(self) -> dict[str, int]:
        with self._lock:
            return dict(self._faults)

    @property
    def peak_concurrency(self) -> int:
        """The most programs this reward has had running at once."""
        return self._peak

    def __call__(self, completions: list[Any], tests: list[Any], **kwargs: Any) -> list[float | None]:
        return [result.reward for result in self.check_batch(completions, tests)]

    def check_batch(self, completions: list[Any], tests: list[Any]) -> list[CodeCheck]:
        """:meth:`check` over a batch, ``workers`` sandboxes at a time, in order."""
        if len(completions) != len(tests):
            raise ValueError(f"{len(completions)} completions but {len(tests)} tests")
        self.sandbox.backend  # noqa: B018  (refuses here, once, when there is no isolation)
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="code_reward")
        return list(self._pool.map(self.check, completions, tests))

    def check(self, completion: Any, tests: Any) -> CodeCheck:
        """Score one completion against one row's tests."""
        program = extract_program(completion_text(completion))
        try:
            spec, steps, wanted = _read_tests(tests) if isinstance(tests, str) else _read_tests.__wrapped__(tests)
        except (ValueError, TypeError) as error:
            return self._count(CodeCheck(None, "bad_tests", detail=str(error)[:MAX_DETAIL_CHARS]))
        total = len(spec) if isinstance(spec, list) else sum(is_test for is_test, _ in steps)
        if not program.strip():
            return self._count(CodeCheck(0.0, "no_code", total=total))
        with self._running():  # even compiling untrusted text happens in the sandbox, never in the trainer
            result = (
                self._run_cases(program, spec) if isinstance(spec, list) else self._run_tests(program, steps, wanted)
            )
        return self._count(result)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def _run_cases(self, program: str, cases: list[StdioCase]) -> CodeCheck:
        outcomes: list[str] = []

        def keep_going(index: int, run: RunResult) -> bool:
            outcomes.append(_case_outcome(run, cases[index]))
            return self.partial_credit or outcomes[-1] == "ok"

        runs = self.sandbox.run(program, [case.input.encode() for case in cases], keep_going=keep_going)
        if len(outcomes) < len(runs):  # the sandbox failed before this run's report
            outcomes.append(_case_outcome(runs[-1], None))
        passed = outcomes.count("ok")
        status = next((kind for kind in outcomes if kind != "ok"), "ok")
        first = runs[0] if runs else RunResult("harness")
        return CodeCheck(
            self._reward(passed, len(cases)),
            status,
            passed,
            len(cases),
            detail=_tail(next((r.stderr for r in runs if r.stderr), b"")),
            output=first.stdout[:2000].decode("utf-8", "replace"),
        )

    def _run_tests(self, program: str, steps: list[tuple[bool, str]], wanted: list[str]) -> CodeCheck:
        total = sum(is_test for is_test, _ in steps)
        server, judge = _sources()
        run = self.sandbox.run(
            f"{server}\n_serve({program!r})\n",
            judge=f"{judge}\n_judge({steps!r}, {wanted!r}, {not self.partial_credit!r})\n",
        )[0]
        output = run.stdout[:2000].decode("utf-8", "replace")
        try:
            verdict = json.loads(run.verdict)
            passed = verdict["passed"]
            if type(passed) is not int or not 0 <= passed <= total:
                raise ValueError(f"passed={passed!r} of {total}")
        except (ValueError, KeyError, TypeError):
            killed = run.judge_exit is not None and run.judge_exit < 0  # by a signal: the program's kill(-1)
            kind = _run_fault(run) or ("killed" if killed else "harness")
            detail = _tail(run.stderr or run.judge_log) or f"no verdict from the tests ({run.status})"
            return CodeCheck(0.0, kind, 0, total, detail=detail, output=output)
        kind = _run_fault(run)
        if kind is None:
            kind = "ok" if passed == total else _error_kind(verdict.get("error", ""), verdict.get("stopped", ""))
        detail = f"{verdict.get('error', '')}: {verdict.get('message', '')}" if verdict.get("error") else ""
        return CodeCheck(self._reward(passed, total), kind, passed, total, detail[:MAX_DETAIL_CHARS], output)

    def _reward(self, passed: int, total: int) -> float:
        if self.partial_credit:
            return passed / total if total else 0.0
        return 1.0 if passed == total and total else 0.0

    def _count(self, result: CodeCheck) -> CodeCheck:
        if result.status not in NORMAL:
            with self._lock:
                self._faults[result.status] += 1
        return result

    @contextmanager
    def _running(self) -> Iterator[None]:
        with self._lock:
            self._active += 1
            self._peak = max(self._peak, self._active)
        try:
            yield
        finally:
            with self._lock:
                self._active -= 1


def _run_fault(run: RunResult) -> str | None:
    """The fault a run shows whatever its output: the supervisor's verdict on it, or CPU time (SIGXCPU)."""
    if run.status != "ok":
        return run.status  # timeout, output_limit or harness
    return "timeout" if run.signal == signal.SIGXCPU else None


def _case_outcome(run: RunResult, case: StdioCase | None) -> str:
    kind = _run_fault(run)
    if kind is not None or case is None:
        return kind or "harness"
    if run.exit_code != 0:  # a runtime error, whatever it raised: only memory and syntax have kinds of their own
        kind = _error_kind(_tail(run.stderr).split(":")[0], "")
        return kind if kind in ("memory", "syntax") else "error"
    actual = normalize_output(run.stdout.decode("utf-8", errors="replace"))
    return "ok" if actual == normalize_output(case.output) else "wrong"


def _error_kind(error: str, stopped: str) -> str:
    if error == "MemoryError":
        return "memory"
    if error in ("SyntaxError", "IndentationError", "TabError"):
        return "syntax"
    if stopped:
        return stopped  # "exit" or "protocol"
    return "wrong" if error in ("", "AssertionError") else "error"


def _tail(data: bytes) -> str:
    lines = data.decode("utf-8", errors="replace").strip().splitlines()
    return lines[-1][:MAX_DETAIL_CHARS] if lines else ""


code_reward = CodeReward()
"""The default code reward (a :class:`CodeReward`: 5 s, 1 GiB, 32 processes per run, all cores)."""
