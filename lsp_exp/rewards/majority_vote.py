"""A label-free Solver reward: majority vote over a query's G answers (TTRL; R-Zero's Solver).

The most common final value of a query's answers is its pseudo-label; an answer that states it gets
R = 1, any other 0. No label and no verifier is read: only the task's `final_answer` (docs/method.md §17.1).
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Sequence

import torch

from lsp_exp.errors import ConfigError
from lsp_exp.rewards.base import Scores

TIES = ("first", "none")


def pseudo_label(values: Sequence[Hashable | None], ties: str = "first") -> Hashable | None:
    """The pseudo-label of one group: the most common of the readable values (None = unreadable, no
    vote). A tie goes to the tied value read first (`ties=first`, as `Counter.most_common` orders
    them) or to none (`ties=none`); no readable value: None."""
    # docs/method.md §17.1: y_hat = argmax_y #{j : y_j = y}
    if ties not in TIES:
        raise ValueError(f"reward.ties={ties!r}: unknown; available: {', '.join(TIES)}")
    counts = Counter(v for v in values if v is not None).most_common(2)
    if not counts:
        return None
    if ties == "none" and len(counts) == 2 and counts[0][1] == counts[1][1]:
        return None
    return counts[0][0]


class MajorityVoteReward:
    """R(q, a_j) = 1 when a_j's final value is its group's pseudo-label, else 0; a group without a
    pseudo-label (no readable answer, or a tie under `ties=none`) is invalid. `task` is the run's
    task (it must read final values: `Task.final_answer`); `group_size` is G (`game.group_size`)."""

    bounds = (0.0, 1.0)
    pseudo_labels = True   # the run logs train/pseudo_label/* beside it (run/step_logging.py)
    grades_groups = True   # a verdict needs the query's whole group: no per-pair judging at start (judging_the_judges)

    def __init__(self, task, group_size: int, ties: str = "first"):
        if not callable(getattr(task, "final_answer", None)):
            raise ConfigError(f"reward=majority_vote: task {getattr(task, 'name', task)!r} reads no final answer "
                              "(override Task.final_answer)")
        if ties not in TIES:
            raise ValueError(f"reward.ties={ties!r}: unknown; available: {', '.join(TIES)}")
        if int(group_size) < 1:
            raise ValueError(f"reward.group_size={group_size!r}: must be at least 1")
        self.task, self.group_size, self.ties = task, int(group_size), ties

    def score(self, queries: list[str], answers: list[str]) -> Scores:
        """The N * G pairs, query-major (each group's G queries the same)."""
        g = self.group_size
        if len(queries) != len(answers) or len(answers) % g:
            raise ValueError(f"reward=majority_vote: {len(queries)} queries and {len(answers)} answers are not "
                             f"groups of reward.group_size={g}")
        values, valid = [], []
        for start in range(0, len(answers), g):
            if len(set(queries[start:start + g])) != 1:
                raise ValueError(f"reward=majority_vote: the answers {start}..{start + g - 1} are not one query's "
                                 f"group (reward.group_size={g} must be the game's group_size)")
            finals = [self.task.final_answer(a) for a in answers[start:start + g]]
            label = pseudo_label(finals, self.ties)
            # docs/method.md §17.1: R_j = 1[y_j = y_hat]; unreadable answers get 0
            values += [float(label is not None and f is not None and f == label) for f in finals]
            valid += [label is not None] * g
        return Scores(torch.tensor(values, dtype=torch.float32), torch.tensor(valid, dtype=torch.bool))
