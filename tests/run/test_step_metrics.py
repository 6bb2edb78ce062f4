"""Every figure `step_metrics`, `reward_metrics` and `degenerate_metrics` log, on a step written out
by hand (2 queries x 3 answers; the second query invalid), against values computed by hand."""
from types import SimpleNamespace

import pytest
import torch

from lsp_exp.run.step_metrics import degenerate_metrics, reward_metrics, step_metrics


def rollout(lengths, finished):
    return SimpleNamespace(completion_lengths=torch.tensor(lengths), finished=torch.tensor(finished))


def test_step_metrics_by_hand():
    rewards = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
    valid = torch.tensor([True, False])
    values = torch.tensor([2 / 3, 1.0])   # the invalid query is worth the reward's upper bound
    answers = rollout([3, 5, 8, 2, 2, 8], [True, True, False, True, True, False])
    queries = SimpleNamespace(rollout=rollout([4, 12], [True, False]), finished=torch.tensor([True, False]))
    solver = SimpleNamespace(name="solver", member_mask=valid[:, None].expand(2, 3), beta=0.05, entropy=1.5,
                             advantages=torch.tensor([[1 / 3, -2 / 3, 1 / 3], [0.0, 0.0, 0.0]]), rewards=rewards,
                             advantage_fn=SimpleNamespace(baseline=0.5))   # a stateful estimator's (role_baseline)
    challenger = SimpleNamespace(name="challenger", member_mask=torch.ones(1, 2, dtype=torch.bool), beta=0.1,
                                 entropy=2.5, advantages=torch.tensor([[1 / 6, -1 / 6]]),
                                 rewards=torch.tensor([[-2 / 3, -1.0]]), advantage_fn=None)   # a function: no baseline
    terms = {"solver": SimpleNamespace(kl_mean=torch.tensor(0.2), policy=torch.tensor(-0.3),
                                       clip_frac=torch.tensor(0.0), approx_kl=torch.tensor(0.0)),
             "challenger": SimpleNamespace(kl_mean=torch.tensor(0.4), policy=torch.tensor(0.7),
                                           clip_frac=torch.tensor(0.25), approx_kl=torch.tensor(0.01))}
    m = step_metrics(rewards=rewards, query_valid=valid, values=values, answers=answers, queries=queries,
                     roles=[solver, challenger], terms=terms, weights={"solver": 1.0, "challenger": 0.5}, grad_norm=3.0,
                     solver_rewards=rewards)
    sd = (((1 / 3) ** 2 * 2 + (2 / 3) ** 2) / 2) ** 0.5   # unbiased std of the 3 counted advantages
    assert m == pytest.approx({
        "train/solver/reward": 2 / 3,                 # valid queries only
        "train/value_mean": 2 / 3,
        "train/query_valid_frac": 0.5,
        "train/answer_len": 28 / 6, "train/answer_unfinished_frac": 2 / 6, "train/grad_norm": 3.0,
        "train/kl/solver": 0.2, "train/kl/beta_solver": 0.05, "train/loss/solver": -0.3, "train/entropy/solver": 1.5,
        "train/clip_frac/solver": 0.0, "train/approx_kl_old/solver": 0.0,
        "train/adv_mean/solver": 0.0, "train/adv_std/solver": sd, "train/zero_std_frac/solver": 0.0,
        "train/adv_baseline/solver": 0.5,
        "train/kl/challenger": 0.4, "train/kl/beta_challenger": 0.1, "train/loss/challenger": 0.7,
        "train/entropy/challenger": 2.5, "train/clip_frac/challenger": 0.25, "train/approx_kl_old/challenger": 0.01,
        "train/adv_mean/challenger": 0.0, "train/adv_std/challenger": (2 * (1 / 6) ** 2) ** 0.5,
        "train/zero_std_frac/challenger": 0.0,
        "train/zero_std_frac": 0.0,
        "train/loss/kl": 1.0 * 0.05 * 0.2 + 0.5 * 0.1 * 0.4,   # alpha * beta * KL, summed over the roles
        "train/query_len": 8.0, "train/query_unfinished_frac": 0.5,
    }, abs=1e-6)


def test_reward_metrics_and_degenerate_metrics_by_hand():
    from lsp_exp.judge.self_quality import JudgeScores

    n, g = 2, 2
    scores = SimpleNamespace(parts={"verifier": torch.tensor([1.0, 0.0, 1.0, 1.0]),
                                    "rm": torch.tensor([0.5, 0.1, 0.2, 0.2])})
    truth = SimpleNamespace(values=torch.tensor([1.0, 0.0, 0.0, 0.0]), valid=torch.tensor([True, True, False, False]))
    judged = JudgeScores(values=torch.tensor([7.0, 1.0, 0.0, 4.0]),
                         parse_fail=torch.tensor([False, False, True, False]),
                         unscored=torch.tensor([False, False, True, False]),
                         query_points=torch.tensor([2.0, 1.0, float("nan"), 0.0]), texts=["a", "b", "c", "d"])
    queries = SimpleNamespace(rollout=object(), finished=torch.tensor([True, True]), texts=["1+2", "  "])
    m = reward_metrics(scores=scores, truth=truth, judged=judged, sol_rewards=torch.tensor([[8.0, 1.0], [0.0, 5.0]]),
                       ch_rewards=torch.tensor([3.5, -1.0]), query_valid=torch.tensor([True, False]),
                       queries=queries, n=n, g=g)
    assert m == pytest.approx({
        "train/reward/verifier": 0.75, "train/reward/rm": 0.25, "train/challenger/reward": 1.25,
        "train/judge/score": 3.0, "train/judge/parse_fail_frac": 0.25, "train/judge/unscored_frac": 0.25,
        "train/judge/query_points": 1.0,          # the mean of the parsed ones
        "train/judge/distinct_frac": 1.0,         # every pair was generated for (`judged` not set)
        "train/solver/total_reward": 4.5,         # the valid query's mean total reward
        "train/solver/true_accuracy": 0.5,        # over the pairs the verifier grades
        "train/query_valid_frac": 0.5})           # graded by the verifier and finished

    def tokenizer(texts, add_special_tokens):  # one id per char
        return {"input_ids": [list(t) for t in texts]}

    answers = SimpleNamespace(texts=["3", " ", "", "12"], completion_lengths=torch.tensor([2, 1, 0, 3]),
                              finished=torch.tensor([True, True, False, False]))
    queries = SimpleNamespace(texts=["1+2", "99999*9"], rollout=SimpleNamespace(
        completion_lengths=torch.tensor([4, 6]), finished=torch.tensor([True, False])))
    d = degenerate_metrics(queries=queries, answers=answers, tokenizer=tokenizer, max_query_tokens=5)
    assert d == pytest.approx({
        "train/degenerate/answer_empty_frac": 0.5, "train/degenerate/answer_truncated_frac": 0.5,
        "train/degenerate/answer_all_pad_frac": 0.25, "train/degenerate/query_empty_frac": 0.0,
        "train/degenerate/query_truncated_frac": 0.5, "train/degenerate/query_all_pad_frac": 0.0,
        "train/degenerate/query_over_length_frac": 0.5})
