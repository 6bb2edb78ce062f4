"""Confidence intervals over seeds, as pure functions: a mean's t-interval and Welch's interval for a
difference of means (docs/method.md §17.5). NaN values (a run without the metric) are dropped first."""
from __future__ import annotations

import math
from dataclasses import dataclass

from scipy import stats


@dataclass(frozen=True)
class MeanCI:
    """A mean with the half-width of its t-interval (NaN when n < 2), the count and the sample sd."""

    mean: float
    half_width: float
    n: int
    sd: float

    @property
    def lo(self) -> float:
        return self.mean - self.half_width

    @property
    def hi(self) -> float:
        return self.mean + self.half_width


@dataclass(frozen=True)
class DifferenceCI:
    """mean(a) - mean(b) with the half-width of its interval, its standard error and degrees of freedom."""

    difference: float
    half_width: float
    se: float
    df: float
    n_a: int
    n_b: int

    @property
    def lo(self) -> float:
        return self.difference - self.half_width

    @property
    def hi(self) -> float:
        return self.difference + self.half_width

    @property
    def excludes_zero(self) -> bool:
        """The interval lies wholly above or below 0 (False when there is no interval)."""
        return self.lo > 0 or self.hi < 0


def check_level(level: float, key: str = "ci_level") -> None:
    if not 0 < level < 1:
        raise ValueError(f"{key}: must be in (0, 1), e.g. 0.95; got {level}")


def finite(values) -> list[float]:
    """The values without NaN (a run that did not log the metric)."""
    return [float(v) for v in values if not math.isnan(float(v))]


def t_quantile(level: float, df: float) -> float:
    """t_{(1+level)/2, df}: the two-sided quantile of Student's t."""
    return float(stats.t.ppf((1 + level) / 2, df))


def mean_ci(values, level: float = 0.95) -> MeanCI:
    """mean ± t_{(1+level)/2, n-1} s / sqrt(n), s the sample sd (n - 1); n = 1: no interval (NaN)."""
    check_level(level)
    xs = finite(values)
    n = len(xs)
    if n == 0:
        return MeanCI(math.nan, math.nan, 0, math.nan)
    mean = sum(xs) / n
    if n == 1:
        return MeanCI(mean, math.nan, 1, math.nan)
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
    return MeanCI(mean, t_quantile(level, n - 1) * sd / math.sqrt(n), n, sd)  # docs/method.md §17.5


def difference_ci(a, b, level: float = 0.95) -> DifferenceCI:
    """Welch's t-interval for mean(a) - mean(b), Welch-Satterthwaite df. A sample of one run (e.g. the
    base model, evaluated once) is a constant: the interval is the other sample's own t-interval."""
    ca, cb = mean_ci(a, level), mean_ci(b, level)
    diff = ca.mean - cb.mean
    if ca.n == 0 or cb.n == 0 or (ca.n == 1 and cb.n == 1):
        return DifferenceCI(diff, math.nan, math.nan, math.nan, ca.n, cb.n)
    if ca.n == 1 or cb.n == 1:  # docs/method.md §17.5: one side a constant
        other = cb if ca.n == 1 else ca
        return DifferenceCI(diff, other.half_width, other.sd / math.sqrt(other.n), other.n - 1, ca.n, cb.n)
    va, vb = ca.sd ** 2 / ca.n, cb.sd ** 2 / cb.n
    se = math.sqrt(va + vb)  # docs/method.md §17.5: Welch's standard error
    if se == 0:
        return DifferenceCI(diff, 0.0, 0.0, ca.n + cb.n - 2, ca.n, cb.n)
    df = (va + vb) ** 2 / (va ** 2 / (ca.n - 1) + vb ** 2 / (cb.n - 1))  # docs/method.md §17.5: Welch-Satterthwaite
    return DifferenceCI(diff, t_quantile(level, df) * se, se, df, ca.n, cb.n)
