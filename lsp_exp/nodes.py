"""Building a component from its `_target_` config node (Hydra's `instantiate`), with one-line errors.

Convention: a node's `name` is its label (logged, shown in reports), not an argument; every other
key except Hydra's own (`_target_`, `_partial_`, ...) is an argument of the target. A class checks
its arguments when it is built (a wrong key is a TypeError of its signature, reported with the config
key); a function named with `_partial_: true` is called later, so its keys are checked against its
signature beforehand (`check_arguments`, at start and when it is built).
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


def build(node: DictConfig, key: str, offer: dict | None = None, built: dict | None = None, **overrides):
    """`instantiate(node)` without its `name`; a target that cannot be imported or called, or that
    refuses its arguments, is a ConfigError naming `key` and the target. `offer`: objects passed to
    the target under their names when its signature takes them and the node does not set them
    (e.g. `task`, so a reward can use the task it is built for). `built`: arguments the caller has
    built already from the node's keys of those names (a composite's parts), passed in their place."""
    if node is None or "_target_" not in node:
        raise ConfigError(f"{key}: needs a `_target_` (the class or function that builds it)")
    try:
        spec = OmegaConf.to_container(node, resolve=True)
    except OmegaConfBaseException as err:
        raise ConfigError(f"{key}: {' '.join(str(err).split())}") from None
    spec.pop("name", None)
    partial = bool(spec.pop("_partial_", False))
    if partial:
        check_arguments(node, key)
    built = dict(built or {})
    for name in built:
        spec.pop(name, None)
    offered = {name: value for name, value in (offer or {}).items()
               if name not in spec and name not in built and _takes(spec.get("_target_"), name)}
    try:  # the config's arguments bound first, then the offered objects (never merged into the config)
        bound = instantiate(spec, _partial_=True, **overrides)
    except InstantiationException as err:
        _raise(_innermost(err), key, node, target_error=True)
    if partial:
        return functools.partial(bound, **offered, **built)
    try:
        return bound(**offered, **built)
    except Exception as err:  # noqa: BLE001 (reported in one line, or as the framework's own error)
        _raise(_innermost(err), key, node, target_error=False)


HYDRA_KEYS = ("_target_", "_partial_", "_recursive_", "_convert_", "_args_")


def check_arguments(node: DictConfig, key: str) -> None:
    """Every key of a `_target_` node (but `name` and Hydra's own) is a parameter of its target: a
    ConfigError naming the first that is not, e.g. `algorithm.advantage.scael: not a parameter of
    my_algos.scaled_advantage (parameters: scale)`. The target is imported, nothing is called; a
    target without a signature (some builtins) is left to its call."""
    target = str(node._target_)
    try:
        signature = inspect.signature(_locate(target))
    except ImportError as err:
        raise ConfigError(f"{key}._target_={target!r}: cannot be imported ({_one_line(err)[:300]})") from None
    except (TypeError, ValueError):
        return
    positional = [None] * len(node.get("_args_") or ())
    for name in node.keys():
        if name == "name" or name in HYDRA_KEYS:
            continue
        try:
            signature.bind_partial(*positional, **{str(name): None})
        except TypeError:
            raise ConfigError(f"{key}.{name}: not a parameter of {target} "
                              f"(parameters: {_settable(signature, bool(node.get('_partial_')))})") from None


def _settable(signature: inspect.Signature, partial: bool) -> str:
    """The parameters a config node can set: a partial's leading required positionals are its call's
    own (a reward's queries and answers, an advantage's rewards and mask), so they are left out."""
    params = [p for p in signature.parameters.values() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    if partial:
        keyword = [p for p in params if p.default is not p.empty or p.kind is p.KEYWORD_ONLY]
        params = keyword or params
    return ", ".join(p.name for p in params) or "none"


def unwrapped(fn):
    """The function under any `functools.partial` layers (a `_partial_: true` node builds one)."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    return fn


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
