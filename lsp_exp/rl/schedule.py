"""R-Zero's alternating schedule (docs/method.md §17.2): a phase of `challenger_steps` steps in which
only the Challenger is updated, then `solver_steps` in which only the Solver is, and again. Both
roles still play every step (the Challenger's reward needs the Solver's answers). A function of the
step index alone, so a resumed run continues the phase it stopped in."""
from __future__ import annotations

ROLES = ("solver", "challenger")


def phase(step: int, challenger_steps: int, solver_steps: int) -> str | None:
    """'challenger' when step mod (challenger_steps + solver_steps) < challenger_steps, else 'solver';
    None without a schedule (both 0: both roles every step)."""
    if challenger_steps == 0 and solver_steps == 0:
        return None
    return "challenger" if step % (challenger_steps + solver_steps) < challenger_steps else "solver"


def trained_roles(step: int, challenger_steps: int, solver_steps: int) -> tuple[str, ...]:
    """The roles updated at this step: both without a schedule, else the phase's."""
    current = phase(step, challenger_steps, solver_steps)
    return ROLES if current is None else (current,)
