"""Slow checks (`make test-slow`): the shipped base (with its judge stage) and the shipped tiny reward
model are what `lsp-bootstrap` builds, and the base is good."""
import json

import pytest
import torch

from lsp_exp.eval.heldout import evaluate_solver
from lsp_exp.tasks.arith.task import heldout_set
from lsp_exp.tasks.arith.build import build_toy_world, load_toy_world, toy_world_dir
from lsp_exp.tasks.arith.shipped import shipped

from tests.helpers.tiny_run import compose_config

pytestmark = pytest.mark.slow


def test_bootstrap_reproduces_the_shipped_base(tmp_path):
    cfg = compose_config("bootstrap")
    if shipped("base_model", toy_world_dir(cfg.task.world, cfg.task.bootstrap, tmp_path).name) is None:
        pytest.skip("no shipped base for the current bootstrap config")
    installed = build_toy_world(cfg.task.world, cfg.task.bootstrap, tmp_path / "shipped")
    rebuilt = build_toy_world(cfg.task.world, cfg.task.bootstrap, tmp_path / "rebuilt", force=True)
    ours, _, heldout, _ = load_toy_world(rebuilt)
    theirs, tokenizer, heldout_shipped, _ = load_toy_world(installed)
    assert heldout == heldout_shipped
    shipped_threads = json.loads((installed / "info.json").read_text())["torch_threads"]
    if torch.get_num_threads() == shipped_threads:  # float reductions depend on the thread count
        for (name, a), b in zip(ours.state_dict().items(), theirs.state_dict().values(), strict=True):
            assert torch.equal(a, b), name
    acc_ours = evaluate_solver(ours, tokenizer, heldout_set(heldout))["accuracy"]
    acc_theirs = evaluate_solver(theirs, tokenizer, heldout_set(heldout))["accuracy"]
    assert abs(acc_ours - acc_theirs) < 0.03
    assert 0.4 < acc_theirs < 0.8


def test_bootstrap_reproduces_the_shipped_tiny_rm(tmp_path):
    from transformers import AutoModelForSequenceClassification

    from lsp_exp.tasks.arith.reward_model import build_tiny_rm, tiny_rm_dir

    cfg = compose_config("bootstrap")
    if shipped("reward_model", tiny_rm_dir(cfg.task.world, cfg.reward.bootstrap, tmp_path).name) is None:
        pytest.skip("no shipped tiny reward model for the current config")
    installed = build_tiny_rm(cfg.task.world, cfg.reward.bootstrap, tmp_path / "shipped")
    rebuilt = build_tiny_rm(cfg.task.world, cfg.reward.bootstrap, tmp_path / "rebuilt", force=True)
    ours = AutoModelForSequenceClassification.from_pretrained(rebuilt)
    theirs = AutoModelForSequenceClassification.from_pretrained(installed)
    if torch.get_num_threads() == json.loads((installed / "info.json").read_text())["torch_threads"]:
        for (name, a), b in zip(ours.state_dict().items(), theirs.state_dict().values(), strict=True):
            assert torch.equal(a, b), name
