"""How the ranks of a distributed job start, and what is refused.

Lightning's `ddp` strategy starts ranks 1.. by re-running the command line (its subprocess
launcher, which also sets Hydra's run dir for them); under SLURM (one task per device) or torchrun
the ranks are started outside and Lightning joins them. Inside a Hydra multirun the command line is
the whole sweep: `check_launch` makes it the job's own, and `release_ranks` lets the next job of
the same process start its own ranks.
"""
from __future__ import annotations

import os
import sys

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment
from lightning.pytorch.strategies import ModelParallelStrategy
from omegaconf import DictConfig

from lsp_exp.errors import ConfigError

def is_multiprocess(trainer_cfg) -> bool:
    strategy = str(trainer_cfg.strategy)
    return strategy.startswith(("ddp", "fsdp", "deepspeed")) and str(trainer_cfg.devices) != "1"


def trainer_strategy(trainer_cfg):
    """What Lightning's Trainer gets as `strategy`: `fsdp` is FSDP2 through ModelParallelStrategy
    (core/sharding.py: the policy is sharded in `SelfPlayModule.configure_model`); the rest as named."""
    if str(trainer_cfg.strategy) != "fsdp":
        return trainer_cfg.strategy
    # The mesh of fully_shard is built over all ranks (sharding.shard); Lightning's own mesh only
    # splits the ranks for its sampler, which the self-play step does not use. One checkpoint file.
    return ModelParallelStrategy(save_distributed_checkpoint=False)


def refused_strategy(strategy: str) -> str | None:
    """One line saying why a strategy cannot run the self-play step (None: it can)."""
    if strategy.startswith("fsdp") and strategy != "fsdp":
        return (f"trainer.strategy={strategy}: Lightning's FSDP strategies (FSDP1) wrap the whole module and break a "
                "backward inside training_step (Lightning-AI/pytorch-lightning#19626), which the self-play step "
                "needs; use trainer=fsdp (FSDP2, core/sharding.py)")
    if strategy.startswith("deepspeed"):
        return (f"trainer.strategy={strategy}: DeepSpeed owns the backward and the optimizer step, which the "
                "self-play step runs itself (micro-batches, inner epochs, the non-finite skip); use trainer=fsdp "
                "for a sharded full fine-tune or trainer=ddp")
    return None


def started_outside() -> bool:
    """The ranks are started by SLURM (one task per device) or torchrun: Lightning only joins them."""
    return SLURMEnvironment.detect() or TorchElasticEnvironment.detect() or "LOCAL_RANK" in os.environ


LAUNCH_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE", "PL_GLOBAL_SEED")


def release_ranks(cfg: DictConfig) -> None:
    """After a job whose ranks Lightning started here: end the process group and drop the launcher's
    environment, so the next job of a multirun (same process) starts its own ranks afresh."""
    if not is_multiprocess(cfg.trainer) or os.environ.get("LSP_RANKS_STARTED_HERE") != str(os.getpid()):
        return
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    for key in (*LAUNCH_ENV, "LSP_RANKS_STARTED_HERE"):
        os.environ.pop(key, None)


def check_launch(cfg: DictConfig) -> None:
    """Lightning's `ddp` strategy starts ranks 1.. by re-running the command line (with the Hydra
    run dir set). Inside a Hydra multirun that command is the whole sweep, so:
    - basic launcher (jobs one after another): the re-run command becomes this job's own overrides;
    - joblib launcher: its workers are not a command to re-run: refused, with what to use instead;
    - SLURM (submitit, one task per device) or torchrun: the ranks exist already; nothing to do."""
    refused = refused_strategy(str(cfg.trainer.strategy))
    if refused:
        raise ConfigError(refused)
    if not is_multiprocess(cfg.trainer) or started_outside():
        return
    os.environ["LSP_RANKS_STARTED_HERE"] = str(os.getpid())  # this process starts the others
    if not HydraConfig.initialized():
        return
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return
    if "joblib" in str(hydra_cfg.launcher.get("_target_", "")):
        raise ConfigError(
            f"trainer.strategy={cfg.trainer.strategy} with {cfg.trainer.devices} devices starts its ranks by "
            "re-running the command, which a joblib worker cannot do: sweep DDP jobs with the default launcher "
            "(one job at a time) or hydra/launcher=slurm (tasks_per_node = devices)")
    sys.argv = [sys.argv[0], *hydra_cfg.overrides.task]
