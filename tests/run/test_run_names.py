"""Separate runs of one config get distinct MLflow run names (`tracking.free_run_name`): the first keeps
`<game>-<algorithm>-s<seed>`, the next ones get `-2`, `-3`; a sweep's job keeps the name its sweep gave it."""
import mlflow
import pytest

from lsp_exp.run.tracking import RUN_NAME_ENV, build_logger, ensure_experiment, free_run_name
from lsp_exp.run.tracking_failures import ACTIVE_LOGGERS

from tests.helpers.tiny_run import compose_config, tiny_overrides


@pytest.fixture
def started(tmp_path):
    """Start a run of `cfg` as `lsp-train` does (`build_logger`, then the run is created); its name."""
    loggers = []

    def start(cfg) -> str:
        logger = build_logger(cfg)
        loggers.append(logger)
        return mlflow.MlflowClient(cfg.logger.tracking_uri).get_run(logger.run_id).info.run_name

    yield start
    for logger in loggers:
        logger.finalize("success")
        ACTIVE_LOGGERS.remove(logger)


def test_two_runs_of_the_same_config_get_distinct_names(tmp_path, started):
    cfg = compose_config("train", tiny_overrides(tmp_path, "game=lsp_zero", "seed=1"))
    names = [started(cfg) for _ in range(3)]
    assert names == ["lsp_zero-lsp-s1", "lsp_zero-lsp-s1-2", "lsp_zero-lsp-s1-3"]
    other = compose_config("train", tiny_overrides(tmp_path, "game=lsp_zero", "seed=2"))
    assert started(other) == "lsp_zero-lsp-s2"   # a name nobody has is kept
    named = compose_config("train", tiny_overrides(tmp_path, "logger.run_name=mine"))
    assert [started(named), started(named)] == ["mine", "mine-2"]   # a name of the user's too


def test_a_sweep_job_keeps_its_sweeps_name(tmp_path, started, monkeypatch):
    cfg = compose_config("train", tiny_overrides(tmp_path, "game=lsp_zero"))
    assert started(cfg) == "lsp_zero-lsp-s0"
    monkeypatch.setenv(RUN_NAME_ENV, "lsp_zero-lsp-s0")   # unique within its sweep, nested under the sweep's parent
    assert started(cfg) == "lsp_zero-lsp-s0"


def test_free_run_name_counts_past_the_names_taken(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = mlflow.MlflowClient(uri)
    experiment = ensure_experiment(uri, "names")
    for name in ("a_b-s0", "a_b-s0-2", "axb-s0-3", "it's-s0"):   # `_` is a wildcard of the store's LIKE
        client.create_run(experiment, run_name=name)
    deleted = client.create_run(experiment, run_name="gone").info.run_id
    client.delete_run(deleted)
    assert free_run_name(uri, experiment, "a_b-s0") == "a_b-s0-3"
    assert free_run_name(uri, experiment, "it's-s0") == "it's-s0-2"   # a quote in the name
    assert free_run_name(uri, experiment, "gone") == "gone-2"   # a deleted run still holds its name
    assert free_run_name(uri, experiment, "new") == "new"
