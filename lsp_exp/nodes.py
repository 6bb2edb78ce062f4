"""Building a component from its `_target_` config node (Hydra's `instantiate`), with one-line errors.

Convention: a node's `name` is its label (logged, shown in reports), not an argument; every other
key except Hydra's own (`_target_`, `_partial_`, ...) is an argument of the target, which checks
them itself (a wrong key is a TypeError of its signature, reported with the config key).
"""
from __future__ import annotations

import functools
import inspect

from hydra._internal.utils import _locate
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from lsp_exp.errors import ConfigError, LspError


def build(node: DictConfig, key: str, offer: dict | None = None, **overrides):
    """`instantiate(node)` without its `name`; a target that cannot be imported or called, or that
    refuses its arguments, is a ConfigError naming `key` and the target. `offer`: objects passed to
    the target under their names when its signature takes them and the node does not set them
    (e.g. `task`, so a reward can use the task it is built for)."""
    if node is None or "_target_" not in node:
        raise ConfigError(f"{key}: needs a `_target_` (the class or function that builds it)")
    try:
        spec = OmegaConf.to_container(node, resolve=True)
    except OmegaConfBaseException as err:
        raise ConfigError(f"{key}: {' '.join(str(err).split())}") from None
    spec.pop("name", None)
    partial = bool(spec.pop("_partial_", False))
    offered = {name: value for name, value in (offer or {}).items()
               if name not in spec and _takes(spec.get("_target_"), name)}
    try:  # the config's arguments bound first, then the offered objects (never merged into the config)
        bound = instantiate(spec, _partial_=True, **overrides)
    except InstantiationException as err:
        _raise(_innermost(err), key, node, target_error=True)
    if partial:
        return functools.partial(bound, **offered)
    try:
        return bound(**offered)
    except Exception as err:  # noqa: BLE001 (reported in one line, or as the framework's own error)
        _raise(_innermost(err), key, node, target_error=False)


def _raise(cause: BaseException, key: str, node: DictConfig, target_error: bool):
    if isinstance(cause, LspError):  # the framework's own clear errors, as they are
        raise cause from None
    if target_error and isinstance(cause, (ImportError, AttributeError)):
        raise ConfigError(f"{key}._target_={node._target_!r}: {_one_line(cause)}") from None
    if isinstance(cause, (TypeError, ValueError, KeyError, ImportError, AttributeError, FileNotFoundError)):
        raise ConfigError(f"{key} ({node._target_}): {_one_line(cause)}") from None
    raise cause


def checked(schema, value, key: str) -> DictConfig:
    """`value` (a dict or DictConfig) merged into the structured `schema`: a DictConfig with every
    field, or a ValueError naming the key that does not fit (for a component that checks its own
    arguments against a dataclass)."""
    try:
        return OmegaConf.merge(OmegaConf.structured(schema), value or {})
    except OmegaConfBaseException as err:
        raise ValueError(f"{key}: {str(err).splitlines()[0]}") from None


def _takes(target: str | None, name: str) -> bool:
    """Whether the callable `target` names a parameter `name` (False when it cannot be inspected)."""
    try:
        return name in inspect.signature(_locate(str(target))).parameters
    except (ImportError, TypeError, ValueError):
        return False


def _innermost(err: BaseException) -> BaseException:
    while err.__cause__ is not None:
        err = err.__cause__
    return err


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())
