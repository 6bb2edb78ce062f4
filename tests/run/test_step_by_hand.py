"""One self-play step checked by hand against its sample table.

Every run here plays `game=lsp` on the tiny toy policy with `tests.helpers.step_probe.ProbeReward` (R = 0.75 or
0.25 by a checksum of the pair's text: "right about half the time", so Solver advantages are not 0)
and a stand-in for the judge's generation whose scores differ per (query, answer) pair. The tests
recompute, from the table's text alone, every reward, value, judge score and advantage of a step
(`expected_step`), and each option case shows what its option changes on a step where advantages
are non-zero, against a hand formula or against the default run of the same seed (same rollouts).

Step 1's table is the first update's playouts: the policy is still the reference, so every KL is
0 (checked) and the advantages are the algorithm's estimator of the rewards alone. Step 2's table
comes after one update at lr 1e-2: the KL is non-zero and shows where the KL term goes. Metrics of
the step whose table is `s` are logged at step `s - 1`.
"""
from __future__ import annotations

import statistics
import uuid

import pytest

from lsp_exp.cli.train import train

from tests.helpers import step_probe as sp
from tests.helpers.tiny_run import compose_config, tiny_overrides

N, G, MAX_ANSWER, MAX_QUERY, BETA = 5, 3, 8, 24, 0.05
PROBE = ["reward._target_=tests.helpers.step_probe.ProbeReward", "game=lsp", f"game.n_queries={N}",
         f"game.group_size={G}", f"game.max_query_tokens={MAX_QUERY}", f"game.max_answer_tokens={MAX_ANSWER}",
         "trainer.max_steps=2", "eval.samples=0", "eval.every_n_steps=0", "eval.judge_pairs=0",
         "eval.sample_table_every=1", "eval.max_problems=2", "optim.lr=1e-2", "trainer.checkpoint_every=0",
         "game.judge.score_from=text",  # the fake judge writes its replies: read their <Score>
         "game.self_reward_weight=1.0"]  # R_Q added raw (the toy task's default is 1/7)
TOL = dict(rel=1e-5, abs=1e-5)


class Probe:
    """Runs in this module's own MLflow store, each found by a tag of its own; cached by overrides so
    the default run is played once (any test may run first, or alone)."""

    def __init__(self, outputs, store):
        self.outputs, self.uri, self.cache = outputs, f"sqlite:///{store}/probe.db", {}

    def run(self, *overrides: str):
        if overrides not in self.cache:
            tag = uuid.uuid4().hex
            with pytest.MonkeyPatch.context() as mp:
                sp.install_fake_judge(mp)
                train(compose_config("train", tiny_overrides(self.outputs, *PROBE, *overrides,
                                                             f"logger.tracking_uri={self.uri}", f"+tags.probe={tag}")))
            client, run = sp.run_by_tag(self.uri, "probe", tag)
            self.cache[overrides] = (sp.sample_tables(client, run.info.run_id),
                                     sp.metric_history(client, run.info.run_id))
        return self.cache[overrides]


@pytest.fixture(scope="module")
def probe(shared_outputs, tmp_path_factory):
    return Probe(shared_outputs, tmp_path_factory.mktemp("probe_store"))


def mean(xs):
    return sum(xs) / len(xs)


def is_valid(group) -> bool:
    """A valid query's value is its answers' mean reward (in [0.25, 0.75]); an invalid one's is the
    configured invalid value (here 1.0, the probe's upper bound, or 0.0)."""
    return sp.LOW <= group[0]["value"] <= sp.HIGH


def expected_step(rows, *, w=1.0, fallback=0.0, objective=lambda v: -v, invalid_value=1.0):
    """Every per-pair and per-query figure of a step, from the table's query and answer texts and
    the judge's reply texts alone (advantages: the group-mean estimator, no KL)."""
    out = []
    groups = sp.groups(rows, G)
    for i, group in enumerate(groups):
        judge = []
        for j, row in enumerate(group):
            if i == 0 and j == 0:  # the stand-in's first reply of a call does not parse
                assert row["judge_reply"] == sp.UNPARSEABLE
                judge.append(fallback)
            else:  # the reply is the one written for this very row's pair: the columns are aligned
                assert row["judge_reply"] == sp.reply_text(row["query"], row["answer"])
                judge.append(float(sp.probe_score(row["query"], row["answer"])))
        # the first query of a call is ungradable (reward 0); an unfinished one is graded but invalid
        rewards = [0.0 if i == 0 else sp.probe_reward(r["query"], r["answer"]) for r in group]
        valid = is_valid(group)
        assert i != 0 or not valid
        value = mean(rewards) if valid else invalid_value
        sol = [r + w * q for r, q in zip(rewards, judge, strict=True)]
        ch = objective(value) + (w * mean(judge) if valid else 0.0)
        base = mean(sol)
        adv = [s - base if valid else 0.0 for s in sol]
        out.append(dict(valid=valid, judge=judge, reward=rewards, solver_reward=sol, value=value,
                        challenger_reward=ch, solver_advantage=adv))
    ch_mean = mean([q["challenger_reward"] for q in out])
    for q in out:
        q["challenger_advantage"] = q["challenger_reward"] - ch_mean
    return out


def column(rows, key):
    return [r[key] for r in rows]


def per_query(rows, key):
    return [g[0][key] for g in sp.groups(rows, G)]


def check_against(rows, expected, keys=("reward", "judge_score", "solver_reward", "solver_advantage", "value",
                                        "challenger_reward", "challenger_advantage")):
    names = {"judge_score": "judge"}
    for key in keys:
        want = expected_key(expected, names.get(key, key))
        got = column(rows, key) if isinstance(expected[0][names.get(key, key)], list) else per_query(rows, key)
        assert got == pytest.approx(want, **TOL), key


def expected_key(expected, key):
    if isinstance(expected[0][key], list):
        return [x for q in expected for x in q[key]]
    return [q[key] for q in expected]


def solver_deviation(rows):
    """Per valid row: (R + w R_Q - group mean) - advantage, i.e. what the KL term took off."""
    out = []
    for group in sp.groups(rows, G):
        if is_valid(group):
            base = mean(column(group, "solver_reward"))
            out += [r["solver_reward"] - base - r["solver_advantage"] for r in group]
    return out


def challenger_deviation(rows):
    ch = per_query(rows, "challenger_reward")
    return [c - mean(ch) - a for c, a in zip(ch, per_query(rows, "challenger_advantage"), strict=True)]


def assert_spread(rows):
    """The step has what the checks need: a valid query whose answers' rewards differ."""
    spread = [g for g in sp.groups(rows, G) if is_valid(g) and len(set(column(g, "solver_reward"))) > 1]
    assert spread, "no valid query with differing rewards in this step: pick another seed"


# ---- the default game, by hand -----------------------------------------------------------------

def test_lsp_step_every_reward_and_advantage_by_hand(probe):
    tables, metrics = probe.run()
    rows = tables[1]
    assert_spread(rows)
    # policy = reference: 0 up to float rounding (the policy's pass keeps a graph, the reference's does not)
    assert metrics["train/kl/solver"][0] == pytest.approx(0.0, abs=1e-5)
    assert metrics["train/kl/challenger"][0] == pytest.approx(0.0, abs=1e-5)
    expected = expected_step(rows)
    assert len({q for g in expected for q in g["judge"]}) > 2  # the judge's scores differ per pair
    check_against(rows, expected)
    # The step's logged figures are the same numbers, reduced as docs/method.md §13 says.
    valid = [q for q in expected if q["valid"]]
    m = {k: v[0] for k, v in metrics.items()}
    assert m["train/value_mean"] == pytest.approx(mean([q["value"] for q in valid]), **TOL)
    assert m["train/solver/reward"] == pytest.approx(mean([mean(q["reward"]) for q in valid]), **TOL)
    assert m["train/solver/total_reward"] == pytest.approx(mean([mean(q["solver_reward"]) for q in valid]), **TOL)
    assert m["train/challenger/reward"] == pytest.approx(mean([q["challenger_reward"] for q in expected]), **TOL)
    assert m["train/judge/score"] == pytest.approx(mean(expected_key(expected, "judge")), **TOL)
    assert m["train/judge/parse_fail_frac"] == pytest.approx(1 / (N * G)) == m["train/judge/unscored_frac"]
    valid_adv = [a for q in valid for a in q["solver_advantage"]]
    assert m["train/adv_mean/solver"] == pytest.approx(mean(valid_adv), abs=1e-6)
    assert m["train/adv_std/solver"] == pytest.approx(statistics.stdev(valid_adv), **TOL)
    ch_adv = [q["challenger_advantage"] for q in expected]
    assert m["train/adv_std/challenger"] == pytest.approx(statistics.stdev(ch_adv), **TOL)
    zero_std = [len(set(q["solver_reward"])) == 1 for q in valid]
    assert m["train/zero_std_frac/solver"] == pytest.approx(mean(zero_std), **TOL)
    assert m["train/approx_kl_old/solver"] == 0.0 and m["train/clip_frac/solver"] == 0.0  # one epoch, ratio 1


def test_lsp_step_two_the_kl_is_taken_off_each_advantage(probe):
    """kl.placement=advantage (the default): A = A(r) - beta KL, so the mean of what the KL took off
    over the counted answers is beta times the logged mean KL, for each role."""
    tables, metrics = probe.run()
    rows = tables[2]
    assert_spread(rows)
    kl_sol, kl_ch = metrics["train/kl/solver"][1], metrics["train/kl/challenger"][1]
    assert abs(kl_sol) > 1e-4 and abs(kl_ch) > 1e-4, "one update at lr 1e-2 moves the policy"
    assert mean(solver_deviation(rows)) == pytest.approx(BETA * kl_sol, rel=1e-3, abs=1e-6)
    assert mean(challenger_deviation(rows)) == pytest.approx(BETA * kl_ch, rel=1e-3, abs=1e-6)
    # rewards and values are still the hand-computed ones
    check_against(rows, expected_step(rows), keys=("reward", "judge_score", "solver_reward", "value",
                                                   "challenger_reward"))


# ---- each option changes what it should ---------------------------------------------------------

def _no_kl_in_advantages(base, run):
    rows = run[0][2]
    assert_spread(rows)
    assert max(abs(d) for d in solver_deviation(rows)) < 1e-5  # A = A(r) exactly, on a step with KL != 0
    assert max(abs(d) for d in challenger_deviation(rows)) < 1e-5
    assert max(abs(d) for d in challenger_deviation(base[0][2])) > 1e-4  # (the default's differ)


def check_kl_none(base, run):
    assert run[1]["train/kl/beta_solver"][1] == 0.0 == run[1]["train/kl/beta_challenger"][1]
    _no_kl_in_advantages(base, run)


def check_kl_loss(base, run):
    assert abs(run[1]["train/kl/challenger"][1]) > 1e-4  # a KL there is, but it is not in the advantages
    _no_kl_in_advantages(base, run)


def check_kl_reward(base, run):
    """A(R - beta KL): the KL shares the group baseline, so each group's advantages still sum to 0,
    yet they are not A(R)."""
    rows = run[0][2]
    assert_spread(rows)
    for group in sp.groups(rows, G):
        assert sum(column(group, "solver_advantage")) == pytest.approx(0.0, abs=1e-5)
    assert sum(per_query(rows, "challenger_advantage")) == pytest.approx(0.0, abs=1e-5)
    assert max(abs(d) for d in challenger_deviation(rows)) > 1e-5
    assert mean(challenger_deviation(base[0][2])) == pytest.approx(BETA * base[1]["train/kl/challenger"][1], rel=1e-3)


def check_k3(base, run):
    """Same playouts as the default (the first update does not depend on the estimator: KL = 0), a
    different KL estimate, and the advantages take off beta times that estimate."""
    assert column(run[0][2], "answer") == column(base[0][2], "answer")
    k1, k3 = base[1]["train/kl/challenger"][1], run[1]["train/kl/challenger"][1]
    assert k3 > 0 and abs(k3 - k1) > 1e-5
    assert mean(challenger_deviation(run[0][2])) == pytest.approx(BETA * k3, rel=1e-3, abs=1e-6)


def check_adaptive(base, run):
    """Ziegler's controller from KL 0 at the first step: beta <- beta (1 - 0.2 / horizon)."""
    assert run[1]["train/kl/beta_solver"][0] == BETA
    assert run[1]["train/kl/beta_solver"][1] == pytest.approx(BETA * (1 - 0.2 / 500), rel=1e-9)
    assert base[1]["train/kl/beta_solver"][1] == BETA


def check_objective(objective):
    def check(base, run):
        rows = run[0][1]
        assert_spread(rows)
        check_against(rows, expected_step(rows, objective=objective))
        assert per_query(rows, "challenger_reward") != per_query(base[0][1], "challenger_reward")
    return check


def check_invalid_zero(base, run):
    rows, base_rows = run[0][1], base[0][1]
    assert column(rows, "answer") == column(base_rows, "answer")
    check_against(rows, expected_step(rows, invalid_value=0.0))
    invalid = [i for i, g in enumerate(sp.groups(base_rows, G)) if not is_valid(g)]
    assert invalid and [per_query(rows, "value")[i] for i in invalid] == [0.0] * len(invalid)
    assert [per_query(base_rows, "value")[i] for i in invalid] == [1.0] * len(invalid)


def _table_advantages(run, transform):
    """Step 1 (KL 0): the solver's advantages are `transform(centred rewards of the valid rows)`."""
    rows = run[0][1]
    assert_spread(rows)
    exp = expected_step(rows)
    check_against(rows, exp, keys=("reward", "solver_reward", "value", "challenger_reward"))
    centred = [q["solver_advantage"] for q in exp]
    want = transform(centred, [q["valid"] for q in exp])
    assert column(rows, "solver_advantage") == pytest.approx([a for q in want for a in q], **TOL)
    return rows, exp


def check_grpo(base, run):
    def by_std(centred, valid):
        return [[a / (statistics.stdev(c) + 1e-6) if v and statistics.stdev(c) > 0 else 0.0 for a in c]
                for c, v in zip(centred, valid, strict=True)]
    rows, exp = _table_advantages(run, by_std)
    # seq_mean_token_mean at ratio 1: each counted answer contributes -A, averaged over the answers
    per_answer = [q for q in exp for _ in range(G)]
    counted = [r["solver_advantage"] for r, q in zip(rows, per_answer, strict=True) if q["valid"]]
    assert run[1]["train/loss/solver"][0] == pytest.approx(-mean(counted), **TOL)


def check_dr_grpo(base, run):
    _table_advantages(run, lambda c, v: c)
    # the same advantages and tokens as the default, summed per answer and divided by the constant
    assert run[1]["train/loss/solver"][0] == pytest.approx(base[1]["train/loss/solver"][0] / MAX_ANSWER, **TOL)
    assert run[1]["train/loss/challenger"][0] == pytest.approx(base[1]["train/loss/challenger"][0] / MAX_QUERY, **TOL)


def check_rloo(base, run):
    _table_advantages(run, lambda c, v: [[a * G / (G - 1) for a in q] for q in c])


def check_reinforce_pp(base, run):
    def whitened(centred, valid):
        counted = [a for c, v in zip(centred, valid, strict=True) if v for a in c]
        return [[a / (statistics.stdev(counted) + 1e-6) for a in c] for c in centred]
    _table_advantages(run, whitened)


def check_ppo(base, run):
    """Four epochs over the same playouts: the last sees a moved policy (ratio != 1); one epoch never does."""
    _table_advantages(run, lambda c, v: c)
    assert run[1]["train/approx_kl_old/solver"][0] > 1e-6 and run[1]["train/approx_kl_old/challenger"][0] > 1e-6
    assert base[1]["train/approx_kl_old/solver"][0] == 0.0


def check_weight(base, run):
    rows = run[0][1]
    assert_spread(rows)
    check_against(rows, expected_step(rows, w=0.5))
    assert column(rows, "solver_reward") != column(base[0][1], "solver_reward")


def check_fallback(base, run):
    rows = run[0][1]
    check_against(rows, expected_step(rows, fallback=3.0))
    assert rows[0]["judge_score"] == 3.0 and base[0][1][0]["judge_score"] == 0.0


OPTIONS = {
    "kl=none": check_kl_none,
    "kl.placement=loss": check_kl_loss,
    "kl.placement=reward": check_kl_reward,
    "kl.estimator=k3": check_k3,
    "kl=adaptive": check_adaptive,
    "game.challenger_objective=uncertainty": check_objective(lambda v: 1 - 2 * abs(v - 0.5)),
    "game.challenger_objective=learnability": check_objective(lambda v: 1 - v if 0 < v < 1 else 0.0),
    "game.invalid_query_value=0.0": check_invalid_zero,
    "algorithm=grpo": check_grpo,
    "algorithm=dr_grpo": check_dr_grpo,
    "algorithm=rloo": check_rloo,
    "algorithm=reinforce_pp": check_reinforce_pp,
    "algorithm=ppo": check_ppo,
    "game.self_reward_weight=0.5": check_weight,
    "game.judge.fallback_score=3": check_fallback,
}


@pytest.mark.parametrize("override", list(OPTIONS))
def test_each_option_changes_what_it_should(probe, override):
    OPTIONS[override](probe.run(), probe.run(override))
