"""`lsp-report`: mean +- std by group from runs made in the test, CSV and plots, sweep parents."""
import csv

import mlflow
import pytest
from mlflow.entities import Metric

from lsp_exp.cli.report import ReportError, mean_std, report

from conftest import compose_config


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
                                             "tail=2", "tail_prefixes=[eval/]", "smooth=2", f"output_dir={tmp_path / 'tail'}"]))
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
