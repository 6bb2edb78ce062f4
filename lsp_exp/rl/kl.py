"""KL estimators of KL(pi || pi_ref) from samples of pi, and where the KL term enters the update.

With the log-ratio x = log pi(y) - log pi_ref(y) of a sample y ~ pi (Schulman, "Approximating KL"):
- k1 = x                      unbiased, high variance, can be negative;
- k2 = x^2 / 2                biased (low bias when pi ~ pi_ref), always >= 0;
- k3 = exp(-x) - 1 + x        unbiased, always >= 0 (GRPO's per-token estimator).
Estimators are applied per token and summed over the sequence (a sequence-level KL).
"""
from __future__ import annotations

import torch

from lsp_exp.rl.registry import KL_ESTIMATORS, register

PLACEMENTS = ("advantage", "loss", "reward")


@register(KL_ESTIMATORS, "k1")
def kl_k1(log_ratio: torch.Tensor) -> torch.Tensor:
    return log_ratio


@register(KL_ESTIMATORS, "k2")
def kl_k2(log_ratio: torch.Tensor) -> torch.Tensor:
    return 0.5 * log_ratio.pow(2)


@register(KL_ESTIMATORS, "k3")
def kl_k3(log_ratio: torch.Tensor) -> torch.Tensor:
    return torch.expm1(-log_ratio) + log_ratio


def sequence_kl(estimator, token_logp: torch.Tensor, token_logp_ref: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sum over a sequence's tokens of the per-token estimate, shape [B]."""
    return (estimator(token_logp - token_logp_ref) * mask).sum(-1)
