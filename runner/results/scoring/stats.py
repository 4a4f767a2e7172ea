"""The statistics behind `results compare`, the sweep table and `sampling.n > 1` metrics.

Pure functions on numbers: no runner imports. numpy (the bootstrap) is imported lazily, so
`results ls` and `--help` never pay for it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction
from typing import Any

Z95 = 1.959963984540054  # the standard normal's 97.5 % quantile
RESAMPLES = 10_000  # paired bootstrap resamples (stated in `compare --help`)
SEED = 0  # the bootstrap's fixed seed: the same data give the same interval


def wilson(p: float, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion `p` observed on `n` items (95 % by default).
    For a mean of scores in 0..1 it is conservative: their variance is at most p(1 - p)."""
    if n <= 0:
        return (0.0, 1.0)
    d = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / d
    half = z / d * math.sqrt(max(p * (1 - p), 0.0) / n + z * z / (4 * n * n))
    return (max(0.0, centre - half), min(1.0, centre + half))


def half_width(p: float, n: int) -> float:
    lo, hi = wilson(p, n)
    return (hi - lo) / 2


def mcnemar_p(b: int, c: int) -> float:
    """Exact two-sided McNemar p-value: the binomial test of b against c discordant pairs at
    1/2 (twice the smaller tail, capped at 1). Exact integers, so no underflow at any n."""
    n = b + c
    if n == 0:
        return 1.0
    term = tail = 1  # C(n, 0); each next binomial coefficient from the last (exact)
    for i in range(min(b, c)):
        term = term * (n - i) // (i + 1)
        tail += term
    return float(min(Fraction(1), Fraction(2 * tail, 2**n)))


def paired_bootstrap(diffs: Sequence[float], resamples: int = RESAMPLES,
                     seed: int = SEED) -> tuple[float, float]:
    """The 95 % percentile interval of the mean of paired differences (other - base), from
    `resamples` resamples of the items with replacement (numpy's PCG64 at `seed`)."""
    import numpy as np

    d = np.asarray(diffs, dtype=float)
    n = len(d)
    if n == 0:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    values, counts = np.unique(d, return_counts=True)
    if len(values) <= 64:
        # Few distinct differences (always, for right/wrong): how often each value is drawn
        # is multinomial, the same distribution as resampling items, without n draws each.
        means = rng.multinomial(n, counts / n, size=resamples) @ values / n
    else:
        step = max(1, 4_000_000 // n)  # bounded memory for big continuous runs
        means = np.concatenate([d[rng.integers(0, n, (min(step, resamples - i), n))].mean(1)
                                for i in range(0, resamples, step)])
    lo, hi = np.percentile(means, [2.5, 97.5])
    return (float(lo), float(hi))


def paired_ratio_bootstrap(base: Sequence[float], other: Sequence[float],
                           resamples: int = RESAMPLES, seed: int = SEED
                           ) -> tuple[float, float] | None:
    """The 95 % percentile interval of mean(other) / mean(base) over paired items, the items
    resampled with replacement as `paired_bootstrap` does (numpy's PCG64 at `seed`); resamples
    whose base mean is 0 are left out; None when every base score is 0."""
    import numpy as np

    a, b = np.asarray(base, dtype=float), np.asarray(other, dtype=float)
    n = len(a)
    if n == 0 or not a.any():
        return None
    rng = np.random.default_rng(seed)
    step = max(1, 4_000_000 // n)
    ratios = []
    for i in range(0, resamples, step):
        idx = rng.integers(0, n, (min(step, resamples - i), n))
        sa = a[idx].sum(1)
        ratios.append(np.where(sa > 0, b[idx].sum(1) / np.where(sa > 0, sa, 1), np.nan))
    r = np.concatenate(ratios)
    if np.isnan(r).any():  # a resample without a right base item: the ratio is undefined
        r = r[~np.isnan(r)]
    lo, hi = np.percentile(r, [2.5, 97.5])
    return (float(lo), float(hi))


def pass_at_k(n: int, c: int, k: int) -> float:
    """The unbiased pass@k of one item with c correct samples out of n: 1 - C(n-c, k)/C(n, k)
    (the chance that k samples drawn without replacement include a correct one)."""
    if n <= 0 or k > n:
        return 0.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def majority(answers: Sequence[str]) -> tuple[int, float]:
    """The index of the majority answer's first sample (ties: the answer seen first) and the
    agreement: the share of samples equal to it."""
    if not answers:
        return (-1, 0.0)
    tally: dict[str, int] = {}
    for a in answers:
        tally[a] = tally.get(a, 0) + 1
    top = max(tally.values())
    first = next(i for i, a in enumerate(answers) if tally[a] == top)
    return (first, top / len(answers))


def headline(m: dict[str, Any] | None) -> str:
    """A run's headline metric (metrics.json): its accuracy ± the half-width of its 95 %
    Wilson interval, and over how many items."""
    acc = (m or {}).get("accuracy")
    if acc is None or not m:
        return ""
    if not m.get("scored"):
        return f"accuracy={acc:.3g}"
    return f"accuracy={acc:.3g}±{half_width(acc, m['scored']):.3f} of {m['scored']}"
