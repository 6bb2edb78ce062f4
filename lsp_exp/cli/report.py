"""`lsp-report`: MLflow runs -> a table (mean and 95% t-interval over seeds, grouped by config keys) and curves.

    lsp-report experiment_names=[toy-paper-table] group_by=[tags.arm] baseline=base
    lsp-report parent_run=<sweep parent run id> group_by=[algorithm.name] metrics=[eval/accuracy]
    lsp-report "filter=\\"tags.game = 'lsp'\\"" group_by=[game.challenger_objective,kl.placement]

Writes `<output_dir>/table.md` (one table per unit: the `percent` metrics in %, the others as
logged; a cell is the mean ± the half-width of its `ci_level` t-interval over the group's runs; with
`baseline`, each metric's difference from that group with Welch's interval, in bold where it excludes
0), `table.csv` (one row per group), `runs.csv` (one row per run) and `<metric>.png` (one line
per group, the mean over its runs with its t-interval as a band) for each curve; a group has the same
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
from lsp_exp.eval.statistics import DifferenceCI, MeanCI, check_level, difference_ci, mean_ci
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


def fmt(ci: MeanCI, runs: int, percent: bool) -> str:
    """`mean ± half-width` of the t-interval; `(n=k)` when only k of the group's runs logged the
    metric; `(n=1)`: one run, no interval; `-`: none."""
    if ci.n == 0:
        return "-"
    scale, digits = (100.0, 1) if percent else (1.0, 3)
    text = f"{ci.mean * scale:.{digits}f}"
    if ci.n == 1:
        return f"{text} (n=1)"
    text += f" ± {ci.half_width * scale:.{digits}f}"
    return text if ci.n == runs else f"{text} (n={ci.n})"


def fmt_difference(d: DifferenceCI, percent: bool) -> str:
    """`+diff ± half-width` of Welch's interval, in bold where it excludes 0; `(n=1)`: no interval."""
    if math.isnan(d.difference):
        return "-"
    scale, digits = (100.0, 1) if percent else (1.0, 3)
    text = f"{d.difference * scale:+.{digits}f}"
    if math.isnan(d.half_width):
        return f"{text} (n=1)"
    text += f" ± {d.half_width * scale:.{digits}f}"
    return f"**{text}**" if d.excludes_zero else text


def caption(cfg: DictConfig) -> str:
    """The line under the tables: what a cell and a difference are."""
    level = f"{cfg.ci_level * 100:g}%"
    value = ("the last logged value of each metric" if cfg.tail <= 1 else
             f"the mean of the last {cfg.tail} logged values of {', '.join(cfg.tail_prefixes)}* metrics, else the last")
    text = (f"Mean ± half-width of the {level} t-interval over runs (t_{{{(1 + cfg.ci_level) / 2:g}, n-1}} · sd / √n; "
            f"(n=k): k runs logged the metric; (n=1): one run, no interval); a run's value: {value}.")
    if cfg.baseline is not None:
        text += (f" Δ vs {cfg.baseline}: the difference of means with Welch's {level} t-interval (a group of one "
                 f"run taken as a constant); **bold**: the interval excludes 0.")
    return text


def write_table(summary, cfg: DictConfig, out: Path) -> str:
    """`table.md`: one Markdown table per unit (the `percent` metrics in %, then the others as
    logged), each group a row, with a `Δ vs <baseline>` column after each metric when `baseline` is
    set; `table.csv`: every metric's mean, sd, interval and count per group (and the difference)."""
    percent = [m for m in cfg.metrics if m in set(cfg.percent)]
    plain = [m for m in cfg.metrics if m not in set(cfg.percent)]
    base = summary[cfg.baseline] if cfg.baseline is not None else None
    tables = []
    for metrics, unit in ((percent, "in %"), (plain, "as logged")):
        if not metrics:
            continue
        heads = [h for m in metrics for h in ([m, f"Δ vs {cfg.baseline}"] if base is not None else [m])]
        lines = [f"| group | runs | {' | '.join(heads)} |", "|" + "---|" * (len(heads) + 2)]
        for g, values in summary.items():
            cells = []
            for m in metrics:
                cells.append(fmt(mean_ci(values.get(m, []), cfg.ci_level), len(values["runs"]), unit == "in %"))
                if base is not None:
                    cells.append("baseline" if g == cfg.baseline else fmt_difference(
                        difference_ci(values.get(m, []), base.get(m, []), cfg.ci_level), unit == "in %"))
            lines.append(f"| {g} | {len(values['runs'])} | " + " | ".join(cells) + " |")
        tables.append((unit, "\n".join(lines)))
    write_csv(summary, cfg, out / "table.csv")
    if len(tables) == 1:
        unit, body = tables[0]
        table = f"{body}\n\nValues {unit}. {caption(cfg)}\n"
    else:
        table = "\n\n".join(f"Values {unit}:\n\n{body}" for unit, body in tables) + f"\n\n{caption(cfg)}\n"
    (out / "table.md").write_text(table)
    return table


def write_csv(summary, cfg: DictConfig, path: Path) -> None:
    """One row per group: per metric its mean, sd, t-interval (lo, hi) and n, and with `baseline` the
    difference from it with Welch's interval (diff, diff_lo, diff_hi); empty where undefined."""
    suffixes = ("_mean", "_std", "_lo", "_hi", "_n") + (("_diff", "_diff_lo", "_diff_hi") if cfg.baseline else ())
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["group", "runs"] + [f"{m}{s}" for m in cfg.metrics for s in suffixes])
        for g, values in summary.items():
            row = [g, len(values["runs"])]
            for m in cfg.metrics:
                ci = mean_ci(values.get(m, []), cfg.ci_level)
                row += [ci.mean, ci.sd, ci.lo, ci.hi, ci.n]
                if cfg.baseline is not None:
                    d = difference_ci(values.get(m, []), summary[cfg.baseline].get(m, []), cfg.ci_level)
                    row += [d.difference, d.lo, d.hi]
            writer.writerow(["" if isinstance(v, float) and math.isnan(v) else v for v in row])


def write_runs(runs, cfg: DictConfig, out: Path) -> None:
    with open(out / "runs.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["run_id", "group", "seed", *cfg.metrics])
        for run in runs:
            writer.writerow([run.info.run_id, group_key(run, cfg.group_by), run.data.params.get("seed", "")]
                            + [run.data.metrics.get(m, "") for m in cfg.metrics])


def plot_curves(client, runs, cfg: DictConfig, out: Path) -> list[Path]:
    """One PNG per curve metric: per group, the mean over its runs at each step with its t-interval as a
    band (where more than one run logged the step)."""
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
            cis = [mean_ci(by_group[g][s], cfg.ci_level) for s in steps]
            stats = smooth([(ci.mean, ci.half_width) for ci in cis], cfg.smooth)
            mean = [m for m, _ in stats]
            ax.plot(steps, mean, label=g, color=colours[g], marker="o" if len(steps) < 20 else None, markersize=3)
            band = [not math.isnan(h) for _, h in stats]  # one run at a step: no interval, no band
            if any(band):
                ax.fill_between(steps, [m - h for m, h in stats], [m + h for m, h in stats], where=band,
                                color=colours[g], alpha=0.2)
        ax.set_xlabel("step")
        ax.set_ylabel(metric)
        window = f", {cfg.smooth}-point moving average" if cfg.smooth > 1 else ""
        ax.set_title(f"{metric} (mean and {cfg.ci_level * 100:g}% t-interval over runs{window})")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        path = out / (metric.replace("/", "_") + ".png")
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def smooth(stats: list[tuple[float, float]], window: int) -> list[tuple[float, float]]:
    """A trailing moving average of (mean, half-width) pairs over `window` points (1: unchanged)."""
    if window <= 1:
        return stats
    out = []
    for i in range(len(stats)):
        chunk = stats[max(0, i - window + 1): i + 1]
        out.append((sum(m for m, _ in chunk) / len(chunk), sum(s for _, s in chunk) / len(chunk)))
    return out


def check_statistics(summary, cfg: DictConfig) -> None:
    """`ci_level` in (0, 1); `baseline` one of the groups (the closest named when it is not)."""
    try:
        check_level(cfg.ci_level)
    except ValueError as err:
        raise ReportError(str(err)) from None
    if cfg.baseline is not None and cfg.baseline not in summary:
        close = difflib.get_close_matches(str(cfg.baseline), list(summary), n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise ReportError(f"baseline: no group named {cfg.baseline!r}; {hint}the groups: {', '.join(summary)}")


def report(cfg: DictConfig) -> str:
    client = mlflow.MlflowClient(cfg.tracking_uri)
    runs = find_runs(client, cfg)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = summarise(client, runs, cfg)
    check_statistics(summary, cfg)
    table = write_table(summary, cfg, out)
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
