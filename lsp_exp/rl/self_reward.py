"""How the self-quality reward R_Q enters full LSP (docs/method.md §8), before any advantage is computed.

    r_sol(q_i, a_i^j) = R(q_i, a_i^j) + w * R_Q(q_i, a_i^j)
    r_ch(q_i)         = objective(V(q_i)) + w * V_Q(q_i),   V_Q(q_i) = (1/G) sum_j R_Q(q_i, a_i^j)

V(q_i) is the value under the task reward alone (eq. 2) and the objective is the paper's -V by
default, so r_ch = -V + V_Q as in the paper. w = 1 in the paper (added raw, no rescaling);
LSP-Zero is w = 0 (no judge at all). An invalid query collects no V_Q (its term is 0, the judge's
lowest score): otherwise a Challenger could earn the judge's points with queries the Solver is not
trained on.
"""
from __future__ import annotations

import torch


def solver_rewards(task: torch.Tensor, quality: torch.Tensor, weight: float = 1.0) -> torch.Tensor:
    """r_sol = R + w R_Q, both [N, G]."""
    return task + weight * quality


def challenger_rewards(objective: torch.Tensor, quality: torch.Tensor, weight: float = 1.0,
                       valid: torch.Tensor | None = None) -> torch.Tensor:
    """r_ch = objective(V) + w V_Q: objective [N], quality [N, G], valid [N] bool -> [N] (V_Q = 0 where invalid)."""
    v_q = quality.mean(-1)
    if valid is not None:
        v_q = torch.where(valid, v_q, torch.zeros_like(v_q))
    return objective + weight * v_q
