"""The self-quality judge R_Q(q, a) of full LSP (docs/method.md §8).

The frozen reference model (the LoRA adapter disabled, or the frozen copy) reads each
(query, answer) pair through a judge template and writes a justification, a `<Calculation>` and a
`<Score>`; all N x G pairs are judged in one batched generation.

With `score_from="probabilities"` (the `toy_steps` template, or `game.judge.score_from`) R_Q is the
expected score under the judge's distribution over the digits 0-7 right after `<Score>` (as G-Eval
reads a judge), a graded score instead of a rounded one. Where `<Score>` is one token (the toy
vocabulary) the digits' log-probs come from the logits greedy decoding computes anyway
(`generate(capture=...)`), and the reply stops there (`stop_at_capture`: the digit, `</Score>` and
the end token are not generated); otherwise from one more forward pass over prompt + reply up to
`<Score>`. A reply without `<Score>` falls back to its text (the calculation, else the fallback
score), as in the text mode.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from lsp_exp.core.generation import SamplingOptions, chat_prompts, encode_prompts, generate
from lsp_exp.judge.parsing import MAX_SCORE, parse_judgement
from lsp_exp.judge.templates import JudgeTemplate

SCORE_TAG = "<Score>"
SCORE_SOURCES = ("auto", "text", "probabilities")


@dataclass
class JudgeScores:
    values: torch.Tensor      # [B] R_Q in [0, 7]; replies that do not parse get the fallback score
    parse_fail: torch.Tensor  # [B] bool: no valid <Score> tag (the calculation or the fallback was used)
    unscored: torch.Tensor    # [B] bool: neither <Score> nor <Calculation> parsed: the fallback was used
    query_points: torch.Tensor  # [B] criteria 1-2 (the query's points), NaN where the calculation did not parse
    texts: list[str]          # the judge's replies
    judged: int | None = None  # how many pairs were generated for (greedy: each distinct pair once); None: all

    def metrics(self) -> dict[str, float]:
        known = ~self.query_points.isnan()
        judged = self.judged if self.judged is not None else len(self.texts)
        out = {
            "train/judge/score": float(self.values.mean()),
            "train/judge/distinct_frac": judged / max(len(self.texts), 1),
            "train/judge/parse_fail_frac": float(self.parse_fail.float().mean()),
            "train/judge/unscored_frac": float(self.unscored.float().mean()),
        }
        if known.any():
            out["train/judge/query_points"] = float(self.query_points[known].mean())
        return out


class SelfQualityJudge:
    bounds = (0.0, float(MAX_SCORE))

    def __init__(self, reference, tokenizer, template: JudgeTemplate, *, max_new_tokens: int | None = None,
                 temperature: float = 0.0, fallback_score: float = 0.0, score_from: str = "auto",
                 sampling: SamplingOptions = SamplingOptions()):
        if not 0 <= fallback_score <= MAX_SCORE:
            raise ValueError(f"game.judge.fallback_score={fallback_score}: must be in [0, {MAX_SCORE}]")
        if score_from not in SCORE_SOURCES:
            raise ValueError(f"game.judge.score_from={score_from!r}: unknown; available: {', '.join(SCORE_SOURCES)}")
        self.reference, self.tokenizer, self.template = reference, tokenizer, template
        self.max_new_tokens = max_new_tokens or template.max_new_tokens
        self.temperature = temperature
        self.sampling = sampling  # how the replies are decoded (the run's `trainer.hf_generate`, ...)
        self.fallback_score = fallback_score
        self.score_from = template.score_from if score_from == "auto" else score_from
        self.digit_ids = score_digit_ids(tokenizer) if self.score_from == "probabilities" else None
        tag = tokenizer.encode(SCORE_TAG, add_special_tokens=False) if self.digit_ids else []
        self.tag_id = tag[0] if len(tag) == 1 else None  # one token (the toy's): read during generation

    def prompts(self, queries: list[str], answers: list[str]) -> list[str]:
        return chat_prompts(self.tokenizer, [self.template.render(q, a) for q, a in zip(queries, answers, strict=True)])

    def score(self, queries: list[str], answers: list[str]) -> JudgeScores:
        """Judge every (query, answer) pair in one batched generation (greedy when temperature is 0).

        Greedy judging is a function of the pair, so each distinct pair is judged once and its
        judgement shared: a group's Solver often writes the same answer several times (the cost of
        the judge is then the distinct pairs', `train/judge/distinct_frac` of the batch)."""
        if self.temperature > 0:
            return self._score(queries, answers)
        distinct: dict[tuple[str, str], int] = {}
        rows = [distinct.setdefault(pair, len(distinct)) for pair in zip(queries, answers, strict=True)]
        if len(distinct) == len(rows):
            return self._score(queries, answers)
        scores = self._score([q for q, _ in distinct], [a for _, a in distinct])
        take = torch.tensor(rows)
        return JudgeScores(values=scores.values[take], parse_fail=scores.parse_fail[take],
                           unscored=scores.unscored[take], query_points=scores.query_points[take],
                           texts=[scores.texts[k] for k in rows], judged=len(distinct))

    def _score(self, queries: list[str], answers: list[str]) -> JudgeScores:
        prompts = self.prompts(queries, answers)
        with self.reference.model() as ref:
            rollout = generate(ref, self.tokenizer, prompts, max_new_tokens=self.max_new_tokens,
                               do_sample=self.temperature > 0, temperature=self.temperature or 1.0,
                               capture=(self.tag_id, self.digit_ids) if self.tag_id is not None else None,
                               stop_at_capture=self.tag_id is not None, options=self.sampling)
            captured = getattr(rollout, "captured", None)  # absent from a stand-in generate (tests)
            expected = self.expected_scores(ref, prompts, rollout.texts, captured) if self.digit_ids else {}
        judgements = [parse_judgement(text) for text in rollout.texts]
        values = [expected.get(i, j.score if j.score is not None else self.fallback_score)
                  for i, j in enumerate(judgements)]
        query_points = [float(sum(j.criteria[:2])) if j.criteria else float("nan") for j in judgements]
        return JudgeScores(
            values=torch.tensor(values),
            parse_fail=torch.tensor([i not in expected and j.source != "score" for i, j in enumerate(judgements)]),
            unscored=torch.tensor([i not in expected and j.source == "none" for i, j in enumerate(judgements)]),
            query_points=torch.tensor(query_points),
            texts=rollout.texts,
        )

    def expected_scores(self, model, prompts: list[str], replies: list[str],
                        captured: torch.Tensor | None = None) -> dict[int, float]:
        """{row: sum_k k p(k | prompt, reply up to <Score>)} over the digits 0..7 (renormalised), for rows
        whose reply has <Score>: from the log-probs generation captured, else from one forward pass."""
        rows = [i for i, reply in enumerate(replies) if SCORE_TAG in reply]
        out: dict[int, float] = {}
        if captured is not None:  # one pass over the batch, one transfer to the host
            values, seen = _expectation(captured), (~captured.isnan().any(-1)).tolist()
            out = {i: values[i] for i in rows if seen[i]}
        rows = [i for i in rows if i not in out]
        if not rows:
            return out
        prefixes = [prompts[i] + replies[i][:replies[i].index(SCORE_TAG) + len(SCORE_TAG)] for i in rows]
        enc = encode_prompts(self.tokenizer, prefixes, model.device)
        position = (enc["attention_mask"].cumsum(-1) - 1).clamp(min=0)
        with torch.no_grad():
            logits = model(**enc, position_ids=position, logits_to_keep=1).logits[:, -1].float()
        out.update(zip(rows, _expectation(logits.log_softmax(-1)[:, self.digit_ids]), strict=True))
        return out


def _expectation(digit_logprobs: torch.Tensor) -> list[float]:
    """sum_k k p(k) with p the digits' probabilities renormalised over 0..7 (the G-Eval score)."""
    probs = digit_logprobs.float().softmax(-1)
    return (probs @ torch.arange(MAX_SCORE + 1, dtype=probs.dtype, device=probs.device)).tolist()


def score_digit_ids(tokenizer) -> list[int]:
    """The token ids of '0'..'7' (each must be one token, as in Llama's, Qwen's and the toy vocabularies)."""
    ids = [tokenizer.encode(str(k), add_special_tokens=False) for k in range(MAX_SCORE + 1)]
    if any(len(i) != 1 for i in ids):
        raise ValueError("game.judge.score_from=probabilities: this tokenizer does not write each of the digits "
                         "0-7 as one token; use score_from=text")
    return [i[0] for i in ids]
