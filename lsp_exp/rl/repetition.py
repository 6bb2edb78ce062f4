"""R-Zero's repetition penalty (Huang et al. 2025; docs/method.md §17.2): the step's N queries are
clustered by their BLEU similarity and each query is penalised by its cluster's share of the step:

    s(i, j)    = (BLEU(q_i | q_j) + BLEU(q_j | q_i)) / 2     smoothed sentence BLEU-4, symmetrised
    d(i, j)    = 1 - s(i, j)
    clusters   = average-linkage clustering of d, cut at distance tau (scipy, criterion="distance")
    r_rep(q_i) = |C(i)| / N

BLEU is torchmetrics' `BLEUScore(n_gram=4, smooth=True)` on the token ids joined by spaces (as
lsp_exp/eval/metrics.py:self_bleu), written out here on n-gram counts made once per query: torchmetrics
takes ~1 s for the 4,032 ordered pairs of N = 64 (tests/rl/test_repetition.py checks the two agree).
One addition: two identical queries have s = 1 even when shorter than 4 tokens (smoothed BLEU is 0
for them: no 4-gram to match).
"""
from __future__ import annotations

import math
from collections import Counter
from typing import NamedTuple, Sequence

import numpy as np
import torch
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.spatial.distance import squareform

N_GRAM = 4


def ngram_counts(tokens: Sequence, n_gram: int = N_GRAM) -> list[Counter]:
    """The counts of a sequence's n-grams, one Counter per order n = 1..n_gram."""
    tokens = tuple(tokens)
    return [Counter(tokens[k:k + n] for k in range(len(tokens) - n + 1)) for n in range(1, n_gram + 1)]


def sentence_bleu(pred_len: int, ref_len: int, matches: Sequence[int], n_gram: int = N_GRAM) -> float:
    """Smoothed BLEU of a prediction against one reference (torchmetrics' `smooth=True`), from the
    lengths and the clipped n-gram matches of each order n (docs/method.md §17.2):
    p_1 = m_1 / c_1, p_n = (m_n + 1) / (c_n + 1) for n > 1 (c_n: the prediction's n-grams),
    BLEU = BP exp((1/n_gram) sum_n log p_n), BP = 1 if pred_len > ref_len else exp(1 - ref_len / pred_len);
    0 when some order has no match."""
    if min(matches) == 0:
        return 0.0
    counts = [max(pred_len - n + 1, 0) for n in range(1, n_gram + 1)]
    precisions = [matches[0] / counts[0]] + [(m + 1) / (c + 1) for m, c in zip(matches[1:], counts[1:], strict=True)]
    brevity = 1.0 if pred_len > ref_len else math.exp(1 - ref_len / pred_len)
    return brevity * math.exp(sum(math.log(p) for p in precisions) / n_gram)


def pairwise_bleu(token_lists: Sequence[Sequence], n_gram: int = N_GRAM) -> np.ndarray:
    """s(i, j) [N, N]: the symmetrised BLEU of every pair of sequences, 1 on the diagonal and for
    identical sequences (docs/method.md §17.2). The clipped matches sum_g min(c_i(g), c_j(g)) are
    the same both ways, so each pair's n-grams are intersected once."""
    seqs = [tuple(t) for t in token_lists]
    counts = [ngram_counts(t, n_gram) for t in seqs]
    n = len(seqs)
    out = np.eye(n)   # 0 off the diagonal until a pair shares n-grams of every order
    for i in range(n):
        for j in range(i + 1, n):
            if seqs[i] == seqs[j]:
                out[i, j] = out[j, i] = 1.0
                continue
            if not counts[i][-1].keys() & counts[j][-1].keys():
                continue   # no shared n_gram-gram: BLEU is 0 both ways (most pairs; ~10x faster at N = 64)
            matches = [_clipped(a, b) for a, b in zip(counts[i], counts[j], strict=True)]
            li, lj = len(seqs[i]), len(seqs[j])
            both = sentence_bleu(li, lj, matches, n_gram) + sentence_bleu(lj, li, matches, n_gram)
            out[i, j] = out[j, i] = both / 2   # docs/method.md §17.2: symmetrised
    return out


def _clipped(a: Counter, b: Counter) -> int:
    """sum_g min(a(g), b(g)): the clipped matches of one order, the same both ways."""
    return sum(min(c, b[g]) for g, c in a.items() if g in b)


def bleu_clusters(token_lists: Sequence[Sequence], threshold: float, n_gram: int = N_GRAM) -> np.ndarray:
    """Cluster labels [N] (1..K): average linkage on d = 1 - s, cut where the clusters' distance
    exceeds `threshold` (tau; docs/method.md §17.2)."""
    if len(token_lists) < 2:
        return np.ones(len(token_lists), dtype=int)
    distances = np.clip(1.0 - pairwise_bleu(token_lists, n_gram), 0.0, None)
    np.fill_diagonal(distances, 0.0)
    tree = linkage(squareform(distances, checks=False), method="average")
    return fcluster(tree, t=threshold, criterion="distance")


class Repetition(NamedTuple):
    """penalty [N]: r_rep(q_i) = |C(i)| / N; labels [N]: each query's cluster; clusters: K."""

    penalty: torch.Tensor
    labels: np.ndarray
    clusters: int


def repetition_penalty(token_lists: Sequence[Sequence], threshold: float = 0.5, n_gram: int = N_GRAM) -> Repetition:
    """r_rep(q_i) = |C(i)| / N, the share of the step's queries in q_i's BLEU cluster (docs/method.md §17.2)."""
    labels = bleu_clusters(token_lists, threshold, n_gram)
    n = len(labels)
    sizes = Counter(labels.tolist())
    penalty = torch.tensor([sizes[label] / n for label in labels.tolist()], dtype=torch.float32)
    return Repetition(penalty, labels, len(sizes))
