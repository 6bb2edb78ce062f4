"""Summarise MLflow runs of one experiment as a markdown table (until `lsp-report` exists).

For each run: the config keys asked for, held-out greedy accuracy before/after training, and the
mean over training steps of chosen metrics (e.g. the fraction of valid queries, the Solver's
reward, the judge's time per step).

    .venv/bin/python experiments/summarize.py toy-lsp --keys game.name game.challenger_objective
"""
from __future__ import annotations

import argparse
import os
import statistics

import mlflow

from lsp_exp.run.config import PROJECT_ROOT

MEANS = ["train/query_valid_frac", "train/solver/reward", "train/solver/true_accuracy", "train/judge/score",
         "train/judge/parse_fail_frac", "train/kl/challenger", "perf/step_s", "perf/judge_s"]
STARTS = ["eval/judge/auc", "eval/judge/f1", "eval/reward/auc", "eval/reward/f1"]


def first_below(values: list[float], threshold: float, window: int = 50) -> str:
    """The first step at which the mean of the last `window` values is below `threshold` ('never')."""
    for end in range(window, len(values) + 1):
        if statistics.mean(values[end - window:end]) < threshold:
            return str(end - 1)
    return "never"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("experiment")
    parser.add_argument("--keys", nargs="+", default=["game.name", "seed"])
    parser.add_argument("--means", nargs="+", default=MEANS)
    parser.add_argument("--below", type=float, default=0.5,
                        help="report the first step where the 50-step mean of train/query_valid_frac falls below this")
    parser.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI",
                                                                 f"sqlite:///{PROJECT_ROOT}/outputs/mlflow.db"))
    args = parser.parse_args()
    client = mlflow.MlflowClient(args.tracking_uri)
    experiment = client.get_experiment_by_name(args.experiment)
    if experiment is None:
        raise SystemExit(f"error: no MLflow experiment {args.experiment!r} at {args.tracking_uri}")
    runs = client.search_runs([experiment.experiment_id], filter_string="attributes.status = 'FINISHED'",
                              order_by=["attributes.start_time ASC"])
    header = [*args.keys, "steps", "greedy before", "greedy after", "flawed after", *[f"mean {m}" for m in args.means],
              f"valid < {args.below} from step", *STARTS]
    print("| " + " | ".join(header) + " |\n" + "|---" * len(header) + "|")
    for run in runs:
        history = {m: client.get_metric_history(run.info.run_id, m)
                   for m in ["eval/accuracy", "train/query_valid_frac", *args.means]}
        acc = sorted(history["eval/accuracy"], key=lambda m: m.step)
        if not acc:
            continue
        flawed = run.data.metrics.get("eval/accuracy/flawed", float("nan"))
        cells = [run.data.params.get(k, "-") for k in args.keys]
        cells += [str(acc[-1].step), f"{acc[0].value:.3f}", f"{acc[-1].value:.3f}", f"{flawed:.3f}"]
        for m in args.means:
            values = [x.value for x in history[m]]
            cells.append(f"{statistics.mean(values):.3f}" if values else "-")
        cells.append(first_below([x.value for x in sorted(history["train/query_valid_frac"], key=lambda x: x.step)],
                                 args.below))
        for m in STARTS:
            cells.append(f"{run.data.metrics[m]:.3f}" if m in run.data.metrics else "-")
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
