"""Where a label-free reward's pseudo-labels go wrong: per arm and per slice of the training queries, the
share of pseudo-labels the verifier agrees with, averaged over a run's steps, then mean [95% t-interval]
over seeds (lsp_exp/eval/statistics.py). Reads `train/pseudo_label/accuracy[/<slice>]` from MLflow.

    .venv/bin/python experiments/selfplay_lab/pseudo_labels.py --experiment selfplay-lab
"""
from __future__ import annotations

import argparse
import os
from collections import defaultdict

import mlflow

from lsp_exp.eval.statistics import mean_ci
from lsp_exp.run.config import PROJECT_ROOT

PREFIX = "train/pseudo_label/accuracy"
WINDOWS = {"all steps": (0, None), "first 100": (0, 100), "last 100": (-100, None)}


def run_means(client, run) -> dict[tuple[str, str], float]:
    """(slice, window) -> the mean of the run's per-step pseudo-label accuracy ('all' is the overall key)."""
    out = {}
    for key in run.data.metrics:
        if key != PREFIX and not key.startswith(PREFIX + "/"):
            continue
        history = sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)
        values = [m.value for m in history]
        for window, (start, end) in WINDOWS.items():
            part = values[start:end]
            if part:
                out[(key[len(PREFIX) + 1:] or "all", window)] = sum(part) / len(part)
    return out


def table(client, experiment: str) -> str:
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise SystemExit(f"no MLflow experiment named {experiment!r}")
    runs = client.search_runs([exp.experiment_id], "attributes.status = 'FINISHED'", max_results=5000)
    per_arm: dict[str, dict[tuple[str, str], list[float]]] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        for key, value in run_means(client, run).items():
            per_arm[run.data.tags.get("arm", run.info.run_id)][key].append(value)
    if not per_arm:
        raise SystemExit(f"no run of {experiment!r} logged {PREFIX} (a label-free arm)")
    lines = ["| arm | slice | " + " | ".join(WINDOWS) + " |", "|---|---|" + "---|" * len(WINDOWS)]
    for arm, cells in sorted(per_arm.items()):
        slices = sorted({s for s, _ in cells}, key=lambda s: (s != "all", s))
        for s in slices:
            row = []
            for window in WINDOWS:
                ci = mean_ci(cells.get((s, window), []))
                hw = f" ± {100 * ci.half_width:.1f}" if ci.n > 1 else ""
                row.append(f"{100 * ci.mean:.1f}{hw} (n={ci.n})" if ci.n else "-")
            lines.append(f"| {arm} | {s} | " + " | ".join(row) + " |")
    return "\n".join(lines) + ("\n\nPseudo-label accuracy (%): the share of a step's graded queries whose majority "
                               "answer the verifier calls right, averaged over the window's steps; mean ± the "
                               "half-width of a 95% t-interval over seeds.\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiment", default="selfplay-lab")
    parser.add_argument("--output", default=None)
    parser.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI",
                                                                 f"sqlite:///{PROJECT_ROOT}/outputs/mlflow.db"))
    args = parser.parse_args()
    text = table(mlflow.MlflowClient(args.tracking_uri), args.experiment)
    print(text)
    if args.output:
        os.makedirs(os.path.dirname(args.output) or ".", exist_ok=True)
        with open(args.output, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
