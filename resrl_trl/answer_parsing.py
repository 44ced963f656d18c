"""Reading a completion's final answer and comparing it with the reference (math-verify), in one process.

:func:`score_answer` is what :class:`resrl_trl.rewards.MathReward` runs inside a bounded worker process
(:mod:`resrl_trl.answer_check`): a LaTeX answer (boxed first) when there is one, else the text's last number.
"""

from __future__ import annotations

import re
import threading

from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify
from math_verify.parser import NormalizationConfig

__all__ = ["score_answer"]

# LaTeX answers as TRL's accuracy_reward reads them: boxed first, only inside LaTeX anchors
LATEX_EXTRACTION = LatexExtractionConfig(
    normalization_config=NormalizationConfig(units=True), boxed_match_priority=0, try_extract_without_anchor=False
)
LAST_NUMBER = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?(?:/\d+)?")


def _timeouts() -> tuple[int | None, int | None]:
    # math-verify's time-outs use signal.alarm, which works only in the main thread.
    if threading.current_thread() is threading.main_thread():
        return 10, 5
    return None, None


def score_answer(text: str, reference: str) -> tuple[str, float | None]:
    """``(extracted final answer, reward)`` of one completion text against its reference answer.

    The reward is 1.0 or 0.0 (math-verify), or ``None`` when the reference itself cannot be parsed; the answer is
    math-verify's reading of the completion ("" when it finds none).
    """
    parsing_timeout, verify_timeout = _timeouts()
    gold = parse(str(reference), parsing_timeout=parsing_timeout)
    if not gold:  # bare LaTeX such as "\\frac{\\sqrt{7}}{14}" or "[0,\\infty)" parses inside math delimiters
        gold = parse(f"${reference}$", parsing_timeout=parsing_timeout)
    if not gold:
        return "", None
    answer = parse(text, extraction_config=[LATEX_EXTRACTION], parsing_timeout=parsing_timeout)
    if not answer:
        numbers = LAST_NUMBER.findall(text)
        if numbers:
            answer = parse(
                numbers[-1].replace(",", ""),
                extraction_config=[ExprExtractionConfig()],
                parsing_timeout=parsing_timeout,
            )
    extracted = str(answer[-1]) if answer else ""
    return extracted, float(verify(gold, answer, timeout_seconds=verify_timeout))
