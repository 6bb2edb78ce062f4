"""Sharded full fine-tuning (`trainer=fsdp`): the policy's weights, gradients and AdamW state split
across the ranks with FSDP2 (`torch.distributed.fsdp.fully_shard`), run by Lightning's
`ModelParallelStrategy`.

Why this route: Lightning's `FSDPStrategy` (FSDP1) wraps the whole LightningModule, so a backward
inside `training_step` (manual optimization, which the self-play step needs: generation, several
micro-batch backwards and PPO's inner epochs in one step) breaks it. FSDP2 shards modules in place,
each with its own hooks, so the step keeps one code path on every strategy: manual optimization,
micro-batches (each backward reduce-scatters its gradients), inner epochs, the non-finite skip.
It runs on CUDA (NCCL) and on CPU processes (gloo), so `trainer=fsdp_cpu` tests it here.

Under FSDP2 every forward of a sharded module is a collective (it all-gathers the layer's weights),
so every rank must make the same forward calls. Passes whose count depends on the data (decoding
stops when a rank's rows have ended; a shared prefix runs one pass or two) run inside `gathered`:
the full weights are gathered once, forwards are local, and the shards are restored after. Passes
with gradients run sharded, micro-batch by micro-batch (the same count on every rank), without
prefix sharing (`logprobs.token_logprobs`).
"""
from __future__ import annotations

from collections import defaultdict
from contextlib import contextmanager

import torch
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard


def is_sharded(model) -> bool:
    """The module (or a module inside it) is sharded with FSDP2."""
    return isinstance(model, FSDPModule)


def collective_forwards(model) -> bool:
    """Forwards of `model` are collectives now (sharded and not `gathered`)."""
    return is_sharded(model) and not getattr(model, "_lsp_gathered", False)


def shard(policy, device: torch.device, param_dtype: torch.dtype = torch.float32) -> None:
    """fully_shard each decoder layer (the classes the model lists in `_no_split_modules`, as
    accelerate's FSDP auto-wrap does), then the whole model (embeddings, head, norms), over all ranks.

    The shards stay float32 (master weights, docs/method.md §16); with `param_dtype` bfloat16 the
    gathered weights are bfloat16 in the forward and gradients are reduced in float32. Then one
    forward through the root module: FSDP2 initialises itself lazily at the first forward, which must
    be the root's (a first log-prob pass through the decoder alone would fail on every rank)."""
    mesh = init_device_mesh(device.type, (torch.distributed.get_world_size(),))
    mixed = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    blocks = set(_no_split_modules(policy))
    if not blocks:
        raise ValueError(f"{type(policy).__name__} lists no `_no_split_modules` (its decoder layer class): "
                         "cannot shard it layer by layer; use trainer=ddp")
    for module in list(policy.modules()):
        if type(module).__name__ in blocks:
            fully_shard(module, mesh=mesh, mp_policy=mixed)
    fully_shard(policy, mesh=mesh, mp_policy=mixed)
    with torch.no_grad():  # the root's first forward (every rank: a collective)
        policy(input_ids=torch.zeros(1, 1, dtype=torch.long, device=device), use_cache=False)
    for module in policy.modules():   # the root keeps its weights gathered after a forward: shard them again,
        if isinstance(module, FSDPModule):   # so the optimizer is built over the float32 shards
            module.reshard()


def _no_split_modules(model) -> list[str]:
    for module in model.modules():  # a PEFT model holds the transformers model inside
        names = getattr(module, "_no_split_modules", None)
        if names:
            return list(names)
    return []


@contextmanager
def gathered(model):
    """The full weights of a sharded model for the duration (no collective per forward); a no-op
    for a model that is not sharded. Every rank must enter it (the gathering is a collective)."""
    if not is_sharded(model) or getattr(model, "_lsp_gathered", False):
        yield model
        return
    modules = [m for m in model.modules() if isinstance(m, FSDPModule)]
    for m in modules:
        m.set_reshard_after_forward(False, recurse=False)
        m.unshard()
    model._lsp_gathered = True
    try:
        yield model
    finally:
        model._lsp_gathered = False
        for m in modules:
            m.reshard()
            m.set_reshard_after_forward(True, recurse=False)


def full_state_dict(model) -> dict[str, torch.Tensor]:
    """The whole model's weights on the CPU, gathered from the shards (a collective: every rank calls it)."""
    weights = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    names = defaultdict(list)  # tied weights (lm_head = embeddings) as one tensor, as save_pretrained expects
    for name, param in model.named_parameters(remove_duplicate=False):
        names[id(param)].append(name)
    for tied in names.values():
        kept = [n for n in tied if n in weights]
        for name in tied[1:] if kept else []:
            weights[name] = weights[kept[0]]
    return weights
