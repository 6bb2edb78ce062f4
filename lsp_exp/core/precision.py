"""The precision policy (docs/method.md §16): trainable weights and AdamW state in float32 (master
weights), every forward of the policy in the compute dtype under autocast.

Why: bfloat16 keeps 8 bits of mantissa. An AdamW step moves a weight by about lr (1e-6 in the
paper), far below half a bfloat16 ulp of a weight of 0.02 (6e-5) or of a norm weight of 1 (4e-3),
so bfloat16 weights round most of every update away. Float32 master weights keep them; the
matrix products still run in bfloat16 (autocast casts the weights once per autocast region).

    compute dtype = bfloat16 if model.dtype = bfloat16 or trainer.precision = bf16-mixed, else float32
    full fine-tune: policy, reference copy, gradients and AdamW moments in float32
    LoRA:           frozen base in model.dtype, adapter (and its gradients and moments) in float32

Autocast regions must end before an optimizer step: inside one region autocast caches its cast of
each float32 weight, so a forward after the step (PPO's inner epochs) would read stale weights.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch

COMPUTE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
# Lightning precision flags a run accepts: the policy's precision is this module's, not Lightning's.
ACCEPTED_PRECISIONS = ("32-true", "32", "bf16-mixed", "bf16")
REFUSED_PRECISIONS = {
    "bf16-true": "casts the float32 master weights and the LoRA adapter to bfloat16, where updates of the "
                 "paper's size round away",
    "16-true": "float16 weights and AdamW without loss scaling: updates round away and gradients underflow",
    "16-mixed": "float16 autocast needs a gradient scaler, which manual optimization here does not run",
    "16": "float16 autocast needs a gradient scaler, which manual optimization here does not run",
    "64-true": "float64 is not a training precision of this project",
    "64": "float64 is not a training precision of this project",
    "transformer-engine": "FP8 training is not supported",
    "transformer-engine-float16": "FP8 training is not supported",
}


def precision_problem(model_dtype: str, trainer_precision: str) -> tuple[str, str] | None:
    """(the key, why it is refused and what to set instead) when the pair would lose updates; None when fine."""
    precision = str(trainer_precision)
    if precision in REFUSED_PRECISIONS:
        return "trainer.precision", (f"{REFUSED_PRECISIONS[precision]}; set trainer.precision=bf16-mixed with "
                                     "model.dtype=bfloat16 (float32 master weights, bfloat16 compute) or 32-true")
    if precision not in ACCEPTED_PRECISIONS:
        return "trainer.precision", f"unknown; available: {', '.join(ACCEPTED_PRECISIONS)}"
    if model_dtype not in COMPUTE_DTYPES:
        return "model.dtype", (f"{model_dtype} cannot train the policy (float16 needs loss scaling, which this "
                               "trainer does not run); use bfloat16, or float32 on GPUs without bfloat16")
    return None


def compute_dtype(model_dtype: str, trainer_precision: str = "32-true") -> torch.dtype:
    """The dtype the policy's forwards run in (the module docstring's rule)."""
    if model_dtype == "bfloat16" or str(trainer_precision) in ("bf16-mixed", "bf16"):
        return torch.bfloat16
    return torch.float32


@contextmanager
def autocast(device: torch.device | str, dtype: torch.dtype):
    """The policy's forwards in `dtype` (float32: exactly as written, an outer autocast switched off)."""
    device_type = torch.device(device).type
    with torch.autocast(device_type, dtype=dtype, enabled=dtype != torch.float32):
        yield


def outside_autocast(device: torch.device | str):
    """No autocast (a reward model or a verifier runs in its own dtype, not the policy's)."""
    return torch.autocast(torch.device(device).type, enabled=False)


def check_master_weights(model) -> None:
    """Every trainable parameter is float32; a ValueError naming the first that is not."""
    for name, param in model.named_parameters():
        if param.requires_grad and param.dtype != torch.float32:
            raise ValueError(f"trainable parameter {name} is {str(param.dtype).removeprefix('torch.')}: the "
                             "precision policy keeps trainable weights in float32 (docs/method.md §16)")
