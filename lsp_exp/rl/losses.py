"""Policy losses. Input: sequence log-probs [B] (with grad), advantages [B] (detached), mask [B]."""
from __future__ import annotations

import torch

from lsp_exp.rl.registry import POLICY_LOSSES, register


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1)


@register(POLICY_LOSSES, "reinforce")
def reinforce_loss(logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """L = -mean[ pi / stop_grad(pi) * A ] (LSP eq. 4-5, the DiCE form).

    The ratio is exactly 1 in the forward pass, so the loss value is -mean(A); its gradient is
    -mean(A * grad log pi): on-policy REINFORCE with a group baseline, no clipping, no old policy.
    """
    ratio = torch.exp(logp - logp.detach())
    return -masked_mean(ratio * advantages.detach(), mask)


def kl_penalised(advantages: torch.Tensor, kl: torch.Tensor, beta: float) -> torch.Tensor:
    """KL inside the detached advantage: A - beta * stop_grad(KL) (LSP_SPEC 3.3, option (a)).

    Multiplied by grad log pi this is a REINFORCE estimate of -beta * grad KL(pi || pi_ref), which
    pulls towards the reference; the literal term beta * log(pi / pi_ref) added to the loss has a
    gradient beta * grad log pi whose expectation under pi is zero (see kl.py and the tests).
    """
    return advantages - beta * kl.detach()
