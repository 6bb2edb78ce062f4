"""Sharded full fine-tuning (trainer=fsdp: FSDP2 through Lightning's ModelParallelStrategy,
lsp_exp/core/sharding.py), run here as trainer=fsdp_cpu: 2 CPU processes over gloo, the code path
of trainer=fsdp on GPUs. Each rank holds half of every weight, gradient and AdamW state; the update
must be the one DDP makes (full replicas, gradients averaged) on the same games."""
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import torch
from safetensors.torch import load_file

from lsp_exp.cli.train import train
from lsp_exp.errors import ConfigError

from tests.helpers.tiny_run import SHARDING_SETUP, compose_config, tiny_overrides

def run_cli(shared_outputs, store, *extra):
    args = [*tiny_overrides(shared_outputs, *SHARDING_SETUP, *extra), f"logger.tracking_uri=sqlite:///{store}/mlflow.db",
            f"logger.artifact_location={store}/artifacts"]
    out = subprocess.run([sys.executable, "-m", "lsp_exp.cli.train", *args], capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    client = mlflow.MlflowClient(f"sqlite:///{store}/mlflow.db")
    (run,) = client.search_runs([client.get_experiment_by_name("lsp-exp").experiment_id])
    metrics = {k: [m.value for m in sorted(client.get_metric_history(run.info.run_id, k), key=lambda m: m.step)]
               for k in run.data.metrics if k.startswith("train/")}
    weights = load_file(str(next((store / "artifacts").rglob("model.safetensors"))))
    return run, metrics, weights


def test_fsdp_on_two_processes_updates_as_ddp_does(shared_outputs, tmp_path):
    """Same seeds, same games on each rank (seed + rank), a reward model's graded scores (non-zero
    advantages), micro-batches of 5 rows cutting the Solver's groups of 4: every logged figure of both
    steps and the final weights agree with DDP's."""
    ddp_run, ddp, ddp_weights = run_cli(shared_outputs, tmp_path / "ddp", "trainer=ddp_cpu")
    fsdp_run, fsdp, fsdp_weights = run_cli(shared_outputs, tmp_path / "fsdp", "trainer=fsdp_cpu")
    assert fsdp_run.data.params["trainer.strategy"] == "fsdp"
    # a real update, then a KL (k1: any sign)
    assert ddp["train/grad_norm"][0] > 0 and abs(ddp["train/kl/solver"][1]) > 0
    assert sorted(fsdp) == sorted(ddp)
    for key, values in ddp.items():
        assert fsdp[key] == pytest.approx(values, rel=1e-4, abs=1e-6), key
    assert sorted(fsdp_weights) == sorted(ddp_weights)
    for name, tensor in ddp_weights.items():
        torch.testing.assert_close(fsdp_weights[name], tensor, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("strategy", ["deepspeed", "fsdp_cpu_offload"])
def test_strategies_that_cannot_run_the_step_are_refused_in_one_line(shared_outputs, strategy):
    with pytest.raises(ConfigError, match=f"trainer.strategy={strategy}: .*use trainer=") as error:
        train(compose_config("train", tiny_overrides(shared_outputs, f"trainer.strategy={strategy}", "logger=none")))
    assert "\n" not in str(error.value)


SHARD_PROBE = """
import os, sys, torch, torch.distributed as dist
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[1])
dist.init_process_group("gloo", rank=0, world_size=1)
from tests.helpers.real_models import build_tiny_model
from lsp_exp.core.logprobs import token_logprobs
from lsp_exp.core.sharding import shard
model, _ = build_tiny_model("llama3")
shard(model, torch.device("cpu"), param_dtype=torch.bfloat16)
root = model._get_fsdp_state()
print("root", root._is_root, model.model.layers[0]._get_fsdp_state()._is_root)
print("params", sorted({f"{type(p).__name__}:{p.dtype}" for p in model.parameters()}))
ids = torch.randint(0, 100, (2, 6))
model.train()
token_logprobs(model, ids, torch.ones_like(ids)).sum().backward()   # a log-prob pass first, then the rest
print("grads", sorted({str(p.grad.dtype) for p in model.parameters() if p.grad is not None}))
"""


def test_sharding_initialises_the_root_and_leaves_float32_shards(tmp_path):
    """core/sharding.py `shard`: FSDP2's lazy initialisation happens at once through the root (so any
    pass may come first), and the parameters the optimizer sees are the float32 shards, also with a
    bfloat16 `param_dtype` (docs/method.md §16), their gradients reduced in float32."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {"PYTHONPATH": str(Path(__file__).resolve().parents[2]), "HF_HUB_OFFLINE": "1",
           "PATH": os.environ.get("PATH", "")}
    out = subprocess.run([sys.executable, "-c", SHARD_PROBE, str(port)], capture_output=True, text=True, timeout=300,
                         env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in out.stdout.splitlines())
    assert lines["root"] == "True False"
    assert lines["params"] == "['DTensor:torch.float32']"
    assert lines["grads"] == "['torch.float32']"
