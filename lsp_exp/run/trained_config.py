"""The config a run was trained with, read back from its tracking store, so `lsp-eval run=<id>`
evaluates the run as it was trained.

`lsp-train` logs its composed, resolved config with every run (`config/resolved.yaml`,
`tracking.log_run_start`). `as_trained` takes from it what lsp-eval shares with lsp-train: the
`task`, `model` and `reward` nodes, and the answer length (`game.max_answer_tokens`) as
`heldout.max_new_tokens` and `win_rate.max_new_tokens`. The command line wins where it names a key
(`reward=tiny_rm`, `task.heldout_path=...`, `win_rate.max_new_tokens=64`), except where that would
load other weights than the run's (`binding_keys`): then it stops in one line naming the key and the
run's value. The stored config is data, never code: every `_target_` it would build is checked as
`resume=` checks a checkpoint's (`saved_state.check_config_targets`).
"""
from __future__ import annotations

import copy
import tempfile
from pathlib import Path

import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf, open_dict

from lsp_exp.errors import LspError
from lsp_exp.run.saved_state import check_config_targets, targets_named

SAVED = "config/resolved.yaml"            # what tracking.log_run_start logs
SHARED = ("task", "model", "reward")      # the groups lsp-eval shares with lsp-train
LENGTHS = ("heldout.max_new_tokens", "win_rate.max_new_tokens")  # <- the run's game.max_answer_tokens


class RunConfigError(LspError, ValueError):
    """A run's stored config is unreadable, or the command line contradicts it."""


class MissingRunConfigError(RunConfigError):
    """The store holds no config for the run."""


def stored_config(client, run_id: str) -> DictConfig:
    """The run's `config/resolved.yaml`."""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            text = Path(client.download_artifacts(run_id, SAVED, tmp)).read_text(encoding="utf-8")
        except Exception as err:  # noqa: BLE001 (MLflow raises its own types for a missing artifact)
            raise MissingRunConfigError(f"run={run_id!r}: its store holds no {SAVED} (lsp-train logs it at a run's "
                                        f"start), so it cannot be evaluated as trained "
                                        f"({' '.join(str(err).split())[:160]})") from None
    try:
        stored = yaml.safe_load(text)
    except (yaml.YAMLError, RecursionError) as err:
        raise RunConfigError(f"run={run_id!r}: its {SAVED} is not YAML ({' '.join(str(err).split())[:200]})") from None
    if not isinstance(stored, dict) or not all(isinstance(stored.get(k), dict) for k in ("task", "model", "reward")):
        raise RunConfigError(f"run={run_id!r}: its {SAVED} is not a config of lsp-train (no task, model and reward)")
    return OmegaConf.create(stored)


def binding_keys(trained: DictConfig) -> list[str]:
    """The keys the run's weights load only with: the base model and the LoRA setting (its shape under
    LoRA), and the task's own base model (its world and build) where `model.path` is null."""
    keys = ["model.path", "model.lora.enabled"]
    if OmegaConf.select(trained, "model.lora.enabled"):
        keys += ["model.lora.r", "model.lora.alpha", "model.lora.target_modules"]
    if not OmegaConf.select(trained, "model.path"):
        keys += ["task._target_", "task.world", "task.bootstrap"]
    return keys


def as_trained(cfg: DictConfig, trained: DictConfig, run_id: str, overrides: list[str]) -> DictConfig:
    """`cfg` (lsp-eval's, composed from `overrides`) with the run's task, model, reward and answer
    length, except what `overrides` names; one that changes a `binding_keys` value is one line."""
    parsed = OverridesParser.create().parse_overrides(overrides)
    named = [o.key_or_group for o in parsed if o.package is None]
    out = copy.deepcopy(cfg)
    with open_dict(out):
        for node in SHARED:
            if node in named:  # `reward=tiny_rm`: the command line's node, whole
                continue
            out[node] = trained[node]
            for override in parsed:
                key = override.key_or_group
                if override.package is None and key.startswith(f"{node}."):
                    _apply(out, key, None if override.is_delete() else OmegaConf.select(cfg, key), override.is_delete())
        length = OmegaConf.select(trained, "game.max_answer_tokens")
        for key in LENGTHS:
            if length is not None and key not in named:
                OmegaConf.update(out, key, length, merge=False)
    where = f"run={run_id!r}"
    for key in binding_keys(trained):
        theirs, mine = _leaves(OmegaConf.select(trained, key), key), _leaves(OmegaConf.select(out, key), key)
        for leaf in sorted(set(theirs) | set(mine)):
            if not _same(mine.get(leaf), theirs.get(leaf)):
                raise RunConfigError(f"{where} was trained with {leaf}={theirs.get(leaf)!r}; this command's "
                                     f"{leaf}={mine.get(leaf)!r} cannot evaluate its weights as trained (drop the "
                                     "override)")
    check_config_targets(out, targets_named(overrides), where)  # the stored nodes are data, never code
    return out


def onto_run_nodes(argv: list[str]) -> list[str]:
    """`argv` with `run=<run id or filter>`: each override of a task, model or reward key forced (`++`),
    since it goes onto the run's node, which lsp-eval's default option may lack (`reward.path=...` on a
    reward_model run: Hydra would refuse a key the default `reward=arithmetic` has not)."""
    from hydra._internal.utils import get_args_parser  # noqa: PLC0415 (what hydra.main parses argv with)

    try:
        overrides = set(get_args_parser().parse_known_args(argv)[0].overrides)
        parsed = {text: OverridesParser.create().parse_overrides([text])[0] for text in overrides}
    except Exception:  # noqa: BLE001 (an override that does not parse: Hydra reports it)
        return argv
    runs = [o.value() for o in parsed.values() if o.key_or_group == "run" and isinstance(o.value(), str)]
    if not runs or Path(runs[-1]).expanduser().is_dir():
        return argv
    return [f"++{text}" if text in parsed and _sets_a_run_key(parsed[text]) else text for text in argv]


def _sets_a_run_key(override) -> bool:
    """`task.x=...`, `model.x=...` or `reward.x=...`, plain (not `+`, `++`, `~`, nor a group choice)."""
    key = override.key_or_group
    plain = not (override.is_add() or override.is_force_add() or override.is_delete())
    return plain and override.package is None and "." in key and key.split(".")[0] in SHARED


def _apply(cfg: DictConfig, key: str, value, delete: bool) -> None:
    """Set (or delete) `key` of `cfg` to the command line's value."""
    if delete:
        parent, _, leaf = key.rpartition(".")
        node = OmegaConf.select(cfg, parent)
        if isinstance(node, DictConfig) and leaf in node:
            del node[leaf]
        return
    OmegaConf.update(cfg, key, value, merge=False, force_add=True)


def _leaves(value, key: str) -> dict[str, object]:
    """`key`'s value as {leaf key: plain value} (a dict node flattened; lists kept whole)."""
    if isinstance(value, DictConfig):
        value = OmegaConf.to_container(value, resolve=True)
    if isinstance(value, dict):
        out: dict[str, object] = {}
        for k, v in value.items():
            out.update(_leaves(v, f"{key}.{k}"))
        return out
    if not isinstance(value, (str, int, float, bool, type(None))):
        value = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
    return {key: value}


def _same(mine, theirs) -> bool:
    """Equal values; two paths to the same existing folder are equal."""
    if mine == theirs:
        return True
    if isinstance(mine, str) and isinstance(theirs, str) and Path(mine).expanduser().is_dir():
        return Path(mine).expanduser().resolve() == Path(theirs).expanduser().resolve()
    return False
