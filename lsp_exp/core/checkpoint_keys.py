"""Whether a checkpoint's weights are this run's: the same names, so that no weight is left at its
initial value by a non-strict load (a sharded run loads non-strictly: its gathered state dict names a
tied weight once)."""
from __future__ import annotations

from collections import defaultdict

import torch

from lsp_exp.errors import LspError


class CheckpointMismatchError(LspError, ValueError):
    """The checkpoint's weights are not the ones this run trains (LoRA vs full, other target modules)."""


def expected_groups(module: torch.nn.Module) -> list[set[str]]:
    """The names a checkpoint of `module` must hold, as groups of aliases (a tied weight's names): the
    trainable parameters when some weights are frozen (LoRA: only the adapter is saved), every entry
    of the state dict otherwise."""
    aliases: dict[int, set[str]] = defaultdict(set)
    trainable = set()
    for name, param in module.named_parameters(remove_duplicate=False):
        aliases[id(param)].add(name)
        if param.requires_grad:
            trainable.add(id(param))
    frozen = len(trainable) < len(aliases)
    if frozen:
        return [aliases[key] for key in trainable]
    names = {name for group in aliases.values() for name in group}
    return [*aliases.values(), *({key} for key in module.state_dict() if key not in names)]   # + buffers


def check_checkpoint_keys(saved: set[str], module: torch.nn.Module) -> None:
    """A CheckpointMismatchError (one line) unless each group of aliases has a name in `saved` and
    `saved` names nothing else."""
    groups = expected_groups(module)
    known = set().union(*groups) if groups else set()
    missing = sorted(min(group) for group in groups if not group & saved)
    unexpected = sorted(saved - known)
    if missing or unexpected:
        raise CheckpointMismatchError(
            f"the checkpoint's weights are not this run's model ({_few('missing', missing)}"
            f"{'; ' if missing and unexpected else ''}{_few('unexpected', unexpected)}): resume with the model "
            "config it was saved with (model.lora.enabled, model.lora.target_modules, model.path)")


def _few(what: str, names: list[str], shown: int = 3) -> str:
    if not names:
        return ""
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return f"{len(names)} {what}: {', '.join(names[:shown])}{more}"


def saved_weight_names(path) -> set[str]:
    """The weight names of a Lightning checkpoint file, read without loading the tensors (mmap)."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    return set(checkpoint.get("state_dict", {}))
