"""A 2 x 2 multirun with the joblib launcher (hydra/launcher=local_parallel, 2 jobs at a time):
four MLflow runs in one sqlite store, written by parallel processes without "database is locked"."""
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

from lsp_exp.cli.train import train

from tests.helpers.tiny_run import compose_config, tiny_overrides

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

    from tests.helpers.tiny_run import CONF_DIR

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

    result = train_mod.JobResult(history={0: {"accuracy": 0.4}, 3: {"accuracy": 0.5, "pass_at_8": 0.75}},
                                 last_step={"train/solver/reward": 0.25})
    assert train_mod.objective(compose_config("train", []), result) == 0.5
    assert train_mod.objective(compose_config("train", ["optimized_metric=eval/pass_at_8"]), result) == 0.75
    assert train_mod.objective(compose_config("train", ["optimized_metric=train/solver/reward"]), result) == 0.25
    assert math.isnan(train_mod.objective(compose_config("train", ["optimized_metric=train/nothing"]), result))


def _job_log_errors(tmp_path, job: int) -> list[str]:
    return [line for line in (tmp_path / "sweep" / str(job) / "train.log").read_text().splitlines() if "error:" in line]


def _sweep_runs(client):
    experiment = client.get_experiment_by_name("lsp-exp")
    runs = client.search_runs([experiment.experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("kind") == "sweep"]
    return parent, [r for r in runs if r.data.tags.get("kind") != "sweep"]


def test_a_failed_job_does_not_stop_the_sweep(shared_outputs, tmp_path):
    """The basic launcher: job 0 fails (optim.lr=-1: a ConfigError, SystemExit(2)
    outside a sweep), job 1 still runs and finishes; the failure is one line in job 0's log and in the
    end-of-sweep summary, the parent run ends FAILED and the command exits 1, with no traceback."""
    train(compose_config("train", tiny_overrides(shared_outputs, "logger=none", "trainer.max_steps=1", "eval.samples=0",
                                                 "eval.judge_pairs=0")))  # the toy world exists before the jobs start
    out, client = _multirun(shared_outputs, tmp_path, "optim.lr=-1,2e-5", "game=lsp_zero", "trainer.max_steps=1",
                            "eval.max_problems=4")
    assert out.returncode == 1, out.stderr[-3000:]
    assert "Traceback" not in out.stderr
    line = "error: job 0 (optim.lr=-1) failed: optim.lr=-1.0: must be > 0"
    assert len(_job_log_errors(tmp_path, 0)) == 1 and _job_log_errors(tmp_path, 0)[0].endswith(line)
    assert _job_log_errors(tmp_path, 1) == []
    parent, jobs = _sweep_runs(client)
    assert [(r.data.params["optim.lr"], r.info.status) for r in jobs] == [("2e-05", "FINISHED")]   # job 1 ran
    assert parent.info.status == "FAILED"
    summary = out.stdout[out.stdout.index("1 of 2 jobs failed:"):].splitlines()
    assert summary[1] == f"  {line}"
    assert "error: 1 of 2 jobs failed" in out.stderr


def test_failed_jobs_of_the_joblib_launcher_are_recorded(shared_outputs, tmp_path):
    """hydra/launcher=local_parallel: two jobs that fail in parallel worker processes (each records its
    end under the sweep's lock); the summary names both, the parent ends FAILED, exit 1. (Jobs that
    finish under it: test_joblib_sweep_logs_four_runs_to_one_sqlite_store.)"""
    out, client = _multirun(shared_outputs, tmp_path, "hydra/launcher=local_parallel", "hydra.launcher.n_jobs=2",
                            "optim.lr=-1,-2")
    assert out.returncode == 1, out.stderr[-3000:]
    assert "Traceback" not in out.stderr
    summary = out.stdout[out.stdout.index("2 of 2 jobs failed:"):].splitlines()
    assert summary[1:3] == ["  error: job 0 (optim.lr=-1) failed: optim.lr=-1.0: must be > 0",
                            "  error: job 1 (optim.lr=-2) failed: optim.lr=-2.0: must be > 0"]
    parent, jobs = _sweep_runs(client)
    assert jobs == [] and parent.info.status == "FAILED"
    assert [len(_job_log_errors(tmp_path, n)) for n in (0, 1)] == [1, 1]


def test_the_end_of_a_sweep_names_its_failed_jobs(tmp_path, capsys):
    """From the jobs' records (written by each job's process, under the sweep's lock): nothing failed,
    no line; one failed, the count and its line. (The parents' status: the tests above and below.)"""
    from omegaconf import OmegaConf

    from lsp_exp.run.sweep_callback import end_sweep
    from lsp_exp.run.sweep_jobs import record_job

    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}})
    record_job(tmp_path, 0, ["seed=0"], None)
    record_job(tmp_path, 1, ["seed=1"], None)
    assert end_sweep(config) is False and capsys.readouterr().out == ""
    record_job(tmp_path, 1, ["seed=1"], "error: job 1 (seed=1) failed: boom")
    assert end_sweep(config) is True
    out = capsys.readouterr()
    assert out.out.splitlines() == ["1 of 2 jobs failed:", "  error: job 1 (seed=1) failed: boom"]
    assert out.err.splitlines() == ["error: 1 of 2 jobs failed (listed above, each in its job's log); the parent "
                                    "runs end FAILED"]


def test_an_optuna_study_goes_on_after_a_failed_trial(shared_outputs, tmp_path):
    """hparams_search=toy_lr_beta with kl.beta searched in {-1, 0.05} (its TPE sampler, seed 0, draws
    -1 then 0.05): the first trial fails in one line, the second still trains and is the study's
    best; the parent ends FAILED and the command exits 1."""
    import yaml

    train(compose_config("train", tiny_overrides(shared_outputs, "logger=none", "trainer.max_steps=1", "eval.samples=0",
                                                 "eval.judge_pairs=0")))
    out, client = _multirun_plain(shared_outputs, tmp_path, "hparams_search=toy_lr_beta", "hydra.sweeper.n_trials=2",
                                  "kl.beta=choice(-1.0,0.05)", "game=lsp_zero", "trainer.max_steps=1",
                                  "eval.max_problems=4")
    assert out.returncode == 1, out.stderr[-3000:]
    assert "Traceback" not in out.stderr
    parent, jobs = _sweep_runs(client)
    assert [(r.data.params["kl.beta"], r.info.status) for r in jobs] == [("0.05", "FINISHED")]
    assert parent.info.status == "FAILED"
    assert "1 of 2 jobs failed:" in out.stdout and "failed: kl.beta=-1.0: must be >= 0" in out.stdout
    results = yaml.safe_load((tmp_path / "sweep" / "optimization_results.yaml").read_text())
    assert results["best_params"]["kl.beta"] == 0.05 and results["best_value"] == jobs[0].data.metrics["eval/accuracy"]


def test_an_optuna_study_whose_trials_all_fail_ends_in_lines(shared_outputs, tmp_path):
    """Every trial of hparams_search=toy_lr_beta fails (kl.beta=-1 fixed on the command line): each is
    one line, the study's end is one line instead of Optuna's traceback, the parent ends FAILED and
    the command exits 1."""
    out, client = _multirun_plain(shared_outputs, tmp_path, "hparams_search=toy_lr_beta", "hydra.sweeper.n_trials=2",
                                  "kl.beta=-1")
    assert out.returncode == 1, out.stderr[-3000:]
    assert "Traceback" not in out.stderr
    assert "no trial of the study completed" in out.stderr
    parent, jobs = _sweep_runs(client)
    assert jobs == [] and parent.info.status == "FAILED"
    assert "2 of 2 jobs failed:" in out.stdout
    assert [len(_job_log_errors(tmp_path, n)) for n in (0, 1)] == [1, 1]
