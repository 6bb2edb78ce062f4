"""Checks that the schema cannot express: ranges and cross-field rules, each naming the key."""
from __future__ import annotations

import errno
import json
import math
import os
import tempfile
from pathlib import Path
from urllib.parse import urlparse

import torch
from hydra._internal.utils import _locate  # what hydra.utils.instantiate resolves a `_target_` with
from omegaconf import DictConfig, OmegaConf

from lsp_exp.core.models import find_local_or_cached
from lsp_exp.core.precision import precision_problem
from lsp_exp.errors import ConfigError
from lsp_exp.judge.templates import TEMPLATES
from lsp_exp.nodes import check_arguments
from lsp_exp.rl import (ADVANTAGE_ESTIMATORS, AGGREGATIONS, CHALLENGER_OBJECTIVES, KL_CONTROLLERS, KL_ESTIMATORS,
                        TOKEN_POLICY_LOSSES)
from lsp_exp.rl.kl import PLACEMENTS
from lsp_exp.run.config import RANGES
from lsp_exp.run.tracking_failures import check_reachable


# MLflow's tracking store schemes (a database scheme may name a driver, e.g. postgresql+psycopg2).
TRACKING_SCHEMES = ("sqlite", "file", "http", "https", "postgresql", "mysql", "mssql", "databricks")


def validate(cfg: DictConfig) -> None:
    def require(ok: bool, key: str, message: str) -> None:
        if not ok:
            raise ConfigError(f"{key}={OmegaConf.select(cfg, key)!r}: {message}")

    for key, value in _numbers(cfg, ("seed", "game", "kl", "algorithm", "optim", "trainer", "eval")):
        require(math.isfinite(value), key, "must be a finite number")
    for key, rule in RANGES.items():  # every number's range, declared once next to the schemas
        value = OmegaConf.select(cfg, key)
        if value is not None and not isinstance(value, bool) and not rule.holds(float(value)):
            require(False, key, rule.message())
    game, kl = cfg.game, cfg.kl
    if isinstance(game.challenger_objective, DictConfig):  # a user's function: `_target_` with `_partial_`
        check_targets(game.challenger_objective, "game.challenger_objective")
    else:
        require(isinstance(game.challenger_objective, str) and game.challenger_objective in CHALLENGER_OBJECTIVES,
                "game.challenger_objective", f"unknown; available: {', '.join(sorted(CHALLENGER_OBJECTIVES))} "
                "(or a `_target_` node with `_partial_: true`)")
    _check_rzero(game, require)
    require(game.judge.template in ("auto", *TEMPLATES), "game.judge.template",
            f"unknown; available: auto, {', '.join(TEMPLATES)}")
    require(kl.estimator in KL_ESTIMATORS, "kl.estimator", f"unknown; available: {', '.join(sorted(KL_ESTIMATORS))}")
    require(kl.placement in PLACEMENTS, "kl.placement", f"unknown; available: {', '.join(PLACEMENTS)}")
    algo = cfg.algorithm
    for key, registry in (("advantage", ADVANTAGE_ESTIMATORS), ("policy_loss", TOKEN_POLICY_LOSSES),
                          ("aggregation", AGGREGATIONS)):
        if isinstance(algo[key], DictConfig) and key != "aggregation":  # a user's function: `_target_` (+ `_partial_`)
            check_targets(algo[key], f"algorithm.{key}")
            continue
        require(algo[key] in registry, f"algorithm.{key}",
                f"unknown; available: {', '.join(sorted(registry))} (or a `_target_` node with `_partial_: true`)")
    require(algo.clip_low < 1, "algorithm.clip_low", "must be in [0, 1)")  # (>= 0: RANGES)
    # Precisions that would round updates away or need a gradient scaler (docs/method.md §16): refused.
    problem = precision_problem(cfg.model.get("dtype", "float32"), cfg.trainer.precision)
    if problem is not None:
        require(False, *problem)
    require(kl.controller in KL_CONTROLLERS, "kl.controller",
            f"unknown; available: {', '.join(sorted(KL_CONTROLLERS))}")
    require(len(cfg.optim.betas) == 2 and all(0 <= b < 1 for b in cfg.optim.betas), "optim.betas",
            "must be two numbers in [0, 1)")
    devices = cfg.trainer.devices
    require(devices in ("auto", -1) or (isinstance(devices, int) and devices >= 1) or
            (not isinstance(devices, (int, str)) and len(devices) >= 1), "trainer.devices",
            "must be at least 1, a list of device indices, -1 or 'auto'")
    if cfg.logger.name != "none":
        uri = cfg.logger.tracking_uri
        scheme = urlparse(uri).scheme.split("+")[0] if uri else ""
        require(not uri or not scheme or scheme in TRACKING_SCHEMES, "logger.tracking_uri",
                f"unsupported scheme {scheme!r}; use one of {', '.join(s + ':' for s in TRACKING_SCHEMES)}")
    validate_model(cfg)


def _check_rzero(game: DictConfig, require) -> None:
    """R-Zero's options (docs/method.md §17.2): an ordered band, a schedule of two phases, and a
    Challenger for the options that act on it."""
    band, schedule = game.band, game.schedule
    if band.low is not None and band.high is not None:
        require(band.low < band.high if band.open else band.low <= band.high, "game.band.low",
                f"must be {'<' if band.open else '<='} game.band.high={band.high}")
    require((schedule.challenger_steps == 0) == (schedule.solver_steps == 0), "game.schedule.challenger_steps",
            f"and game.schedule.solver_steps={schedule.solver_steps}: both 0 (no schedule) or both at least 1")
    for key, used in (("game.repetition_penalty", game.repetition_penalty > 0),
                      ("game.schedule.challenger_steps", schedule.challenger_steps > 0)):
        require(game.challenger or not used, key, "acts on the Challenger; this game has none (game.challenger=false)")


def validate_model(cfg: DictConfig) -> None:
    """The checks `lsp-bootstrap` and `lsp-eval` share with `lsp-train`; a task and a reward check their
    own arguments when they are built (`lsp_exp/nodes.py`)."""
    for key in ("task", "model", "reward", *(("game.queries",) if "game" in cfg else ())):
        check_targets(OmegaConf.select(cfg, key), key)
    if cfg.model.get("dtype", "float32") not in ("float32", "bfloat16", "float16"):
        raise ConfigError(f"model.dtype={cfg.model.dtype!r}: must be float32, bfloat16 or float16")



def preflight(cfg: DictConfig) -> None:
    """What must be there before anything is built: the files the config names and the tracking
    server. Raises ConfigError, ModelNotFoundError (a FileNotFoundError) or TrackingUnreachableError,
    each naming the key; cheap, so a bad path or a dead server fails in seconds, not after the model
    is loaded."""
    if cfg.trainer.accelerator in ("gpu", "cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"trainer.accelerator={cfg.trainer.accelerator!r}: no CUDA device is visible on this "
                              "machine; use trainer=cpu (or trainer=ddp_cpu)")
    if cfg.model.get("path"):
        found = find_local_or_cached(cfg.model.path, "model.path", f"model {cfg.model.get('name')!r}")
        check_model_dir(found, "model.path")
    for key in ("trainer.checkpoint_dir", "paths.outputs"):
        path = OmegaConf.select(cfg, key)
        if path and Path(path).exists() and not Path(path).is_dir():
            raise ConfigError(f"{key}={path!r}: is a file, not a folder")
        if path:
            check_writable(Path(path), key)
    for key, reward in _reward_models(cfg.reward, "reward"):
        find_local_or_cached(reward.get("path"), f"{key}.path", f"reward model {reward.get('name', key)!r}")
    for key in ("task.heldout_path", "task.train_path", "game.prompts_path"):
        path = OmegaConf.select(cfg, key)
        if path and not Path(path).is_file():
            raise ConfigError(f"{key}={path!r}: no such file")
    if cfg.logger.name != "none" and cfg.logger.tracking_uri:
        check_reachable(cfg.logger.tracking_uri, key="logger.tracking_uri")


def check_writable(folder: Path, key: str, create: bool = True) -> None:
    """`folder` can be created and written (a 4 KiB probe file, removed at once: a full disk fails it);
    one line naming the key if not: under a file, unwritable, no space. `create=False`: the probe goes
    to its nearest existing folder and nothing is created (Hydra creates a run folder itself)."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        where = "is a file" if existing == folder else f"is under a file ({existing})"
        raise ConfigError(f"{key}={str(folder)!r}: {where}, not a folder")
    try:
        if create:
            folder.mkdir(parents=True, exist_ok=True)
            existing = folder
        handle, name = tempfile.mkstemp(dir=existing, prefix=".write_probe_")
        try:
            left = memoryview(b"\0" * 4096)
            while left:  # (a short write is followed by one that says why: ENOSPC, EFBIG)
                written = os.write(handle, left)
                if written == 0:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                left = left[written:]
        finally:
            os.close(handle)
            os.unlink(name)
    except OSError as err:
        raise ConfigError(f"{key}={str(folder)!r}: cannot write there ({' '.join(str(err).split())})") from None


def check_model_dir(path: str, key: str) -> None:
    """A local model folder holds a readable config.json (a hub id in the cache is left to transformers)."""
    folder = Path(path)
    if not folder.is_dir():
        return
    config = folder / "config.json"
    if not config.is_file():
        raise ConfigError(f"{key}={path!r}: not a model folder (no config.json in it)")
    try:
        json.loads(config.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(f"{key}={path!r}: its config.json is not valid JSON ({err})") from None


def check_targets(node: DictConfig, key: str) -> None:
    """Every `_target_` in a component's config tree can be imported, and every key of a `_partial_`
    node is a parameter of its function (`nodes.check_arguments`: a function is called only later, in
    a training step); one line naming the key if not; nothing is built. The top node must have one."""
    if not isinstance(node, DictConfig) or "_target_" not in node:
        raise ConfigError(f"{key}: needs a `_target_` (the class or function that builds it)")
    for sub_key, sub in [(key, node), *_subnodes(node, key)]:
        if "_target_" in sub:
            try:
                _locate(str(sub._target_))
            except ImportError as err:
                raise ConfigError(f"{sub_key}._target_={sub._target_!r}: cannot be imported "
                                  f"({' '.join(str(err).split())[:300]})") from None
            if sub.get("_partial_"):
                check_arguments(sub, sub_key)


def _subnodes(node: DictConfig, key: str):
    """(key, node) of every dict node below `node`, without resolving interpolations."""
    for name, child in node.items_ex(resolve=False):
        if isinstance(child, DictConfig):
            yield f"{key}.{name}", child
            yield from _subnodes(child, f"{key}.{name}")


def _numbers(cfg: DictConfig, keys: tuple[str, ...]):
    """(key, value) of every float or int in the framework's own groups (their schemas declare them)."""
    for top in keys:
        node = cfg.get(top)
        if isinstance(node, (int, float)) and not isinstance(node, bool):
            yield top, float(node)
        elif isinstance(node, DictConfig):
            for sub_key, sub in [(top, node), *_subnodes(node, top)]:
                for name, value in sub.items_ex(resolve=False):
                    if isinstance(value, (int, float)) and not isinstance(value, bool):
                        yield f"{sub_key}.{name}", float(value)


def _reward_models(node, key: str):
    """(key, node) of every reward-model node in a reward config tree (a composite's parts included)."""
    if not isinstance(node, DictConfig):
        return
    for sub_key, sub in [(key, node), *_subnodes(node, key)]:
        if str(sub.get("_target_", "")).endswith("load_reward_model"):
            yield sub_key, sub

