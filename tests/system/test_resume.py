"""Exact resume: a run of 2k steps and a run of k steps resumed to 2k log the same metrics (but perf/*)."""
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import torch

from lsp_exp.run.checkpointing import (CheckpointError, ResumeError, latest_checkpoint, merge_overrides, readable,
                                       resolve_resume)
from lsp_exp.run.tracking import init_sqlite_store
from lsp_exp.cli.train import train

from tests.helpers.tiny_run import compose_config, runs_of_this_test, tiny_overrides
from tests.helpers.tiny_run import TINY_RM


def history(outputs, run_id):
    client = mlflow.MlflowClient(f"sqlite:///{outputs}/mlflow.db")
    run = client.get_run(run_id)
    return run, {k: sorted((m.step, m.value) for m in client.get_metric_history(run_id, k))
                 for k in run.data.metrics if not k.startswith("perf/")}


def run_ids(outputs):
    """This test's runs in the store, newest first (found by its tag, tests/helpers/tiny_run.py)."""
    return [r.info.run_id for r in reversed(runs_of_this_test(f"sqlite:///{outputs}/mlflow.db", "lsp-exp"))]


def one_run(outputs, *extra):
    train(compose_config("train", tiny_overrides(outputs, "trainer.checkpoint_every=2", *extra)))
    return run_ids(outputs)[0]


def test_resumed_run_logs_the_same_metrics_as_an_uninterrupted_one(shared_outputs):
    """k=2, 2k=4: grpo_data (its prompt sampler is state too), adaptive KL (controller state), and the
    tiny reward model, so that rewards vary and the weights move (the tiny policy never answers right)."""
    common = ["game=grpo_data", "kl=adaptive", "eval.every_n_steps=2", "reward=tiny_rm", *TINY_RM]
    full = one_run(shared_outputs, "trainer.max_steps=4", *common)
    first = one_run(shared_outputs, "trainer.max_steps=2", *common)
    ckpt = latest_checkpoint(shared_outputs / "checkpoints" / first)
    assert ckpt is not None and ckpt.name == "step_0000002.ckpt"
    assert resolve_resume(first, str(shared_outputs)) == ckpt  # a run id finds its newest checkpoint
    saved = torch.load(ckpt, map_location="cpu", weights_only=False)
    assert saved["lsp"]["run_id"] == first and saved["global_step"] == 2
    assert {"python", "numpy", "torch"} <= set(saved["lsp"]["rng"][0]) and "game" in saved and "kl_controllers" in saved
    assert saved["optimizer_states"]

    train(compose_config("train", tiny_overrides(shared_outputs, "trainer.max_steps=4", *common,
                                                 "trainer.checkpoint_every=2", f"resume={first}")))
    assert run_ids(shared_outputs)[0] == first  # no new run: the same one continued
    run_full, expected = history(shared_outputs, full)
    run_resumed, got = history(shared_outputs, first)
    assert run_resumed.info.status == "FINISHED" and run_resumed.data.tags["resumed_from_step"] == "2"
    assert set(got) == set(expected)
    for key in expected:
        if key.startswith("eval/"):  # the first segment's end-of-run evaluation (at step 2) is extra
            extra = [point for point in got[key] if point not in expected[key]]
            assert all(step == 2 for step, _ in extra), key
            got[key] = [point for point in got[key] if point in expected[key]]
        assert got[key] == expected[key], key
    assert len(got["train/solver/reward"]) == 4
    assert len({v for _, v in got["train/solver/reward"]}) > 1 and all(v > 0 for _, v in got["train/grad_norm"])


@pytest.mark.slow  # about 45 s on 2 busy cores: two lsp-train processes
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_writes_a_checkpoint_that_resumes(shared_outputs, tmp_path, sig):
    """SIGTERM (a preemption) or Ctrl-C mid-run: the step in progress finishes, a checkpoint is
    written, the process exits 143 and the run is KILLED; `resume=<run id>` then finishes the same run."""
    outputs = tmp_path / "store"
    args = [*tiny_overrides(shared_outputs, "game=lsp_zero", "trainer.max_steps=500", "trainer.checkpoint_every=0",
                            "eval.samples=0", "eval.judge_pairs=0", "eval.every_n_steps=0",
                            "eval.sample_table_every=0"),
            f"logger.tracking_uri=sqlite:///{outputs}/mlflow.db", f"logger.artifact_location={outputs}/artifacts"]
    init_sqlite_store(f"sqlite:///{outputs}/mlflow.db")  # before this test's client reads it, as the run would
    proc = subprocess.Popen([sys.executable, "-m", "lsp_exp.cli.train", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:  # wait for the first logged step
            time.sleep(1)
            if (outputs / "mlflow.db").exists():
                ids = run_ids(outputs)
                client = mlflow.MlflowClient(f"sqlite:///{outputs}/mlflow.db")
                if ids and client.get_metric_history(ids[0], "train/solver/reward"):
                    break
        proc.send_signal(sig)
        log, _ = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 143, log[-3000:]
    run_id = run_ids(outputs)[0]
    run = mlflow.MlflowClient(f"sqlite:///{outputs}/mlflow.db").get_run(run_id)
    assert run.info.status == "KILLED"
    ckpt = Path(run.data.tags["checkpoint"])
    step = int(ckpt.stem.split("_")[1])
    assert ckpt.is_file() and 1 <= step < 500 and "interrupted: checkpoint at" in log

    # The command line names only the run (and its store): the config is the run's own, recomposed
    # from the overrides saved in the checkpoint (else this would build the full-size toy world). Its
    # checkpoints are outside this command's paths.outputs, found through the run's checkpoint_dir tag:
    # that is followed only when the command says so (a tag anyone who can write the store can set).
    done = subprocess.run([sys.executable, "-m", "lsp_exp.cli.train", f"resume={run_id}",
                           f"trainer.max_steps={step + 1}", f"logger.tracking_uri=sqlite:///{outputs}/mlflow.db",
                           "trust_checkpoint_dir_tag=true"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    client = mlflow.MlflowClient(f"sqlite:///{outputs}/mlflow.db")
    assert run_ids(outputs) == [run_id] and client.get_run(run_id).info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(run_id, "train/solver/reward")]
    assert steps == list(range(step + 1))  # every step once: none lost, none repeated
    config = client.download_artifacts(run_id, f"config/resumed_step_{step:07d}.yaml", str(tmp_path))
    assert "name: lsp_zero" in Path(config).read_text() and f"max_steps: {step + 1}" in Path(config).read_text()


def test_lora_checkpoint_holds_only_the_adapter_and_resumes(shared_outputs, tmp_path):
    common = ["game=grpo_data", "reward=tiny_rm", *TINY_RM, "model.lora.enabled=true", "model.lora.r=2",
              "eval.samples=0", "eval.judge_pairs=0", "trainer.checkpoint_every=1",
              f"trainer.checkpoint_dir={tmp_path}", "logger=none"]
    train(compose_config("train", tiny_overrides(shared_outputs, *common, "trainer.max_steps=1")))
    ckpt = latest_checkpoint(tmp_path)
    keys = list(torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"])
    assert keys and all("lora_" in k for k in keys)
    history = train(compose_config("train", tiny_overrides(shared_outputs, *common, "trainer.max_steps=2",
                                                           f"resume={ckpt}")))
    assert max(history) == 2 and latest_checkpoint(tmp_path).name == "step_0000002.ckpt"
    resumed = torch.load(latest_checkpoint(tmp_path), map_location="cpu", weights_only=False)["state_dict"]
    common[-2] = f"trainer.checkpoint_dir={tmp_path / 'full'}"  # the same 2 steps without a stop
    train(compose_config("train", tiny_overrides(shared_outputs, *common, "trainer.max_steps=2")))
    full = torch.load(latest_checkpoint(tmp_path / "full"), map_location="cpu", weights_only=False)["state_dict"]
    assert full.keys() == resumed.keys() and all(torch.equal(full[k], resumed[k]) for k in full)
    assert any(v.abs().sum() > 0 for k, v in full.items() if "lora_B" in k)  # the adapter moved (from zero)


def test_resume_finds_checkpoints_and_merges_overrides(tmp_path):
    run_id = "0123456789abcdef0123456789abcdef"
    folder = tmp_path / "checkpoints" / run_id
    folder.mkdir(parents=True)
    for step in (2, 10, 9):
        torch.save({"global_step": step}, folder / f"step_{step:07d}.ckpt")
    (folder / "step_0000011.ckpt").write_bytes(b"PK\x03\x04 truncated")   # a newer, truncated one: skipped
    newest = folder / "step_0000010.ckpt"
    assert resolve_resume(run_id, str(tmp_path)) == newest          # a run id: <outputs>/checkpoints/<id>
    assert resolve_resume(str(folder), "unused") == newest          # a folder: its newest
    assert resolve_resume(str(folder / "step_0000002.ckpt"), "unused").name == "step_0000002.ckpt"
    for bad in ("no-such-thing", "fedcba9876543210fedcba9876543210", str(tmp_path / "checkpoints")):
        with pytest.raises(ResumeError, match="resume="):
            resolve_resume(bad, str(tmp_path))
    saved = ["game=grpo_data", "trainer.max_steps=2", "+tags.arm=a", "resume=old"]
    assert merge_overrides(saved, ["resume=x", "trainer.max_steps=4", "seed=1"]) == [
        "game=grpo_data", "trainer.max_steps=4", "+tags.arm=a", "seed=1"]


FAST = ["eval.samples=0", "eval.judge_pairs=0", "eval.every_n_steps=0", "eval.sample_table_every=0", "logger=none"]


def test_a_checkpoint_that_cannot_be_written_stops_the_run_and_keeps_the_previous_one(tmp_path):
    """A real fault: a folder where step 2's checkpoint is to be written. Step 1's checkpoint is kept
    (older checkpoints are removed only after a new one is safely in place) and the run stops with
    one line naming the file."""
    folder = tmp_path / "ck"
    (folder / "step_0000002.ckpt.tmp").mkdir(parents=True)
    cfg = compose_config("train", tiny_overrides(tmp_path, *FAST, "trainer.max_steps=3", "trainer.checkpoint_every=1",
                                                 f"trainer.checkpoint_dir={folder}"))
    with pytest.raises(CheckpointError, match="could not write checkpoint .*step_0000002.ckpt") as err:
        train(cfg)
    assert "\n" not in str(err.value)
    kept = folder / "step_0000001.ckpt"
    assert kept.is_file() and readable(kept) and latest_checkpoint(folder) == kept


def test_loading_a_crafted_checkpoint_runs_no_code(tmp_path):
    """A checkpoint whose pickle would run a shell command when unpickled (`torch.load(weights_only=False)`
    runs it): resume refuses it in one line, and the command never runs."""
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            import os
            return os.system, (f"touch {marker}",)

    folder = tmp_path / "ck"
    folder.mkdir()
    crafted = folder / "step_0000005.ckpt"
    torch.save({"global_step": 5, "lsp": {"run_id": None, "overrides": []}, "payload": Payload()}, crafted)
    assert readable(crafted)   # a well-formed archive: only safe loading stops it
    cfg = compose_config("train", tiny_overrides(tmp_path, *FAST, f"resume={folder}"))
    with pytest.raises(CheckpointError, match="cannot be loaded safely"):
        train(cfg)
    assert not marker.exists()


def test_a_second_resume_of_a_run_in_training_is_refused(shared_outputs, tmp_path):
    """The lock next to the run's checkpoints names a live process (this one): a resume of that run
    stops in one line, before it touches the run."""
    import json
    import os
    import socket

    from lsp_exp.run.run_lock import RunLockedError

    run = one_run(shared_outputs, "game=grpo_data", "eval.samples=0", "eval.judge_pairs=0", "trainer.max_steps=2",
                  "+tags.case=locked_resume")
    folder = shared_outputs / "checkpoints" / run
    (folder / "run.lock").write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                                                 "heartbeat": time.time()}))
    cfg = compose_config("train", tiny_overrides(shared_outputs, f"resume={run}", "trainer.max_steps=4"))
    with pytest.raises(RunLockedError, match=f"being trained by pid {os.getpid()}") as err:
        train(cfg)
    assert "\n" not in str(err.value)
    client = mlflow.MlflowClient(f"sqlite:///{shared_outputs}/mlflow.db")
    assert client.get_run(run).info.status == "FINISHED"   # untouched


def test_after_kill_9_a_resume_takes_over_and_logs_every_step_once(tmp_path):
    """A real `kill -9` mid-run: the lock is left behind, and the store holds steps after the last
    checkpoint. The resume takes the stale lock over (tagging the run `died_without_a_word`) and the
    steps the store already has are not logged again: every step exactly once, 0 .. max_steps - 1."""
    store = f"sqlite:///{tmp_path}/mlflow.db"
    args = [*tiny_overrides(tmp_path, "game=grpo_data", "eval.samples=0", "eval.judge_pairs=0", "eval.every_n_steps=0",
                            "eval.sample_table_every=0", "trainer.checkpoint_every=3", "trainer.max_steps=400",
                            "trainer.enable_progress_bar=false")]
    proc = subprocess.Popen([sys.executable, "-m", "lsp_exp.cli.train", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    client, run_id = mlflow.MlflowClient(store), None
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        time.sleep(0.5)
        try:
            exp = client.get_experiment_by_name("lsp-exp")
            runs = runs_of_this_test(store, "lsp-exp") if exp else []
            history = client.get_metric_history(runs[0].info.run_id, "train/solver/reward") if runs else []
            steps = [m.step for m in history]
        except Exception:  # noqa: BLE001 (the store is being created)
            continue
        if steps and max(steps) >= 4 and max(steps) % 3 != 2:   # past a checkpoint, with steps after it
            run_id = runs[0].info.run_id
            proc.kill()
            break
    proc.wait(timeout=60)
    assert run_id is not None, "the run did not get far enough"
    folder = tmp_path / "checkpoints" / run_id
    assert (folder / "run.lock").is_file() and latest_checkpoint(folder) is not None
    logged_before = max(m.step for m in client.get_metric_history(run_id, "train/solver/reward"))
    target = logged_before + 3
    train(compose_config("train", tiny_overrides(tmp_path, f"resume={run_id}", f"trainer.max_steps={target}")))
    steps = [m.step for m in client.get_metric_history(run_id, "train/solver/reward")]
    assert sorted(steps) == list(range(target)), steps     # each step once: the first values won
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and "died_without_a_word" in run.data.tags
    assert not (folder / "run.lock").exists()


def test_a_full_disk_during_a_checkpoint_leaves_no_truncated_checkpoint(shared_outputs, tmp_path):
    """A real full disk: the run's process may write files of at most 64 KiB (RLIMIT_FSIZE, with
    SIGXFSZ ignored so a write fails with EFBIG), less than a checkpoint. The run stops with one line
    naming the file, and no truncated `step_*.ckpt` is left for a resume to pick up."""
    import resource

    from lsp_exp.nodes import build

    build(compose_config("train", tiny_overrides(shared_outputs)).task, "task").base_model()  # built before the limit
    folder = tmp_path / "ck"
    script = tmp_path / "run.py"
    script.write_text(f"""
import resource, signal, sys
sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})
from tests.helpers.tiny_run import compose_config, tiny_overrides
import lsp_exp.cli.train as entry
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (65536, 65536))
entry.hydra_main.__wrapped__(compose_config("train", tiny_overrides({str(shared_outputs)!r}, *{FAST!r},
    "trainer.max_steps=2", "trainer.checkpoint_every=1", "trainer.checkpoint_dir={folder}")))
""")
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    lines = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert out.returncode == 2 and len(lines) == 1 and "could not write checkpoint" in lines[0], out.stderr[-2000:]
    assert "Traceback" not in out.stderr
    assert not list(folder.glob("step_*.ckpt*")) and latest_checkpoint(folder) is None
    assert resource.getrlimit(resource.RLIMIT_FSIZE)[0] != 65536   # (the limit was the child's only)
