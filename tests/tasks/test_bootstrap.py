"""The toy world is built deterministically, cached by config key, and loaded like a real model."""
import json

import torch

from lsp_exp.tasks.arith.build import load_toy_world
from lsp_exp.tasks.arith.build import build_toy_world, world_key

from tests.helpers.tiny_run import TINY_WORLD, compose_config


def tiny_bootstrap_cfg(*extra):
    return compose_config("bootstrap", TINY_WORLD + list(extra))


def test_key_changes_with_the_config():
    base = tiny_bootstrap_cfg()
    again = tiny_bootstrap_cfg("task.world.flaw_rate=0.5", "task.world.flaw_rate=" + str(base.task.world.flaw_rate))
    assert again is not base
    assert world_key(again.task.world, again.task.bootstrap) == world_key(base.task.world, base.task.bootstrap)
    key = world_key(base.task.world, base.task.bootstrap)
    assert len(key) == 12 and int(key, 16) >= 0   # a 12-hex-digit folder name
    changed = tiny_bootstrap_cfg("task.world.flaw_rate=0.5")
    assert world_key(changed.task.world, changed.task.bootstrap) != world_key(base.task.world, base.task.bootstrap)
    changed = tiny_bootstrap_cfg("task.bootstrap.sft.steps=4")
    assert world_key(changed.task.world, changed.task.bootstrap) != world_key(base.task.world, base.task.bootstrap)


def test_build_is_cached_and_deterministic(tmp_path):
    cfg = tiny_bootstrap_cfg()
    first = build_toy_world(cfg.task.world, cfg.task.bootstrap, tmp_path / "a")
    stamp = (first / "DONE").stat().st_mtime_ns
    assert build_toy_world(cfg.task.world, cfg.task.bootstrap, tmp_path / "a") == first
    assert (first / "DONE").stat().st_mtime_ns == stamp          # reused, not rebuilt
    second = build_toy_world(cfg.task.world, cfg.task.bootstrap, tmp_path / "b")
    model_a, tok, heldout, train = load_toy_world(first)
    model_b, _, heldout_b, _ = load_toy_world(second)
    for (name, a), (_, b) in zip(model_a.state_dict().items(), model_b.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert heldout == heldout_b and len(heldout) == 40 and len(train) == 200
    assert not {p.text for p in heldout} & {p.text for p in train}
    info = json.loads((first / "info.json").read_text())
    assert info["parameters"] == sum(p.numel() for p in model_a.parameters())
    assert tok.apply_chat_template([{"role": "user", "content": "1+2"}], tokenize=False) == "<bos><|user|>1+2<|end|>"


def test_parallel_first_runs_build_the_toy_world_once(tmp_path, monkeypatch):
    """Jobs of a parallel multirun on a fresh outputs/ share one build (a lock per cache entry)."""
    import threading

    from lsp_exp.tasks.arith import build as build_module

    from tests.helpers.tiny_run import TINY_WORLD, compose_config

    cfg = compose_config("train", TINY_WORLD + ["task.bootstrap.judge.steps=0", f"paths.outputs={tmp_path}"])
    calls, real = [], build_module._build_base_stage
    monkeypatch.setattr(build_module, "_build_base_stage", lambda *a: calls.append(1) or real(*a))
    results = []
    threads = [threading.Thread(target=lambda: results.append(
        build_module.build_toy_world(cfg.task.world, cfg.task.bootstrap, tmp_path))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len(set(results)) == 1 and build_module.is_complete(results[0])
