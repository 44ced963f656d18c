"""Evaluation metrics over sampled completions: Avg@k, unbiased Pass@k, bootstrap intervals, answer diversity.

Pure Python/NumPy: no model, no framework. A *record* is one sample: a dict with at least ``problem_id``,
``correct`` (bool), ``answer`` (the extracted final answer, "" when none) and ``completion`` (text).
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

__all__ = ["answer_entropy", "distinct_n", "pass_at_k", "powers_of_two_up_to", "summarize"]


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased Pass@k (Chen et al., 2021) from ``n`` samples of which ``c`` are correct.

    ``1 - C(n - c, k) / C(n, k)``, computed as ``1 - prod_{i = n - c + 1}^{n} (1 - k / i)`` (stable for ``n`` in the
    hundreds), and 1 when ``n - c < k``.
    """
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - float(np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def powers_of_two_up_to(n: int) -> list[int]:
    """1, 2, 4, ... up to ``n``, and ``n`` itself when it is not a power of two."""
    ks = [2**i for i in range(int(math.log2(n)) + 1)] if n >= 1 else []
    return ks + ([n] if ks and ks[-1] != n else [])


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Distinct n-grams over all n-grams of the whitespace tokens of ``texts`` (1.0 for no n-grams)."""
    grams = [tuple(words[i : i + n]) for words in (t.split() for t in texts) for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 1.0


def answer_entropy(answers: Sequence[str]) -> float:
    """Shannon entropy (nats) of the distribution of final answers; an empty answer counts as one more answer."""
    counts = np.array(list(Counter(answers).values()), dtype=float)
    p = counts / counts.sum()
    return float(-(p * np.log(p)).sum())


def _bootstrap(per_problem: np.ndarray, statistic: Callable[[np.ndarray], float], draws: int, seed: int):
    rng = np.random.default_rng(seed)
    index = rng.integers(0, len(per_problem), size=(draws, len(per_problem)))
    values = np.array([statistic(per_problem[i]) for i in index])
    return float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))


def summarize(
    records: Iterable[dict[str, Any]], ks: Sequence[int] | None = None, bootstrap: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """Avg@n, Pass@k and diversity over problems, each with a 95% bootstrap interval over problems.

    Every problem must have the same number of samples ``n``; ``ks`` defaults to 1, 2, 4, ... up to ``n``.
    """
    by_problem: dict[Any, list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        by_problem[record["problem_id"]].append(record)
    if not by_problem:
        raise ValueError("no samples to summarise")
    sizes = {len(samples) for samples in by_problem.values()}
    if len(sizes) != 1:
        raise ValueError(f"every problem needs the same number of samples, found {sorted(sizes)}: finish the run")
    n = sizes.pop()
    ks = list(ks) if ks is not None else powers_of_two_up_to(n)
    correct = np.array([sum(bool(s["correct"]) for s in samples) for samples in by_problem.values()])

    def with_interval(values: np.ndarray) -> dict[str, float]:
        low, high = _bootstrap(values, np.mean, bootstrap, seed)
        return {"mean": float(values.mean()), "ci95": [low, high]}

    answers = [[s.get("answer") or "" for s in samples] for samples in by_problem.values()]
    completions = [[s.get("completion") or "" for s in samples] for samples in by_problem.values()]
    return {
        "num_problems": len(by_problem),
        "num_samples": n,
        f"avg@{n}": with_interval(correct / n),
        "pass@k": {str(k): with_interval(np.array([pass_at_k(n, int(c), k) for c in correct])) for k in ks},
        "diversity": {
            "distinct_answers": with_interval(np.array([len(set(a)) for a in answers], dtype=float)),
            "answer_entropy": with_interval(np.array([answer_entropy(a) for a in answers])),
            "distinct_1": with_interval(np.array([distinct_n(c, 1) for c in completions])),
            "distinct_2": with_interval(np.array([distinct_n(c, 2) for c in completions])),
        },
    }
