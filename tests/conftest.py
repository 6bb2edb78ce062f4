"""Shared fixtures: a tiny toy world built inside the tests (never the real bootstrap)."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import pytest  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402

from lsp_exp.run.config import PROJECT_ROOT  # noqa: E402

CONF_DIR = str(PROJECT_ROOT / "conf")

# A toy world small enough for a test: a 1-layer, 32-wide model trained for 3 SFT steps.
TINY_WORLD = [
    "task.world.n_heldout=40", "task.world.n_train=200",
    "task.bootstrap.arch.hidden_size=32", "task.bootstrap.arch.intermediate_size=64",
    "task.bootstrap.arch.num_hidden_layers=1", "task.bootstrap.arch.num_attention_heads=2",
    "task.bootstrap.sft.steps=3", "task.bootstrap.sft.batch_size=8", "task.bootstrap.sft.warmup_steps=1",
    "task.bootstrap.judge.steps=2", "task.bootstrap.judge.batch_size=8", "task.bootstrap.judge.warmup_steps=1",
]
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


def tiny_overrides(outputs, *extra: str, arith: bool = True) -> list[str]:
    """TINY_RUN's overrides (without the arithmetic task's when `arith` is false: another task)."""
    run = TINY_RUN if arith else TINY_RUN[len(TINY_WORLD):]
    return run + [f"paths.outputs={outputs}", f"logger.tracking_uri=sqlite:///{outputs}/mlflow.db", *extra]
