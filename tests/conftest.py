"""Shared fixtures: a tiny toy world built inside the tests (never the real bootstrap).

Every test starts from the same global state and leaves it as it found it (`restore_global_state`):
torch's thread count and RNG, Python's and numpy's RNG, the environment. The Hugging Face cache the
tests see is an empty folder of the session's, so no test depends on what the user's cache holds.
Hypothesis is derandomised (the same examples on every run) with no deadline (a loaded 2-core
machine is not a failure). Each test finds its own MLflow runs: `tiny_overrides` tags every run
with the test's id (`tags.test`), which `run_of_this_test` looks up.
"""
from __future__ import annotations

import atexit
import os
import random
import shutil
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
# Before anything imports huggingface_hub (it reads these once): an empty cache of the session's own.
_HF_HOME = tempfile.mkdtemp(prefix="lsp-test-hf-")
atexit.register(shutil.rmtree, _HF_HOME, ignore_errors=True)
for _key, _sub in (("HF_HOME", ""), ("HF_HUB_CACHE", "hub"), ("HF_XET_CACHE", "xet"), ("TRANSFORMERS_CACHE", "hub")):
    os.environ[_key] = os.path.join(_HF_HOME, _sub)

import hashlib  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from hypothesis import settings  # noqa: E402

from lsp_exp.run.config import PROJECT_ROOT  # noqa: E402

settings.register_profile("lsp", derandomize=True, deadline=None, database=None, print_blob=True)
settings.load_profile("lsp")

CONF_DIR = str(PROJECT_ROOT / "conf")

# A toy world small enough for a test: a 1-layer, 32-wide model trained for 3 SFT steps.
TINY_WORLD = [
    "task.world.n_heldout=40", "task.world.n_train=200",
    "task.bootstrap.arch.hidden_size=32", "task.bootstrap.arch.intermediate_size=64",
    "task.bootstrap.arch.num_hidden_layers=1", "task.bootstrap.arch.num_attention_heads=2",
    "task.bootstrap.sft.steps=3", "task.bootstrap.sft.batch_size=8", "task.bootstrap.sft.warmup_steps=1",
    "task.bootstrap.judge.steps=2", "task.bootstrap.judge.batch_size=8", "task.bootstrap.judge.warmup_steps=1",
]
# A tiny reward model built in the test (reward=tiny_rm)
TINY_RM = ["reward.bootstrap.steps=2", "reward.bootstrap.hidden_size=16", "reward.bootstrap.intermediate_size=32",
           "reward.bootstrap.num_hidden_layers=1", "reward.bootstrap.num_attention_heads=2"]

TINY_RUN = TINY_WORLD + [
    "trainer.max_steps=3", "game.n_queries=2", "game.group_size=3", "eval.samples=2", "eval.every_n_steps=2",
    "eval.sample_table_every=2", "eval.judge_pairs=16", "trainer.enable_progress_bar=false",
]


def compose_config(name: str = "train", overrides: list[str] | None = None):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name=name, overrides=overrides or [])


@pytest.fixture(scope="session")
def shared_outputs(tmp_path_factory):
    """One outputs/ folder for the session, so the tiny toy world is built once."""
    return tmp_path_factory.mktemp("outputs")


def test_tag() -> str:
    """The running test's tag: a digest of its node id (a valid MLflow tag value, stable per test),
    kept in the environment so that a script the test starts tags its runs the same way."""
    return os.environ.get("LSP_TEST_TAG", "none")


@pytest.fixture(autouse=True)
def restore_global_state(request):
    """The test's tag for its runs; torch threads, RNGs and the environment restored after it."""
    threads, environ = torch.get_num_threads(), dict(os.environ)
    os.environ["LSP_TEST_TAG"] = hashlib.sha1(request.node.nodeid.encode()).hexdigest()[:16]
    rng = (random.getstate(), np.random.get_state(), torch.random.get_rng_state())
    yield
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    for key in set(os.environ) - set(environ):
        del os.environ[key]
    os.environ.update(environ)
    random.setstate(rng[0]), np.random.set_state(rng[1]), torch.random.set_rng_state(rng[2])


def tiny_overrides(outputs, *extra: str, arith: bool = True) -> list[str]:
    """TINY_RUN's overrides (without the arithmetic task's when `arith` is false: another task), the
    run tagged with the running test's tag (`tags.test`)."""
    run = TINY_RUN if arith else TINY_RUN[len(TINY_WORLD):]
    return run + [f"paths.outputs={outputs}", f"logger.tracking_uri=sqlite:///{outputs}/mlflow.db",
                  f"+tags.test={test_tag()}", *extra]


def runs_of_this_test(uri: str, experiment: str | None = None, filter_string: str = ""):
    """This test's MLflow runs in the store at `uri` (found by its tag, never by "the newest run"),
    oldest first."""
    import mlflow

    client = mlflow.MlflowClient(uri)
    experiments = [e.experiment_id for e in client.search_experiments()
                   if experiment is None or e.name == experiment]
    query = f"tags.test = '{test_tag()}'" + (f" and {filter_string}" if filter_string else "")
    runs = client.search_runs(experiments, filter_string=query) if experiments else []
    return sorted(runs, key=lambda r: (r.info.start_time, r.info.run_id))


def run_of_this_test(uri: str, experiment: str | None = None, filter_string: str = ""):
    """The one run of this test that matches (an error when there are none or several)."""
    runs = runs_of_this_test(uri, experiment, filter_string)
    assert len(runs) == 1, f"{len(runs)} runs of this test in {uri} match {filter_string!r}"
    return runs[0]


@pytest.fixture
def immutable():
    """A real fault: `chattr +i` on a path (nothing in it can be created, changed or removed, even by
    root), undone after the test; `set_immutable(path, False)` undoes it early. Skips the test
    where chattr cannot (not root, or a filesystem without the flag)."""
    import subprocess

    done: set = set()

    def set_immutable(path, on: bool = True) -> None:
        flag = "+i" if on else "-i"
        if os.geteuid() != 0 or subprocess.run(["chattr", flag, str(path)], capture_output=True).returncode != 0:
            pytest.skip("chattr +i needs root and a filesystem that supports it")
        (done.add if on else done.discard)(str(path))

    yield set_immutable
    for path in done:
        subprocess.run(["chattr", "-i", path], check=False)
