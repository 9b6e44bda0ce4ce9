"""Paired differences between methods over the seeds they share, with t-based 95 % confidence intervals.

Two students of the same seed start from the same weights and see the same batches, so their difference is
measured with less noise than either accuracy alone: for methods A and B and shared seeds s_1..s_n,
d_i = A(s_i) - B(s_i), mean d, and the interval mean ± t(0.975, n-1) * sd(d) / sqrt(n) (Student's t,
two-sided 95 %). With one shared seed there is no interval. An interval that includes zero is a tie.
"""
from __future__ import annotations

import math

# two-sided 95 % quantiles t(0.975, df) of Student's t, df = 1..30, then the normal limit
T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042]


def t975(df: int) -> float:
    return T975[df - 1] if df <= len(T975) else 1.960 + 2.4 / df  # within 0.002 of the exact quantile past 30


def paired_difference(a: dict, b: dict) -> dict:
    """Mean of a[s] - b[s] over the keys (seeds) both have, its 95 % interval, and whether that excludes zero."""
    seeds = sorted(set(a) & set(b))
    return mean_interval([a[s] - b[s] for s in seeds])


def mean_interval(values: list) -> dict:
    """Mean of `values` with its t-based 95 % interval (none for fewer than 2), and whether that excludes zero."""
    n = len(values)
    if n == 0:
        return {"n": 0, "mean": math.nan, "low": math.nan, "high": math.nan, "excludes_zero": None}
    mean = sum(values) / n
    if n == 1:
        return {"n": 1, "mean": mean, "low": math.nan, "high": math.nan, "excludes_zero": None}
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = t975(n - 1) * sd / math.sqrt(n)
    return {"n": n, "mean": mean, "low": mean - half, "high": mean + half,
            "excludes_zero": bool(mean - half > 0 or mean + half < 0)}


def describe_difference(d: dict) -> str:
    """'+1.23 [+0.40, +2.06]', or '+1.23 (1 seed)' where no interval exists, or '-' without shared seeds."""
    if d["n"] == 0:
        return "-"
    if d["n"] == 1:
        return f"{d['mean']:+.2f} (1 seed)"
    return f"{d['mean']:+.2f} [{d['low']:+.2f}, {d['high']:+.2f}]"


def verdict(d: dict, better: str = "higher", worse: str = "lower") -> str:
    """The plain-words column: whether the interval excludes zero, and which way."""
    if d["excludes_zero"] is None:
        return "no interval (fewer than 2 shared seeds)"
    if not d["excludes_zero"]:
        return "tie (interval includes 0)"
    return better if d["mean"] > 0 else worse
