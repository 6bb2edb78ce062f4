"""How many steps before the Challenger's collapse each per-step indicator moves (README.md here).

Reads the metric histories of the runs tagged `lab=<tag>` and prints, per run, the collapse onset and
each indicator's move step and lead (onset - move; negative: after the onset). The rules, on MLflow's
steps (0-based; "the baseline" is the first 50 steps, 0-49):

- rolling mean at step t: the mean of the finite values of steps t-9 .. t (defined from t = 9);
- onset: the first step whose rolling mean of train/query_valid_frac is below 0.5; the early onset:
  the first below 0.9 x the baseline's mean of train/query_valid_frac;
- move: the first step t >= 50 whose rolling mean leaves the band baseline mean +/- 3 sd (the sample
  sd of the baseline's per-step values); `up` or `down` says which side;
- a tighter move (a second column): the same with the sd of the baseline's rolling means (steps 9-49),
  about 1/sqrt(10) of the per-step sd for uncorrelated noise.

    .venv/bin/python experiments/collapse_indicators/lead_time.py [--tag collapse_indicators] [--tracking-uri ...]
"""
from __future__ import annotations

import argparse
import math
import os
import statistics

import mlflow

from lsp_exp.run.config import PROJECT_ROOT

VALID = "train/query_valid_frac"
INDICATORS = [f"train/collapse/{k}" for k in ("distinct_1", "distinct_2", "self_bleu", "seen_before_frac",
                                              "all_fail_frac", "mixed_frac", "all_pass_frac")]
# Figures the runs logged before these indicators, beside them for comparison.
EXISTING = ["train/kl/challenger", "train/entropy/challenger", "train/query_len", "train/zero_std_frac",
            "train/challenger/reward"]
WINDOW, BASELINE, K_SD = 10, 50, 3.0


def rolling_mean(values: list[float], window: int = WINDOW) -> list[float]:
    """The mean of the finite values among steps t-window+1 .. t; NaN before the window is full or
    when none of its values is finite."""
    out = []
    for t in range(len(values)):
        finite = [v for v in values[max(0, t - window + 1):t + 1] if math.isfinite(v)]
        out.append(statistics.fmean(finite) if t >= window - 1 and finite else math.nan)
    return out


def baseline_band(values: list[float], baseline: int = BASELINE, rolling: bool = False,
                  window: int = WINDOW) -> tuple[float, float]:
    """(mean, sd) of the finite per-step values of the first `baseline` steps (NaN when fewer than 2);
    `rolling`: the sd of their rolling means instead (steps window-1 .. baseline-1)."""
    finite = [v for v in values[:baseline] if math.isfinite(v)]
    spread = [m for m in rolling_mean(values[:baseline], window) if math.isfinite(m)] if rolling else finite
    if len(finite) < 2 or len(spread) < 2:
        return math.nan, math.nan
    return statistics.fmean(finite), statistics.stdev(spread)


def first_below(values: list[float], threshold: float, window: int = WINDOW) -> int | None:
    """The first step whose rolling mean is below `threshold` (None: never)."""
    return next((t for t, m in enumerate(rolling_mean(values, window)) if m < threshold), None)


def onsets(valid: list[float], window: int = WINDOW, baseline: int = BASELINE) -> tuple[int | None, int | None]:
    """(onset: rolling mean of the valid fraction below 0.5, early onset: below 0.9 x its baseline mean)."""
    mean, _ = baseline_band(valid, baseline)
    return first_below(valid, 0.5, window), first_below(valid, 0.9 * mean, window)


def move(values: list[float], window: int = WINDOW, baseline: int = BASELINE, k: float = K_SD,
         rolling: bool = False) -> tuple[int | None, str]:
    """The first step >= `baseline` whose rolling mean leaves mean +/- k sd of the baseline's values
    (`rolling`: k sd of its rolling means), and the side ('up'/'down'); (None, '') when it never does
    or the baseline has no band."""
    mean, sd = baseline_band(values, baseline, rolling, window)
    if not math.isfinite(sd):
        return None, ""
    for t, m in enumerate(rolling_mean(values, window)):
        if t >= baseline and math.isfinite(m) and abs(m - mean) > k * sd:
            return t, "up" if m > mean else "down"
    return None, ""


def table(histories: dict[str, list[float]], keys: list[str]) -> list[str]:
    """The markdown rows of one run: each key's baseline, move step, side and lead on the onset."""
    onset, early = onsets(histories[VALID])
    lines = [f"onset (rolling {WINDOW}-step mean of {VALID} < 0.5): {_step(onset)}; early onset (< 0.9 x the "
             f"mean of steps 0-{BASELINE - 1}): {_step(early)}", "",
             "| indicator | baseline mean ± sd | move | lead on onset | lead on early onset "
             "| sd of rolling means | tighter move | lead on onset | lead on early onset |",
             "|---|---|---|---|---|---|---|---|---|"]
    for key in keys:
        if key not in histories:
            lines.append(f"| `{key}` | not logged |" + " |" * 7)
            continue
        mean, sd = baseline_band(histories[key])
        cells = [f"`{key}`", f"{mean:.3f} ± {sd:.3f}"]
        for rolling in (False, True):
            step, side = move(histories[key], rolling=rolling)
            if rolling:
                cells.append(f"{baseline_band(histories[key], rolling=True)[1]:.3f}")
            cells += [f"{_step(step)} {side}".strip(), _lead(onset, step), _lead(early, step)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _step(step: int | None) -> str:
    return "never" if step is None else str(step)


def _lead(onset: int | None, step: int | None) -> str:
    if step is None:
        return "-"
    return "no onset" if onset is None else f"{onset - step:+d}"


def histories_of(client, run_id: str, keys: list[str]) -> dict[str, list[float]]:
    """Each key's per-step values, indexed by step (NaN where a step has none); keys never logged left out."""
    out = {}
    for key in keys:
        points = client.get_metric_history(run_id, key)
        if not points:
            continue
        values = [math.nan] * (max(p.step for p in points) + 1)
        for p in points:
            values[p.step] = p.value
        out[key] = values
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tag", default="collapse_indicators", help="the runs' `lab` tag (+tags.lab=...)")
    parser.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI",
                                                                 f"sqlite:///{PROJECT_ROOT}/outputs/mlflow.db"))
    args = parser.parse_args()
    client = mlflow.MlflowClient(args.tracking_uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments, filter_string=f"tags.lab = '{args.tag}' and attributes.status = 'FINISHED'",
                              order_by=["attributes.start_time ASC"])
    if not runs:
        raise SystemExit(f"error: no finished run tagged lab={args.tag!r} at {args.tracking_uri}")
    for run in runs:
        histories = histories_of(client, run.info.run_id, [VALID, *INDICATORS, *EXISTING])
        name = ", ".join(f"{k}={run.data.params.get(k, '-')}" for k in ("game.name", "kl.placement", "seed"))
        print(f"\n## {name} (run {run.info.run_id}, {len(histories[VALID])} steps)\n")
        print("\n".join(table(histories, INDICATORS + EXISTING)))


if __name__ == "__main__":
    main()
