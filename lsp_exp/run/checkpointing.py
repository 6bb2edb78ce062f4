"""Exact resume: checkpoints every k steps and on SIGTERM or Ctrl-C, with every RNG state.

A checkpoint is Lightning's (`trainer.save_checkpoint`): the weights (only the trainable ones when
some are frozen, as under LoRA: `SelfPlayModule.on_save_checkpoint`), the optimizer, the loop
counters (the step), the module's own state (KL controllers, the game's sampler, counters), and,
from `StepCheckpoint` below, under `"lsp"`:

- `rng`: the RNG states of python `random`, numpy, torch CPU and CUDA, one entry per rank (each
  rank plays its own games from its own stream; Lightning does not save them);
- `run_id`: the MLflow run, so `lsp-train resume=...` continues it;
- `overrides`: the run's Hydra command-line overrides, so `lsp-train resume=<...>` recomposes the
  same config (later overrides, e.g. `trainer.max_steps=...`, win); they are data, never code: a
  `_target_` off the project's allowlist or a `hydra.` key is refused (`saved_state.py`).

Files: `<trainer.checkpoint_dir or <outputs>/checkpoints/<run id>>/step_<step>.ckpt`. A checkpoint is
written next to its final place (`.tmp`), checked (a complete archive), forced to disk (`fsync`),
then renamed into place and its folder forced to disk; only then are older ones removed, so the
last good checkpoint is never lost, not even to a crash of the node. `resume=` takes a checkpoint
file, a directory of them, or an MLflow run id; in a directory (or a run's) the newest *readable*
checkpoint is used. Checkpoints are loaded with `weights_only=True`: loading one runs no
code, whoever wrote it.
"""
from __future__ import annotations

import logging
import os
import random
import re
import signal
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra import compose
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from lsp_exp.errors import ConfigError, LspError
from lsp_exp.run.durable import fsync_dir, fsync_file
from lsp_exp.run.saved_state import (UnsafeSavedStateError, check_config_targets, check_saved_overrides, inside,
                                     targets_named)

log = logging.getLogger(__name__)

RUN_ID = re.compile(r"^[0-9a-f]{32}$")
CKPT_NAME = re.compile(r"^step_(\d+)\.ckpt$")


class ResumeError(LspError, ValueError):
    """`resume` names no checkpoint; the message says what was looked for."""


class CheckpointError(LspError, OSError):
    """A checkpoint could not be written, or cannot be read safely; the message names the file."""


def readable(path: Path) -> bool:
    """A complete checkpoint archive (torch's zip format, its central directory and pickle present):
    a truncated or garbage file is not."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith("data.pkl") for name in archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def load_checkpoint(path: Path) -> dict[str, Any]:
    """The checkpoint's contents, loaded without running any code (`weights_only=True`)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 (any bytes: a text file is a KeyError in torch's legacy reader)
        reason = " ".join(str(err).split())[:300] or type(err).__name__
        raise CheckpointError(f"checkpoint {path} cannot be loaded safely (weights_only=True): {reason}") from None


# ---- RNG states -------------------------------------------------------------------------------
def rng_state() -> dict[str, Any]:
    """The state of every RNG a step draws from (python, numpy, torch CPU and every CUDA device), in
    types a `weights_only` load accepts (numpy's key array as a tensor)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    numpy_state = {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                   "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}
    state = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(_tuples(state["python"]))
    n = state["numpy"]
    if isinstance(n, dict):
        np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                             n["cached_gaussian"]))
    else:  # a checkpoint written before numpy's state was stored as a tensor
        np.random.set_state(n)
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tuples(value):
    """Lists back to tuples (python's `random.setstate` wants its nested tuple)."""
    return tuple(_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


def gather_objects(obj: Any, trainer) -> list[Any]:
    """`obj` of every rank, in rank order (a list of one without a process group)."""
    if trainer is None or trainer.world_size <= 1 or not torch.distributed.is_initialized():
        return [obj]
    out: list[Any] = [None] * trainer.world_size
    torch.distributed.all_gather_object(out, obj)
    return out


# ---- the callback -----------------------------------------------------------------------------
class StepCheckpoint(Callback):
    """Save `step_<step>.ckpt` every `every` steps and at the last step (0: never periodically),
    and on SIGTERM or a first Ctrl-C, at the end of the step in progress (so the checkpoint is at a
    step boundary and resuming from it is exact). A second Ctrl-C stops at once without one.

    `run_id` and `overrides` go into every checkpoint; on load, the saved RNG states are restored
    at the start of the first step (after the resumed run's start-up, which may draw from them)."""

    def __init__(self, dirpath: str | Path, every: int = 0, run_id: str | None = None,
                 overrides: list[str] | None = None, lock=None):
        self.dirpath, self.every, self.run_id, self.overrides = Path(dirpath), every, run_id, overrides or []
        self.lock = lock  # run_lock.RunLock of rank 0: its heartbeat is refreshed every step
        self._pending_rng: dict[str, Any] | None = None
        self._previous_sigint = None
        self.last_path: Path | None = None

    # saving
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.lock is not None:
            self.lock.beat()
        step = trainer.global_step
        if self.every and (step % self.every == 0 or step >= trainer.max_steps):
            self.save(trainer)

    def on_exception(self, trainer, pl_module, exception):
        if isinstance(exception, SIGTERMException) and trainer.global_step > 0:
            path = self.save(trainer)
            if trainer.is_global_zero:
                print(f"interrupted: checkpoint at {path}; continue with `lsp-train resume={path}`", flush=True)

    def save(self, trainer) -> Path:
        """Write `step_<step>.ckpt` atomically: to `<name>.tmp` beside it, checked, then renamed; older
        checkpoints are removed only after that (rank 0 does the file work; Lightning writes on it)."""
        path = self.dirpath / f"step_{trainer.global_step:07d}.ckpt"
        tmp = path.with_name(path.name + ".tmp")
        try:
            if trainer.is_global_zero:
                self.dirpath.mkdir(parents=True, exist_ok=True)
            trainer.save_checkpoint(tmp, weights_only=False)  # (the callbacks too; said, so Lightning says nothing)
            if trainer.is_global_zero:
                if not readable(tmp):  # (Lightning logs some write errors instead of raising them)
                    raise CheckpointError(f"could not write checkpoint {path}: {tmp} is missing or incomplete (a full "
                                          f"disk, or the writer failed); the previous one ({self.last_path or 'none'}) "
                                          "is kept")
                fsync_file(tmp)               # its bytes on disk, then its name: a crash of the node
                os.replace(tmp, path)         # cannot leave the only checkpoint empty (durable.py)
                fsync_dir(self.dirpath)
                for old in self.dirpath.glob("step_*.ckpt"):  # keep only the newest, now that it is safe
                    if old != path:
                        old.unlink(missing_ok=True)
        except OSError as err:
            if trainer.is_global_zero and tmp.is_file():
                tmp.unlink()
            if isinstance(err, CheckpointError):
                raise
            raise CheckpointError(f"could not write checkpoint {path}: {' '.join(str(err).split())}; the previous "
                                  f"one ({self.last_path or 'none'}) is kept") from None
        trainer.strategy.barrier("lsp_checkpoint")
        self.last_path = path
        return path

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        checkpoint["lsp"] = {"rng": gather_objects(rng_state(), trainer), "run_id": self.run_id,
                             "overrides": list(self.overrides), "world_size": trainer.world_size}

    # loading
    def on_load_checkpoint(self, trainer, pl_module, checkpoint):
        states = checkpoint.get("lsp", {}).get("rng") or []
        if states:
            if len(states) != trainer.world_size:
                log.warning("resuming %d ranks from a checkpoint of %d: RNG streams are reassigned",
                            trainer.world_size, len(states))
            self._pending_rng = states[trainer.global_rank % len(states)]

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self._pending_rng is not None:
            set_rng_state(self._pending_rng)
            self._pending_rng = None

    # Ctrl-C: stop at the end of the step, like SIGTERM
    def on_train_start(self, trainer, pl_module):
        if trainer.is_global_zero and self.run_id and trainer.logger is not None:  # for resume=<run id>
            try:
                trainer.logger.experiment.set_tag(self.run_id, "checkpoint_dir", str(self.dirpath.resolve()))
            except Exception as err:  # noqa: BLE001 (a tracking server that is down must not stop training)
                log.warning("could not tag run %s with its checkpoint_dir (%s)", self.run_id, err)

        def first_interrupt(signum, frame):
            signal.signal(signal.SIGINT, self._previous_sigint or signal.default_int_handler)
            trainer._signal_connector.received_sigterm = True  # the loop raises SIGTERMException after this step

        try:
            self._previous_sigint = signal.signal(signal.SIGINT, first_interrupt)
        except ValueError:  # not the main thread (e.g. some launchers): Lightning's own handling applies
            self._previous_sigint = None

    def on_train_end(self, trainer, pl_module):
        self._restore_sigint()

    def teardown(self, trainer, pl_module, stage):
        self._restore_sigint()

    def _restore_sigint(self):
        if self._previous_sigint is not None:
            try:
                signal.signal(signal.SIGINT, self._previous_sigint)
            except ValueError:
                pass
            self._previous_sigint = None


# ---- finding the checkpoint to resume ---------------------------------------------------------
def default_dir(outputs: str, run_id: str | None) -> Path:
    if run_id is None:  # logger=none: one folder per run
        run_id = f"untracked/{time.strftime('%Y-%m-%d_%H-%M-%S')}_{os.getpid()}"
    return Path(outputs) / "checkpoints" / run_id


def latest_checkpoint(directory: Path) -> Path | None:
    """The newest readable `step_*.ckpt` of `directory`; a newer truncated or garbage one is skipped
    with a warning."""
    found = sorted(((int(m.group(1)), p) for p in directory.glob("step_*.ckpt") if (m := CKPT_NAME.match(p.name))),
                   reverse=True)
    for _, path in found:
        if readable(path):
            return path
        log.warning("resume: %s is not a complete checkpoint; trying the previous one", path)
    return None


def resolve_resume(spec: str, outputs: str, checkpoint_dir: str | None = None, tracking_uri: str | None = None,
                   trust_tag: bool = False) -> Path:
    """The checkpoint file `spec` names: a file, a directory of `step_*.ckpt`, or an MLflow run id
    (its checkpoints under `trainer.checkpoint_dir` when set, else `<outputs>/checkpoints/<run id>`,
    else where the run's `checkpoint_dir` tag says: anyone who can write to the store can set that
    tag, so a folder outside `outputs` (and a local sqlite store's folder) is used only with `trust_tag`,
    `trust_checkpoint_dir_tag=true`)."""
    path = Path(spec).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        found = latest_checkpoint(path)
        if found is None:
            raise ResumeError(f"resume={spec!r}: no step_*.ckpt in that directory")
        return found
    if RUN_ID.match(spec):
        tried = [Path(checkpoint_dir) if checkpoint_dir else default_dir(outputs, spec)]
        no_store = tracking_uri and tracking_uri.startswith("sqlite:///") and \
            not Path(tracking_uri.removeprefix("sqlite:///")).is_file()
        if tracking_uri and not no_store:  # where the run said its checkpoints are (tag `checkpoint_dir`)
            try:
                import mlflow  # noqa: PLC0415 (optional: logger=none runs without MLflow)

                tagged = mlflow.MlflowClient(tracking_uri).get_run(spec).data.tags.get("checkpoint_dir")
                if tagged:
                    tried.append(Path(tagged))
            except Exception as err:  # noqa: BLE001 (MLflow raises its own types for an unknown run)
                log.debug("resume: no run %s in %s (%s)", spec, tracking_uri, err)
        own = [Path(outputs)]  # this run's outputs, and a local store's folder (by default the outputs it logs)
        if tracking_uri and tracking_uri.startswith("sqlite:///"):
            own.append(Path(tracking_uri.removeprefix("sqlite:///")).parent)
        for n, directory in enumerate(tried):
            if n > 0 and not trust_tag and not any(inside(directory, folder) for folder in own):
                if latest_checkpoint(directory) is None:
                    continue
                raise ResumeError(f"resume={spec!r}: the run's `checkpoint_dir` tag names {directory}, outside this "
                                  f"run's outputs ({' or '.join(map(str, own))}); a tag anyone who can write to the "
                                  "tracking store can set, so it is not followed: give trust_checkpoint_dir_tag=true "
                                  f"(or trainer.checkpoint_dir={directory}) to resume from it")
            if (found := latest_checkpoint(directory)) is not None:
                return found
        raise ResumeError(f"resume={spec!r}: no checkpoint of that MLflow run in {' or '.join(map(str, tried))} "
                          "(trainer.checkpoint_every > 0 writes them; logger.tracking_uri must name its store)")
    raise ResumeError(f"resume={spec!r}: not a checkpoint file, a directory of checkpoints or an MLflow run id")


def checkpoint_meta(path: Path) -> dict[str, Any]:
    """The `"lsp"` entry of a checkpoint (run id, overrides, world size) and its step."""
    ckpt = load_checkpoint(path)
    missing = [k for k in ("pytorch-lightning_version", "state_dict", "lsp")
               if not isinstance(ckpt, dict) or k not in ckpt]
    if missing or not isinstance(ckpt["lsp"], dict):
        raise CheckpointError(f"checkpoint {path} is not a checkpoint of lsp-train (a {type(ckpt).__name__} without "
                              f"{', '.join(missing) or 'a dict under lsp'})")
    meta = dict(ckpt["lsp"])
    meta.pop("rng", None)
    meta["step"] = ckpt.get("global_step", 0)
    return meta


def _step(meta: dict[str, Any], path: Path) -> int:
    step = meta.get("step")
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise CheckpointError(f"checkpoint {path}: its global_step is {step!r}, not a step count")
    return step


def job_overrides() -> list[str] | None:
    """This Hydra job's command-line overrides (None outside a Hydra app)."""
    if not HydraConfig.initialized():
        return None
    return list(HydraConfig.get().overrides.task)


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def merge_overrides(saved: list[str], current: list[str]) -> list[str]:
    """The saved run's overrides updated by this command's (a key given again takes the new value),
    without `resume=`."""
    merged = {_key(o): o for o in saved}
    merged.update({_key(o): o for o in current})
    merged.pop("resume", None)
    return list(merged.values())


@dataclass
class Resume:
    path: Path                  # the checkpoint
    run_id: str | None          # the MLflow run it continues
    step: int                   # the step it was saved at


def prepare_resume(cfg: DictConfig) -> tuple[DictConfig, Resume | None, list[str]]:
    """(config, what to resume, the overrides to save in this run's checkpoints).

    Under Hydra, `resume=` recomposes the config from the checkpoint's saved overrides followed by
    this command's, so `lsp-train resume=<run id>` needs no other argument and
    `lsp-train resume=<run id> trainer.max_steps=4000` extends a run. Outside Hydra (a composed
    config handed to `train()`), the config is used as given."""
    current = job_overrides()
    if cfg.get("resume") == "auto":  # a requeued job: its own checkpoint if it has one, else a fresh start
        if not cfg.trainer.get("checkpoint_dir"):
            raise ConfigError("resume=auto needs trainer.checkpoint_dir (the job's own folder, e.g. "
                              "'${hydra:runtime.output_dir}/checkpoints')")
        found = latest_checkpoint(Path(cfg.trainer.checkpoint_dir))
        if found is None:
            return cfg, None, current or []  # (resume=auto stays in the saved overrides)
        cfg = cfg.copy()
        cfg.resume = str(found)
    if not cfg.get("resume"):
        return cfg, None, without_resume(current or [])
    uri = cfg.logger.get("tracking_uri") or os.environ.get("MLFLOW_TRACKING_URI")
    path = resolve_resume(str(cfg.resume), cfg.paths.outputs, cfg.trainer.get("checkpoint_dir"), uri,
                          trust_tag=bool(cfg.get("trust_checkpoint_dir_tag")))
    meta = checkpoint_meta(path)
    saved = meta.get("overrides")
    where = f"resume={str(cfg.resume)!r} ({path})"
    if saved is not None and not isinstance(saved, (list, tuple)):
        raise UnsafeSavedStateError(f"{where}: the checkpoint's saved overrides are a {type(saved).__name__}, not a "
                                    "list of override strings; refused")
    if current is not None and saved is not None:  # saved state is data, never code (run/saved_state.py)
        check_saved_overrides(list(saved), current, where)
    overrides = merge_overrides(list(saved or []), current or [])
    if current is not None and saved is not None:
        cfg = compose(config_name=HydraConfig.get().job.config_name, overrides=[*overrides, f"resume={path}"])
        check_config_targets(cfg, targets_named(current), where)
    step = _step(meta, path)
    if step >= cfg.trainer.max_steps and cfg.logger.get("name") != "none" and \
            _finished(cfg.logger.get("tracking_uri") or uri, meta.get("run_id")):
        raise ResumeError(f"resume={str(cfg.resume)!r}: run {meta['run_id']} is FINISHED at step {step} and "
                          f"trainer.max_steps={cfg.trainer.max_steps}: nothing to train (its final model is logged "
                          f"already); give trainer.max_steps=<more than {step}> to train it further")
    return cfg, Resume(path, meta.get("run_id"), step), overrides


def _finished(uri: str | None, run_id: str | None) -> bool:
    """Whether the store at `uri` holds run `run_id` as FINISHED (False when it cannot tell; no store is created)."""
    if not run_id or not uri or (uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file()):
        return False
    try:
        import mlflow  # noqa: PLC0415 (optional: logger=none runs without MLflow)

        return mlflow.MlflowClient(uri).get_run(run_id).info.status == "FINISHED"
    except Exception:  # noqa: BLE001 (an unknown run or a store that is down: the resume says so later)
        return False


def without_resume(overrides: list[str]) -> list[str]:
    return [o for o in overrides if _key(o) != "resume"]


def continue_run(logger, cfg: DictConfig, resume: Resume) -> None:
    """Point the MLflow logger at the checkpoint's run, mark it RUNNING again, and log this
    command's resolved config beside the original (params are not logged again: MLflow refuses a
    changed value, e.g. a larger trainer.max_steps)."""
    if logger is None or not resume.run_id:
        return
    logger._run_id = resume.run_id  # MLFlowLogger(run_id=...) after construction: it then logs to that run
    client = logger.experiment
    # Steps the store has already (logged after the checkpoint by a process that then died): their
    # first values win, the resumed run does not log them again.
    logged = client.get_metric_history(resume.run_id, "train/solver/reward")
    logger.logged_through = max((m.step for m in logged), default=-1)
    client.update_run(resume.run_id, status="RUNNING")
    client.set_tag(resume.run_id, "resumed_from_step", str(resume.step))
    client.log_text(resume.run_id, OmegaConf.to_yaml(cfg, resolve=True), f"config/resumed_step_{resume.step:07d}.yaml")


def note_died(logger, stale, lock_path: Path) -> None:
    """The run's previous process died without a word (its lock was left behind): say so, and tag the
    run with it (`died_without_a_word`: host, pid and the time of its last heartbeat)."""
    when = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(stale.heartbeat)) if stale.heartbeat else "unknown"
    log.warning("resume: the run's previous process (pid %s on %s, last heartbeat %s) died without a word; "
                "taking over its lock %s", stale.pid, stale.host, when, lock_path)
    if logger is not None and logger.run_id is not None:
        try:
            logger.experiment.set_tag(logger.run_id, "died_without_a_word", f"pid {stale.pid} on {stale.host}, "
                                      f"last heartbeat {when}")
        except Exception as err:  # noqa: BLE001 (a tracking server that is down must not stop the resume)
            log.warning("could not tag run %s (%s)", logger.run_id, err)


def mark_interrupted(logger, path: Path | None) -> None:
    """End the run KILLED (not FAILED: it can be resumed), tagged with its checkpoint."""
    if logger is None or logger.run_id is None:
        return
    try:
        client = logger.experiment
        if path is not None:
            client.set_tag(logger.run_id, "checkpoint", str(path))
        client.set_terminated(logger.run_id, "KILLED")
        logger.error_recorded = True  # lsp_exp.run.tracking_failures: the run's end is recorded already
    except Exception as err:  # noqa: BLE001 (the checkpoint is on disk; the exit must not become a tracking error)
        log.warning("could not mark run %s KILLED (%s); its checkpoint is %s", logger.run_id, err, path)


def checkpoint_dir(cfg: DictConfig, logger) -> Path:
    """`trainer.checkpoint_dir`, else `<outputs>/checkpoints/<MLflow run id>` (rank 0 names it)."""
    if cfg.trainer.get("checkpoint_dir"):
        return Path(cfg.trainer.checkpoint_dir)
    return default_dir(cfg.paths.outputs, logger.run_id if logger is not None else None)

