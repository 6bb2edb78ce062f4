"""End to end: `lsp-train` on a tiny toy world built in the test, logging to a temporary MLflow store."""
import json
import re
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

from lsp_exp.cli.train import train
from lsp_exp.tasks.arith.world import decode_answer

from tests.helpers.tiny_run import TINY_RM, compose_config, latest_run_id, tiny_overrides


def run_metrics(outputs, run_id):
    client = mlflow.MlflowClient(f"sqlite:///{outputs}/mlflow.db")
    run = client.get_run(run_id)
    return run, {k: [(m.step, m.value) for m in client.get_metric_history(run_id, k)] for k in run.data.metrics}


@pytest.mark.parametrize("game", ["lsp", "lsp_zero", "grpo_data"])
def test_train_logs_params_metrics_and_artifacts(shared_outputs, game):
    history = train(compose_config("train", tiny_overrides(shared_outputs, f"game={game}")))
    assert sorted(history) == [0, 2, 3]   # before, every 2 steps, at the end
    run, metrics = run_metrics(shared_outputs, latest_run_id(shared_outputs))
    assert run.info.status == "FINISHED"
    assert run.data.params["game.name"] == game and run.data.params["kl.beta"] == "0.05"
    assert run.data.tags["game"] == game and run.data.tags["seed"] == "0"
    for key in ["train/solver/reward", "train/value_mean", "train/query_valid_frac", "train/kl/solver",
                "train/loss/solver", "train/loss/kl", "train/grad_norm", "train/zero_std_frac", "train/answer_len",
                "eval/accuracy", "eval/pass_at_1", "eval/pass_at_2", "perf/step_s", "perf/gen_s", "perf/reward_s",
                "perf/ref_s", "perf/update_s", "perf/tokens_per_s"]:
        assert key in metrics, key
    assert len(metrics["train/solver/reward"]) == 3
    assert [s for s, _ in metrics["eval/accuracy"]] == [0, 2, 3]
    if game != "grpo_data":
        for key in ["train/challenger/reward", "train/kl/challenger", "train/loss/challenger", "train/query_len",
                    "train/entropy/challenger", "train/zero_std_frac/challenger"]:
            assert key in metrics, key
    judge_keys = ["train/judge/score", "train/judge/parse_fail_frac", "train/solver/total_reward", "perf/judge_s",
                  "eval/judge/auc", "eval/judge/f1"]
    assert all((key in metrics) == (game == "lsp") for key in judge_keys), sorted(metrics)
    assert "eval/reward/f1" in metrics and "train/entropy/solver" in metrics and "train/clip_frac/solver" in metrics
    assert "epoch" not in metrics   # Lightning's epoch (always 0 here) is not logged
    client = mlflow.MlflowClient(f"sqlite:///{shared_outputs}/mlflow.db")
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config", "samples", "model"} <= artifacts
    assert re.fullmatch(rf"{game}-lsp-s0(-\d+)?", run.info.run_name)   # -2, ...: the shared store has the name
    # The sample table reads each answer: its decoded value, the query's true value, correct or not.
    table = json.loads(Path(client.download_artifacts(run.info.run_id, "samples/step_000002.json")).read_text())
    assert table["columns"][:5] == ["query", "answer", "decoded", "expected", "correct"]
    for _query, answer, decoded, expected, correct, *_ in table["data"]:
        assert decoded == decode_answer(answer)
        assert (correct is None) == (expected is None) and correct in (None, decoded == expected)
    # The final model is an MLflow logged model of the run (its weights: the run's model/ artifact).
    (model,) = [m for m in client.search_logged_models([run.info.experiment_id]) if m.source_run_id == run.info.run_id]
    assert model.name == "policy" and model.status.value == "READY" and model.params["game.name"] == game
    if game == "lsp_zero":  # loads back with one call and answers
        mlflow.set_tracking_uri(f"sqlite:///{shared_outputs}/mlflow.db")   # (what the README says to do first)
        policy = mlflow.pyfunc.load_model(f"models:/{model.model_id}")
        answers = policy.predict(["3+4", "12-5*2"])
        assert len(answers) == 2 and all(isinstance(a, str) for a in answers)


def test_same_seed_gives_identical_metrics(shared_outputs):
    def metrics_of_one_run():
        train(compose_config("train", tiny_overrides(shared_outputs, "trainer.max_steps=4")))
        _, metrics = run_metrics(shared_outputs, latest_run_id(shared_outputs))
        return {k: v for k, v in metrics.items() if not k.startswith("perf/")}

    first, second = metrics_of_one_run(), metrics_of_one_run()
    assert first == second


def test_cli_runs_and_bad_config_fails_cleanly(shared_outputs):
    ok = subprocess.run([sys.executable, "-m", "lsp_exp.cli.train", *tiny_overrides(shared_outputs, "logger=none")],
                        capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert "held-out Solver accuracy" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "lsp_exp.cli.train",
                          *tiny_overrides(shared_outputs, "game.group_size=1")],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0
    assert "game.group_size" in bad.stderr and "Traceback" not in bad.stderr


def test_missing_model_gives_one_clear_line(shared_outputs, tmp_path):
    missing = tmp_path / "no-such-model"
    out = subprocess.run([sys.executable, "-m", "lsp_exp.cli.train", *tiny_overrides(shared_outputs, "task=prompts",
                          f"model.path={missing}", "logger=none", arith=False)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert str(missing) in out.stderr and "download" in out.stderr and len(out.stderr.strip().splitlines()) == 1




# The options (kl, algorithm, objective, judge weight, ...) each change what they should on a step with
# non-zero advantages: tests/run/test_step_by_hand.py checks every one against hand-computed values.


def test_unknown_reward_target_fails_with_a_clear_message(shared_outputs):
    out = subprocess.run([sys.executable, "-m", "lsp_exp.cli.train", *tiny_overrides(
        shared_outputs, "reward._target_=my_rewards.Oracle", "logger=none")],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.startswith("error: reward._target_='my_rewards.Oracle': cannot be imported")


def test_proxy_reward_logs_the_verifier_beside_it(shared_outputs):
    """reward=tiny_rm: the Solver is trained on the reward model; the verifier's accuracy is logged too."""
    train(compose_config("train", tiny_overrides(shared_outputs, "reward=tiny_rm", *TINY_RM)))
    _, metrics = run_metrics(shared_outputs, latest_run_id(shared_outputs))
    for key in ["train/solver/true_accuracy", "train/solver/reward", "eval/reward/auc", "eval/reward/precision"]:
        assert key in metrics, key
    assert all(0 <= v <= 1 for _, v in metrics["train/solver/reward"])  # sigmoid of the RM's score


def test_composite_reward_logs_each_part(shared_outputs):
    parts = [f"+reward.parts.tiny_rm.bootstrap.{o.split('.', 2)[2]}" for o in TINY_RM]
    train(compose_config("train", tiny_overrides(shared_outputs, "reward=composite", *parts, "game=lsp_zero")))
    _, metrics = run_metrics(shared_outputs, latest_run_id(shared_outputs))
    for key in ["train/reward/verifier", "train/reward/tiny_rm", "train/solver/true_accuracy"]:
        assert key in metrics, key


def test_bounded_objective_refuses_an_unbounded_reward(shared_outputs, tmp_path):
    out = subprocess.run([sys.executable, "-m", "lsp_exp.cli.train", *tiny_overrides(
        shared_outputs, "reward=tiny_rm", *TINY_RM, "reward.transform=none", "game.challenger_objective=uncertainty",
        "logger=none")], capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "game.challenger_objective=uncertainty needs a reward in [0, 1]" in out.stderr
