"""Model FLOPs utilisation (MFU) of the update, on a GPU: achieved FLOP/s over the device's peak.

The update runs a forward and a backward pass over every token of the role batches. Per token and
parameter that is 2 FLOPs forward and 4 backward (activation and weight gradients): 6 N per token
for a full fine-tune (Kaplan et al. 2020; PaLM's MFU). Under LoRA the frozen weights get no weight
gradient, so the base costs 4 N per token (the adapter's own parameters are negligible). Attention's
FLOPs are left out, as in the usual estimate, so MFU is slightly understated for long sequences.
Tokens are counted as the batch holds them (a prompt prefix shared by G rows and computed once
counts G times), so on the self-play step this is the effective rate of the work done.
"""
from __future__ import annotations

# Dense bf16 peak FLOP/s (no sparsity), from the vendors' data sheets.
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "GH200": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 70e12}


def peak_flops(device_name: str) -> float | None:
    """The bf16 peak of a GPU by (a part of) its name, e.g. 'NVIDIA H100 80GB HBM3'; None if unknown."""
    for key in sorted(PEAK_BF16_FLOPS, key=len, reverse=True):  # GH200 before H200
        if key in device_name:
            return PEAK_BF16_FLOPS[key]
    return None


def update_flops(n_params: int, tokens: int, lora: bool) -> float:
    """FLOPs of one forward + backward pass over `tokens` tokens: (4 if LoRA else 6) * N * tokens."""
    return (4 if lora else 6) * n_params * tokens


def mfu(n_params: int, tokens: int, seconds: float, peak: float, lora: bool = False) -> float:
    """Achieved update FLOP/s over the peak."""
    return update_flops(n_params, tokens, lora) / (seconds * peak)
