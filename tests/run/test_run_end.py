"""A run's end recorded truthfully (lsp_exp/run/run_end.py, tracking.log_final_model): the metrics,
then the final model, then FINISHED, each retried while the store refuses it; an artifact store
that refuses a file ends the run FAILED in one line with no truncated model left; the metrics a
store never took go to a folder that works. Real faults: a full tmpfs as the artifact store,
chattr +i on the store's or the artifacts' folder, a sqlite write lock held by another connection."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import mlflow
import pytest

import lsp_exp.cli.train
from lsp_exp.run.self_play import SelfPlayModule
from lsp_exp.run import tracking_failures
from lsp_exp.run.run_end import keep_unlogged

from tests.helpers.tiny_run import compose_config, runs_of_this_test, this_test_tag, tiny_overrides

FAST = ["game=lsp_zero", "eval.samples=0", "eval.every_n_steps=0", "eval.judge_pairs=0", "eval.max_problems=4",
        "eval.sample_table_every=0", "trainer.max_steps=2"]


def the_run(uri: str):
    runs = runs_of_this_test(uri)
    assert len(runs) == 1, runs
    client = mlflow.MlflowClient(uri)
    run = client.get_run(runs[0].info.run_id)
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "train/solver/reward")]
    return run, steps, client


def one_error_line(capsys) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, lines
    return lines[0]


class ReleaseOn(logging.Handler):
    """Calls `let_go` once, when a warning containing `text` is logged (the run's end retrying)."""

    def __init__(self, text: str, let_go):
        super().__init__(logging.WARNING)
        self.text, self.let_go, self.done = text, let_go, False

    def emit(self, record):
        if not self.done and self.text in record.getMessage():
            self.done = True
            self.let_go()


@pytest.fixture
def tmpfs(tmp_path):
    """A real full disk: a 40 KiB tmpfs (root only), unmounted after the test."""
    mount = tmp_path / "small"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=40k", "tmpfs", str(mount)],
                                           capture_output=True).returncode != 0:
        pytest.skip("mounting a tmpfs needs root")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_artifact_store_during_the_final_model_ends_the_run_failed_with_no_partial_model(
        shared_outputs, tmpfs, capsys):
    """The tmpfs takes the config (4 KB) but not the model (50 KB): one line, the run FAILED, its
    metrics kept, and no `model/` artifact (a truncated model.safetensors) for `init_from` to load."""
    art = tmpfs / "artifacts"
    cfg = compose_config("train", tiny_overrides(shared_outputs, *FAST, f"logger.artifact_location={art}",
                                                 f"logger.experiment_name=full-artifacts-{this_test_tag()}"))
    with pytest.raises(SystemExit) as exit_:
        lsp_exp.cli.train.hydra_main.__wrapped__(cfg)
    line = one_error_line(capsys)
    assert exit_.value.code == 2 and "refused the final model ([Errno 28] No space left on device" in line
    assert "the partial model/ artifact is removed" in line and "metrics are kept" in line
    run, steps, _ = the_run(f"sqlite:///{shared_outputs}/mlflow.db")
    assert run.info.status == "FAILED" and run.data.tags["error"].startswith("ArtifactStoreError: ")
    assert steps == [0, 1]                                                    # the metrics kept
    assert not (art / run.info.run_id / "artifacts" / "model").exists()       # nothing truncated left


def test_an_immutable_artifact_store_at_start_ends_the_run_failed_in_one_line(shared_outputs, tmp_path, immutable,
                                                                               capsys):
    art = tmp_path / "artifacts"
    art.mkdir()
    immutable(art)
    cfg = compose_config("train", tiny_overrides(shared_outputs, *FAST, f"logger.artifact_location={art}",
                                                 f"logger.experiment_name=frozen-artifacts-{this_test_tag()}"))
    with pytest.raises(SystemExit) as exit_:
        lsp_exp.cli.train.hydra_main.__wrapped__(cfg)
    line = one_error_line(capsys)
    assert exit_.value.code == 2 and "refused config/resolved.yaml ([Errno 1] Operation not permitted" in line
    run, _, _ = the_run(f"sqlite:///{shared_outputs}/mlflow.db")
    assert run.info.status == "FAILED"


def test_a_store_refusing_writes_until_after_training_still_ends_the_run_finished(shared_outputs, tmp_path,
                                                                                  immutable, monkeypatch):
    """From the last step on, the store's folder is immutable (sqlite cannot create its journal: every
    write refused); it takes writes again only once the run's end is being retried. Every step is
    logged once, the model is logged, and the run ends FINISHED (not RUNNING, as before)."""
    store = tmp_path / "store"
    uri = f"sqlite:///{store}/mlflow.db"
    real_step = SelfPlayModule.training_step

    def step(self, batch, batch_idx):
        if self.global_step == 1:
            immutable(store)
        return real_step(self, batch, batch_idx)

    monkeypatch.setattr(SelfPlayModule, "training_step", step)
    handler = ReleaseOn("refused the metrics kept", lambda: immutable(store, False))
    logging.getLogger(tracking_failures.__name__).addHandler(handler)
    try:
        lsp_exp.cli.train.train(compose_config("train", tiny_overrides(shared_outputs, *FAST,
                                                                       f"logger.tracking_uri={uri}")))
    finally:
        logging.getLogger(tracking_failures.__name__).removeHandler(handler)
    assert handler.done                                                       # the end was refused, then retried
    run, steps, client = the_run(uri)
    assert run.info.status == "FINISHED" and steps == [0, 1]
    assert "model" in {a.path for a in client.list_artifacts(run.info.run_id)}


@pytest.mark.slow  # every write refused by the lock waits for MLflow's 20 s sqlite busy timeout (about a minute)
def test_a_store_locked_until_after_training_still_ends_the_run_finished(shared_outputs, tmp_path, monkeypatch):
    """Another connection holds sqlite's write lock from the last step until the run's end is being
    retried: the run still ends FINISHED with every metric."""
    import sqlite3

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    holder = {}
    real_step = SelfPlayModule.training_step

    def step(self, batch, batch_idx):
        if self.global_step == 1 and "conn" not in holder:
            holder["conn"] = sqlite3.connect(tmp_path / "mlflow.db", isolation_level=None, check_same_thread=False)
            holder["conn"].execute("BEGIN EXCLUSIVE")
        return real_step(self, batch, batch_idx)

    monkeypatch.setattr(SelfPlayModule, "training_step", step)
    handler = ReleaseOn("refused the metrics kept", lambda: holder["conn"].execute("ROLLBACK"))
    logging.getLogger(tracking_failures.__name__).addHandler(handler)
    try:
        lsp_exp.cli.train.train(compose_config("train", tiny_overrides(shared_outputs, *FAST,
                                                                       f"logger.tracking_uri={uri}")))
    finally:
        logging.getLogger(tracking_failures.__name__).removeHandler(handler)
        holder["conn"].close()
    run, steps, _ = the_run(uri)
    assert handler.done and run.info.status == "FINISHED" and steps == [0, 1]


def test_the_metrics_a_store_never_took_go_to_the_hydra_run_folder(shared_outputs, tmp_path, immutable, monkeypatch,
                                                                   capsys):
    """The store refuses every write from step 1 on and `<outputs>/models` cannot be written (both
    immutable): the refused metrics go to the Hydra run folder, and the one line says so."""
    from hydra.core.global_hydra import GlobalHydra

    monkeypatch.setattr(tracking_failures, "END_WAIT_S", 0.5)
    store, models, hydra_dir = tmp_path / "store", shared_outputs / "models", tmp_path / "hydra_run"
    models.mkdir(exist_ok=True)
    real_step = SelfPlayModule.training_step

    def step(self, batch, batch_idx):
        if self.global_step == 1:
            immutable(store)
            immutable(models)
        return real_step(self, batch, batch_idx)

    monkeypatch.setattr(SelfPlayModule, "training_step", step)
    monkeypatch.setattr(sys, "argv", ["lsp-train", *tiny_overrides(
        shared_outputs, *FAST, "trainer.max_steps=3", f"logger.tracking_uri=sqlite:///{store}/mlflow.db",
        f"trainer.checkpoint_dir={tmp_path}/ck", f"hydra.run.dir={hydra_dir}")])
    try:
        with pytest.raises(SystemExit) as exit_:
            lsp_exp.cli.train.main()
    finally:
        GlobalHydra.instance().clear()
    line = one_error_line(capsys)
    kept = hydra_dir / "unlogged_metrics.jsonl"
    assert exit_.value.code == 2 and f"the metrics it did not get are in {kept}" in line and "stays RUNNING" in line
    assert {json.loads(row)["step"] for row in kept.read_text().splitlines()} == {1, 2, 3}   # 3: the final eval


def test_unlogged_metrics_fall_back_to_the_system_temp_folder(tmp_path, immutable):
    outputs = tmp_path / "outputs"
    (outputs / "models").mkdir(parents=True)
    immutable(outputs / "models")
    logger = SimpleNamespace(run_id="r" * 32, pending=[({"a": 1.0}, 3)])
    logger.dump_pending = lambda path: tracking_failures.ResilientMLFlowLogger.dump_pending(logger, path)
    kept = keep_unlogged(logger, str(outputs))
    assert kept == Path(tempfile.gettempdir()) / f"lsp-unlogged-metrics-{'r' * 32}.jsonl"
    assert json.loads(kept.read_text()) == {"step": 3, "metrics": {"a": 1.0}}
    kept.unlink()
