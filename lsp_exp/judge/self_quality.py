"""The self-quality judge R_Q(q, a) of full LSP (docs/method.md §8).

The frozen reference model (the LoRA adapter disabled, or the frozen copy) reads each
(query, answer) pair through a judge template and writes a justification, a `<Calculation>` and a
`<Score>`; all N x G pairs are judged in one batched generation.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from lsp_exp.core.generation import chat_prompts, generate
from lsp_exp.judge.parsing import MAX_SCORE, parse_judgement
from lsp_exp.judge.templates import JudgeTemplate


@dataclass
class JudgeScores:
    values: torch.Tensor      # [B] R_Q in [0, 7]; replies that do not parse get the fallback score
    parse_fail: torch.Tensor  # [B] bool: no valid <Score> tag (the calculation or the fallback was used)
    unscored: torch.Tensor    # [B] bool: neither <Score> nor <Calculation> parsed: the fallback was used
    query_points: torch.Tensor  # [B] criteria 1-2 (the query's points), NaN where the calculation did not parse
    texts: list[str]          # the judge's replies

    def metrics(self) -> dict[str, float]:
        known = ~self.query_points.isnan()
        out = {
            "train/judge/score": float(self.values.mean()),
            "train/judge/parse_fail_frac": float(self.parse_fail.float().mean()),
            "train/judge/unscored_frac": float(self.unscored.float().mean()),
        }
        if known.any():
            out["train/judge/query_points"] = float(self.query_points[known].mean())
        return out


class SelfQualityJudge:
    bounds = (0.0, float(MAX_SCORE))

    def __init__(self, reference, tokenizer, template: JudgeTemplate, *, max_new_tokens: int | None = None,
                 temperature: float = 0.0, fallback_score: float = 0.0):
        if not 0 <= fallback_score <= MAX_SCORE:
            raise ValueError(f"game.judge.fallback_score={fallback_score}: must be in [0, {MAX_SCORE}]")
        self.reference, self.tokenizer, self.template = reference, tokenizer, template
        self.max_new_tokens = max_new_tokens or template.max_new_tokens
        self.temperature = temperature
        self.fallback_score = fallback_score

    def prompts(self, queries: list[str], answers: list[str]) -> list[str]:
        return chat_prompts(self.tokenizer, [self.template.render(q, a) for q, a in zip(queries, answers)])

    def score(self, queries: list[str], answers: list[str]) -> JudgeScores:
        """Judge every (query, answer) pair in one batched generation (greedy when temperature is 0)."""
        with self.reference.model() as ref:
            rollout = generate(ref, self.tokenizer, self.prompts(queries, answers), max_new_tokens=self.max_new_tokens,
                               do_sample=self.temperature > 0, temperature=self.temperature or 1.0)
        judgements = [parse_judgement(text) for text in rollout.texts]
        values = [j.score if j.score is not None else self.fallback_score for j in judgements]
        query_points = [float(sum(j.criteria[:2])) if j.criteria else float("nan") for j in judgements]
        return JudgeScores(
            values=torch.tensor(values),
            parse_fail=torch.tensor([j.source != "score" for j in judgements]),
            unscored=torch.tensor([j.source == "none" for j in judgements]),
            query_points=torch.tensor(query_points),
            texts=rollout.texts,
        )
