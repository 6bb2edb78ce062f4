"""What a training job runs inside: one process per run (a lock on its checkpoint folder), its
MLflow run (new, or continued on resume), its step checkpoints, and the Lightning Trainer."""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import lightning as L
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig

from lsp_exp.run.checkpointing import Resume, StepCheckpoint, checkpoint_dir, continue_run, note_died
from lsp_exp.run.launch import release_ranks, trainer_strategy
from lsp_exp.run.run_lock import RunLock
from lsp_exp.run.tracking import build_logger, log_run_start


@dataclass
class Session:
    logger: object | None        # the MLflow logger (rank 0 only; None on other ranks and with logger=none)
    checkpoints: StepCheckpoint  # the step checkpoints (their folder, the lock's heartbeat)


@contextmanager
def tracked_run(cfg: DictConfig, resume: Resume | None, overrides: list[str], requeued: bool):
    """The run's lock, MLflow run and checkpoints; on the way out the lock is released and a
    multirun's DDP ranks are freed (its next job starts its own). A requeued job (`resume=auto`)
    waits out its predecessor's last heartbeat (run/run_lock.py)."""
    lock, stale = None, None
    if rank_zero_only.rank == 0 and resume is not None:  # one process per run: before the run is touched
        lock = RunLock(resume.path.parent)
        stale = lock.acquire(wait_s=lock.stale_s if requeued else 0.0)
    try:
        logger = build_logger(cfg) if rank_zero_only.rank == 0 else None  # only rank 0 touches the store
        if resume is None:
            log_run_start(logger, cfg)
        else:
            continue_run(logger, cfg, resume)
            if stale is not None:
                note_died(logger, stale, lock.path)
        folder = checkpoint_dir(cfg, logger)
        if rank_zero_only.rank == 0 and lock is None:
            lock = RunLock(folder)
            lock.acquire(wait_s=lock.stale_s if requeued else 0.0)
        run_id = logger.run_id if logger is not None else None
        yield Session(logger, StepCheckpoint(folder, cfg.trainer.checkpoint_every, run_id, overrides, lock=lock))
    finally:
        release_ranks(cfg)
        if lock is not None:
            lock.release()


def build_trainer(cfg: DictConfig, logger, callbacks: list) -> L.Trainer:
    """The Lightning Trainer of a self-play run: `trainer.max_steps` steps, no checkpointing or
    precision of its own (the module runs its own autocast, core/precision.py: Lightning's would wrap
    a whole step, optimizer steps included, and serve stale weight casts to PPO's later inner epochs)."""
    t = cfg.trainer
    return L.Trainer(accelerator=t.accelerator, devices=t.devices, strategy=trainer_strategy(t), num_nodes=t.num_nodes,
                     precision="32-true", max_steps=t.max_steps, logger=logger or False, log_every_n_steps=1,
                     enable_checkpointing=False, enable_model_summary=False,
                     enable_progress_bar=t.enable_progress_bar, callbacks=callbacks)
