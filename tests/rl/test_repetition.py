"""R-Zero's repetition penalty (lsp_exp/rl/repetition.py; docs/method.md §17.2): BLEU by hand and
against torchmetrics, clusters and shares on a batch whose clusters are known."""
import math
import random

import pytest
import torch
from torchmetrics.functional.text import bleu_score

from lsp_exp.rl.repetition import bleu_clusters, pairwise_bleu, repetition_penalty, sentence_bleu


def torchmetrics_bleu(pred, ref) -> float:
    """torchmetrics' smoothed BLEU-4 of one sequence of ids against another (as eval/metrics.py:self_bleu)."""
    return float(bleu_score([" ".join(map(str, pred))], [[" ".join(map(str, ref))]], n_gram=4, smooth=True))


def test_bleu_of_a_tiny_pair_by_hand():
    """[1 2 3 4 5] against [1 2 3 4 6]: clipped matches 4, 3, 2, 1 of 5, 4, 3, 2 n-grams;
    p = 4/5, (3+1)/(4+1), (2+1)/(3+1), (1+1)/(2+1); equal lengths: BP = exp(1 - 5/5) = 1."""
    expected = (4 / 5 * 4 / 5 * 3 / 4 * 2 / 3) ** 0.25
    assert sentence_bleu(5, 5, [4, 3, 2, 1]) == pytest.approx(expected)
    s = pairwise_bleu([[1, 2, 3, 4, 5], [1, 2, 3, 4, 6]])
    assert s[0, 1] == s[1, 0] == pytest.approx(expected) and s[0, 0] == 1.0
    # [1 2 3 4] against [1 2 3 4 5]: every n-gram matches, BP = exp(1 - 5/4); the other way BP = 1 (5 > 4)
    s = pairwise_bleu([[1, 2, 3, 4], [1, 2, 3, 4, 5]])
    assert s[0, 1] == pytest.approx((math.exp(1 - 5 / 4) + expected) / 2)


def test_no_shared_four_gram_is_zero_and_short_identical_queries_are_one():
    assert sentence_bleu(5, 5, [4, 3, 2, 0]) == 0.0
    s = pairwise_bleu([[7, 8], [7, 8], [7, 9], []])
    assert s[0, 1] == 1.0                 # identical: 1 (torchmetrics gives 0: no 4-gram)
    assert s[0, 2] == 0.0 and s[0, 3] == 0.0
    assert torchmetrics_bleu([7, 8], [7, 8]) == 0.0


def test_bleu_equals_torchmetrics():
    rng = random.Random(0)
    base = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3]
    seqs = []
    for _ in range(24):   # variants of one sequence (many shared 4-grams) and random ones
        q = list(base)
        for _ in range(rng.randint(0, 3)):
            q[rng.randrange(len(q))] = rng.randint(0, 9)
        seqs.append(q[:rng.randint(5, 10)])
    seqs += [[rng.randint(0, 4) for _ in range(rng.randint(4, 12))] for _ in range(8)]
    s = pairwise_bleu(seqs)
    compared = 0
    for i in range(len(seqs)):
        for j in range(len(seqs)):
            if i != j and seqs[i] != seqs[j]:
                expected = (torchmetrics_bleu(seqs[i], seqs[j]) + torchmetrics_bleu(seqs[j], seqs[i])) / 2
                assert s[i, j] == pytest.approx(expected, abs=1e-6)
                compared += expected > 0
    assert compared > 50   # most pairs share 4-grams: the formula, not the early zero, is compared


A = list(range(1, 11))
NEAR, NEAR_2 = list(range(20, 30)), [*range(20, 29), 99]    # s = (.9 * .9 * 8/9 * 7/8) ** .25 = 0.891
KNOWN = [A, NEAR, A, [40, 41, 42, 43, 44, 45], A, NEAR_2, [50, 51, 52, 53, 54], [60, 61, 62, 63, 64, 65, 66]]


def test_penalty_on_a_batch_with_known_clusters():
    """3 identical + 2 near-identical + 3 distinct queries: shares 3/8, 2/8, 1/8."""
    out = repetition_penalty(KNOWN, threshold=0.5)
    torch.testing.assert_close(out.penalty, torch.tensor([3, 2, 3, 1, 3, 2, 1, 1]) / 8)
    assert out.clusters == 5
    assert out.labels[0] == out.labels[2] == out.labels[4] and out.labels[1] == out.labels[5]
    assert len(set(out.labels[[0, 1, 3, 6, 7]].tolist())) == 5


def test_threshold_cuts_the_near_identical_pair():
    """d(NEAR, NEAR_2) = 1 - 0.891 = 0.109: merged at tau = 0.5, apart at tau = 0.05."""
    assert pairwise_bleu([NEAR, NEAR_2])[0, 1] == pytest.approx((0.9 * 0.9 * 8 / 9 * 7 / 8) ** 0.25)
    torch.testing.assert_close(repetition_penalty(KNOWN, threshold=0.05).penalty,
                               torch.tensor([3, 1, 3, 1, 3, 1, 1, 1]) / 8)
    assert list(bleu_clusters([A], 0.5)) == [1] and repetition_penalty([A]).penalty.tolist() == [1.0]
