"""A tiny run's config and the MLflow runs a test made.

`tiny_overrides` tags every run with the running test's tag (`tags.test`, set per test by
tests/conftest.py), so each test finds its own runs (`runs_of_this_test`), never "the newest run".
"""
from __future__ import annotations

import os

from hydra import compose, initialize_config_dir

from lsp_exp.run.config import PROJECT_ROOT

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

# Two steps of lsp_zero with the tiny reward model (graded scores: non-zero advantages) and micro-batches
# of 5 rows that cut the Solver's groups of 4: the DDP, FSDP and checkpoint-key runs.
SHARDING_SETUP = ["game=lsp_zero", "reward=tiny_rm", *TINY_RM, "eval.judge_pairs=0", "eval.samples=0",
                  "eval.every_n_steps=0", "trainer.num_threads=1", "game.n_queries=3", "game.group_size=4",
                  "trainer.micro_batch_size=5", "trainer.max_steps=2", "trainer.checkpoint_every=0", "kl.beta=0.1",
                  "optim.lr=1e-3"]


def compose_config(name: str = "train", overrides: list[str] | None = None):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name=name, overrides=overrides or [])


def this_test_tag() -> str:
    """The running test's tag: a digest of its node id (a valid MLflow tag value, stable per test),
    kept in the environment so that a script the test starts tags its runs the same way."""
    return os.environ.get("LSP_TEST_TAG", "none")


def tiny_overrides(outputs, *extra: str, arith: bool = True) -> list[str]:
    """TINY_RUN's overrides (without the arithmetic task's when `arith` is false: another task), the
    run tagged with the running test's tag (`tags.test`)."""
    run = TINY_RUN if arith else TINY_RUN[len(TINY_WORLD):]
    return run + [f"paths.outputs={outputs}", f"logger.tracking_uri=sqlite:///{outputs}/mlflow.db",
                  f"+tags.test={this_test_tag()}", *extra]


def runs_of_this_test(uri: str, experiment: str | None = None, filter_string: str = ""):
    """This test's MLflow runs in the store at `uri` (found by its tag, never by "the newest run"),
    oldest first."""
    import mlflow

    client = mlflow.MlflowClient(uri)
    experiments = [e.experiment_id for e in client.search_experiments()
                   if experiment is None or e.name == experiment]
    query = f"tags.test = '{this_test_tag()}'" + (f" and {filter_string}" if filter_string else "")
    runs = client.search_runs(experiments, filter_string=query) if experiments else []
    return sorted(runs, key=lambda r: (r.info.start_time, r.info.run_id))


def run_of_this_test(uri: str, experiment: str | None = None, filter_string: str = ""):
    """The one run of this test that matches (an error when there are none or several)."""
    runs = runs_of_this_test(uri, experiment, filter_string)
    assert len(runs) == 1, f"{len(runs)} runs of this test in {uri} match {filter_string!r}"
    return runs[0]


def latest_run_id(outputs):
    """The newest run of the running test in the store under `outputs`: never another test's."""
    return runs_of_this_test(f"sqlite:///{outputs}/mlflow.db", "lsp-exp")[-1].info.run_id


def run_of(outputs, case: str):
    """This test's newest run tagged `failcase=<case>` in the store under `outputs`, its metric
    histories (name: [(step, value)]) and the client."""
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{outputs}/mlflow.db")
    runs = runs_of_this_test(f"sqlite:///{outputs}/mlflow.db", filter_string=f"tags.failcase = '{case}'")
    assert runs, case
    run = runs[-1]
    history = {k: [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, k)] for k in run.data.metrics}
    return run, history, client
