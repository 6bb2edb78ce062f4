"""Policy losses.

TOKEN_POLICY_LOSSES: token log-probs [B, T], old log-probs [B, T], advantages [B], mask [B, T] and
token weights W [B, T] -> PolicyLossOutput(loss, clip_frac, approx_kl), the per-token losses l_t
aggregated as sum_t W_t l_t (W = d agg / d l of the algorithm's aggregation, aggregation.py).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from lsp_exp.rl.aggregation import weighted_sum
from lsp_exp.rl.kl import kl_k3
from lsp_exp.rl.registry import TOKEN_POLICY_LOSSES, register


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1)


def kl_penalised(advantages: torch.Tensor, kl: torch.Tensor, beta: float) -> torch.Tensor:
    """KL inside the detached advantage: A - beta * stop_grad(KL) (docs/method.md §7).

    Multiplied by grad log pi this is a REINFORCE estimate of -beta * grad KL(pi || pi_ref), which
    pulls towards the reference; the literal term beta * log(pi / pi_ref) added to the loss has a
    gradient beta * grad log pi whose expectation under pi is zero (see kl.py and the tests).
    """
    return advantages - beta * kl.detach()


# ---- token-level losses with an old policy: (logp, old_logp [B, T], advantages [B], mask [B, T]) ----
# ratio_t = exp(logp_t - stop_grad(old_logp_t)); old_logp=None means on-policy (old = stop_grad(logp),
# ratio 1 in value). Per-token losses l_t are summed with the token weights W_t (aggregation.py).


@dataclass
class PolicyLossOutput:
    loss: torch.Tensor       # scalar, with grad
    clip_frac: torch.Tensor  # scalar, detached: fraction of counted tokens on the clipped branch
    approx_kl: torch.Tensor  # scalar, detached: mean over counted tokens of (r - 1) - log r


def _log_ratio(logp: torch.Tensor, old_logp: torch.Tensor | None, mask: torch.Tensor) -> torch.Tensor:
    """log r_t = logp_t - stop_grad(old_logp_t), forced to 0 on uncounted tokens (no inf/NaN from padding)."""
    old = logp.detach() if old_logp is None else old_logp.detach()
    return torch.where(mask.bool(), logp - old, torch.zeros_like(logp))


def _finish(per_token, clipped, log_ratio, mask, token_weights) -> PolicyLossOutput:
    """loss = sum_t W_t l_t (docs/method.md §6, §15), and the detached diagnostics."""
    with torch.no_grad():
        clip_frac = masked_mean(clipped.to(per_token.dtype), mask)
        # k3 of x = log old - log new on samples of the old policy: KL(old || new) ~ (r - 1) - log r,
        # unbiased and >= 0 (Schulman, "Approximating KL"; the approx_kl of CleanRL / TRL).
        approx_kl = masked_mean(kl_k3(-log_ratio), mask)
    return PolicyLossOutput(weighted_sum(per_token, mask, token_weights), clip_frac, approx_kl)


@register(TOKEN_POLICY_LOSSES, "reinforce_token")
def reinforce_token_loss(logp, old_logp, advantages, mask, *, token_weights: torch.Tensor, clip_low: float = 0.2,
                         clip_high: float | None = None) -> PolicyLossOutput:
    """l_t = -r_t * A (no clipping; clip_* ignored). On-policy r_t = 1, grad l_t = -A grad logp_t:
    REINFORCE with a baseline (Williams 1992); with seq_mean_token_sum's weights its gradient is LSP eq. 4-5's."""
    log_ratio = _log_ratio(logp, old_logp, mask)
    per_token = -torch.exp(log_ratio) * advantages.detach()[:, None]
    return _finish(per_token, torch.zeros_like(mask, dtype=torch.bool), log_ratio, mask, token_weights)


@register(TOKEN_POLICY_LOSSES, "clipped")
def clipped_loss(logp, old_logp, advantages, mask, *, token_weights: torch.Tensor, clip_low: float = 0.2,
                 clip_high: float | None = None) -> PolicyLossOutput:
    """PPO clipped surrogate (Schulman et al. 2017), per token as in GRPO; clip_high != clip_low is
    DAPO's asymmetric clip-higher (Yu et al. 2025); clip_high=None means clip_high = clip_low.

        l_t = -min( r_t A, clip(r_t, 1 - clip_low, 1 + clip_high) A )

    A token is clipped when the min picks the clipped term and it differs (A > 0 and r > 1 + clip_high,
    or A < 0 and r < 1 - clip_low); its gradient is then exactly 0.
    """
    clip_high = clip_low if clip_high is None else clip_high
    if not (0 <= clip_low < 1 and clip_high >= 0):
        raise ValueError(f"need 0 <= clip_low < 1 and clip_high >= 0, got {clip_low}, {clip_high}")
    log_ratio = _log_ratio(logp, old_logp, mask)
    ratio, adv = torch.exp(log_ratio), advantages.detach()[:, None]
    surrogate = ratio * adv
    clipped_surrogate = ratio.clamp(1 - clip_low, 1 + clip_high) * adv
    clipped = (clipped_surrogate < surrogate) & mask.bool()
    per_token = -torch.where(clipped, clipped_surrogate, surrogate)   # = -min(surrogate, clipped_surrogate)
    return _finish(per_token, clipped, log_ratio, mask, token_weights)
