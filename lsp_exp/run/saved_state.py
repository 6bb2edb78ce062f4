"""Saved state is data, never code: what a checkpoint or a tracking store says is checked before use.

`resume=` recomposes the config from the overrides saved in the checkpoint. A checkpoint (or the
tracking-store tag that leads to one) can be written by someone else, and every `_target_` of the
config is imported and called, so a saved override could name any function of any installed
package (`pandas.read_pickle`, `builtins.open` with `mode=w`). Here:

- `project_targets()`: the allowlist, every `_target_` of the config groups in `conf/` and every
  function of lsp_exp's registries (`lsp_exp/rl/registry.py`);
- `check_saved_overrides`: a saved override that sets a `hydra.` key or a `_target_` that is not on
  the allowlist is refused, unless this command line sets the same key again;
- `check_config_targets`: every `_target_` of the recomposed config is on the allowlist or named on
  this command line (a target hidden in a dict value or an interpolation included).

Nothing is imported to check a target: importing a module runs its code.
"""
from __future__ import annotations

import functools
from pathlib import Path

import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, ListConfig, OmegaConf

from lsp_exp.errors import LspError
from lsp_exp.rl import ADVANTAGE_ESTIMATORS, AGGREGATIONS, CHALLENGER_OBJECTIVES, KL_ESTIMATORS, TOKEN_POLICY_LOSSES
from lsp_exp.run.config import PROJECT_ROOT


class UnsafeSavedStateError(LspError, ValueError):
    """Saved state (a checkpoint's overrides, a store's tag) would run code or reach outside the run."""


@functools.cache
def project_targets() -> frozenset[str]:
    """Every `_target_` in `conf/**/*.yaml`, and `module.qualname` of every registered function."""
    found: set[str] = set()
    for path in sorted((PROJECT_ROOT / "conf").rglob("*.yaml")):
        found.update(_targets_in(yaml.safe_load(path.read_text())))
    for registry in (ADVANTAGE_ESTIMATORS, AGGREGATIONS, CHALLENGER_OBJECTIVES, KL_ESTIMATORS, TOKEN_POLICY_LOSSES):
        for fn in registry.values():
            if hasattr(fn, "__qualname__"):
                found.add(f"{fn.__module__}.{fn.__qualname__}")
    return frozenset(found)


def _targets_in(value) -> set[str]:
    """The `_target_` strings anywhere in a plain dict / list tree."""
    if isinstance(value, dict):
        own = {str(value["_target_"])} if "_target_" in value else set()
        return own.union(*(_targets_in(v) for v in value.values()))
    if isinstance(value, (list, tuple)):
        return set().union(*(_targets_in(v) for v in value))
    return set()


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def _parsed(override: str):
    return OverridesParser.create().parse_overrides([override])[0]


def targets_named(overrides: list[str]) -> set[str]:
    """The `_target_`s this command line sets itself (a `..._target_=x` or a dict value holding one)."""
    named: set[str] = set()
    for text in overrides:
        try:
            override = _parsed(text)
            value = override.value()
        except Exception:  # noqa: BLE001 (Hydra's parser reports it; a sweep's value holds no target)
            continue
        if _key(text).split(".")[-1] == "_target_" and isinstance(value, str):
            named.add(value)
        named |= _targets_in(value)
    return named


def check_saved_overrides(saved: list[str], current: list[str], where: str) -> None:
    """Refuse a saved override this command line does not replace that sets a `hydra.` key (or a
    hydra group) or a `_target_` off the allowlist (`where`: e.g. `resume='<file>'`)."""
    replaced = {_key(o) for o in current}
    allowed = project_targets()
    for text in saved:
        if not isinstance(text, str):
            raise UnsafeSavedStateError(f"{where}: the checkpoint's saved overrides hold a {type(text).__name__}, "
                                        "not an override string; refused")
        key = _key(text)
        if key in replaced:
            continue
        if key == "hydra" or key.startswith(("hydra.", "hydra/")):
            raise UnsafeSavedStateError(f"{where}: the checkpoint's saved override {text!r} sets a Hydra key, which a "
                                        "run never saves; refused (saved state is data, never code)")
        try:
            value = _parsed(text).value()
        except Exception as err:  # noqa: BLE001 (Hydra's parser raises its own types)
            raise UnsafeSavedStateError(f"{where}: the checkpoint's saved override {text!r} does not parse "
                                        f"({' '.join(str(err).split())[:200]}); refused") from None
        targets = _targets_in(value) | ({str(value)} if key.split(".")[-1] == "_target_" else set())
        for target in sorted(targets - allowed):
            raise UnsafeSavedStateError(
                f"{where}: the checkpoint's saved override {text!r} sets `_target_` {target!r}, which is not one "
                f"of the project's own (conf/); refused (saved state is data, never code); give {key}=... on the "
                "command line to use it")


def check_config_targets(cfg: DictConfig, named: set[str], where: str) -> None:
    """Every `_target_` of `cfg` (resolved) is on the allowlist or in `named` (this command line's)."""
    allowed = project_targets() | named
    for key, node in _nodes(cfg, ""):
        if "_target_" not in node:
            continue
        try:
            target = OmegaConf.select(node, "_target_", throw_on_resolution_failure=True)
        except Exception as err:  # noqa: BLE001 (an interpolation that does not resolve)
            raise UnsafeSavedStateError(f"{where}: {key}._target_ does not resolve "
                                        f"({' '.join(str(err).split())[:200]}); refused") from None
        if str(target) not in allowed:
            raise UnsafeSavedStateError(
                f"{where}: the recomposed config sets {key}._target_={str(target)!r}, which is not one of the "
                "project's own (conf/) nor named on this command line; refused (saved state is data, never code)")


def _nodes(node, key: str):
    """(key, node) of every dict node of `node` (itself included), lists walked too, unresolved."""
    if isinstance(node, DictConfig):
        if key != "hydra":
            yield key or "<root>", node
            for name, child in node.items_ex(resolve=False):
                yield from _nodes(child, f"{key}.{name}" if key else str(name))
    elif isinstance(node, ListConfig):
        for i, child in enumerate(node._iter_ex(resolve=False)):
            yield from _nodes(child, f"{key}[{i}]")


def inside(path: Path, folder: Path) -> bool:
    """`path` is `folder` or below it, after both are resolved (symlinks and `..` followed)."""
    try:
        path.expanduser().resolve().relative_to(folder.expanduser().resolve())
        return True
    except ValueError:
        return False
