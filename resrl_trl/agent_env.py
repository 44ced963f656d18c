"""What the agent tasks share: a tool environment's bounds and bookkeeping, and the reward that scores a rollout.

TRL runs the multi-turn loop (``environment_factory``): it renders the environment's public methods as tools,
parses each reply's calls, calls the methods of the rollout's own environment instance, appends their results as
tool turns (``tool_mask`` 0: left out of the loss, and out of ResRL's subspaces and weights) and lets the model go
on until a reply makes no call, ``max_tool_calling_iterations`` replies have called tools, or the completion budget
is spent. An environment here adds what the loop does not bound or check:

- every call runs under a time limit (``call_time_s``) and the rollout under a total (``episode_time_s``); past it a
  call returns an error and the rollout earns 0;
- :func:`score_rollout` pays 0 for a rollout with a malformed call (a call tag the parser could not read), a
  call that never reached the environment (an unknown function, arguments that do not fit its signature), or a last
  reply that still calls a tool (the loop was cut by the turn or length bound), and otherwise defers to the task's
  own check (the environment's ``_check``).

An environment's public methods are its tools (TRL offers every one to the model), so everything else on it is
private.

:class:`AgentReward` is the reward function: it asks each rollout's environment for its score and counts the
faults (logged per step as ``resrl/answer_check_<kind>``).
"""

from __future__ import annotations

import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from resrl_trl.tool_chat import TOOL_CALL_OPEN

__all__ = [
    "FAULTS",
    "AgentReward",
    "CallTimeout",
    "ToolEnvironment",
    "count_tool_calls",
    "score_rollout",
    "time_limit",
]

FAULTS = ("malformed_call", "invalid_call", "unfinished", "time_limit")


class CallTimeout(Exception):
    """A tool call ran past its time limit."""


@contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise :class:`CallTimeout` in the block after ``seconds`` of wall time. Tools run in the main thread in TRL's
    loop, where a timer signal can interrupt them; elsewhere the block runs unbounded and the caller checks the time
    it took."""
    if threading.current_thread() is not threading.main_thread() or seconds <= 0:
        yield
        return

    def expire(signum: int, frame: Any) -> None:
        raise CallTimeout(f"the call ran past its {seconds:g} s limit")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def count_tool_calls(messages: list[dict[str, Any]]) -> int:
    """The tool calls the parser read from a rollout's assistant turns."""
    return sum(len(m.get("tool_calls") or []) for m in messages if m.get("role") == "assistant")


class ToolEnvironment:
    """Base of the agent environments: subclasses define the tools (public methods), ``reset`` and ``_check``, and
    run each tool's body through :meth:`_run_call`."""

    call_time_s: float = 5.0
    episode_time_s: float = 60.0

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.time_used = 0.0
        self.timed_out = False

    def _start_episode(self) -> None:
        self.calls, self.time_used, self.timed_out = [], 0.0, False

    def _run_call(self, name: str, arguments: dict[str, Any], body: Callable[[], str]) -> str:
        """Record a call that reached the environment and run it within the time limits; an exception inside the
        tool becomes an error text for the model (the call was made; the task's check decides what it earned)."""
        self.calls.append((name, arguments))
        if self.timed_out or self.time_used >= self.episode_time_s:
            self.timed_out = True
            return f"Error: this episode's {self.episode_time_s:g} s of tool time is spent"
        limit = min(self.call_time_s, self.episode_time_s - self.time_used)
        start = time.monotonic()
        try:
            with time_limit(limit):
                result = body()
        except CallTimeout as error:
            self.timed_out = True
            result = f"Error: {error}"
        except Exception as error:  # the tool's own failure, shown to the model as BFCL shows it
            result = f"Error during execution: {error}"
        self.time_used += time.monotonic() - start
        if time.monotonic() - start > limit:  # a call that could not be interrupted (not in the main thread)
            self.timed_out = True
        return result

    def _check(self, messages: list[dict[str, Any]]) -> float:
        """The task's own verdict on a well-formed, finished rollout."""
        raise NotImplementedError


def score_rollout(environment: ToolEnvironment, messages: list[dict[str, Any]]) -> tuple[float, str | None]:
    """``(reward, fault)`` for the rollout ``messages`` (the completion TRL built: assistant and tool turns) that ran
    in ``environment``."""
    assistant = [m for m in messages if m.get("role") == "assistant"]
    if any(TOOL_CALL_OPEN in (m.get("content") or "") for m in assistant):
        return 0.0, "malformed_call"
    made = count_tool_calls(messages)
    # A loop cut by the turn bound leaves the last reply's calls unrun (unfinished, below); any other call that
    # never reached the environment is invalid.
    pending = len(assistant[-1].get("tool_calls") or []) if assistant else 0
    if len(environment.calls) not in (made, made - pending):
        return 0.0, "invalid_call"
    if environment.timed_out:
        return 0.0, "time_limit"
    if not assistant or assistant[-1].get("tool_calls"):
        return 0.0, "unfinished"
    return environment._check(messages), None


class AgentReward:
    """The agent reward with TRL's reward-function signature: each rollout's score from its own environment
    (``environments``, which TRL passes when it runs an ``environment_factory``). Counts :data:`FAULTS` in
    :attr:`faults`, and the calls made in :attr:`tool_calls`."""

    __name__ = "agent_reward"

    def __init__(self) -> None:
        self.faults: Counter[str] = Counter()
        self.tool_calls = 0

    def __call__(
        self, completions: list[Any], environments: list[ToolEnvironment] | None = None, **kwargs: Any
    ) -> list[float]:
        if environments is None:
            raise ValueError(
                "agent_reward scores rollouts from their environments: pass the trainer an environment_factory"
            )
        rewards = []
        for messages, environment in zip(completions, environments, strict=True):
            reward, fault = score_rollout(environment, messages)
            if fault is not None:
                self.faults[fault] += 1
            self.tool_calls += count_tool_calls(messages)
            rewards.append(reward)
        return rewards
