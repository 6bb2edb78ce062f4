"""`lsp-report`: MLflow runs -> a table (mean +- std over seeds, grouped by config keys) and curves.

    lsp-report experiment_names=[toy-paper-table] group_by=[tags.arm]
    lsp-report parent_run=<sweep parent run id> group_by=[algorithm.name] metrics=[eval/accuracy]
    lsp-report "filter=\\"tags.game = 'lsp'\\"" group_by=[game.challenger_objective,kl.placement]

Writes `<output_dir>/table.md` (one table per unit: the `percent` metrics in %, the others as
logged), `table.csv` (one row per group), `runs.csv` (one row per run) and `<metric>.png` (one line
per group, the mean over its runs with a band of +- one std) for each curve; a group has the same
colour in every plot. A group key is a tag (`tags.arm`) or a config key (`game.name`, i.e. the
run's params); a key no run has is an error. Only FINISHED runs are read, never a sweep's parent
run. A metric's value for a run is its last logged value, or for per-step metrics (`train/`,
`perf/`) the mean of its last `tail` values (10 by default: one noisy step does not decide).
"""
from __future__ import annotations

import csv
import difflib
import math
import os
import sys
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import hydra
import mlflow
from omegaconf import DictConfig
from rich.console import Console

from lsp_exp.cli.overrides import check_overrides
from lsp_exp.errors import LspError
from lsp_exp.run import config  # registers the schemas


class ReportError(LspError, ValueError):
    """Nothing to report (no runs, unknown experiment); the message says what was looked for."""


def find_runs(client, cfg: DictConfig) -> list:
    """Finished runs of the named experiments (all when none is named), under a sweep parent, matching a filter."""
    if cfg.experiment_names:
        experiments = []
        for name in cfg.experiment_names:
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise ReportError(f"experiment_names: no MLflow experiment named {name!r} in {cfg.tracking_uri}")
            experiments.append(exp.experiment_id)
    else:
        experiments = [e.experiment_id for e in client.search_experiments()]
    clauses = ["attributes.status = 'FINISHED'"]
    if cfg.parent_run:
        clauses.append(f"tags.mlflow.parentRunId = '{cfg.parent_run}'")
    if cfg.filter:
        clauses.append(cfg.filter)  # MLflow filters are flat: clauses joined by `and`
    try:
        runs = client.search_runs(experiments, filter_string=" and ".join(clauses), max_results=5000,
                                  order_by=["attributes.start_time ASC"])
    except Exception as err:  # noqa: BLE001 (MLflow's own exception types: a malformed filter, an unreachable store)
        raise ReportError(f"MLflow could not search runs ({' and '.join(clauses)}): {err}") from None
    runs = [r for r in runs if r.data.tags.get("kind") != "sweep"]  # a sweep's parent holds no result
    if not runs:
        raise ReportError(f"no finished run matches {' and '.join(clauses)} in {cfg.tracking_uri}")
    check_group_keys(runs, cfg.group_by)
    return runs


def check_group_keys(runs, keys) -> None:
    """A `group_by` key that no run has would put every run into one group '?': an error instead,
    naming the closest keys the runs do have."""
    for key in keys:
        if key.startswith("tags."):
            known = {f"tags.{k}" for r in runs for k in r.data.tags if not k.startswith("mlflow.")}
        else:
            known = {k for r in runs for k in r.data.params}
            key = key.removeprefix("params.")
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(close)}?" if close else (
                f"; tags the runs have: {', '.join(sorted(k for k in known if k.startswith('tags.'))[:12])}"
                if key.startswith("tags.") else "; a config key such as game.name, or tags.<tag>")
            raise ReportError(f"group_by: no run has {key!r}{hint}")


def group_key(run, keys) -> str:
    """The run's group label: the values of the group keys, joined by ' / ' ('?' when absent)."""
    values = []
    for key in keys:
        if key.startswith("tags."):
            values.append(run.data.tags.get(key.removeprefix("tags."), "?"))
        else:
            values.append(run.data.params.get(key.removeprefix("params."), "?"))
    return " / ".join(values) if values else "all"


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1; 0 for a single value)."""
    n = len(values)
    mean = sum(values) / n
    return mean, (math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0)


def run_value(client, run, metric: str, tail: int, prefixes=("train/", "perf/"), cumulative=()) -> float | None:
    """A run's value of `metric`: its last logged value, or for per-step metrics (`prefixes`, but not
    running totals, `cumulative`) the mean of its last `tail` values."""
    if metric not in run.data.metrics:
        return None
    if tail <= 1 or not metric.startswith(tuple(prefixes)) or metric.startswith(tuple(cumulative)):
        return run.data.metrics[metric]
    history = sorted(client.get_metric_history(run.info.run_id, metric), key=lambda m: (m.step, m.timestamp))
    last = [m.value for m in history[-tail:]]
    return sum(last) / len(last)


def summarise(client, runs, cfg: DictConfig) -> dict[str, dict[str, list[float]]]:
    """group -> metric -> the value (`run_value`) of each run of the group that logged it."""
    groups: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        g = group_key(run, cfg.group_by)
        groups[g]["runs"].append(1.0)
        for metric in cfg.metrics:
            value = run_value(client, run, metric, cfg.tail, cfg.tail_prefixes, cfg.cumulative)
            if value is not None:
                groups[g][metric].append(value)
    order = list(cfg.order) + sorted(g for g in groups if g not in cfg.order)
    return {g: groups[g] for g in order if g in groups}


def fmt(values: list[float], percent: bool) -> str:
    if not values:
        return "-"
    mean, std = mean_std(values)
    scale = 100.0 if percent else 1.0
    digits = 1 if percent else 3
    return f"{mean * scale:.{digits}f} ± {std * scale:.{digits}f}" if len(values) > 1 else f"{mean * scale:.{digits}f}"


def write_table(summary, cfg: DictConfig, out: Path) -> str:
    """`table.md`: one Markdown table per unit (the `percent` metrics in %, then the others as
    logged), each group a row; `table.csv`: every metric's mean, std and count per group."""
    percent = [m for m in cfg.metrics if m in set(cfg.percent)]
    plain = [m for m in cfg.metrics if m not in set(cfg.percent)]
    tables = []
    for metrics, unit in ((percent, "in %"), (plain, "as logged")):
        if not metrics:
            continue
        lines = [f"| group | runs | {' | '.join(metrics)} |", "|" + "---|" * (len(metrics) + 2)]
        for g, values in summary.items():
            cells = [fmt(values.get(m, []), unit == "in %") for m in metrics]
            lines.append(f"| {g} | {len(values['runs'])} | " + " | ".join(cells) + " |")
        tables.append((unit, "\n".join(lines)))
    with open(out / "table.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["group", "runs"] + [f"{m}{s}" for m in cfg.metrics for s in ("_mean", "_std", "_n")])
        for g, values in summary.items():
            row = [g, len(values["runs"])]
            for m in cfg.metrics:
                vals = values.get(m, [])
                row += list(mean_std(vals)) + [len(vals)] if vals else ["", "", 0]
            writer.writerow(row)
    value = ("the last logged value of each metric" if cfg.tail <= 1 else
             f"the mean of the last {cfg.tail} logged values of {', '.join(cfg.tail_prefixes)}* metrics, else the last")
    if len(tables) == 1:
        unit, body = tables[0]
        table = f"{body}\n\nMean ± sample std over runs ({value}); values {unit}.\n"
    else:
        table = ("\n\n".join(f"Values {unit}:\n\n{body}" for unit, body in tables)
                 + f"\n\nMean ± sample std over runs ({value}).\n")
    (out / "table.md").write_text(table)
    return table


def write_runs(runs, cfg: DictConfig, out: Path) -> None:
    with open(out / "runs.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["run_id", "group", "seed", *cfg.metrics])
        for run in runs:
            writer.writerow([run.info.run_id, group_key(run, cfg.group_by), run.data.params.get("seed", "")]
                            + [run.data.metrics.get(m, "") for m in cfg.metrics])


def plot_curves(client, runs, cfg: DictConfig, out: Path) -> list[Path]:
    """One PNG per curve metric: per group, the mean over its runs at each step, +- one std."""
    import matplotlib  # noqa: PLC0415 (the Agg backend is chosen when plotting, not when this module is imported)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415 (after the backend is chosen)

    groups = list(dict.fromkeys(group_key(run, cfg.group_by) for run in runs))
    order = [g for g in cfg.order if g in groups] + sorted(g for g in groups if g not in cfg.order)
    colours = {g: f"C{i % 10}" for i, g in enumerate(order)}  # one colour per group in every plot
    paths = []
    for metric in cfg.curves:
        by_group: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
        for run in runs:
            for m in client.get_metric_history(run.info.run_id, metric):
                by_group[group_key(run, cfg.group_by)][m.step].append(m.value)
        if not by_group:
            continue
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for g in (g for g in order if g in by_group):
            steps = sorted(by_group[g])
            stats = smooth([mean_std(by_group[g][s]) for s in steps], cfg.smooth)
            mean = [m for m, _ in stats]
            ax.plot(steps, mean, label=g, color=colours[g], marker="o" if len(steps) < 20 else None, markersize=3)
            ax.fill_between(steps, [m - s for m, s in stats], [m + s for m, s in stats], color=colours[g], alpha=0.2)
        ax.set_xlabel("step")
        ax.set_ylabel(metric)
        window = f", {cfg.smooth}-point moving average" if cfg.smooth > 1 else ""
        ax.set_title(f"{metric} (mean ± std over runs{window})")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        path = out / (metric.replace("/", "_") + ".png")
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def smooth(stats: list[tuple[float, float]], window: int) -> list[tuple[float, float]]:
    """A trailing moving average of (mean, std) pairs over `window` points (1: unchanged)."""
    if window <= 1:
        return stats
    out = []
    for i in range(len(stats)):
        chunk = stats[max(0, i - window + 1): i + 1]
        out.append((sum(m for m, _ in chunk) / len(chunk), sum(s for _, s in chunk) / len(chunk)))
    return out


def report(cfg: DictConfig) -> str:
    client = mlflow.MlflowClient(cfg.tracking_uri)
    runs = find_runs(client, cfg)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = write_table(summarise(client, runs, cfg), cfg, out)
    write_runs(runs, cfg, out)
    plots = plot_curves(client, runs, cfg, out)
    console = Console()
    console.print(table)
    console.print(f"{len(runs)} runs -> {out}/table.md, table.csv, runs.csv" + "".join(f", {p.name}" for p in plots))
    return table


def main() -> None:
    """`lsp-report`: an override that does not parse fails with one line naming it; then Hydra."""
    check_overrides(sys.argv[1:])
    hydra_main()


@hydra.main(version_base="1.3", config_path=str(config.PROJECT_ROOT / "conf"), config_name="report")
def hydra_main(cfg: DictConfig) -> None:
    try:
        report(cfg)
    except LspError as err:  # a failure whose message says it all: one line, exit code 2
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
