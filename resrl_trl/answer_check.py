"""Answer checking that model output cannot hang or exhaust: a worker process with a time and memory limit.

A completion is text the model chose; parsing it with LaTeX/SymPy can take unbounded time (deep nesting, huge
powers) or memory. :class:`BoundedChecker` runs :func:`resrl_trl.answer_parsing.score_answer` in a separate process
(``python -m resrl_trl.answer_check``) whose address space is limited, waits at most ``timeout_s`` per completion,
and kills and replaces the worker when a check runs over. It works from any thread (math-verify's own time-outs rely
on ``signal.alarm``, which only the main thread has), and a parser crash or ``MemoryError`` costs one completion,
never the run.
"""

from __future__ import annotations

import json
import os
import resource
import select
import subprocess
import sys
import threading
from collections import Counter
from typing import Any

__all__ = ["BoundedChecker", "CheckResult"]

CheckResult = tuple[str, "float | None", str]
"""``(extracted answer, reward, status)``; status is ``"ok"``, ``"empty"``, ``"timeout"``, ``"error"`` or
``"unparsable_reference"``."""

STARTUP_TIMEOUT_S = 300.0
MAX_ANSWER_CHARS = 200  # of the extracted answer kept for logs and samples


class BoundedChecker:
    """Scores completions in a worker process, at most ``timeout_s`` seconds and ``memory_mb`` MiB each.

    Before anything is parsed, a completion is decoded if it is bytes (invalid UTF-8 replaced), and only its last
    ``max_chars`` characters are kept: the final answer is at the end, and no parser sees 100k characters. An empty
    completion scores 0 without a check. ``faults`` counts every completion that was not checked normally, by status.
    """

    def __init__(self, timeout_s: float = 5.0, memory_mb: int = 2048, max_chars: int = 4000) -> None:
        if timeout_s <= 0 or memory_mb < 256 or max_chars < 1:
            raise ValueError("BoundedChecker needs timeout_s > 0, memory_mb >= 256 and max_chars >= 1")
        self.timeout_s, self.memory_mb, self.max_chars = timeout_s, memory_mb, max_chars
        self.faults: Counter[str] = Counter()
        self._lock = threading.Lock()  # one check at a time through the worker's pipes
        self._process: subprocess.Popen | None = None

    def _start(self) -> None:
        self._process = subprocess.Popen(
            [sys.executable, "-m", "resrl_trl.answer_check", str(self.memory_mb)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        if self._read(STARTUP_TIMEOUT_S) != "ready":
            self._stop()
            raise RuntimeError("the answer-checking worker (python -m resrl_trl.answer_check) did not start")

    def _read(self, timeout_s: float) -> str | None:
        """One line from the worker, or None when none comes within ``timeout_s`` (or the worker died)."""
        assert self._process is not None and self._process.stdout is not None
        ready, _, _ = select.select([self._process.stdout], [], [], timeout_s)
        if not ready:
            return None
        line = self._process.stdout.readline()
        return line.rstrip("\n") if line else None

    def _stop(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.wait()
        self._process = None

    def close(self) -> None:
        with self._lock:
            self._stop()

    def __del__(self) -> None:
        self._stop()

    def prepare(self, text: Any) -> str:
        if isinstance(text, bytes):
            text = text.decode("utf-8", errors="replace")
        return str(text)[-self.max_chars :]

    def check(self, text: Any, reference: str) -> CheckResult:
        text = self.prepare(text)
        if not text.strip():
            self.faults["empty"] += 1
            return "", 0.0, "empty"
        with self._lock:
            if self._process is None or self._process.poll() is not None:
                self._start()
            assert self._process is not None and self._process.stdin is not None
            try:
                self._process.stdin.write(json.dumps([text, str(reference)]) + "\n")
                self._process.stdin.flush()
                line = self._read(self.timeout_s)
            except (BrokenPipeError, OSError):
                line = None
            if line is None:  # ran over (or died): kill it with its check; the next check starts a fresh worker
                timed_out = self._process.poll() is None
                self._stop()
                result = ("", 0.0, "timeout" if timed_out else "error: worker died")
            else:
                answer, reward, status = json.loads(line)
                result = (answer[:MAX_ANSWER_CHARS], reward, status)
        if result[2] != "ok":
            self.faults[result[2].split(":")[0]] += 1
        return result


def _serve(memory_mb: int) -> None:
    """The worker: bound the address space, then answer one JSON line per check."""
    limit = memory_mb * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    from .answer_parsing import score_answer  # imported under the limit: SymPy's allocations count too

    print("ready", flush=True)
    for line in sys.stdin:
        text, reference = json.loads(line)
        try:
            answer, reward = score_answer(text, reference)
            status = "ok" if reward is not None else "unparsable_reference"
        except BaseException as error:  # noqa: BLE001  (whatever the parser raises costs this completion only)
            answer, reward, status = "", 0.0, f"error: {type(error).__name__}"
        print(json.dumps([answer, reward, status]), flush=True)


if __name__ == "__main__":
    _serve(int(sys.argv[1]))
