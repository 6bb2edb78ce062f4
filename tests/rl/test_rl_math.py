"""Every formula of the update against hand-computed values (docs/method.md §5-§7; the role rewards
of §3, §4 and §8 are in test_role_rewards.py)."""
import math

import pytest
import torch

from lsp_exp.rl.advantages import group_mean_advantage
from lsp_exp.rl.algorithms import AlgorithmSpec
from lsp_exp.rl.kl import kl_k1, kl_k2, kl_k3, sequence_kl
from lsp_exp.rl.losses import kl_penalised
from lsp_exp.rl.role_loss import member_advantages, role_advantages, role_loss
from lsp_exp.run.step_metrics import reduce_over_ranks


def close(a, b):
    torch.testing.assert_close(torch.as_tensor(a, dtype=torch.float32), torch.as_tensor(b, dtype=torch.float32),
                               atol=1e-5, rtol=1e-5)


def test_solver_advantage_is_reward_minus_group_mean():
    # LSP eq. 2: V(q_i) = mean_j R; A_Sol = R - V(q_i), no std division.
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0], [3.0, 1.0, 1.0, 1.0]])
    close(group_mean_advantage(rewards), [[0.5, -0.5, -0.5, 0.5], [0, 0, 0, 0], [1.5, -0.5, -0.5, -0.5]])


def test_masked_members_do_not_enter_the_baseline():
    rewards = torch.tensor([[1.0, 0.0, 5.0]])
    mask = torch.tensor([[True, True, False]])
    close(group_mean_advantage(rewards, mask), [[0.5, -0.5, 0.0]])


def test_metrics_are_reduced_over_ranks_whatever_keys_each_rank_has():
    ranks = [{"a": 1.0, "b": 2.0, "train/tokens/solver": 10.0, "train/judge/query_points": 1.5},
             {"a": 3.0, "b": float("nan"), "train/tokens/solver": 14.0}]
    out = reduce_over_ranks(ranks, sums=("train/tokens/",))
    assert out == {"a": 2.0, "b": 2.0, "train/tokens/solver": 24.0, "train/judge/query_points": 1.5}
    assert math.isnan(reduce_over_ranks([{"g": float("nan")}, {"g": float("nan")}])["g"])
    assert reduce_over_ranks([{"a": 0.5}]) == {"a": 0.5}   # one process: unchanged


def test_reinforce_loss_value_and_gradient():
    # LSP eq. 4: L = -mean[pi/stop_grad(pi) * A]; value -mean(A), gradient -A/n wrt log pi
    # (one-token sequences, so log pi(a) is the token's log-prob; the third sequence does not count).
    logp = torch.tensor([[-1.0], [-2.0], [-3.0]], requires_grad=True)
    adv = torch.tensor([0.5, -0.5, 1.0])
    spec = AlgorithmSpec("group_mean", "reinforce_token", "seq_mean_token_sum")
    mask = torch.tensor([[1.0], [1.0], [0.0]])
    loss = spec.loss(logp, None, adv, mask, spec.token_weights(mask)).loss
    close(loss, 0.0)
    loss.backward()
    close(logp.grad, [[-0.25], [0.25], [0.0]])


def test_kl_estimators_hand_values():
    x = torch.tensor([math.log(2.0), 0.0, -math.log(2.0)])
    close(kl_k1(x), [0.693147, 0.0, -0.693147])
    close(kl_k2(x), [0.240227, 0.0, 0.240227])
    close(kl_k3(x), [0.5 - 1 + 0.693147, 0.0, 2.0 - 1 - 0.693147])  # exp(-x) - 1 + x


def test_sequence_kl_sums_masked_tokens():
    logp = torch.tensor([[-1.0, -2.0, -3.0]])
    ref = torch.tensor([[-2.0, -2.0, -1.0]])
    close(sequence_kl(kl_k1, logp, ref, torch.tensor([[1, 1, 0]])), [1.0])


def test_kl_estimators_against_exact_categorical_kl():
    p = torch.tensor([0.5, 0.3, 0.2])
    q = torch.tensor([0.2, 0.3, 0.5])
    exact = (p * (p / q).log()).sum()                               # 0.27489
    x = (p / q).log()

    def expect(est):  # the exact expectation over y ~ p
        return (p * est(x)).sum()

    close(exact, 0.3 * math.log(2.5))
    close(expect(kl_k1), exact)                                     # k1 unbiased
    close(expect(kl_k3), exact)                                     # k3 unbiased
    assert expect(kl_k2) > exact                                    # k2 biased (here upwards)
    close(expect(kl_k2), 0.5 * 0.7 * math.log(2.5) ** 2)
    assert (kl_k3(x) >= 0).all() and (kl_k1(x) < 0).any()           # k3 >= 0 everywhere, k1 is not


def test_kl_in_advantage_gives_reverse_kl_gradient_and_literal_term_averages_to_zero():
    """Expected gradients over y ~ p_theta, computed exactly by summing over the categories.

    KL in the detached advantage: grad E[-(0 - beta*sg(x)) log p] = beta * grad KL(p || q).
    Literal term beta * log(p/q) in the loss: its sample gradient is beta * grad log p(y), whose
    expectation is zero, so it does not pull the policy towards the reference (docs/method.md §7).
    """
    beta = 0.5
    theta = torch.tensor([0.3, -0.2, 0.9], requires_grad=True)
    q = torch.tensor([0.2, 0.3, 0.5])
    logp = torch.log_softmax(theta, 0)
    p = logp.exp().detach()
    true_grad = torch.autograd.grad(beta * (logp.exp() * (logp - q.log())).sum(), theta, retain_graph=True)[0]

    x = (logp - q.log())
    adv_form = (p * -(kl_penalised(torch.zeros(3), x, beta) * logp)).sum()
    close(torch.autograd.grad(adv_form, theta, retain_graph=True)[0], true_grad)
    literal = (p * beta * x).sum()  # E_p of the per-sample loss term, p held fixed (it is the sampler)
    close(torch.autograd.grad(literal, theta)[0], torch.zeros(3))


LSP = AlgorithmSpec("group_mean", "reinforce_token", "seq_mean_token_sum")  # conf/algorithm/lsp.yaml


def lsp_role_loss(rewards, mask, logp, kl, beta, placement):
    """role_advantages, member_advantages and role_loss with one-token sequences, so token and sequence
    log-probs coincide."""
    base = role_advantages(rewards, mask, advantage_fn=group_mean_advantage, beta=beta,
                           kl=kl if placement == "reward" else None)
    adv = member_advantages(base.flatten(), kl, mask.flatten(), beta=beta, placement=placement)
    token_mask = torch.ones(len(logp), 1)
    weights = LSP.token_weights(token_mask * mask.flatten()[:, None])
    return role_loss(logp[:, None], None, token_mask, adv, mask.flatten(), kl, beta=beta, placement=placement,
                     algorithm=LSP, token_weights=weights), adv.view(rewards.shape)


@pytest.mark.parametrize("placement, value, grad_logp, grad_kl", [
    ("advantage", 0.15, [-0.2, 0.35], [0.0, 0.0]),     # A = [.5, -.5] - .5*[.2, .4] = [.4, -.7]
    ("reward", 0.0, [-0.275, 0.275], [0.0, 0.0]),      # R = [.9, -.2] -> A = [.55, -.55]
    ("loss", 0.15, [-0.25, 0.25], [0.25, 0.25]),       # A = [.5, -.5]; + .5 * mean(KL) = .15
])
def test_role_loss_kl_placements(placement, value, grad_logp, grad_kl):
    rewards = torch.tensor([[1.0, 0.0]])
    logp = torch.tensor([-1.0, -2.0], requires_grad=True)
    kl = torch.tensor([0.2, 0.4], requires_grad=True)
    out, _ = lsp_role_loss(rewards, torch.ones(1, 2, dtype=torch.bool), logp, kl, 0.5, placement)
    close(out.total, value)
    out.total.backward()
    close(logp.grad, grad_logp)
    close(kl.grad if kl.grad is not None else torch.zeros(2), grad_kl)


def test_role_loss_leaves_out_masked_groups():
    rewards = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    mask = torch.tensor([[True, True], [False, False]])
    logp = torch.zeros(4, requires_grad=True)
    out, adv = lsp_role_loss(rewards, mask, logp, torch.zeros(4), 0.0, "advantage")
    out.total.backward()
    close(logp.grad, [-0.25, 0.25, 0.0, 0.0])
    close(adv, [[0.5, -0.5], [0.0, 0.0]])


def test_member_advantages_reject_unknown_placement():
    with pytest.raises(ValueError, match="kl.placement 'sideways'; available: advantage, loss, reward"):
        member_advantages(torch.zeros(2), torch.zeros(2), torch.ones(2, dtype=torch.bool), beta=0.1,
                          placement="sideways")
