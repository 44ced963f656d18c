"""Verifiable maths rewards with TRL's reward-function signature.

``math_reward`` pays 1.0 for a completion whose final answer equals the reference (math-verify) *and* which asserts
that answer. The final answer is a LaTeX answer as TRL's ``trl.rewards.accuracy_reward`` reads it (``\\boxed{}``
first, then ``$...$`` after "answer"); when there is none, the *last number* of the text ("7 + 5 = 12", "The answer
is 12."), since a small model rarely writes LaTeX. Only that final answer counts, never an expression that merely
evaluates to the answer, so restating the question ("6 + 1 is 9") earns nothing.

An answer that the completion names without asserting it earns 0 as well: a policy would otherwise learn that "6 + 1
≠ 7", "The answer is 8, not 7", "Is it 7?" or "7 or 8" are paid. :func:`resrl_trl.answer_parsing.is_asserted` reads
what bears on the answer -- the words and signs joined to it by linking words only ("is", "be", "the", "equal to",
expressions), before it within its clause and after it up to the end of its sentence -- and withholds payment when
that is a negation of the answer or of its correctness ("not", -n't, "never", "wrong", "rather than", "instead of",
≠, ``\\neq``, <, >, ±), a doubt ("maybe", "probably", "might", "guess"), a supposition ("if", "suppose"), "or"
offering it as one of several values, or a question (a question mark, or an opening "Is it ..."). A negation bearing
on something else leaves the answer paid ("It is not hard: 6 + 1 = 7", "6 + 1 ≠ 8 = 7", "the largest multiple of 73
less than 1000 is 949"). For TRL's LaTeX-only check, pass ``trl.rewards.accuracy_reward`` instead.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .answer_parsing import score_answer

if TYPE_CHECKING:
    from .code_check import CodeReward, code_reward

__all__ = [
    "CodeReward",
    "LengthScaledReward",
    "MathReward",
    "code_reward",
    "completion_text",
    "math_reward",
    "score_answer",
]


def __getattr__(name: str) -> Any:
    """``code_reward`` and ``CodeReward`` (:mod:`resrl_trl.code_check`: programs run in a sandbox against the row's
    ``tests``), imported on first use so that importing the maths rewards stays cheap."""
    if name in ("code_reward", "CodeReward"):
        from . import code_check

        return getattr(code_check, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def completion_text(completion: Any) -> str | bytes:
    """The text of one completion: a string (or raw bytes), or TRL's conversational form (a list of messages)."""
    if isinstance(completion, (str, bytes)):
        return completion
    if isinstance(completion, list) and completion and isinstance(completion[-1], dict):
        return str(completion[-1].get("content") or "")
    raise TypeError(f"a completion must be a string or a list of messages, got {type(completion).__name__}")


class MathReward:
    """1.0 when the completion's final answer equals ``solution`` and the completion asserts it, else 0.0.

    :func:`score_answer` reads the final answer (LaTeX, else the last number) and compares it with math-verify; a
    match is paid only when :func:`~resrl_trl.answer_parsing.is_asserted` finds no negation, denial, doubt,
    supposition, alternative or question bearing on the answer, so "6 + 1 ≠ 7", "It is not 7", "7 is wrong",
    "Is it 7?", "maybe 7" and "8 or 7" earn 0 against 7 while "6 + 1 = 7", "The answer is 7." and ``\\boxed{7}``
    earn 1. ``None`` (unscorable, so TRL leaves the completion out) when the reference itself cannot be parsed.

    Every check runs in a :class:`~resrl_trl.answer_check.BoundedChecker` worker process, bounded in time and
    memory: a completion built to hang or exhaust the parser (deep nesting, huge powers, 100k characters), an empty
    one or one with invalid bytes scores 0 and is counted in ``faults`` by kind (``timeout``, ``error``, ``empty``),
    and training goes on.
    """

    __name__ = "math_reward"

    def __init__(self, timeout_s: float = 5.0, memory_mb: int = 2048, max_chars: int = 4000) -> None:
        self.settings = dict(timeout_s=timeout_s, memory_mb=memory_mb, max_chars=max_chars)
        self._checker: Any = None  # started on first use: importing this module costs nothing

    @property
    def checker(self) -> Any:
        if self._checker is None:
            from .answer_check import BoundedChecker

            self._checker = BoundedChecker(**self.settings)
        return self._checker

    @property
    def faults(self) -> dict[str, int]:
        return dict(self._checker.faults) if self._checker is not None else {}

    def check(self, completion: Any, reference: str) -> tuple[str, float | None, str]:
        """``(extracted answer, reward, status)`` of one completion; see :class:`BoundedChecker`."""
        return self.checker.check(completion_text(completion), reference)

    def __call__(self, completions: list[Any], solution: list[str], **kwargs: Any) -> list[float | None]:
        results = [self.check(c, reference) for c, reference in zip(completions, solution, strict=True)]
        return [None if status == "unparsable_reference" else reward for _, reward, status in results]


math_reward = MathReward()
"""The default maths reward (a :class:`MathReward` with a 5 s, 2 GiB bound per completion)."""


class LengthScaledReward:
    """The reference run's length-scaled positive reward around a base reward function.

    A positive reward is kept as it is up to ``start_length`` completion tokens, scaled linearly down to
    ``end_scale`` times itself at ``max_length`` tokens, and ``end_scale`` times beyond. Rewards <= 0 are never
    scaled. Reference values: ``start_length=3500``, ``max_length=4096``, ``end_scale=0.7``.
    """

    def __init__(
        self, base: Any = math_reward, start_length: int = 3500, max_length: int = 4096, end_scale: float = 0.7
    ) -> None:
        if not 0 <= start_length < max_length:
            raise ValueError(f"need 0 <= start_length < max_length, got {start_length} and {max_length}")
        if not 0.0 <= end_scale <= 1.0:
            raise ValueError(f"end_scale must lie in [0, 1], got {end_scale}")
        self.base, self.start_length, self.max_length, self.end_scale = base, start_length, max_length, end_scale
        self.__name__ = f"length_scaled_{getattr(base, '__name__', 'reward')}"

    def scale(self, length: int) -> float:
        progress = min(max(length - self.start_length, 0) / (self.max_length - self.start_length), 1.0)
        return 1.0 - (1.0 - self.end_scale) * progress

    def __call__(self, completions: list[Any], completion_ids: list[list[int]], **kwargs: Any) -> list[float | None]:
        rewards = self.base(completions=completions, completion_ids=completion_ids, **kwargs)
        return [
            r * self.scale(len(ids)) if r is not None and r > 0 else r
            for r, ids in zip(rewards, completion_ids, strict=True)
        ]
