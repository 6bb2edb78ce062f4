"""`lsp-report`: mean +- std by group from runs made in the test, CSV and plots, sweep parents."""
import csv

import mlflow
import pytest
from mlflow.entities import Metric

from lsp_exp.cli.report import ReportError, mean_std, report

from tests.helpers.tiny_run import compose_config


def make_run(client, exp_id, arm, seed, accuracy_curve, parent=None):
    tags = {"arm": arm, **({"mlflow.parentRunId": parent} if parent else {})}
    run_id = client.create_run(exp_id, tags=tags).info.run_id
    client.log_param(run_id, "seed", seed)
    client.log_param(run_id, "game.name", "lsp" if arm.startswith("lsp") else "grpo_data")
    client.log_batch(run_id, metrics=[Metric("eval/accuracy", v, 0, step) for step, v in accuracy_curve])
    client.set_terminated(run_id)
    return run_id


def test_mean_std_is_the_sample_std():
    assert mean_std([0.5, 0.6, 0.7]) == pytest.approx((0.6, 0.1))
    assert mean_std([2.0]) == (2.0, 0.0)


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
    assert lines == ["| rl | 2 | 50.0 ± 7.1 |", "| lsp | 3 | 60.0 ± 10.0 |"]
    rows = list(csv.DictReader(open(out / "table.csv")))
    assert [r["group"] for r in rows] == ["rl", "lsp"]
    assert float(rows[1]["eval/accuracy_mean"]) == pytest.approx(0.6)
    assert float(rows[1]["eval/accuracy_std"]) == pytest.approx(0.1)
    assert len(list(csv.DictReader(open(out / "runs.csv")))) == 5
    assert (out / "eval_accuracy.png").stat().st_size > 1000

    # A sweep parent selects its children; a config key groups as well as a tag.
    table = report(compose_config("report", [f"tracking_uri={uri}", f"parent_run={parent}", "group_by=[game.name]",
                                             f"output_dir={tmp_path / 'sweep'}"]))
    assert "| lsp | 3 | 60.0 ± 10.0 |" in table and "grpo_data" not in table
    # tail=2 with eval/ as a per-step prefix: each run's value is the mean of its last two points.
    table = report(compose_config("report", [f"tracking_uri={uri}", f"parent_run={parent}", "group_by=[tags.arm]",
                                             "tail=2", "tail_prefixes=[eval/]", "smooth=2",
                                             f"output_dir={tmp_path / 'tail'}"]))
    assert "| lsp | 3 | 50.0 ± 5.0 |" in table


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
    assert percent < table.index("| a | 1 | 60.0 |") < table.index("| b | 2 | 60.0 ± 0.0 |") < plain
    assert plain < table.index("| a | 1 | 0.280 |")   # the mean of the last 10 values: (9 x 0.2 + 1.0) / 10
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
