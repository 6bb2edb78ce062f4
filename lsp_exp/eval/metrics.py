"""What `lsp-eval` measures, as pure functions: win rate, diversity, text overlap, perplexity."""
from __future__ import annotations

from collections import Counter, defaultdict

import torch
from torchmetrics.text import BLEUScore, Perplexity, ROUGEScore

from lsp_exp.rl.repetition import ngram_counts, sentence_bleu


def win_rate(model_scores: torch.Tensor, base_scores: torch.Tensor, splits: list[str] | None = None, *,
             tie_value: float = 0.5, margin: float = 0.0) -> dict[str, float]:
    """AlpacaEval-style win rate of a model against the base, prompt by prompt.

    A prompt is a win when the judge scores the model's answer more than `margin` above the base's,
    a loss when more than `margin` below, a tie otherwise; win_rate = (wins + tie_value * ties) / n
    (tie_value 0.5 is AlpacaEval's convention, 0 counts ties as losses). Keys: `win_rate`,
    `tie_rate`, `loss_rate`, and `win_rate/<split>` for every split.
    """
    diff = model_scores.double() - base_scores.double()
    wins, losses = (diff > margin).double(), (diff < -margin).double()
    ties = 1.0 - wins - losses

    def rates(mask: torch.Tensor) -> tuple[float, float, float]:
        n = mask.sum().clamp_min(1)
        w, t, lo = (wins * mask).sum() / n, (ties * mask).sum() / n, (losses * mask).sum() / n
        return float(w + tie_value * t), float(t), float(lo)

    every = torch.ones_like(diff)
    out = dict(zip(("win_rate", "tie_rate", "loss_rate"), rates(every), strict=True))
    if splits is not None and len(set(splits)) > 1:
        by_split: dict[str, list[int]] = defaultdict(list)
        for i, s in enumerate(splits):
            by_split[s].append(i)
        for s, idx in sorted(by_split.items()):
            mask = torch.zeros_like(diff)
            mask[idx] = 1.0
            out[f"win_rate/{s}"] = rates(mask)[0]
    return out


def ngrams(tokens: list, n: int) -> list[tuple]:
    return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(token_lists: list[list], n: int) -> float:
    """Distinct-n (Li et al. 2016): unique n-grams / all n-grams over a set of texts (0 if none)."""
    grams = [g for tokens in token_lists for g in ngrams(tokens, n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def self_bleu(token_lists: list[list], n_gram: int = 4) -> float:
    """Self-BLEU (Zhu et al. 2018): the mean smoothed BLEU of each text against all the others as
    references (torchmetrics' `BLEUScore(n_gram, smooth=True)`, tests/run/test_collapse_indicators.py),
    on n-gram counts made once per text (torchmetrics costs ~50 ms at N = 8, this ~1 ms; it runs every
    step, docs/method.md §17.4); 1 means every text repeats the others (collapse), 0 no shared n-grams;
    NaN for fewer than 2 texts."""
    if len(token_lists) < 2:
        return float("nan")
    counts = [ngram_counts(t, n_gram) for t in token_lists]
    lengths = [len(t) for t in token_lists]
    scores = []
    for i, own in enumerate(counts):
        others = [j for j in range(len(counts)) if j != i]
        # docs/method.md §17.4: clipped matches against the references' maximum count of each n-gram
        refs = [Counter() for _ in range(n_gram)]
        for j in others:
            for n in range(n_gram):
                refs[n] |= counts[j][n]
        matches = [sum((own[n] & refs[n]).values()) for n in range(n_gram)]
        closest = min(others, key=lambda j: abs(lengths[j] - lengths[i]))   # the first of the closest lengths
        scores.append(sentence_bleu(lengths[i], lengths[closest], matches, n_gram) if lengths[i] else 0.0)
    return sum(scores) / len(scores)


def diversity(token_lists: list[list]) -> dict[str, float]:
    """distinct-1, distinct-2 and self-BLEU of a set of Challenger queries (as token lists)."""
    return {"distinct_1": distinct_n(token_lists, 1), "distinct_2": distinct_n(token_lists, 2),
            "self_bleu": self_bleu(token_lists)}


def text_overlap(predictions: list[str], references: list[str], n_gram: int = 4) -> dict[str, float]:
    """Corpus BLEU-n (smoothed; n = 4 for words) and ROUGE-L F1 of predictions against one reference
    each (torchmetrics; texts are split on whitespace)."""
    bleu = BLEUScore(n_gram=n_gram, smooth=True)(predictions, [[r] for r in references])
    rouge = ROUGEScore(rouge_keys=("rougeL",))(predictions, references)["rougeL_fmeasure"]
    return {"bleu": float(bleu), "rouge_l": float(rouge)}


def spaced_chars(text: str) -> str:
    """A character-level text as space-separated symbols, so word metrics compare characters."""
    return " ".join(text.replace(" ", ""))


@torch.inference_mode()
def conditional_perplexity(model, tokenizer, prompts: list[str], targets: list[str], batch_size: int = 64) -> float:
    """exp(mean NLL) of each target's tokens (and the end token) given its rendered prompt, over the
    whole file (torchmetrics Perplexity); prompts = "" gives the plain perplexity of the texts."""
    metric = Perplexity(ignore_index=-100)
    eos = tokenizer.eos_token or ""
    for start in range(0, len(prompts), batch_size):
        rows_ids, rows_labels = [], []
        for prompt, target in zip(prompts[start:start + batch_size], targets[start:start + batch_size], strict=True):
            p = tokenizer(prompt, add_special_tokens=False)["input_ids"] if prompt else []
            t = tokenizer(target + eos, add_special_tokens=False)["input_ids"]
            rows_ids.append(p + t)
            rows_labels.append([-100] * len(p) + t)
        width = max(map(len, rows_ids))
        pad = tokenizer.pad_token_id
        ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows_ids], device=model.device)
        labels = torch.tensor([[-100] * (width - len(r)) + r for r in rows_labels], device=model.device)
        lengths = torch.tensor([len(r) for r in rows_ids], device=model.device)
        mask = torch.arange(width, device=model.device)[None] >= width - lengths[:, None]  # left padding
        positions = (mask.long().cumsum(-1) - 1).clamp_min(0)
        logits = model(input_ids=ids, attention_mask=mask.long(), position_ids=positions).logits.float()
        metric.update(logits[:, :-1].cpu(), labels[:, 1:].cpu())
    return float(metric.compute())


def ngram_perplexity(train_texts: list[str], test_texts: list[str], n: int = 3, tokenize=str.split) -> float:
    """The classical reference: the perplexity of an interpolated Kneser-Ney n-gram model (nltk's
    `lm`, discount 0.1) fitted on `train_texts` and scored on every token of `test_texts` and its end
    (each text starts with n - 1 `<s>` and ends with one `</s>`, as the policy's perplexity scores
    its answer and the end token): 2 ** (-mean log2 P(w | the n - 1 before)). A token never seen in
    training has probability 0 (infinite perplexity)."""
    from nltk.lm import KneserNeyInterpolated  # noqa: PLC0415 (nltk.lm: ~1 s to import; only the n-gram baseline)
    from nltk.lm.preprocessing import padded_everygram_pipeline  # noqa: PLC0415 (nltk.lm, as above)
    from nltk.util import ngrams  # noqa: PLC0415 (nltk, as above)

    grams, vocabulary = padded_everygram_pipeline(n, [tokenize(t) for t in train_texts])
    model = KneserNeyInterpolated(n)
    model.fit(grams, vocabulary)
    test = [g for t in test_texts for g in ngrams(["<s>"] * (n - 1) + tokenize(t) + ["</s>"], n)]
    return float(model.perplexity(test))
