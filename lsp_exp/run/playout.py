"""One self-play step's data, as typed objects with their shapes (the `training_step` of
run/self_play.py passes them from one numbered step to the next; callbacks read the `StepRecord`).

N queries, G answers each; answer rows are query-major: row i * G + j is answer j to query i.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from lsp_exp.core.generation import Rollout, SamplingOptions, chat_prompts, generate
from lsp_exp.core.roles import RoleBatch
from lsp_exp.games.base import Game, Queries
from lsp_exp.judge.self_quality import JudgeScores
from lsp_exp.rewards.base import Reward, Scores
from lsp_exp.rl.repetition import Repetition
from lsp_exp.rl.role_loss import RoleLoss
from lsp_exp.rl.role_rewards import RoleRewards


@dataclass(frozen=True)
class Playout:
    """Step 1's games: the N queries and the Solver's G answers to each."""

    queries: Queries   # texts [N], finished [N] bool, rollout: the Challenger's (None for a data game)
    answers: Rollout   # N * G rows, query-major
    group_size: int    # G

    @property
    def n(self) -> int:
        return len(self.queries.texts)

    @property
    def pair_queries(self) -> list[str]:
        """The query of each answer row [N * G]."""
        return [q for q in self.queries.texts for _ in range(self.group_size)]


@dataclass(frozen=True)
class Graded:
    """Step 2's task reward, on the policy's device."""

    rewards: torch.Tensor      # [N, G] R(q_i, a_i^j)
    query_valid: torch.Tensor  # [N] bool: the Challenger finished the query and the reward could grade every answer
    scores: Scores             # the reward's own answer ([N * G] values, valid, parts)
    truth: Scores | None       # the task's verifier beside a proxy reward ([N * G]); None when the reward is the truth


@dataclass
class StepRecord:
    """Everything one step computed, for the callbacks that log it (run/step_logging.py,
    run/sample_tables.py); `step` is the step's index (the update advances `global_step`)."""

    step: int
    playout: Playout
    graded: Graded
    judged: JudgeScores | None    # R_Q of every pair [N * G] (full LSP), None without the judge
    rewards: RoleRewards          # V(q) [N], the Solver's [N, G] and the Challenger's [N] rewards
    roles: list[RoleBatch]        # the Solver's, then (self-play) the Challenger's: those updated (game.schedule)
    terms: dict[str, RoleLoss]    # each role's loss terms (of the last inner epoch)
    grad_norm: float              # NaN when the update was skipped
    weights: dict[str, float]     # each role's weight in the loss (1 and alpha_Ch)
    seconds: dict[str, float] = field(default_factory=dict)  # gen, reward, judge, ref, update; step
    repetition: Repetition | None = None  # R-Zero's BLEU clusters and r_rep [N] (game.repetition_penalty > 0)
    in_band: torch.Tensor | None = None   # [N] bool: the valid queries in game.band (None: no band)
    phase: str | None = None              # the role updated under game.schedule (None: both; `roles` has those)


def play(game: Game, policy, tokenizer, *, group_size: int, max_answer_tokens: int, temperature: float,
         sampling: SamplingOptions) -> Playout:
    """The game's N queries (the Challenger writes them, or a data game draws them) and G sampled
    answers to each (docs/method.md §2)."""
    queries = game.queries(policy, tokenizer)
    answers = generate(policy, tokenizer, chat_prompts(tokenizer, queries.texts), max_new_tokens=max_answer_tokens,
                       temperature=temperature, num_return_sequences=group_size, options=sampling)
    return Playout(queries, answers, group_size)


def grade(playout: Playout, reward: Reward, verifier: Reward | None, device: torch.device) -> Graded:
    """R(q, a) of every answer and which queries are valid (docs/method.md §3); rewards may answer on
    any device: the result is on `device`."""
    n, g, pairs = playout.n, playout.group_size, playout.pair_queries
    scores = reward.score(pairs, playout.answers.texts)
    rewards = scores.values.to(device).view(n, g)
    query_valid = playout.queries.finished.to(device) & scores.valid.to(device).view(n, g).all(-1)
    truth = verifier.score(pairs, playout.answers.texts) if verifier is not None else None
    return Graded(rewards, query_valid, scores, truth)
