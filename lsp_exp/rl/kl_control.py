"""KL coefficient controllers: `.value` is the beta to use this step; call `.update(kl, n_steps)` after it.

- fixed:    beta constant (kl=none is fixed with beta 0);
- adaptive: Ziegler et al. 2019 ("Fine-Tuning LMs from Human Preferences", sec. 2.2), proportional control
            of the measured KL towards a target:
                e = clip(KL / target - 1, -0.2, 0.2);   beta <- beta * (1 + e * n_steps / horizon)
Both save and restore their beta (state_dict / load_state_dict), so a resumed run continues the schedule.
"""
from __future__ import annotations

import torch

KL_CONTROLLERS = ("fixed", "adaptive")


def _float(x) -> float:
    return float(x.detach()) if isinstance(x, torch.Tensor) else float(x)


class FixedKLController:
    def __init__(self, beta: float):
        self.value = float(beta)

    def update(self, current_kl, n_steps: int = 1) -> float:
        """Nothing to adapt; returns the (unchanged) beta."""
        return self.value

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = float(state["value"])


class AdaptiveKLController:
    def __init__(self, init_beta: float, target: float, horizon: float):
        if target <= 0 or horizon <= 0:
            raise ValueError(f"adaptive KL needs target > 0 and horizon > 0, got {target}, {horizon}")
        self.value, self.target, self.horizon = float(init_beta), float(target), float(horizon)

    def update(self, current_kl, n_steps: int = 1) -> float:
        """beta <- beta * (1 + clip(KL/target - 1, -0.2, 0.2) * n_steps / horizon); returns the new beta.
        n_steps: how many samples (or steps, in the caller's unit of horizon) the KL was measured over."""
        error = min(max(_float(current_kl) / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon
        return self.value

    def state_dict(self) -> dict:
        return {"value": self.value, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, state: dict) -> None:
        """Restores beta; target and horizon stay those of the config (they are saved for reference)."""
        self.value = float(state["value"])


def kl_controller(kl, role: str):
    """The role's KL coefficient: `kl.beta_<role>` when set, else `kl.beta`; fixed or adaptive."""
    beta = kl[f"beta_{role}"] if kl[f"beta_{role}"] is not None else kl.beta
    if kl.controller == "adaptive":
        return AdaptiveKLController(beta, kl.target, kl.horizon)
    if kl.controller == "fixed":
        return FixedKLController(beta)
    raise ValueError(f"kl.controller={kl.controller!r}: unknown; available: {', '.join(KL_CONTROLLERS)}")
