"""Confidence intervals over seeds (docs/method.md §17.5) against hand-computed values."""
import math

import pytest

from lsp_exp.eval.statistics import difference_ci, mean_ci


def test_mean_ci_is_the_t_interval():
    # [1, 2, 3]: mean 2, s = 1, t_{.975, 2} = 4.302653 (a t table), half-width 4.302653 / sqrt(3) = 2.484138
    ci = mean_ci([1.0, 2.0, 3.0])
    assert (ci.mean, ci.n, ci.sd) == (2.0, 3, 1.0)
    assert ci.half_width == pytest.approx(2.484138, abs=1e-6)
    assert (ci.lo, ci.hi) == pytest.approx((2 - 2.484138, 2 + 2.484138), abs=1e-6)
    # 90%: t_{.95, 2} = 2.919986, half-width 2.919986 / sqrt(3) = 1.685855
    assert mean_ci([1.0, 2.0, 3.0], level=0.90).half_width == pytest.approx(1.685855, abs=1e-6)


def test_one_value_has_no_interval_and_nan_is_dropped():
    one = mean_ci([0.7])
    assert (one.mean, one.n) == (0.7, 1) and math.isnan(one.half_width) and math.isnan(one.sd)
    dropped = mean_ci([1.0, float("nan"), 2.0, 3.0])
    assert dropped.n == 3 and dropped.half_width == pytest.approx(2.484138, abs=1e-6)
    none = mean_ci([float("nan")])
    assert none.n == 0 and math.isnan(none.mean)


def test_difference_ci_is_welch():
    # a = [1, 2, 3]: mean 2, s^2 = 1; b = [2, 4, 6, 8]: mean 5, s^2 = 20/3.
    # s_a^2/n_a = 1/3, s_b^2/n_b = 5/3, se = sqrt(2);
    # df = 2^2 / ((1/3)^2 / 2 + (5/3)^2 / 3) = 4 / (53/54) = 216/53 = 4.075472;
    # t_{.975, 216/53} = 2.756285, half-width 2.756285 * sqrt(2) = 3.897975.
    d = difference_ci([1.0, 2.0, 3.0], [2.0, 4.0, 6.0, 8.0])
    assert d.difference == -3.0 and (d.n_a, d.n_b) == (3, 4)
    assert d.se == pytest.approx(math.sqrt(2))
    assert d.df == pytest.approx(216 / 53)
    assert d.half_width == pytest.approx(3.897975, abs=1e-6)
    assert not d.excludes_zero                       # [-6.90, 0.90]
    assert difference_ci([11.0, 12.0, 13.0], [2.0, 4.0, 6.0, 8.0]).excludes_zero   # 7 ± 3.90


def test_a_baseline_of_one_run_is_a_constant():
    # b = [0.5], evaluated once: the interval is a's own, 1.5 ± 2.484138 with df 2
    d = difference_ci([1.0, 2.0, 3.0], [0.5])
    assert d.difference == 1.5 and d.df == 2
    assert d.half_width == pytest.approx(2.484138, abs=1e-6)
    assert math.isnan(difference_ci([1.0], [0.5]).half_width)          # two single runs: no interval
    assert math.isnan(difference_ci([float("nan")], [1.0, 2.0]).difference)


def test_level_outside_zero_one_is_refused():
    with pytest.raises(ValueError, match=r"^ci_level: must be in \(0, 1\)"):
        mean_ci([1.0, 2.0], level=95)
