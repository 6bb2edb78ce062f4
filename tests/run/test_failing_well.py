"""Failing well: non-finite losses, exceptions, a tracking server that is dead or
goes away, degenerate generations. Tiny in-process runs on the toy world built in the tests."""
from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import mlflow
import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

import lsp_exp.games.challenger
import lsp_exp.run.playout
import lsp_exp.run.self_play
import lsp_exp.cli.train
from lsp_exp.run import tracking_failures
from lsp_exp.run.self_play import NonFiniteLossError, SelfPlayModule
from lsp_exp.run.tracking_failures import TrackingLostError, TrackingUnreachableError, check_reachable
from lsp_exp.cli.train import train

from tests.helpers.tiny_run import compose_config, run_of, runs_of_this_test, tiny_overrides
from tests.helpers.network import closed_port

# Keep each run to the step itself: no sampled eval, no judge, no tables, 4 held-out problems.
FAST = ["game=lsp_zero", "eval.samples=0", "eval.every_n_steps=0", "eval.judge_pairs=0", "eval.max_problems=4",
        "eval.sample_table_every=0"]


def test_mlflow_http_client_is_bounded_and_a_dead_server_fails_in_seconds():
    import os

    assert int(os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"]) <= 3
    assert int(os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"]) <= 30
    uri = f"http://127.0.0.1:{closed_port()}"
    # (how long it takes is bounded by the two settings above; timings belong in benchmarks, not here)
    with pytest.raises(TrackingUnreachableError,
                       match="logger.tracking_uri='http://127.0.0.1:.*tracking server unreachable"):
        check_reachable(uri)


def test_nonfinite_losses_are_skipped_counted_and_too_many_stop_the_run_failed(shared_outputs, monkeypatch):
    from tests.helpers import step_probe

    step_probe.poison_losses(monkeypatch, [1, 3, 4])  # NaN losses at steps 1, 3 and 4: 2 in a row at step 4
    cfg = compose_config("train", tiny_overrides(shared_outputs, *FAST, "trainer.max_steps=8",
                                                 "trainer.max_consecutive_nonfinite=2", "+tags.failcase=nonfinite"))
    with pytest.raises(NonFiniteLossError, match=r"^2 non-finite losses or gradients in a row \(the last at step 4; "
                                                 r"3 skipped in all\).*trainer.max_consecutive_nonfinite=2"):
        train(cfg)
    run, history, client = run_of(shared_outputs, "nonfinite")
    assert history["train/nonfinite_skips"] == [(0, 0.0), (1, 1.0), (2, 1.0), (3, 2.0)]
    assert run.info.status == "FAILED"
    assert run.data.tags["error"].startswith("NonFiniteLossError: 2 non-finite losses")
    text = mlflow.artifacts.load_text(f"{run.info.artifact_uri}/error.txt")
    assert "Traceback" in text and "NonFiniteLossError" in text


def test_a_finite_loss_with_a_non_finite_gradient_skips_that_update_only(shared_outputs, monkeypatch):
    """At step 1 the loss is finite but one weight's gradient is inf (a hook on it): the update is
    skipped (the weights stay exactly as they were), counted once, the norm is not logged as a number;
    the steps before and after update the weights."""
    import torch

    seen = {}

    def start(self, batch, batch_idx):
        params = [p for p in self.policy.parameters() if p.requires_grad]
        seen["before"] = [p.detach().clone() for p in params]
        seen["hook"] = params[0].register_hook(lambda g: g * float("inf")) if batch_idx == 1 else None

    def end(self, outputs, batch, batch_idx):
        if seen["hook"] is not None:
            seen["hook"].remove()
        params = [p for p in self.policy.parameters() if p.requires_grad]
        seen[batch_idx] = all(torch.equal(a, p.detach()) for a, p in zip(seen["before"], params, strict=True))

    monkeypatch.setattr(SelfPlayModule, "on_train_batch_start", start, raising=False)
    monkeypatch.setattr(SelfPlayModule, "on_train_batch_end", end, raising=False)
    # the probe reward: non-zero advantages, so every step that is not skipped moves the weights
    train(compose_config("train", tiny_overrides(shared_outputs, *FAST, "trainer.max_steps=3", "optim.lr=1e-2",
                                                 "reward._target_=tests.helpers.step_probe.ProbeReward",
                                                 "game.n_queries=4", "game.max_query_tokens=24",
                                                 "+tags.failcase=inf_grad")))
    assert [seen[s] for s in (0, 1, 2)] == [False, True, False]   # unchanged only at the skipped step
    run, history, _ = run_of(shared_outputs, "inf_grad")
    assert history["train/nonfinite_skips"] == [(0, 0.0), (1, 1.0), (2, 1.0)]
    assert all(math.isfinite(v) for _, v in history["train/loss/solver"])   # the loss was finite throughout
    assert run.info.status == "FINISHED"
    norms = dict(history["train/grad_norm"])
    assert math.isnan(norms.get(1, float("nan"))) and math.isfinite(norms[0]) and math.isfinite(norms[2])


def test_an_exception_outside_the_training_loop_ends_the_run_failed_with_the_error(shared_outputs, monkeypatch, capsys):
    """Through the `lsp-train` entry in-process: the final model cannot be saved (after Lightning
    has already ended the run FINISHED); the run ends FAILED, the error is logged, Hydra prints it."""
    from hydra.core.global_hydra import GlobalHydra

    def broken(*args, **kwargs):
        raise OSError("disk full while saving the model")

    monkeypatch.setattr(lsp_exp.cli.train, "log_final_model", broken)
    monkeypatch.setattr(sys, "argv", ["lsp-train", *tiny_overrides(shared_outputs, *FAST, "trainer.max_steps=1",
                                                                   "+tags.failcase=after_fit")])
    try:
        with pytest.raises(SystemExit) as exit_:
            lsp_exp.cli.train.main()
    finally:
        GlobalHydra.instance().clear()
    assert exit_.value.code not in (0, None)
    assert "disk full while saving the model" in capsys.readouterr().err
    run, _, _ = run_of(shared_outputs, "after_fit")
    assert run.info.status == "FAILED"
    assert run.data.tags["error"] == "OSError: disk full while saving the model"


def test_a_tracking_outage_mid_run_costs_no_training_and_the_final_model_is_kept(shared_outputs, monkeypatch, caplog):
    """The server 'goes away' at step 1 and comes back at step 3: training goes on, the metrics
    kept meanwhile are replayed. Then (a remote store, pretended) it goes away for good before the
    final model is uploaded (retried for END_WAIT_S): the model is saved locally first, the error says
    where, and the run is not marked FINISHED without its model."""
    monkeypatch.setattr(tracking_failures, "RETRY_S", 0.0)
    monkeypatch.setattr(tracking_failures, "END_WAIT_S", 0.5)
    monkeypatch.setattr(lsp_exp.run.tracking, "is_remote", lambda uri: True)
    outage = {"on": False}
    real_step, real_log_batch = SelfPlayModule.training_step, MlflowClient.log_batch

    def step(self, batch, batch_idx):
        outage["on"] = self.global_step in (1, 2)
        return real_step(self, batch, batch_idx)

    def log_batch(self, *args, **kwargs):
        if outage["on"]:
            raise MlflowException("API request to http://tracking.invalid failed: Max retries exceeded")
        return real_log_batch(self, *args, **kwargs)

    def log_artifacts(self, *args, **kwargs):
        raise MlflowException("API request to http://tracking.invalid failed: Connection refused")

    monkeypatch.setattr(SelfPlayModule, "training_step", step)
    monkeypatch.setattr(MlflowClient, "log_batch", log_batch)
    monkeypatch.setattr(MlflowClient, "log_artifacts", log_artifacts)
    cfg = compose_config("train", tiny_overrides(shared_outputs, *FAST, "trainer.max_steps=5", "+tags.failcase=outage"))
    with caplog.at_level("WARNING", logger="lsp_exp.run.tracking_failures"):
        with pytest.raises(TrackingLostError, match="refused the final model .*; it is saved in") as err:
            train(cfg)
    assert "unreachable at step 1" in caplog.text and "is back" in caplog.text
    run, history, _ = run_of(shared_outputs, "outage")
    assert [s for s, _ in history["train/solver/reward"]] == [0, 1, 2, 3, 4]  # nothing lost
    assert run.info.status == "RUNNING"  # gone for good before the model: never told FINISHED without it
    local = shared_outputs / "models" / run.info.run_id / "model"
    assert (local / "config.json").is_file() and str(local) in str(err.value)
    assert "did not get" not in str(err.value)  # the store had every metric before the model


def stub_degenerate(real):
    """`generate` whose rows 0-2 are made degenerate: all padding, an end token at once (empty),
    no end token at all (truncated at the length limit)."""
    def generate(model, tokenizer, prompts, **kwargs):
        out = real(model, tokenizer, prompts, **kwargs)
        ids, attn, comp = out.input_ids, out.attention_mask, out.completion_mask
        started = comp.any(0).nonzero()
        p = int(started[0]) if len(started) else ids.shape[1]
        pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
        filler = tokenizer.convert_tokens_to_ids("7")
        for row, (first, rest, count) in enumerate([(pad, pad, 0), (eos, pad, 1), (filler, filler, ids.shape[1] - p)]):
            if row >= len(ids) or p >= ids.shape[1]:
                break
            ids[row, p:], ids[row, p] = rest, first
            attn[row, p:], comp[row, p:] = 0, 0
            attn[row, p:p + count], comp[row, p:p + count] = 1, 1
            out.texts[row] = "7" * count if first == filler else ""
            out.finished[row] = first == eos
        return out
    return generate


def test_degenerate_generations_are_counted_and_logged_without_crashing(shared_outputs, monkeypatch):
    monkeypatch.setattr(lsp_exp.games.challenger, "generate", stub_degenerate(lsp_exp.games.challenger.generate))
    monkeypatch.setattr(lsp_exp.run.playout, "generate", stub_degenerate(lsp_exp.run.playout.generate))
    train(compose_config("train", tiny_overrides(shared_outputs, *FAST, "trainer.max_steps=2", "game.n_queries=4",
                                                 "game.group_size=2", "+tags.failcase=degenerate")))
    run, history, _ = run_of(shared_outputs, "degenerate")
    last = {k: v[-1][1] for k, v in history.items()}
    assert run.info.status == "FINISHED" and last["train/nonfinite_skips"] == 0
    assert last["train/degenerate/query_all_pad_frac"] == 0.25                 # 1 of 4 queries
    assert last["train/degenerate/query_empty_frac"] >= 0.5                    # all padding and end-at-once
    assert last["train/degenerate/query_truncated_frac"] >= 0.5
    assert last["train/degenerate/answer_all_pad_frac"] == 1 / 8               # 1 of 4 x 2 answers
    assert last["train/degenerate/answer_empty_frac"] >= 2 / 8
    assert last["train/degenerate/query_over_length_frac"] == 0.0
    assert last["train/query_valid_frac"] <= 0.25                              # degenerate queries are invalid


def test_degenerate_prompts_from_a_file_are_counted(shared_outputs, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("\n".join(json.dumps({"prompt": p}) for p in ["1+" * 40 + "1", "2+3"]) + "\n")
    train(compose_config("train", tiny_overrides(shared_outputs, *FAST, "game=grpo_data",
                                                 f"game.prompts_path={prompts}", "trainer.max_steps=1",
                                                 "game.n_queries=6", "+tags.failcase=prompts")))
    _, history, _ = run_of(shared_outputs, "prompts")
    assert history["train/degenerate/query_empty_frac"][0][1] == 0  # (a prompt file refuses empty prompts)
    assert 0 < history["train/degenerate/query_over_length_frac"][0][1] < 1
    assert "train/degenerate/answer_truncated_frac" in history


@pytest.mark.slow
def test_a_real_tracking_server_that_goes_away_mid_run_and_comes_back(shared_outputs, tmp_path):
    """`mlflow server` on loopback, stopped after a few steps and started again 10 s later on the
    same store: `lsp-train` trains on, replays the metrics it kept, and ends the run FINISHED with
    every step and the model."""
    import os
    import signal
    import subprocess
    import urllib.request

    port = closed_port()
    uri = f"http://127.0.0.1:{port}"
    server_cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                  "--workers", "1", "--backend-store-uri", f"sqlite:///{tmp_path}/server.db",
                  "--artifacts-destination", str(tmp_path / "art")]

    def start_server():
        proc = subprocess.Popen(server_cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        for _ in range(240):
            try:
                urllib.request.urlopen(f"{uri}/health", timeout=2).close()
                return proc
            except OSError:
                time.sleep(0.5)
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("mlflow server did not start")

    def stop_server(proc):
        os.killpg(proc.pid, signal.SIGTERM)  # its own session: the server and its workers
        proc.wait(timeout=60)

    server = start_server()
    run = subprocess.Popen([sys.executable, "-m", "lsp_exp.cli.train", *tiny_overrides(
        shared_outputs, *FAST, "trainer.max_steps=150", f"logger.tracking_uri={uri}", "+tags.failcase=real_server")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "LSP_TRACKING_RETRY_S": "2"})
    import threading

    lines: list[str] = []
    noticed = threading.Event()  # the run has said the server is unreachable: only then does it come back

    def read(stream):
        for line in stream:
            lines.append(line)
            if "unreachable at step" in line:
                noticed.set()

    readers = [threading.Thread(target=read, args=(s,), daemon=True) for s in (run.stdout, run.stderr)]
    for reader in readers:
        reader.start()
    try:
        client = MlflowClient(uri)
        for _ in range(600):  # until a few steps are logged (polling, no assertion on time)
            runs = runs_of_this_test(uri)
            if runs and len(client.get_metric_history(runs[0].info.run_id, "train/solver/reward")) >= 3:
                break
            assert run.poll() is None, "".join(lines)[-3000:]
            time.sleep(0.5)
        run_id = runs[0].info.run_id
        stop_server(server)
        while not noticed.wait(timeout=1):  # the run trains on and says so; it must not end meanwhile
            assert run.poll() is None, "the run ended before it noticed the server was gone:\n" + "".join(lines)[-3000:]
        server = start_server()
        run.wait(timeout=600)
        for reader in readers:
            reader.join(timeout=60)
        stdout, stderr = "".join(lines), ""
        assert run.returncode == 0, stderr[-3000:]
        assert "unreachable at step" in stdout + stderr and "is back after" in stdout + stderr
        finished = MlflowClient(uri).get_run(run_id)
        steps = [m.step for m in MlflowClient(uri).get_metric_history(run_id, "train/solver/reward")]
        assert finished.info.status == "FINISHED" and sorted(steps) == list(range(150))
        assert "model" in {a.path for a in MlflowClient(uri).list_artifacts(run_id)}
        assert (shared_outputs / "models" / run_id / "model" / "config.json").is_file()
    finally:
        if run.poll() is None:
            run.kill()
        stop_server(server)


def test_an_update_that_makes_the_weights_non_finite_stops_the_run(shared_outputs):
    """optim.lr=1e39 is a finite number (it passes the start-up checks) but overflows float32 in the
    optimizer: the first real update would leave inf weights behind; the run stops in one line."""
    from lsp_exp.run.self_play import NonFiniteLossError
    from tests.helpers.tiny_run import TINY_RM

    cfg = compose_config("train", tiny_overrides(shared_outputs, *FAST, "game=grpo_data", "reward=tiny_rm", *TINY_RM,
                                                 "optim.lr=1e39", "trainer.max_steps=3", "logger=none"))
    with pytest.raises(NonFiniteLossError, match="made the weights non-finite") as err:
        train(cfg)
    assert "\n" not in str(err.value)


@pytest.mark.slow  # every refused write waits for sqlite's busy timeout (about 2 minutes in all)
def test_a_local_store_locked_to_the_end_loses_no_metric_silently(tmp_path, monkeypatch):
    """A real fault: from the second step on, another connection holds an exclusive lock on the
    run's sqlite store until the run ends. The run stops with one line (exit 2 from the command
    line) saying where the metrics the store refused are, and that file holds every step it refused."""
    import sqlite3

    import lsp_exp.run.self_play as module
    from lsp_exp.run.tracking_failures import TrackingLostError

    monkeypatch.setenv("LSP_TRACKING_RETRY_S", "0")
    monkeypatch.setattr("lsp_exp.run.tracking_failures.RETRY_S", 0.0)
    monkeypatch.setattr("lsp_exp.run.tracking_failures.END_WAIT_S", 1.0)
    db = tmp_path / "mlflow.db"
    lock = {}
    real_step = module.SelfPlayModule.training_step

    def step(self, batch, batch_idx):
        if self.global_step == 1 and "conn" not in lock:
            lock["conn"] = sqlite3.connect(db, timeout=0, isolation_level=None)
            lock["conn"].execute("BEGIN EXCLUSIVE")
        return real_step(self, batch, batch_idx)

    monkeypatch.setattr(module.SelfPlayModule, "training_step", step)
    cfg = compose_config("train", tiny_overrides(tmp_path, *FAST, "trainer.max_steps=3", "+tags.failcase=locked"))
    try:
        with pytest.raises(TrackingLostError, match="refused metrics until the end") as err:
            train(cfg)
    finally:
        if "conn" in lock:
            lock["conn"].execute("ROLLBACK")
            lock["conn"].close()
    assert "\n" not in str(err.value)
    kept = Path(str(err.value).split("are in ")[1].split(";")[0])
    steps = [json.loads(line)["step"] for line in kept.read_text().splitlines()]
    assert {1, 2} <= set(steps)                 # the steps the locked store refused, kept on disk


def test_sigterm_during_start_up_ends_the_run_killed(tmp_path):
    """A real SIGTERM while the run exists but training has not started (its Trainer is slow to
    build: 20 s here): the process exits 143 and the MLflow run ends KILLED, not RUNNING forever."""
    import os
    import signal
    import subprocess

    script = tmp_path / "start.py"
    script.write_text(f"""
import sys, time
sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})
import lightning, lsp_exp.cli.train as entry
from tests.helpers.tiny_run import compose_config, tiny_overrides
class SlowTrainer(lightning.Trainer):
    def __init__(self, *a, **k):
        print("RUN_EXISTS", flush=True); time.sleep(20); super().__init__(*a, **k)
lightning.Trainer = SlowTrainer  # run/session.py builds it as L.Trainer
entry.hydra_main.__wrapped__(compose_config("train", tiny_overrides({str(tmp_path)!r}, *{FAST!r},
                             "trainer.max_steps=2", "+tags.failcase=startup")))
""")
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if "RUN_EXISTS" in line:
            break
    os.kill(proc.pid, signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr[-2000:]
    assert "interrupted during start-up (SIGTERM): the run is marked KILLED" in stderr and "Traceback" not in stderr
    run, _, _ = run_of(tmp_path, "startup")
    assert run.info.status == "KILLED"
