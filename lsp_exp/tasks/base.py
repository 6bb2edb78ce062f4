"""What a task supplies to the framework, and nothing more.

A task is the ground the game is played on: the Challenger's prompt style, the self-quality judge's
rubric, optionally a base model it builds (the toy world trains one), a held-out evaluation, the
prompts a data-driven game samples from, a ground-truth reward logged beside a proxy reward, and
labelled (query, answer, correct?) pairs to judge the judges. The core asks only these questions;
it never imports a task package. A task is chosen by the `task` config group and built from its
`_target_` (`conf/task/*.yaml`); subclass `Task` and override what your task has.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass
class HeldoutSet:
    """A task's held-out problems: each prompt (the Solver's user turn), a check of an answer's text,
    each prompt's slices (metrics are also reported per slice) and, where known, a reference text."""

    prompts: list[str]
    is_correct: Callable[[int, str], bool]     # (prompt index, answer text) -> correct?
    slices: list[list[str]]
    references: list[str | None]

    def __post_init__(self):
        if not (len(self.prompts) == len(self.slices) == len(self.references)):
            raise ValueError("HeldoutSet: prompts, slices and references must have one entry per prompt")

    def head(self, n: int | None) -> "HeldoutSet":
        """The first n problems (all when n is None)."""
        if n is None:
            return self
        return HeldoutSet(self.prompts[:n], self.is_correct, self.slices[:n], self.references[:n])


class Task:
    """The contract between a task and the framework; these defaults are a task with nothing but a
    Challenger: subclass it and override what your task has.

    Attributes: `name`; `challenger_style` and `judge_template` (the prompt and rubric `auto`
    selects); `char_level` (`lsp-eval` over characters); `prompt_bound` (set by the run, read by
    the methods that read files). Methods, each called by the run at most once unless stated:

    - `base_model(force)` / `built_model()`: a model the task builds, when `model.path` is null;
    - `heldout()`: the held-out set of the Solver (None: no evaluation);
    - `train_prompts()` / `train_references()`: a data game's prompts, `lsp-eval`'s n-gram baseline;
    - `ground_truth()`: a reward always right, logged beside a proxy reward (None: none);
    - `labelled_pairs(n)`: (query, answer, correct?) to judge the judges at start;
    - `answer_columns(queries, answers)`: per (query, answer) pair, the columns the sample tables
      show beside the raw answer (called at each sample table; default {}: none);
    - `query_metrics(queries)`: figures of one step's queries, logged as `train/queries/<name>`
      (called every step; default {}: none);
    - `final_answer(answer)`: the final value an answer states, hashable, None when unreadable (no
      default: `reward=majority_vote` votes on it and refuses a task without it; called every step);
    - `query_slices(queries)`: the slices of each training query, for the per-slice pseudo-label
      accuracy of `reward=majority_vote` (called every step; default: none).
    """

    name = "task"
    challenger_style = "paper"   # the Challenger's prompt for `game.prompt=auto` (games/challenger_prompt.py)
    judge_template = "paper"     # the self-quality judge's rubric for `game.judge.template=auto` (judge/templates.py)
    char_level = False           # `lsp-eval`: BLEU, ROUGE and diversity over characters (answers of a few characters)
    prompt_bound = None          # set by the run before reading files (core/prompt_bound.py): longer rows are refused
    # `final_answer(self, answer: str)`: the final value an answer states (e.g. the number after `####`),
    # hashable, or None when it cannot be read; `reward=majority_vote` votes on it (docs/method.md §17.1).
    # No default: a task that reads no final value leaves it None, and that reward refuses the task at start.
    final_answer = None

    def base_model(self, force: bool = False) -> str | None:
        """A model directory this task builds (or finds in its cache) when `model.path` is null."""
        return None

    def built_model(self) -> str | None:
        """`base_model()` when it is built already (nothing is built here); None otherwise."""
        return None

    def heldout(self) -> HeldoutSet | None:
        """The held-out evaluation of the Solver (None: the run evaluates nothing)."""
        return None

    def train_prompts(self) -> list[str] | None:
        """The prompts a data-driven game (`game=grpo_data`) samples when `game.prompts_path` is null."""
        return None

    def train_references(self) -> list[str] | None:
        """Reference answers of the training split (`lsp-eval` fits its n-gram baseline on them); None: none."""
        return None

    def ground_truth(self):
        """A reward that is always right (a verifier), logged beside a proxy reward; None if there is none."""
        return None

    def answer_columns(self, queries: list[str], answers: list[str]) -> dict[str, list]:
        """Columns the sample tables show beside each raw answer (one value per (query, answer) pair),
        e.g. the answer as the task reads it, the expected answer and whether it is correct
        (None where a query has no ground truth); {}: none."""
        return {}

    def query_metrics(self, queries: list[str]) -> dict[str, float]:
        """Figures of one step's queries, logged as `train/queries/<name>` (e.g. the share of each kind
        of problem, to see where a Challenger goes); {}: none."""
        return {}

    def query_slices(self, queries: list[str]) -> list[list[str]]:
        """The slices of each training query (e.g. its difficulty), for the per-slice pseudo-label
        accuracy `train/pseudo_label/accuracy/<slice>`; default: none for any query."""
        return [[] for _ in queries]

    def labelled_pairs(self, n: int) -> list[tuple[str, str, bool]]:
        """n (query, answer, correct?) pairs to score the reward and the judge as classifiers at start."""
        return []
