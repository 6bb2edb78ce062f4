"""The per-step cost of the collapse indicators (lsp_exp/run/collapse.py:collapse_metrics) at the toy
world's step size: N = 8 queries of the shipped tokenizer, G = 8 answers each, a full memory of 4096
queries. Prints the median and 90th percentile in ms over repeats, per part and in all.

    .venv/bin/python experiments/collapse_indicators/cost.py [--repeats 300]
"""
from __future__ import annotations

import argparse
import random
import statistics
import time
from types import SimpleNamespace

import torch
from transformers import AutoTokenizer

from torchmetrics.text import BLEUScore

from lsp_exp.eval.metrics import diversity, self_bleu
from lsp_exp.run.collapse import QueryMemory, collapse_metrics, query_tokens, success_histogram
from lsp_exp.run.config import PROJECT_ROOT

TOKENIZER = PROJECT_ROOT / "lsp_exp/tasks/arith/assets/worlds/arith/base_model"


def toy_queries(rng: random.Random, n: int, length: int | None = None) -> list[str]:
    """n expressions like the toy world's ("13+11*2"); with `length`, strings of that many characters."""
    if length is not None:
        return ["".join(rng.choice("0123456789+-*") for _ in range(length)) for _ in range(n)]
    ops = lambda: "".join(f"{rng.randint(0, 19)}{rng.choice('+-*')}" for _ in range(rng.randint(1, 3)))  # noqa: E731
    return [ops() + str(rng.randint(0, 19)) for _ in range(n)]


def rollout_of(tokenizer, texts: list[str]) -> SimpleNamespace:
    """A stand-in for the Challenger's rollout: 4 prompt columns, then each query's ids and the end token."""
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for t in texts]
    width = 4 + max(map(len, ids))
    input_ids = torch.zeros(len(ids), width, dtype=torch.long)
    mask = torch.zeros_like(input_ids)
    for i, row in enumerate(ids):
        input_ids[i, 4:4 + len(row)] = torch.tensor(row)
        mask[i, 4:4 + len(row)] = 1
    return SimpleNamespace(input_ids=input_ids, completion_mask=mask)


def timed(fn, repeats: int) -> tuple[float, float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    times.sort()
    return statistics.median(times), times[int(0.9 * (len(times) - 1))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=300)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--g", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rng = random.Random(0)
    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER)
    memory = QueryMemory(4096)
    memory.seen_before(toy_queries(rng, 4096))   # full: every lookup and eviction at the bound
    rewards = (torch.rand(args.n, args.g, generator=torch.Generator().manual_seed(0)) < 0.5).float()
    valid = torch.ones(args.n, dtype=torch.bool)
    for name, length in (("toy queries (5-8 characters)", None), ("12-token queries (the length limit)", 12)):
        texts = toy_queries(rng, args.n, length)
        tokens = query_tokens(rollout_of(tokenizer, texts))
        print(f"N = {args.n}, G = {args.g}, {name}, mean {statistics.mean(map(len, tokens)):.1f} counted tokens:")
        for part, fn in parts(SimpleNamespace(texts=texts, rollout=rollout_of(tokenizer, texts)), tokens, memory,
                              rewards, valid).items():
            median, p90 = timed(fn, args.repeats)
            print(f"  {part:<36} median {median:7.3f} ms   p90 {p90:7.3f} ms")


def torchmetrics_self_bleu(tokens) -> float:
    """The same self-BLEU with torchmetrics' BLEUScore (what lsp-eval used before), for comparison."""
    bleu = BLEUScore(n_gram=4, smooth=True)
    texts = [" ".join(map(str, t)) for t in tokens]
    return sum(float(bleu([texts[i]], [[t for j, t in enumerate(texts) if j != i]])) for i in range(len(texts))) / len(
        texts)


def parts(queries, tokens, memory, rewards, valid) -> dict:
    """What one step computes, part by part, and in all; torchmetrics' self-BLEU beside."""
    bounds = (0.0, 1.0)
    return {
        "query_tokens": lambda: query_tokens(queries.rollout),
        "distinct-1/2 + self-BLEU": lambda: diversity(tokens),
        "  self-BLEU (on counts)": lambda: self_bleu(tokens),
        "  self-BLEU (torchmetrics)": lambda: torchmetrics_self_bleu(tokens),
        "seen_before (memory 4096)": lambda: memory.seen_before(queries.texts),
        "success_histogram": lambda: success_histogram(rewards, valid, bounds),
        "collapse_metrics (all)": lambda: collapse_metrics(queries=queries, rewards=rewards, valid=valid,
                                                           bounds=bounds, memory=memory),
    }


if __name__ == "__main__":
    main()
