"""The statistics of a paired comparison over seeds: intervals, tests, the Holm correction and power.

Pure NumPy/SciPy, no model and no framework. A comparison is a list of *paired differences*, one per seed: the value
of a metric for method A minus its value for method B, both trained from the same seed (same prompts in the same
order, same initial weights) and evaluated with the same sampling seeds. The seed-to-seed spread of these differences
is the noise a comparison has to beat, so every interval and test below is over seeds (Student's t with
``n - 1`` degrees of freedom), and the power analysis asks how many seeds a given difference needs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from scipy import optimize, stats

__all__ = [
    "PairedResult",
    "detectable_effect",
    "holm",
    "paired_test",
    "power",
    "seeds_needed",
]


class PairedResult(NamedTuple):
    """Mean paired difference, its ``level`` t-interval over seeds, the two-sided paired t-test's p-value, the
    standard deviation of the differences and their number."""

    mean: float
    low: float
    high: float
    p_value: float
    sd: float
    n: int


def paired_test(differences: Sequence[float], level: float = 0.95) -> PairedResult:
    """The mean of ``differences`` with its Student-t interval and the paired t-test of "mean difference = 0".

    With fewer than two differences the interval and p-value are NaN; with all differences equal the interval is
    that value and the p-value is 1 for zero and 0 otherwise.
    """
    values = np.asarray(differences, dtype=float)
    n = len(values)
    mean = float(values.mean()) if n else math.nan
    if n < 2:
        return PairedResult(mean, math.nan, math.nan, math.nan, math.nan, n)
    sd = float(values.std(ddof=1))
    if sd == 0.0:
        return PairedResult(mean, mean, mean, 1.0 if mean == 0.0 else 0.0, 0.0, n)
    half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * sd / math.sqrt(n)
    t = mean / (sd / math.sqrt(n))
    p_value = float(2 * stats.t.sf(abs(t), n - 1))
    return PairedResult(mean, mean - half, mean + half, p_value, sd, n)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (family-wise error control over all of ``p_values``).

    Sorted ascending, the i-th smallest (0-based) is multiplied by ``m - i``; each adjusted value is the running
    maximum of those products, capped at 1, returned in the input's order. NaN p-values stay NaN and are not counted.
    """
    p = np.asarray(p_values, dtype=float)
    valid = np.flatnonzero(~np.isnan(p))
    adjusted = np.full(len(p), math.nan)
    m = len(valid)
    order = valid[np.argsort(p[valid], kind="stable")]
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[index]))
        adjusted[index] = running
    return adjusted.tolist()


def power(effect: float, sd: float, n: int, alpha: float = 0.05) -> float:
    """Power of the two-sided paired t-test at level ``alpha`` to detect a true mean difference ``effect`` when the
    differences have standard deviation ``sd``, with ``n`` seeds (the noncentral t distribution, exact)."""
    if n < 2:
        return 0.0
    if sd <= 0:
        return 1.0 if effect != 0 else alpha
    df = n - 1
    critical = stats.t.ppf(1 - alpha / 2, df)
    noncentrality = abs(effect) / sd * math.sqrt(n)
    upper = float(stats.nct.sf(critical, df, noncentrality))
    # The wrong-sign tail: SciPy returns NaN for it at large noncentrality, where it is below 1e-15.
    lower = float(stats.nct.cdf(-critical, df, noncentrality))
    return upper + (lower if math.isfinite(lower) else 0.0)


def seeds_needed(effect: float, sd: float, alpha: float = 0.05, target: float = 0.8, limit: int = 100_000) -> int:
    """The smallest number of seeds whose paired t-test reaches power ``target`` for ``effect`` (given ``sd``);
    ``limit`` + 1 when even ``limit`` seeds do not. Power grows with the number of seeds, so a bisection finds it."""
    if effect == 0 or power(effect, sd, limit, alpha) < target:
        return limit + 1
    low, high = 1, 2  # power(low) < target <= power(high)
    while power(effect, sd, high, alpha) < target:
        low, high = high, min(limit, high * 2)
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if power(effect, sd, middle, alpha) < target else (low, middle)
    return high


def detectable_effect(sd: float, n: int, alpha: float = 0.05, target: float = 0.8) -> float:
    """The smallest true mean difference that ``n`` seeds detect with power ``target`` when the differences have
    standard deviation ``sd`` (inf below two seeds)."""
    if n < 2 or not math.isfinite(sd):
        return math.inf
    if sd == 0:
        return 0.0
    upper = sd
    while power(upper, sd, n, alpha) < target:
        upper *= 2
    return float(optimize.brentq(lambda effect: power(effect, sd, n, alpha) - target, 0.0, upper, xtol=1e-9))
