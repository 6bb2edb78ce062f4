"""`pseudo_label_metrics` (docs/method.md §17.1) on a step written out by hand: 5 queries x 3 answers."""
from types import SimpleNamespace

import pytest
import torch

from lsp_exp.run.step_metrics import pseudo_label_metrics


def test_pseudo_label_metrics_by_hand():
    rewards = torch.tensor([[1.0, 1.0, 0.0],    # q0: the pseudo-label is right (the rewarded answers are correct)
                            [1.0, 0.0, 1.0],    # q1: wrong (the one correct answer is outvoted)
                            [0.0, 0.0, 0.0],    # q2: no pseudo-label: invalid, not counted
                            [1.0, 1.0, 1.0],    # q3: the verifier cannot grade it (outside the world): not counted
                            [0.0, 1.0, 0.0]])   # q4: right
    valid = torch.tensor([True, True, False, True, True])
    truth = SimpleNamespace(values=torch.tensor([1.0, 1.0, 0.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0,
                                                 0.0, 1.0, 1.0]),
                            valid=torch.tensor([True] * 9 + [False] * 3 + [True] * 3))
    slices = [["one_op", "unflawed"], ["precedence", "flawed"], ["chain"], ["two_op"], ["precedence", "unflawed"]]
    assert pseudo_label_metrics(rewards, valid, truth, slices) == pytest.approx({
        "train/pseudo_label/accuracy": 2 / 3,                    # q0, q4 of q0, q1, q4
        "train/pseudo_label/rewarded_true_accuracy": 3 / 5,      # q0: 2 of 2, q1: 0 of 2, q4: 1 of 1
        "train/pseudo_label/accuracy/one_op": 1.0,
        "train/pseudo_label/accuracy/unflawed": 1.0,             # q0, q4
        "train/pseudo_label/accuracy/precedence": 0.5,           # q1, q4
        "train/pseudo_label/accuracy/flawed": 0.0,               # q1; chain and two_op: no counted query
    })


def test_no_countable_query_logs_nothing():
    rewards = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    truth = SimpleNamespace(values=torch.ones(4), valid=torch.tensor([False, False, True, True]))
    assert pseudo_label_metrics(rewards, torch.tensor([True, False]), truth, [["a"], ["b"]]) == {}
