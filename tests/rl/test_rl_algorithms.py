"""Advantage estimators, token-level losses, aggregations, algorithm presets, KL controllers and
diagnostics against hand-computed values (the numbers are worked out in the comments)."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lsp_exp.rl import ADVANTAGE_ESTIMATORS, AGGREGATIONS, KL_CONTROLLERS, TOKEN_POLICY_LOSSES
from lsp_exp.rl.aggregation import token_weights, weighted_sum
from lsp_exp.nodes import build
from lsp_exp.rl.advantages import (batch_norm_advantage, group_mean_advantage, group_std_advantage, role_estimator,
                                   rloo_advantage)
from lsp_exp.rl.algorithms import AlgorithmSpec, algorithm_spec
from lsp_exp.rl.diagnostics import advantage_stats, token_entropy, zero_std_fraction
from lsp_exp.rl.kl_control import AdaptiveKLController, FixedKLController
from lsp_exp.rl.losses import clipped_loss, reinforce_token_loss

from tests.helpers.tiny_run import CONF_DIR, compose_config

PRESETS = sorted(p.stem for p in __import__("pathlib").Path(CONF_DIR, "algorithm").glob("*.yaml"))


def preset(name: str) -> AlgorithmSpec:
    """The AlgorithmSpec the `algorithm=<name>` config builds (conf/algorithm/<name>.yaml)."""
    return algorithm_spec(compose_config("train", [f"algorithm={name}"]).algorithm, build)


def reinforce_loss(logp, advantages, mask):
    """LSP eq. 4-5 written at the sequence level (the DiCE form): -mean over counted sequences of
    pi / stop_grad(pi) * A; a reference for the token-level loss."""
    ratio = torch.exp(logp - logp.detach())
    return -(ratio * advantages * mask).sum() / mask.sum()


def close(a, b, atol=1e-5):
    torch.testing.assert_close(torch.as_tensor(a, dtype=torch.float32), torch.as_tensor(b, dtype=torch.float32),
                               atol=atol, rtol=1e-5)


FEW = settings(max_examples=40, deadline=None)
CHALLENGER = torch.tensor([[-0.5, 0.0, -1.0]])  # [1, N]: r_i = -V(q_i) with V = [0.5, 0, 1]


# ---- advantages -------------------------------------------------------------------------------

def test_group_std_hand_values():
    # mean .5, deviations +-.5, unbiased var = 4 * .25 / 3 = 1/3 -> A = +-.5 / sqrt(1/3) = +-0.866025
    close(group_std_advantage(torch.tensor([[1.0, 0.0, 0.0, 1.0]])), [[0.866025, -0.866025, -0.866025, 0.866025]])
    # masked member excluded: valid {3, 1}, mean 2, unbiased var 2 -> +-1/sqrt(2); masked gets 0
    close(group_std_advantage(torch.tensor([[3.0, 1.0, 100.0]]), torch.tensor([[True, True, False]])),
          [[0.707107, -0.707107, 0.0]])
    # all-equal group, single valid member, empty group: 0 (never NaN)
    close(group_std_advantage(torch.tensor([[2.0, 2.0], [5.0, 7.0], [1.0, 3.0]]),
                              torch.tensor([[True, True], [True, False], [False, False]])), torch.zeros(3, 2))
    # Challenger [1, N]: deviations [0, .5, -.5], unbiased var .5 / 2 -> std .5 -> [0, 1, -1]
    close(group_std_advantage(CHALLENGER), [[0.0, 1.0, -1.0]])


def test_rloo_hand_values():
    # r_j - mean of the others: 1 - 1/3 = 2/3, 0 - 2/3 = -2/3
    close(rloo_advantage(torch.tensor([[1.0, 0.0, 0.0, 1.0]])), [[2 / 3, -2 / 3, -2 / 3, 2 / 3]])
    close(rloo_advantage(torch.tensor([[3.0, 1.0, 100.0]]), torch.tensor([[True, True, False]])), [[2.0, -2.0, 0.0]])
    close(rloo_advantage(torch.tensor([[5.0, 7.0]]), torch.tensor([[True, False]])), [[0.0, 0.0]])  # one member
    # Challenger: -.5 - mean(0, -1) = 0; 0 - mean(-.5, -1) = .75; -1 - mean(-.5, 0) = -.75
    close(rloo_advantage(CHALLENGER), [[0.0, 0.75, -0.75]])


def test_batch_norm_hand_values():
    # centred [.5 -.5 -.5 .5 | 1.5 -.5 -.5 -.5], sum of squares 4, unbiased var 4/7 over the 8 members
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [3.0, 1.0, 1.0, 1.0]])
    a, b = 0.661438, 1.984313  # .5 / sqrt(4/7), 1.5 / sqrt(4/7)
    close(batch_norm_advantage(rewards), [[a, -a, -a, a], [b, -a, -a, -a]])
    # valid centred values [.5, -.5, 0, 0] (n = 4): var .5 / 3 -> A = .5 / sqrt(1/6) = 1.224745
    mask = torch.tensor([[True, True, False], [True, True, False]])
    close(batch_norm_advantage(torch.tensor([[1.0, 0.0, 7.0], [2.0, 2.0, 9.0]]), mask),
          [[1.224745, -1.224745, 0.0], [0.0, 0.0, 0.0]])
    close(batch_norm_advantage(CHALLENGER), [[0.0, 1.0, -1.0]])  # one group: same as group_std


@pytest.mark.parametrize("name", sorted(ADVANTAGE_ESTIMATORS))
def test_masked_members_get_zero_and_do_not_move_the_others(name):
    mask = torch.tensor([[True, True, False], [True, True, True]])   # (a stateful estimator: a fresh one each)
    a = role_estimator(ADVANTAGE_ESTIMATORS[name])(torch.tensor([[1.0, 0.0, 5.0], [0.0, 1.0, 3.0]]), mask)
    b = role_estimator(ADVANTAGE_ESTIMATORS[name])(torch.tensor([[1.0, 0.0, -99.0], [0.0, 1.0, 3.0]]), mask)
    close(a, b)
    assert a[0, 2] == 0 and torch.isfinite(a).all()


@FEW
@given(st.lists(st.lists(st.integers(0, 5), min_size=4, max_size=4), min_size=1, max_size=4))
def test_rloo_is_scaled_group_mean_on_full_groups(rows):
    rewards = torch.tensor(rows, dtype=torch.float32)
    close(rloo_advantage(rewards), 4 / 3 * group_mean_advantage(rewards), atol=1e-4)


@FEW
@given(st.lists(st.integers(0, 5), min_size=2, max_size=6), st.floats(0.5, 4.0), st.floats(-3.0, 3.0))
def test_group_std_is_invariant_to_positive_affine_rewards(row, scale, shift):
    rewards = torch.tensor([row], dtype=torch.float32)
    close(group_std_advantage(scale * rewards + shift), group_std_advantage(rewards), atol=1e-4)


@pytest.mark.parametrize("name", ["group_mean", "group_std", "rloo", "batch_norm"])
def test_constant_groups_get_exactly_zero_advantage(name):
    # 0.8734635 * 3 / 3 - 0.8734635 is not 0 in float32: the found counterexample of the property above.
    rewards = torch.tensor([[0.8734635400645382] * 3, [0.1, 0.1, 0.1]])
    assert torch.equal(ADVANTAGE_ESTIMATORS[name](rewards), torch.zeros(2, 3))


# ---- aggregations -----------------------------------------------------------------------------

LOSS = torch.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, float("nan"), 0.0], [float("inf")] * 4])
MASK = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [0, 0, 0, 0]])  # 3rd sequence has no counted token


@pytest.mark.parametrize("name, value", [
    ("seq_mean_token_mean", 4.0),        # (10/4 + 11/2) / 2
    ("token_mean", 3.5),                 # 21 / 6
    ("seq_mean_token_sum_norm", 1.3125),  # 21 / (2 * 8)
    ("seq_mean_token_sum", 10.5),        # 21 / 2
])
def test_aggregations_hand_values_ignore_padding_and_empty_sequences(name, value):
    close(AGGREGATIONS[name](LOSS, MASK, max_tokens=8), value)
    close(AGGREGATIONS[name](LOSS, torch.zeros_like(MASK), max_tokens=8), 0.0)  # nothing counts: 0, not NaN


def test_aggregation_gradients():
    loss = torch.zeros(3, 4, requires_grad=True)
    AGGREGATIONS["seq_mean_token_mean"](loss, MASK).backward()
    close(loss.grad, [[0.125] * 4, [0.25, 0.25, 0, 0], [0] * 4])  # 1 / (T_i * B'), B' = 2
    loss.grad = None
    AGGREGATIONS["token_mean"](loss, MASK.bool()).backward()
    close(loss.grad, [[1 / 6] * 4, [1 / 6, 1 / 6, 0, 0], [0] * 4])


def test_dr_grpo_aggregation_needs_max_tokens():
    with pytest.raises(ValueError, match="max_tokens"):
        AGGREGATIONS["seq_mean_token_sum_norm"](LOSS, MASK)


@pytest.mark.parametrize("name, weights", [
    ("seq_mean_token_mean", [[0.125] * 4, [0.25, 0.25, 0, 0], [0] * 4]),   # 1 / (T_i B'), B' = 2
    ("token_mean", [[1 / 6] * 4, [1 / 6, 1 / 6, 0, 0], [0] * 4]),           # 1 / sum_i T_i
    ("seq_mean_token_sum_norm", [[1 / 16] * 4, [1 / 16, 1 / 16, 0, 0], [0] * 4]),  # 1 / (B' max_tokens)
    ("seq_mean_token_sum", [[0.5] * 4, [0.5, 0.5, 0, 0], [0] * 4]),         # 1 / B'
])
def test_token_weights_are_the_aggregations_gradients(name, weights):
    """W = d agg / d l: by hand, bit for bit the gradient autograd gives the aggregation itself, and
    sum_t W_t l_t is the aggregation's value (padding's NaN and inf left out)."""
    w = token_weights(name, MASK.float(), max_tokens=8)
    close(w, weights)
    loss = torch.zeros(3, 4, requires_grad=True)
    AGGREGATIONS[name](loss, MASK.float(), max_tokens=8).backward()
    assert torch.equal(w, loss.grad)
    close(weighted_sum(LOSS, MASK, w), AGGREGATIONS[name](LOSS, MASK, max_tokens=8))


def test_a_non_linear_aggregation_has_no_token_weights():
    AGGREGATIONS["squared_mean"] = lambda loss, mask, max_tokens=None: ((loss * mask).sum() / mask.sum()) ** 2
    try:
        with pytest.raises(ValueError, match="'squared_mean' is not linear in the per-token losses"):
            token_weights("squared_mean", MASK.float())
    finally:
        del AGGREGATIONS["squared_mean"]


@FEW
@given(st.integers(1, 4), st.integers(1, 5), st.integers(0, 2**31 - 1))
def test_token_mean_equals_seq_mean_token_mean_for_equal_lengths(b, t, seed):
    loss = torch.randn(b, t, generator=torch.Generator().manual_seed(seed))
    ones = torch.ones(b, t)
    close(AGGREGATIONS["token_mean"](loss, ones), AGGREGATIONS["seq_mean_token_mean"](loss, ones))


# ---- token-level policy losses ----------------------------------------------------------------

# Sequence 1 has A = +1, sequence 2 A = -1; the last token of each is padding (ratio 5 / 0.1, not counted).
RATIOS = torch.tensor([[1.0, 1.27, 1.29, 0.5, 5.0], [1.0, 0.81, 0.79, 2.0, 0.1]])
ADV, TOK_MASK = torch.tensor([1.0, -1.0]), torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 0]])
TOKEN_MEAN = token_weights("token_mean", TOK_MASK)   # 1/8 on each counted token


def _logp():
    old = torch.full_like(RATIOS, -1.0)
    return (RATIOS.log() + old).requires_grad_(), old


def test_clipped_loss_clips_exactly_the_right_tokens_asymmetric():
    # clip_low .2, clip_high .28 (DAPO): A > 0 clips r > 1.28 (1.29, not 1.27; 0.5 is not clipped:
    # min(.5, .8) = .5); A < 0 clips r < .8 (.79, not .81; 2.0 is not: min(-2, -1.28) = -2).
    logp, old = _logp()
    out = clipped_loss(logp, old, ADV, TOK_MASK, clip_low=0.2, clip_high=0.28, token_weights=TOKEN_MEAN)
    # per token -min(rA, clip(r)A): [-1, -1.27, -1.28, -.5 | 1, .81, .8, 2], sum .56 over 8 tokens
    close(out.loss, 0.07)
    close(out.clip_frac, 0.25)  # 2 of 8 counted tokens
    # mean of r - 1 - ln r: (.030983 + .035358 + .193147 + .020721 + .025722 + .306853) / 8
    close(out.approx_kl, 0.076598)
    out.loss.backward()
    # d/dlogp of -rA is -rA; exactly 0 on the two clipped tokens and on padding; / 8 tokens
    close(logp.grad, [[-0.125, -0.15875, 0.0, -0.0625, 0.0], [0.125, 0.10125, 0.0, 0.25, 0.0]])
    assert logp.grad[0, 2] == 0 and logp.grad[1, 2] == 0


def test_clipped_loss_symmetric_default_and_zero_advantage():
    logp, old = _logp()
    out = clipped_loss(logp, old, ADV, TOK_MASK, clip_low=0.2, token_weights=TOKEN_MEAN)  # clip_high = .2
    close(out.clip_frac, 3 / 8)  # now 1.27 is clipped too
    close(clipped_loss(logp, old, torch.zeros(2), TOK_MASK, clip_low=0.2, token_weights=TOKEN_MEAN).clip_frac, 0.0)


def test_reinforce_token_does_not_clip():
    logp, old = _logp()
    out = reinforce_token_loss(logp, old, ADV, TOK_MASK, token_weights=TOKEN_MEAN)
    close(out.loss, (-(1 + 1.27 + 1.29 + 0.5) + (1 + 0.81 + 0.79 + 2.0)) / 8)  # -rA summed / 8 = .0675
    close(out.clip_frac, 0.0)
    out.loss.backward()
    close(logp.grad, [[-0.125, -0.15875, -0.16125, -0.0625, 0.0], [0.125, 0.10125, 0.09875, 0.25, 0.0]])


@pytest.mark.parametrize("name", sorted(TOKEN_POLICY_LOSSES))
def test_on_policy_ratio_is_one_and_padding_infinities_do_not_leak(name):
    logp = torch.tensor([[-1.0, -2.0, float("-inf")]], requires_grad=True)
    mask = torch.tensor([[1, 1, 0]])
    out = TOKEN_POLICY_LOSSES[name](logp, None, torch.tensor([2.0]), mask,
                                    token_weights=token_weights("seq_mean_token_sum", mask))
    close(out.loss, -4.0)  # -(1 * 2 + 1 * 2): the ratio is 1 on both counted tokens
    close(out.approx_kl, 0.0)
    out.loss.backward()
    close(logp.grad, [[-2.0, -2.0, 0.0]])


@FEW
@given(st.integers(0, 2**31 - 1), st.sampled_from(sorted(AGGREGATIONS)))
def test_clipped_equals_reinforce_token_on_policy(seed, aggregation):
    g = torch.Generator().manual_seed(seed)
    logp, adv, mask = torch.randn(3, 4, generator=g), torch.randn(3, generator=g), torch.rand(3, 4, generator=g) > 0.3
    grads = []
    for fn in (clipped_loss, reinforce_token_loss):
        x = logp.clone().requires_grad_()
        out = fn(x, None, adv, mask, token_weights=token_weights(aggregation, mask, max_tokens=6))
        out.loss.backward()
        grads.append((out.loss.detach(), x.grad))
    close(grads[0][0], grads[1][0])
    close(grads[0][1], grads[1][1])


# ---- algorithms -------------------------------------------------------------------------------

def test_presets():
    """The table of rl/algorithms.py, as the YAML presets write it."""
    assert preset("lsp") == AlgorithmSpec("group_mean", "reinforce_token", "seq_mean_token_sum", epochs=1)
    assert preset("grpo") == AlgorithmSpec("group_std", "clipped", "seq_mean_token_mean", 0.2, 0.2, 1)
    assert (preset("dr_grpo").advantage, preset("dr_grpo").aggregation) == ("group_mean", "seq_mean_token_sum_norm")
    assert (preset("rloo").advantage, preset("rloo").policy_loss) == ("rloo", "reinforce_token")
    assert (preset("reinforce_pp").advantage, preset("reinforce_pp").aggregation) == ("batch_norm", "token_mean")
    assert (preset("ppo").policy_loss, preset("ppo").epochs) == ("clipped", 4)
    with pytest.raises(ValueError, match="available"):
        AlgorithmSpec("trpo", "clipped", "token_mean")
    with pytest.raises(ValueError, match="aggregation"):
        AlgorithmSpec("group_mean", "clipped", "token_max")


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_runs(name):
    spec = preset(name)
    adv = spec.role_estimator()(torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]])).flatten()
    logp = torch.randn(6, 5, requires_grad=True)
    mask = torch.ones(6, 5)
    out = spec.loss(logp, logp.detach() + 0.1, adv, mask, spec.token_weights(mask, max_tokens=5))
    out.loss.backward()
    assert torch.isfinite(out.loss) and torch.isfinite(logp.grad).all()


def test_lsp_token_loss_has_the_sequence_level_reinforce_gradient():
    # LSP eq. 4-5: grad of -mean_i A_i log pi(a_i), log pi(a_i) = sum_t logp_it, over counted sequences.
    g = torch.Generator().manual_seed(0)
    logp, adv = torch.randn(5, 7, generator=g), torch.randn(5, generator=g)
    mask = torch.arange(7)[None] < torch.tensor([[7], [3], [1], [5], [0]])  # last sequence left out
    token = logp.clone().requires_grad_()
    out = preset("lsp").loss(token, None, adv, mask, preset("lsp").token_weights(mask))
    out.loss.backward()
    seq = logp.clone().requires_grad_()
    ref = reinforce_loss((seq * mask).sum(-1), adv, mask.any(-1))
    ref.backward()
    close(token.grad, seq.grad)
    # Values: sequence-level -mean_i A_i (ratio pi/sg(pi) = 1 per sequence); token-level sums the
    # per-token ratio 1 over T_i tokens, so it is -mean_i T_i A_i. Equal when every T_i = 1.
    close(ref, -adv[:4].mean())
    close(out.loss, -(adv[:4] * torch.tensor([7.0, 3.0, 1.0, 5.0])).mean())
    one = torch.zeros(5, 1, dtype=torch.bool)
    one[:4] = True
    close(preset("lsp").loss(logp[:, :1], None, adv, one, preset("lsp").token_weights(one)).loss, ref)


# ---- KL controllers ---------------------------------------------------------------------------

def test_adaptive_kl_moves_towards_target():
    # e = clip(KL / 6 - 1, -.2, .2); beta <- beta * (1 + e * 256 / 10000)
    up = AdaptiveKLController(0.1, target=6.0, horizon=10000)
    close(up.update(12.0, 256), 0.100512)       # e = +.2 (clipped from 1.0)
    down = AdaptiveKLController(0.1, target=6.0, horizon=10000)
    close(down.update(torch.tensor(3.0), 256), 0.099488)  # e = -.2 (clipped from -.5)
    mid = AdaptiveKLController(0.1, target=6.0, horizon=10000)
    close(mid.update(6.6, 256), 0.100256)       # e = +.1
    close(AdaptiveKLController(0.1, 6.0, 100).update(6.0, 10), 0.1)  # on target: unchanged


def test_kl_controllers_state_round_trip():
    a = AdaptiveKLController(0.05, target=1.0, horizon=50)
    for kl in (3.0, 0.2, 1.5):
        a.update(kl, 4)
    b = AdaptiveKLController(0.05, target=1.0, horizon=50)
    b.load_state_dict(a.state_dict())
    assert b.value == a.value and b.update(2.0, 4) == a.update(2.0, 4)
    f = FixedKLController(0.05)
    assert f.update(100.0, 8) == 0.05 and f.value == 0.05
    g = FixedKLController(0.0)
    g.load_state_dict(f.state_dict())
    assert g.value == 0.05
    assert set(KL_CONTROLLERS) == {"fixed", "adaptive"}


# ---- diagnostics ------------------------------------------------------------------------------

def test_token_entropy_hand_values():
    uniform = [0.0, 0.0, 0.0, 0.0]                                     # H = ln 4 = 1.386294
    skewed = [math.log(0.5), math.log(0.25), math.log(0.25), float("-inf")]  # H = 1.5 ln 2 = 1.039721
    logits = torch.tensor([[uniform, skewed, [float("nan")] * 4], [[100.0, 0.0, 0.0, 0.0], uniform, uniform]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    close(token_entropy(logits, mask), (1.386294 + 1.039721 + 0.0) / 3)
    close(token_entropy(logits, mask, chunk=1), (1.386294 + 1.039721 + 0.0) / 3)
    close(token_entropy(logits[:, :2].bfloat16(), torch.ones(2, 2)), (1.386294 * 2 + 1.039721) / 4, atol=1e-2)
    close(token_entropy(logits, torch.zeros(2, 3)), 0.0)


def test_zero_std_fraction():
    rewards = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 1.0], [2.0, 2.0, 9.0], [0.0, 3.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 1], [1, 1, 0], [0, 0, 0]])
    close(zero_std_fraction(rewards, mask), 2 / 3)  # groups 1 and 3 (valid {2, 2}); the empty group is not counted
    close(zero_std_fraction(torch.tensor([[5.0, 1.0]]), torch.tensor([[1, 0]])), 1.0)  # one member: all equal
    close(zero_std_fraction(CHALLENGER), 0.0)


def test_advantage_stats():
    # valid [.5, -.5, 1.5, -.5]: mean .25; squared deviations sum 2.75, unbiased std sqrt(2.75/3)
    adv = torch.tensor([[0.5, -0.5, 9.0], [1.5, -0.5, 9.0]])
    mean, std = advantage_stats(adv, torch.tensor([[1, 1, 0], [1, 1, 0]]))
    close(mean, 0.25)
    close(std, 0.957427)
