"""A 2 x 2 multirun with the joblib launcher (hydra/launcher=local_parallel, 2 jobs at a time):
four MLflow runs in one sqlite store, written by parallel processes without "database is locked"."""
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

from lsp_exp.cli.train import train

from conftest import compose_config, tiny_overrides

FAST = ["trainer.max_steps=2", "eval.samples=0", "eval.judge_pairs=0", "eval.every_n_steps=0",
        "trainer.num_threads=1", "trainer.checkpoint_every=0"]


def test_joblib_sweep_logs_four_runs_to_one_sqlite_store(shared_outputs, tmp_path):
    train(compose_config("train", tiny_overrides(shared_outputs, "logger=none", "trainer.max_steps=1", "eval.samples=0",
                                                 "eval.judge_pairs=0")))  # the toy world exists before the jobs start
    store = f"sqlite:///{tmp_path}/mlflow.db"
    out = subprocess.run(
        [sys.executable, "-m", "lsp_exp.cli.train", "-m", "hydra/launcher=local_parallel", "hydra.launcher.n_jobs=2",
         "seed=0,1", "game=lsp_zero,grpo_data", *tiny_overrides(shared_outputs, *FAST),
         f"logger.tracking_uri={store}", f"logger.artifact_location={tmp_path}/artifacts",
         f"hydra.sweep.dir={tmp_path}/sweep"],
        capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "database is locked" not in out.stderr + out.stdout
    client = mlflow.MlflowClient(store)
    experiment = client.get_experiment_by_name("lsp-exp")
    runs = client.search_runs([experiment.experiment_id])
    jobs = [r for r in runs if r.data.tags.get("kind") != "sweep"]
    assert len(jobs) == 4
    assert sorted((r.data.tags["seed"], r.data.tags["game"]) for r in jobs) == [
        ("0", "grpo_data"), ("0", "lsp_zero"), ("1", "grpo_data"), ("1", "lsp_zero")]
    assert all(r.info.status == "FINISHED" for r in runs)
    for run in jobs:
        assert [m.step for m in client.get_metric_history(run.info.run_id, "train/solver/reward")] == [0, 1]
    assert len({r.data.tags.get("mlflow.parentRunId") for r in jobs}) == 1  # one sweep, one parent
    assert sorted(p.name for p in Path(tmp_path, "sweep").iterdir() if p.is_dir()) == ["0", "1", "2", "3"]
    # Names that tell the runs apart (game, algorithm, seed), the parent named after the sweep, and at
    # the end one line per job and the lsp-report command for the sweep.
    assert sorted(r.info.run_name for r in jobs) == [
        "grpo_data-lsp-s0", "grpo_data-lsp-s1", "lsp_zero-lsp-s0", "lsp_zero-lsp-s1"]
    (parent,) = [r for r in runs if r.data.tags.get("kind") == "sweep"]
    assert parent.info.run_name.startswith("sweep seed=0,1 game=lsp_zero,grpo_data · ")
    summary = out.stdout[out.stdout.index(f"sweep '{parent.info.run_name}': 4 runs"):].splitlines()
    assert all(r.info.run_name in "\n".join(summary[1:5]) and "FINISHED" in "\n".join(summary[1:5]) for r in jobs)
    assert summary[5] == (f"compare the arms: .venv/bin/lsp-report parent_run={parent.info.run_id} "
                          f"'group_by=[game.name]' tracking_uri={store}")
    assert summary[6].startswith(f"open http://127.0.0.1:5000/#/experiments/{experiment.experiment_id}/runs?"
                                 "workflowType=machine_learning  (after `.venv/bin/mlflow ui --backend-store-uri")


def test_an_optuna_search_runs_two_trials_under_one_parent(shared_outputs, tmp_path):
    """hparams_search=toy_lr_beta (Hydra's Optuna sweeper): 2 trials of 1 step, each a child run of one
    parent with its own optim.lr and kl.beta from the search space; lsp-train returns the held-out
    accuracy, which Optuna records (the best trial's value is the best run's eval/accuracy)."""
    import yaml

    train(compose_config("train", tiny_overrides(shared_outputs, "logger=none", "trainer.max_steps=1", "eval.samples=0",
                                                 "eval.judge_pairs=0")))  # the toy world exists before the jobs start
    out, client = _multirun_plain(shared_outputs, tmp_path, "hparams_search=toy_lr_beta", "hydra.sweeper.n_trials=2",
                                  "trainer.max_steps=1", "game=lsp_zero")
    assert out.returncode == 0, out.stderr[-3000:]
    experiment = client.get_experiment_by_name("lsp-exp")
    runs = client.search_runs([experiment.experiment_id])
    trials = [r for r in runs if r.data.tags.get("kind") != "sweep"]
    (parent,) = [r for r in runs if r.data.tags.get("kind") == "sweep"]
    assert len(trials) == 2 and all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in trials)
    assert "hparams_search=toy_lr_beta over optim.lr, kl.beta" in parent.info.run_name
    lrs = [float(r.data.params["optim.lr"]) for r in trials]
    betas = [float(r.data.params["kl.beta"]) for r in trials]
    assert len(set(lrs)) == 2 and all(3e-6 <= lr <= 3e-4 for lr in lrs) and all(0 <= b <= 0.2 for b in betas)
    assert all(r.data.params["trainer.max_steps"] == "1" for r in trials)
    assert len({r.info.run_name for r in trials}) == 2 and all(" lr=" in r.info.run_name for r in trials)
    results = yaml.safe_load((tmp_path / "sweep" / "optimization_results.yaml").read_text())
    assert results["best_value"] == pytest.approx(max(r.data.metrics["eval/accuracy"] for r in trials))


def test_launcher_presets_compose():
    """hydra/launcher=local_parallel (joblib) and slurm (submitit; the `slurm` extra) compose."""
    from hydra import compose, initialize_config_dir

    from conftest import CONF_DIR

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        local = compose("train", ["hydra/launcher=local_parallel"], return_hydra_config=True)
        slurm = compose("train", ["hydra/launcher=slurm", "hydra.launcher.partition=gpu", "trainer=ddp"],
                        return_hydra_config=True)
    assert "joblib" in local.hydra.launcher._target_ and local.hydra.launcher.n_jobs == 2
    assert "SlurmLauncher" in slurm.hydra.launcher._target_ and slurm.hydra.launcher.partition == "gpu"
    assert slurm.hydra.launcher.max_num_timeout > 0 and slurm.trainer.strategy == "ddp"


def _multirun_plain(shared_outputs, tmp_path, *args):
    """`lsp-train <args>` (a multirun by its own config) with the tiny overrides, into a store of the test's."""
    store = f"sqlite:///{tmp_path}/mlflow.db"
    out = subprocess.run(
        [sys.executable, "-m", "lsp_exp.cli.train", *tiny_overrides(shared_outputs, *FAST), *args,
         f"logger.tracking_uri={store}", f"logger.artifact_location={tmp_path}/artifacts",
         f"hydra.sweep.dir={tmp_path}/sweep"], capture_output=True, text=True, timeout=900)
    return out, mlflow.MlflowClient(store)


def _multirun(shared_outputs, tmp_path, *args):
    store = f"sqlite:///{tmp_path}/mlflow.db"
    out = subprocess.run(
        [sys.executable, "-m", "lsp_exp.cli.train", "-m", *args, *tiny_overrides(shared_outputs, *FAST),
         f"logger.tracking_uri={store}", f"logger.artifact_location={tmp_path}/artifacts",
         f"hydra.sweep.dir={tmp_path}/sweep"], capture_output=True, text=True, timeout=900)
    return out, mlflow.MlflowClient(store)


@pytest.mark.slow
def test_ddp_jobs_in_a_sequential_multirun(shared_outputs, tmp_path):
    """Lightning's `ddp` launcher re-runs the command: inside a multirun that must be the job alone,
    and the second job must start its own ranks (default launcher: one job at a time)."""
    out, client = _multirun(shared_outputs, tmp_path, "seed=0,1", "trainer=ddp_cpu", "game=lsp_zero")
    assert out.returncode == 0, out.stderr[-3000:]
    assert (out.stdout + out.stderr).count("GLOBAL_RANK: 1, MEMBER: 2/2") == 2
    experiment = client.get_experiment_by_name("lsp-exp")
    jobs = [r for r in client.search_runs([experiment.experiment_id]) if r.data.tags.get("kind") != "sweep"]
    assert sorted(r.data.tags["seed"] for r in jobs) == ["0", "1"]
    assert all(r.info.status == "FINISHED" for r in jobs)


@pytest.mark.slow
def test_ddp_in_a_joblib_worker_is_refused_clearly(shared_outputs, tmp_path):
    out, _ = _multirun(shared_outputs, tmp_path, "hydra/launcher=local_parallel", "seed=0,1", "trainer=ddp_cpu")
    assert out.returncode != 0
    assert "joblib worker cannot" in out.stderr and "Traceback" not in out.stderr


def test_lsp_train_returns_the_configured_metric():
    """What a sweeper optimises: `optimized_metric`, an eval/ key of the last evaluation or a per-step figure."""
    import math

    from lsp_exp.cli import train as train_mod

    history = {0: {"accuracy": 0.4}, 3: {"accuracy": 0.5, "pass_at_8": 0.75}}
    assert train_mod.objective(compose_config("train", []), history) == 0.5
    assert train_mod.objective(compose_config("train", ["optimized_metric=eval/pass_at_8"]), history) == 0.75
    train_mod.LAST_STEP.clear()
    train_mod.LAST_STEP["train/solver/reward"] = 0.25
    try:
        assert train_mod.objective(compose_config("train", ["optimized_metric=train/solver/reward"]), history) == 0.25
        assert math.isnan(train_mod.objective(compose_config("train", ["optimized_metric=train/nothing"]), history))
    finally:
        train_mod.LAST_STEP.clear()
