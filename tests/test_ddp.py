"""A 2-process CPU DDP run (trainer=ddp_cpu: gloo, Lightning's `ddp` launcher re-running the command):
each rank plays its own games (seed + rank), the logged metrics are the mean over the ranks (token
counts: the sum), only rank 0 writes to MLflow.

Rank r of `seed=0` plays exactly what a single process with `seed=r` plays at the first step
(before the first update, the weights are the same), so the DDP run's first-step metrics must be
the mean of two single-process runs'."""
import subprocess
import sys
import time

import mlflow
import pytest

from lsp_exp.cli.train import train

from conftest import compose_config, tiny_overrides

SETUP = ["game=lsp_zero", "eval.judge_pairs=0", "eval.samples=0", "trainer.num_threads=1", "game.n_queries=3"]
MEAN = ["train/solver/reward", "train/entropy/solver", "train/entropy/challenger", "train/query_valid_frac",
        "train/answer_len", "train/query_len", "train/value_mean", "train/challenger/reward"]
SUM = ["train/tokens/solver", "train/tokens/challenger"]


def runs(outputs):
    client = mlflow.MlflowClient(f"sqlite:///{outputs}/mlflow.db")
    exp = client.get_experiment_by_name("lsp-exp")
    return client, client.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"]) if exp else []


def first_step(client, run_id, keys):
    return {k: client.get_metric_history(run_id, k)[0].value for k in keys}


def test_two_process_cpu_ddp_reduces_metrics_across_ranks(shared_outputs, tmp_path):
    outputs = tmp_path / "ddp"
    # The toy world is shared (built once per session); the MLflow store is this test's own.
    args = [*tiny_overrides(shared_outputs, *SETUP, "trainer=ddp_cpu", "trainer.max_steps=2", "eval.every_n_steps=0",
                            "trainer.checkpoint_every=0", "trainer.enable_progress_bar=false"),
            f"logger.tracking_uri=sqlite:///{outputs}/mlflow.db", f"logger.artifact_location={outputs}/artifacts"]
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "lsp_exp.cli.train", *args], capture_output=True, text=True, timeout=600)
    wall = time.perf_counter() - start
    assert out.returncode == 0, out.stderr[-3000:]
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in out.stderr + out.stdout
    client, found = runs(outputs)
    assert len(found) == 1, "only rank 0 creates a run"  # and only it writes: one value per step
    run = found[0]
    assert run.info.status == "FINISHED" and run.data.params["trainer.strategy"] == "ddp"
    history = client.get_metric_history(run.info.run_id, "train/solver/reward")
    assert [m.step for m in history] == [0, 1]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "eval/accuracy")] == [0, 2]  # rank 0 only
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"config", "model"}
    ddp = first_step(client, run.info.run_id, MEAN + SUM)

    single = []
    for seed in (0, 1):  # what each rank played, as a single process
        train(compose_config("train", tiny_overrides(shared_outputs, *SETUP, f"seed={seed}", "trainer.max_steps=1",
                                                     "trainer.checkpoint_every=0")))
        client, found = runs(shared_outputs)
        single.append(first_step(client, found[0].info.run_id, MEAN + SUM))
    assert any(single[0][k] != single[1][k] for k in MEAN), "the ranks played the same games"
    for key in MEAN:
        assert ddp[key] == pytest.approx((single[0][key] + single[1][key]) / 2, rel=1e-5, abs=1e-6), key
    for key in SUM:
        assert ddp[key] == pytest.approx(single[0][key] + single[1][key]), key
    print(f"ddp_cpu run: {wall:.1f} s wall")


@pytest.mark.slow  # three 2-process runs
def test_ddp_resume_is_exact_per_rank(shared_outputs, tmp_path):
    """Every rank's RNG streams, data sampler and token counts are in the checkpoint: 2 + 2 resumed
    steps of trainer=ddp_cpu log what 4 uninterrupted steps do. The resume command names only the run."""
    from test_resume import history
    from test_train_e2e import TINY_RM

    store = [f"logger.tracking_uri=sqlite:///{shared_outputs}/mlflow.db"]
    args = tiny_overrides(shared_outputs, "trainer=ddp_cpu", "game=grpo_data", "reward=tiny_rm", *TINY_RM,
                          "eval.samples=0", "eval.judge_pairs=0", "trainer.checkpoint_every=2")

    def cli(*extra):
        out = subprocess.run([sys.executable, "-m", "lsp_exp.cli.train", *extra], capture_output=True, text=True,
                             timeout=600)
        assert out.returncode == 0, out.stderr[-3000:]
        return runs(shared_outputs)[1][0].info.run_id

    full = cli(*args, "trainer.max_steps=4")
    first = cli(*args, "trainer.max_steps=2")
    assert cli(f"resume={first}", "trainer.max_steps=4", *store) == first
    _, expected = history(shared_outputs, full)
    _, got = history(shared_outputs, first)
    for key in expected:
        if key.startswith("train/"):
            assert got[key] == expected[key], key
