"""The onset and move rules of lead_time.py on synthetic series with known answers."""
import math

import pytest

from experiments.collapse_indicators.lead_time import baseline_band, move, onsets, rolling_mean, table


def test_the_rolling_mean_waits_for_a_full_window_and_skips_nan():
    means = rolling_mean([1.0, 2.0, 3.0, math.nan, 5.0], window=3)
    assert all(math.isnan(m) for m in means[:2])
    assert means[2:] == pytest.approx([2.0, 2.5, 4.0])   # (1+2+3)/3, (2+3)/2, (3+5)/2


def test_the_onsets_of_a_valid_fraction_that_falls():
    valid = [1.0] * 100 + [0.0] * 100   # the rolling mean: 0.9 at step 100 (not below 0.9 x 1), 0.8 at 101, 0.4 at 105
    assert onsets(valid) == (105, 101)
    assert onsets([1.0, 0.9] * 100) == (None, None)   # mean 0.95 throughout


def test_a_move_leaves_the_three_sd_band_of_the_baseline():
    noise = [0.5 + (0.1 if t % 2 else -0.1) for t in range(50)]   # mean 0.5, sd ~0.101: band ~0.2 to ~0.8
    mean, sd = baseline_band(noise)
    assert mean == pytest.approx(0.5) and sd == pytest.approx(0.1 * math.sqrt(50 / 49))
    rising = noise + [0.5 + 0.01 * k for k in range(1, 101)]   # the step value 0.5 + 0.01 k at step 49 + k
    step, side = move(rising)
    means = rolling_mean(rising)
    assert side == "up" and means[step] > mean + 3 * sd >= means[step - 1]
    assert step == 84   # from step 59 the rolling mean is 0.5 + 0.01 (t - 53.5): above 0.5 + 3 x 0.101 from t = 84


def test_the_tighter_band_uses_the_sd_of_the_rolling_means():
    noise = [0.5 + (0.1 if t % 2 else -0.1) for t in range(50)]   # every rolling mean of 10 is exactly 0.5
    assert baseline_band(noise, rolling=True) == pytest.approx((0.5, 0.0), abs=1e-12)
    shifted = noise + [0.55] * 50           # inside the per-step band; out of the (zero-width) rolling one
    assert move(shifted) == (None, "") and move(shifted, rolling=True) == (50, "up")


def test_no_move_inside_the_baseline_nor_without_a_band():
    spike = [0.0] * 20 + [10.0] * 30 + [0.0] * 50   # leaves the band inside the baseline only: not a move
    assert move(spike) == (None, "")
    assert move([0.0] * 50 + [1.0] * 20) == (50, "up")    # sd 0: any change moves (0.1 at step 50)
    assert move([math.nan] * 80) == (None, "")


def test_the_table_gives_the_lead_on_the_onset():
    valid = [1.0] * 120 + [0.0] * 80                       # onset 125, early onset 121
    flat_then_up = [0.5 + (0.01 if t % 2 else -0.01) for t in range(100)] + [1.0] * 100   # moves at step 100
    rows = table({"train/query_valid_frac": valid, "x": flat_then_up}, ["x", "y"])
    assert rows[0].startswith("onset") and ": 125;" in rows[0] and rows[0].endswith(": 121")
    cells = rows[4].split(" | ")
    assert cells[2:5] == ["100 up", "+25", "+21"] and cells[6:] == ["100 up", "+25", "+21 |"]
    assert rows[5].startswith("| `y` | not logged |")
