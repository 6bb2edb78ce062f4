"""A task read from prompt files: what real-model runs use (instruction following, the paper).

`train_path`: prompts for a data-driven game; `heldout_path`: prompts with a reference answer
(`reference`/`output`), scored by exact match of the stripped texts and reported per `split`.
Both are optional: the paper's self-play needs neither (it is evaluated by win rate, `lsp-eval`).
`max_query_tokens` / `max_answer_tokens`: the lengths of real text the game and the evaluation read from
the config (`game.max_query_tokens`, `game.max_answer_tokens`, conf/task/prompts.yaml).
"""
from __future__ import annotations

from lsp_exp.core.prompts import read_prompt_rows
from lsp_exp.tasks.base import HeldoutSet, Task


class PromptFileTask(Task):
    name = "prompts"

    def __init__(self, train_path: str | None = None, heldout_path: str | None = None,
                 challenger_style: str = "paper", judge_template: str = "paper",
                 max_query_tokens: int | None = None, max_answer_tokens: int | None = None):
        self.train_path, self.heldout_path = train_path, heldout_path
        self.challenger_style, self.judge_template = challenger_style, judge_template
        self.max_query_tokens, self.max_answer_tokens = max_query_tokens, max_answer_tokens

    def train_prompts(self) -> list[str] | None:
        return [r.prompt for r in read_prompt_rows(self.train_path, self.prompt_bound)] if self.train_path else None

    def heldout(self) -> HeldoutSet | None:
        if not self.heldout_path:
            return None
        rows = [r for r in read_prompt_rows(self.heldout_path, self.prompt_bound) if r.reference is not None]
        if not rows:
            raise ValueError(f"task.heldout_path={self.heldout_path!r}: no row has a reference answer")
        return HeldoutSet([r.prompt for r in rows], lambda i, text: text.strip() == rows[i].reference.strip(),
                          [[r.split] for r in rows], [r.reference for r in rows])
