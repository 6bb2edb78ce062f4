"""game=rzero (docs/method.md §17.2) end to end: two steps under a 1/1 schedule, the Solver's members
the valid queries in the band, the new figures logged; its config checks; RZero's defaults are no-ops."""
import mlflow
import pytest
import torch
from omegaconf import OmegaConf

import lsp_exp.run.self_play as self_play
from lsp_exp.cli.train import train
from lsp_exp.errors import ConfigError
from lsp_exp.run.rzero import RZero
from lsp_exp.run.validation import validate

from tests.helpers.tiny_run import compose_config, run_of_this_test, tiny_overrides

FAST = ["trainer.max_steps=2", "eval.samples=0", "eval.every_n_steps=0", "eval.judge_pairs=0",
        "eval.sample_table_every=0", "trainer.checkpoint_every=0", "trainer.num_threads=1", "game.n_queries=6"]
# R = 0.25 or 0.75 per pair (the first query of a call ungradable): V of a valid query in {1/4, 5/12, 7/12, 3/4}
# with G = 3; the band [0.6, 0.8] drops some valid queries (the ones this seed gives: all, an empty Solver loss)
PROBE = ["reward._target_=tests.helpers.step_probe.ProbeReward", "game.max_query_tokens=24", "game.group_size=3",
         "game.band.low=0.6", "game.band.high=0.8"]


def test_rzero_runs_two_alternating_steps(shared_outputs, monkeypatch):
    seen = {"rewards": [], "roles": []}
    role_rewards, update = self_play.role_rewards, self_play.SelfPlayModule._update

    def recorded_rewards(rewards, valid, **kw):
        out = role_rewards(rewards, valid, **kw)
        seen["rewards"].append((valid.clone(), out, kw["penalty"]))
        return out

    def recorded_update(module, roles):
        seen["roles"].append({b.name: b.member_mask.clone() for b in roles})
        return update(module, roles)

    monkeypatch.setattr(self_play, "role_rewards", recorded_rewards)
    monkeypatch.setattr(self_play.SelfPlayModule, "_update", recorded_update)
    cfg = compose_config("train", tiny_overrides(shared_outputs, "game=rzero", "game.schedule.challenger_steps=1",
                                                 "game.schedule.solver_steps=1", *FAST, *PROBE))
    train(cfg)
    assert [set(r) for r in seen["roles"]] == [{"challenger"}, {"solver"}]   # step 0: Challenger; step 1: Solver
    valid, rewards, penalty = seen["rewards"][1]
    assert valid.any() and not valid.all()
    band = valid & (rewards.values >= 0.6) & (rewards.values <= 0.8)
    assert torch.equal(seen["roles"][1]["solver"], band[:, None].expand_as(seen["roles"][1]["solver"]))
    for _, rewards, penalty in seen["rewards"]:   # max(0, uncertainty - r_rep)
        expected = (1 - 2 * (rewards.values - 0.5).abs() - penalty).clamp(min=0)
        torch.testing.assert_close(rewards.challenger, expected)
    uri = f"sqlite:///{shared_outputs}/mlflow.db"
    client = mlflow.MlflowClient(uri)
    run = run_of_this_test(uri)

    def history(key):
        return sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))

    assert history("train/phase") == [(0, 1.0), (1, 0.0)]
    assert [s for s, _ in history("train/loss/challenger")] == [0]    # only the phase's role has loss figures
    assert [s for s, _ in history("train/loss/solver")] == [1]
    for step, (_, _, penalty) in enumerate(seen["rewards"]):
        assert history("train/challenger/repetition_penalty")[step][1] == pytest.approx(float(penalty.mean()))
        assert 0 < history("train/challenger/cluster_frac")[step][1] <= 1
        assert 0 <= history("train/solver/band_frac")[step][1] <= 1
    assert len(history("train/zero_std_frac")) == 2   # also in the Challenger phase (run health reads it)


@pytest.mark.parametrize("override, message", [
    (["game.band.low=0.8", "game.band.high=0.2"], r"^game\.band\.low=0\.8: must be <= game\.band\.high=0\.2$"),
    (["game.band.low=0.5", "game.band.high=0.5", "game.band.open=true"], r"must be < game\.band\.high=0\.5$"),
    (["game.schedule.challenger_steps=2"], r"^game\.schedule\.challenger_steps=2: and game\.schedule\.solver_steps=0: "
                                           r"both 0 \(no schedule\) or both at least 1$"),
    (["game.repetition_threshold=1.5"], r"^game\.repetition_threshold=1\.5: must be in \[0, 1\]$"),
    (["game.schedule.solver_steps=-1"], r"^game\.schedule\.solver_steps=-1: must be >= 0$"),
    (["game=grpo_data", "game.repetition_penalty=1"], r"^game\.repetition_penalty=1(\.0)?: acts on the Challenger"),
])
def test_bad_rzero_config_is_one_line(override, message):
    with pytest.raises(ConfigError, match=message):
        validate(compose_config("train", ["game=rzero", *override]))


def test_rzero_composes_and_its_defaults_are_no_ops():
    game = compose_config("train", ["game=rzero"]).game
    assert (game.challenger_objective, game.repetition_penalty, game.repetition_threshold,
            game.challenger_reward_floor) == ("uncertainty", 1.0, 0.5, 0.0)
    rzero = RZero(game, (0.0, 1.0))
    assert rzero.band == (0.25, 0.75, False) and rzero.phase(7) is None
    off = RZero(compose_config("train", ["game=lsp_zero"]).game, (0.0, 1.0))
    queries = OmegaConf.create({"texts": ["1+1", "1+1"], "rollout": 1})
    assert off.repetition(queries, None) is None and off.floor is None and off.band is None
    assert off.in_band(torch.tensor([True]), torch.tensor([0.5])) is None
    dapo = RZero(compose_config("train", ["game=lsp_zero", "game.band.open=true"]).game, (0.0, 1.0))
    assert dapo.in_band(torch.tensor([True] * 3), torch.tensor([0.0, 0.5, 1.0])).tolist() == [False, True, False]
