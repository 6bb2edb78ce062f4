"""Per-step collapse indicators of the Challenger's queries (docs/method.md §17.4): how diverse the
step's queries are, how many the Challenger wrote recently, and how hard the Solver found them."""
from __future__ import annotations

import math
from collections import Counter, deque

import torch

from lsp_exp.eval.metrics import diversity


def query_tokens(rollout) -> list[list[int]]:
    """The counted token ids of each query of the Challenger's rollout (`completion_mask`: the end
    token included, no prompt or padding)."""
    mask = rollout.completion_mask.bool()
    return [row[keep].tolist() for row, keep in zip(rollout.input_ids.cpu(), mask.cpu(), strict=True)]


class QueryMemory:
    """The last `size` queries the Challenger wrote (texts after `strip`, repeats kept), oldest first;
    `size` 0 remembers nothing."""

    def __init__(self, size: int):
        if size < 0:
            raise ValueError(f"trainer.health.query_memory must be >= 0 (0: off), got {size}")
        self.size = int(size)
        self.texts: deque[str] = deque()
        self._counts: Counter[str] = Counter()

    def seen_before(self, texts: list[str]) -> float:
        """The share of `texts` (in order) each found among the last `size` queries written before it,
        then remembered: a query repeated within the step is new at its first occurrence and seen at
        the later ones. NaN for no texts."""
        # docs/method.md §17.4: seen_before = (1/N) sum_i 1[q_i in the last `size` queries before q_i]
        seen = 0
        for text in (t.strip() for t in texts):
            seen += self._counts[text] > 0
            self._add(text)
        return seen / len(texts) if texts else float("nan")

    def _add(self, text: str) -> None:
        if self.size == 0:
            return
        self.texts.append(text)
        self._counts[text] += 1
        while len(self.texts) > self.size:   # FIFO: the oldest query leaves first
            old = self.texts.popleft()
            self._counts[old] -= 1
            if not self._counts[old]:
                del self._counts[old]

    def state_dict(self) -> dict:
        return {"size": self.size, "texts": list(self.texts)}

    def load_state_dict(self, state: dict) -> None:
        """The saved queries, the newest `size` of them (the size configured now wins)."""
        self.texts, self._counts = deque(), Counter()
        for text in state.get("texts", []):
            self._add(text)


def success_histogram(rewards: torch.Tensor, valid: torch.Tensor,
                      bounds: tuple[float, float] | None) -> dict[str, float]:
    """Among the valid queries, the share whose G answers all got the reward's lower bound
    (`all_fail`), all got its upper bound (`all_pass`), and the rest (`mixed`: a spread, or every
    answer at one value in between). For an unbounded reward (`bounds` None) the lowest and highest
    reward of the step's valid answers stand in for the bounds; when they are equal (every answer
    the same) pass and fail cannot be told apart and all three are NaN, as with no valid query."""
    nan = {"all_fail": float("nan"), "mixed": float("nan"), "all_pass": float("nan")}
    rewards = rewards.detach().float().cpu()[valid.bool().cpu()]
    if not len(rewards):
        return nan
    low, high = bounds if bounds is not None else (float(rewards.min()), float(rewards.max()))
    if low >= high:
        return nan
    # docs/method.md §17.4: all_fail = share of valid i with R_ij <= low for every j; all_pass: R_ij >= high
    fail = float((rewards <= low).all(-1).float().mean())
    passed = float((rewards >= high).all(-1).float().mean())
    return {"all_fail": fail, "mixed": 1.0 - fail - passed, "all_pass": passed}


def collapse_metrics(*, queries, rewards: torch.Tensor, valid: torch.Tensor, bounds, memory: QueryMemory | None
                     ) -> dict[str, float]:
    """`train/collapse/*` of one step: the histogram every step; the queries' diversity and (with a
    memory of size > 0) the share seen before only when the Challenger wrote them. A figure with nothing
    to count (NaN: no valid query, fewer than 2 queries) is left out that step, as other figures are."""
    metrics = {f"train/collapse/{k}_frac": v for k, v in success_histogram(rewards, valid, bounds).items()}
    if queries.rollout is not None:
        metrics.update({f"train/collapse/{k}": v for k, v in diversity(query_tokens(queries.rollout)).items()})
        if memory is not None and memory.size > 0:
            metrics["train/collapse/seen_before_frac"] = memory.seen_before(list(queries.texts))
    return {k: v for k, v in metrics.items() if not math.isnan(v)}
