"""A 2-process CPU DDP run (trainer=ddp_cpu: gloo, Lightning's `ddp` launcher re-running the command):
each rank plays its own games (seed + rank), the logged metrics are the mean over the ranks (token
counts: the sum), only rank 0 writes to MLflow.

Rank r of `seed=0` plays exactly what a single process with `seed=r` plays at the first step
(before the first update, the weights are the same), so the DDP run's first-step metrics must be
the mean of two single-process runs'."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

from lsp_exp.cli.train import train

from tests.helpers.tiny_run import compose_config, run_of_this_test, runs_of_this_test, tiny_overrides

SETUP = ["game=lsp_zero", "eval.judge_pairs=0", "eval.samples=0", "trainer.num_threads=1", "game.n_queries=3"]
MEAN = ["train/solver/reward", "train/entropy/solver", "train/entropy/challenger", "train/query_valid_frac",
        "train/answer_len", "train/query_len", "train/value_mean", "train/challenger/reward"]
SUM = ["train/tokens/solver", "train/tokens/challenger"]


def runs(outputs):
    client = mlflow.MlflowClient(f"sqlite:///{outputs}/mlflow.db")
    exp = client.get_experiment_by_name("lsp-exp")
    return client, list(reversed(runs_of_this_test(f"sqlite:///{outputs}/mlflow.db", "lsp-exp"))) if exp else []


def first_step(client, run_id, keys):
    return {k: client.get_metric_history(run_id, k)[0].value for k in keys}


def test_two_process_cpu_ddp_reduces_metrics_across_ranks(shared_outputs, tmp_path):
    outputs = tmp_path / "ddp"
    # The toy world is shared (built once per session); the MLflow store is this test's own.
    args = [*tiny_overrides(shared_outputs, *SETUP, "trainer=ddp_cpu", "trainer.max_steps=2", "eval.every_n_steps=0",
                            "trainer.checkpoint_every=0", "trainer.enable_progress_bar=false"),
            f"logger.tracking_uri=sqlite:///{outputs}/mlflow.db", f"logger.artifact_location={outputs}/artifacts"]
    out = subprocess.run([sys.executable, "-m", "lsp_exp.cli.train", *args], capture_output=True, text=True,
                         timeout=600)
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


@pytest.mark.slow  # three 2-process runs
def test_ddp_resume_is_exact_per_rank(shared_outputs, tmp_path):
    """Every rank's RNG streams, data sampler and token counts are in the checkpoint: 2 + 2 resumed
    steps of trainer=ddp_cpu log what 4 uninterrupted steps do. The resume command names only the run."""
    from tests.system.test_resume import history
    from tests.helpers.tiny_run import TINY_RM

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


def ddp_probe(shared_outputs, tmp_path, *extra, env=None):
    """A 2-rank ddp_cpu run through tests/helpers/ddp_probe.py: each rank's weight digest after every step."""
    probe = tmp_path / "probe"
    probe.mkdir(exist_ok=True)
    args = [*tiny_overrides(shared_outputs, *SETUP, "trainer=ddp_cpu", "eval.every_n_steps=0",
                            "trainer.checkpoint_every=0", "eval.sample_table_every=0", "optim.lr=1e-2", *extra),
            f"logger.tracking_uri=sqlite:///{tmp_path}/mlflow.db", f"logger.artifact_location={tmp_path}/artifacts"]
    script = str(Path(__file__).resolve().parents[1] / "helpers" / "ddp_probe.py")
    out = subprocess.run([sys.executable, script, *args], capture_output=True, text=True, timeout=600,
                         env={**os.environ, "DDP_PROBE_DIR": str(probe), **(env or {})})
    assert out.returncode == 0, out.stderr[-3000:]
    records = [[json.loads(line) for line in (probe / f"rank{r}.jsonl").read_text().splitlines()] for r in (0, 1)]
    assert [r["step"] for r in records[0]] == [r["step"] for r in records[1]]
    return records, run_of_this_test(f"sqlite:///{tmp_path}/mlflow.db", "lsp-exp")


def test_ddp_ppo_lora_weights_equal_on_every_rank_and_one_nan_skips_every_rank(shared_outputs, tmp_path):
    """PPO (4 inner epochs, each an all-reduced backward) over a LoRA adapter, 2 CPU ranks playing
    different games: after every update the trainable weights are bit-identical on both ranks; at
    step 1 only rank 1's loss is NaN, yet both ranks skip that step's updates (weights unchanged,
    counted on each), and the next step updates again."""
    records, run = ddp_probe(shared_outputs, tmp_path, "algorithm=ppo", "model.lora.enabled=true",
                             "trainer.max_steps=3",
                             "reward._target_=tests.helpers.step_probe.ProbeReward",  # advantages != 0
                             "game.max_query_tokens=24", env={"DDP_PROBE_NAN_RANK": "1", "DDP_PROBE_NAN_STEP": "1"})
    rank0, rank1 = records
    assert [r["step"] for r in rank0] == [-1, 0, 1, 2]
    assert [r["digest"] for r in rank0] == [r["digest"] for r in rank1]   # DDP kept the ranks in step
    start, after0, after1, after2 = (r["digest"] for r in rank0)
    assert start != after0 and after1 == after0 and after2 != after1     # step 1 skipped on both ranks
    # step 1's 4 inner updates are all skipped, on both ranks: one skipped step
    assert [r["skipped"] for r in rank0] == [0, 0, 1, 1] == [r["skipped"] for r in rank1]
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    history = {k: {m.step: m.value for m in client.get_metric_history(run.info.run_id, k)}
               for k in ("train/nonfinite_skips", "train/grad_norm", "train/loss/solver")}
    assert history["train/nonfinite_skips"] == {0: 0.0, 1: 1.0, 2: 1.0}
    assert math.isfinite(history["train/grad_norm"][0]) and math.isfinite(history["train/grad_norm"][2])
    assert math.isnan(history["train/grad_norm"].get(1, float("nan")))
    assert math.isfinite(history["train/loss/solver"][1])  # rank 0's loss was finite (the mean ignores NaN)
    assert run.data.params["algorithm.name"] == "ppo" and run.data.params["model.lora.enabled"] == "True"
