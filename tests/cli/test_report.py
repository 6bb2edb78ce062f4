"""`lsp-report`: mean and t-interval by group from runs made in the test, differences from a baseline,
CSV and plots, sweep parents."""
import csv

import mlflow
import pytest
from mlflow.entities import Metric

from lsp_exp.cli.report import ReportError, report

from tests.helpers.tiny_run import compose_config


def make_run(client, exp_id, arm, seed, accuracy_curve, parent=None):
    tags = {"arm": arm, **({"mlflow.parentRunId": parent} if parent else {})}
    run_id = client.create_run(exp_id, tags=tags).info.run_id
    client.log_param(run_id, "seed", seed)
    client.log_param(run_id, "game.name", "lsp" if arm.startswith("lsp") else "grpo_data")
    client.log_batch(run_id, metrics=[Metric("eval/accuracy", v, 0, step) for step, v in accuracy_curve])
    client.set_terminated(run_id)
    return run_id


def test_report_groups_runs_and_writes_table_csv_and_curves(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = mlflow.MlflowClient(uri)
    exp = client.create_experiment("table")
    parent = client.create_run(exp).info.run_id
    for seed, final in enumerate([0.5, 0.6, 0.7]):
        make_run(client, exp, "lsp", seed, [(0, 0.4), (10, final)], parent=parent)
    for seed, final in enumerate([0.45, 0.55]):
        make_run(client, exp, "rl", seed, [(0, 0.4), (10, final)])
    unfinished = client.create_run(exp, tags={"arm": "lsp"}).info.run_id  # still RUNNING: left out
    client.log_metric(unfinished, "eval/accuracy", 0.99)

    out = tmp_path / "report"
    table = report(compose_config("report", [f"tracking_uri={uri}", "experiment_names=[table]", "group_by=[tags.arm]",
                                             "order=[rl,lsp]", f"output_dir={out}"]))
    lines = [line for line in table.splitlines() if line.startswith("| rl") or line.startswith("| lsp")]
    # half-widths: rl t_{.975,1} = 12.706205 x 0.070711 / sqrt(2) = 0.635310; lsp 4.302653 x 0.1 / sqrt(3) = 0.248414
    assert lines == ["| rl | 2 | 50.0 ± 63.5 |", "| lsp | 3 | 60.0 ± 24.8 |"]
    rows = list(csv.DictReader(open(out / "table.csv")))
    assert [r["group"] for r in rows] == ["rl", "lsp"]
    assert float(rows[1]["eval/accuracy_mean"]) == pytest.approx(0.6)
    assert float(rows[1]["eval/accuracy_std"]) == pytest.approx(0.1)
    assert float(rows[1]["eval/accuracy_lo"]) == pytest.approx(0.6 - 0.248414, abs=1e-6)
    assert float(rows[1]["eval/accuracy_hi"]) == pytest.approx(0.6 + 0.248414, abs=1e-6)
    assert rows[1]["eval/accuracy_n"] == "3"
    assert len(list(csv.DictReader(open(out / "runs.csv")))) == 5
    assert (out / "eval_accuracy.png").stat().st_size > 1000

    # A sweep parent selects its children; a config key groups as well as a tag.
    table = report(compose_config("report", [f"tracking_uri={uri}", f"parent_run={parent}", "group_by=[game.name]",
                                             f"output_dir={tmp_path / 'sweep'}"]))
    assert "| lsp | 3 | 60.0 ± 24.8 |" in table and "grpo_data" not in table
    # tail=2 with eval/ as a per-step prefix: each run's value is the mean of its last two points.
    table = report(compose_config("report", [f"tracking_uri={uri}", f"parent_run={parent}", "group_by=[tags.arm]",
                                             "tail=2", "tail_prefixes=[eval/]", "smooth=2",
                                             f"output_dir={tmp_path / 'tail'}"]))
    assert "| lsp | 3 | 50.0 ± 12.4 |" in table   # 0.45, 0.5, 0.55: 4.302653 x 0.05 / sqrt(3) = 0.124207


def test_smoothing_is_a_trailing_moving_average():
    from lsp_exp.cli.report import smooth

    assert smooth([(1.0, 0.0), (3.0, 2.0), (5.0, 0.0)], 2) == [(1.0, 0.0), (2.0, 1.0), (4.0, 1.0)]


def test_report_without_runs_says_what_it_looked_for(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    with pytest.raises(ReportError, match="no MLflow experiment named 'nope'"):
        report(compose_config("report", [f"tracking_uri={uri}", "experiment_names=[nope]", f"output_dir={tmp_path}"]))
    with pytest.raises(ReportError, match="could not search runs"):
        report(compose_config("report", [f"tracking_uri={uri}", "filter=\"tags.arm LIKE\"", f"output_dir={tmp_path}"]))


def test_report_for_a_user(tmp_path, capsys):
    """One colour per group in every plot; one unit per table; per-step metrics averaged over a window
    by default; a sweep's parent is never a group; a group_by key no run has is a one-line error."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = mlflow.MlflowClient(uri)
    exp = client.create_experiment("user")
    parent = client.create_run(exp, tags={"kind": "sweep"}).info.run_id  # a sweep's parent: no metric, no group
    client.set_terminated(parent)
    for arm, seed, last in [("b", 0, 0.0), ("a", 0, 1.0), ("b", 1, 0.0)]:
        run_id = make_run(client, exp, arm, seed, [(0, 0.5), (10, 0.6)], parent=parent)
        # a per-step metric: 0.2 for 11 steps, then one noisy last step
        client.log_batch(run_id, metrics=[Metric("train/solver/reward", 0.2, 0, s) for s in range(11)]
                         + [Metric("train/solver/reward", last, 0, 11)])
    drawn = []
    real_plot = plt.Axes.plot
    plt.Axes.plot = lambda self, *a, **k: drawn.append((k["label"], k["color"])) or real_plot(self, *a, **k)
    try:
        table = report(compose_config("report", [
            f"tracking_uri={uri}", "group_by=[tags.arm]", "metrics=[eval/accuracy,train/solver/reward]",
            "curves=[eval/accuracy,train/solver/reward]", f"output_dir={tmp_path / 'out'}"]))
    finally:
        plt.Axes.plot = real_plot
    assert "?" not in table                                   # the parent is not a group
    percent, plain = table.index("Values in %"), table.index("Values as logged")
    assert percent < table.index("| a | 1 | 60.0 (n=1) |") < table.index("| b | 2 | 60.0 ± 0.0 |") < plain
    assert plain < table.index("| a | 1 | 0.280 (n=1) |")   # the mean of the last 10 values: (9 x 0.2 + 1.0) / 10
    assert plain < table.index("| b | 2 | 0.180 ± 0.000 |")
    assert compose_config("report", []).tail == 10   # the default window
    assert sorted(set(drawn)) == [("a", "C0"), ("b", "C1")]   # a group has one colour in both plots
    with pytest.raises(ReportError, match=r"^group_by: no run has 'tags.amr'; did you mean tags.arm\?"):
        report(compose_config("report", [f"tracking_uri={uri}", "group_by=[tags.amr]", f"output_dir={tmp_path}"]))
    with pytest.raises(ReportError, match=r"^group_by: no run has 'game.nmae'; did you mean game.name\?"):
        report(compose_config("report", [f"tracking_uri={uri}", "group_by=[game.nmae]", f"output_dir={tmp_path}"]))


def test_report_has_its_own_help():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "lsp_exp.cli.report", "--help"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and out.stdout.startswith("lsp-report: a table")
    assert "parent_run" in out.stdout and "group_by" in out.stdout
    assert "Configuration groups" not in out.stdout and "algorithm" not in out.stdout


def test_report_differences_from_a_baseline(tmp_path):
    """baseline=base: each metric's difference from the base (one run: a constant), bold where its interval
    excludes 0; baseline=rl: Welch's interval; a metric only some runs logged says (n=k); a wrong name fails."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = mlflow.MlflowClient(uri)
    exp = client.create_experiment("delta")
    make_run(client, exp, "base", 0, [(0, 0.30)])
    for seed, final in enumerate([0.45, 0.55]):
        make_run(client, exp, "rl", seed, [(0, 0.4), (10, final)])
    for seed, final in enumerate([0.5, 0.6, 0.7]):
        run_id = make_run(client, exp, "lsp", seed, [(0, 0.4), (10, final)])
        if seed < 2:
            client.log_metric(run_id, "eval/win_rate", 0.7 + 0.1 * seed)   # 0.7, 0.8: 2 of the 3 runs
    args = [f"tracking_uri={uri}", "experiment_names=[delta]", "group_by=[tags.arm]", "order=[base,rl,lsp]",
            "metrics=[eval/accuracy,eval/win_rate]"]
    table = report(compose_config("report", [*args, "baseline=base", f"output_dir={tmp_path / 'base'}"]))
    assert "| group | runs | eval/accuracy | Δ vs base | eval/win_rate | Δ vs base |" in table
    assert "| base | 1 | 30.0 (n=1) | baseline | - | baseline |" in table
    # rl: +20.0 ± rl's own half-width (63.5: the base is a constant); lsp: +30.0 ± 24.8 excludes 0.
    # win rate: lsp 75.0 ± t_{.975,1} x 0.070711 / sqrt(2) = 63.5 over its 2 runs; the base has none.
    assert "| rl | 2 | 50.0 ± 63.5 | +20.0 ± 63.5 | - | - |" in table
    assert "| lsp | 3 | 60.0 ± 24.8 | **+30.0 ± 24.8** | 75.0 ± 63.5 (n=2) | - |" in table
    assert "Δ vs base: the difference of means with Welch's 95% t-interval" in table
    assert "**bold**: the interval excludes 0" in table

    # Welch, lsp - rl = 0.1: se^2 = 0.01/3 + 0.005/2 = 7/1200, df = (7/1200)^2 / ((1/300)^2/2 + (1/400)^2/1) = 49/17;
    # t_{.975, 49/17} = 3.257208, half-width 3.257208 x sqrt(7/1200) = 0.248773.
    table = report(compose_config("report", [*args, "baseline=rl", f"output_dir={tmp_path / 'rl'}"]))
    assert "| lsp | 3 | 60.0 ± 24.8 | +10.0 ± 24.9 |" in table
    rows = {r["group"]: r for r in csv.DictReader(open(tmp_path / "rl" / "table.csv"))}
    assert float(rows["lsp"]["eval/accuracy_diff"]) == pytest.approx(0.1)
    assert float(rows["lsp"]["eval/accuracy_diff_lo"]) == pytest.approx(0.1 - 0.248773, abs=1e-6)
    assert float(rows["lsp"]["eval/accuracy_diff_hi"]) == pytest.approx(0.1 + 0.248773, abs=1e-6)
    assert rows["base"]["eval/accuracy_std"] == "" and rows["base"]["eval/accuracy_n"] == "1"

    with pytest.raises(ReportError, match=r"^baseline: no group named 'bsae'; did you mean base\? the groups: base"):
        report(compose_config("report", [*args, "baseline=bsae", f"output_dir={tmp_path / 'x'}"]))
    with pytest.raises(ReportError, match=r"^ci_level: must be in \(0, 1\)"):
        report(compose_config("report", [*args, "ci_level=95", f"output_dir={tmp_path / 'x'}"]))
