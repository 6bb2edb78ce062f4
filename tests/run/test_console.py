"""What a run prints: where to look at it in the UI, the progress bar's figures per game, the
held-out lines, the log file that gets the same lines; run names; the sample tables' columns."""
import logging

import pytest

from lsp_exp.run.console import (DEFAULT_STORE, accuracy_line, bar_figures, heldout_status, run_link, say,
                                 ui_command, where_to_look)
from lsp_exp.run.tracking import run_name, sample_rows

from tests.helpers.tiny_run import compose_config


def test_the_link_opens_the_model_training_view_of_the_store_the_run_used():
    assert ui_command(f"sqlite:///{DEFAULT_STORE}") == "make ui"
    assert ui_command("sqlite:////elsewhere/mlflow.db") == (
        ".venv/bin/mlflow ui --backend-store-uri sqlite:////elsewhere/mlflow.db --port 5000")
    assert ui_command("http://mlflow.internal:5000") is None
    assert run_link(f"sqlite:///{DEFAULT_STORE}", "3", "abc") == (
        "http://127.0.0.1:5000/#/experiments/3/runs/abc?workflowType=machine_learning")
    assert run_link("https://mlflow.internal/", "3") == "https://mlflow.internal/#/experiments/3/runs?workflowType=machine_learning"
    assert where_to_look(f"sqlite:///{DEFAULT_STORE}", "1", "r").endswith("(after `make ui`)")
    assert "after" not in where_to_look("http://mlflow.internal:5000", "1", "r")


@pytest.mark.parametrize("game, labels", [
    ("lsp", ["solver reward", "valid queries", "judge score", "true accuracy", "KL"]),
    ("lsp_zero", ["solver reward", "valid queries", "true accuracy", "KL"]),
    ("grpo_data", ["solver reward", "true accuracy", "KL"]),   # a data game has no invalid query
])
def test_the_progress_bar_shows_what_means_something_for_the_game(game, labels):
    assert [label for label, _ in bar_figures(compose_config("train", [f"game={game}"]))] == labels


def test_accuracy_line_before_and_after():
    history = {0: {"accuracy": 0.5, "pass_at_1": 0.4, "pass_at_8": 0.7, "accuracy/flawed": 0.1},
               3: {"accuracy": 0.52, "pass_at_1": 0.45, "pass_at_8": 0.71}}
    assert accuracy_line(history) == ("held-out Solver accuracy 0.500 -> 0.520 (step 0 -> 3); pass@1 0.400 -> 0.450; "
                                      "pass@8 0.700 -> 0.710")
    assert accuracy_line({5: {"accuracy": 0.25}}) == "held-out Solver accuracy 0.250 (step 5)"
    assert accuracy_line({}) is None


def test_lines_go_to_the_terminal_and_the_jobs_log_file(tmp_path, capsys):
    handler = logging.FileHandler(tmp_path / "train.log")
    logging.getLogger().addHandler(handler)
    try:
        say("held-out evaluation at step 0: 40 problems, greedy ...")
        with heldout_status(40, 2, 3) as status:
            status.progress(120)   # no bar off a terminal: nothing to update, nothing raised
            status.done({"accuracy": 0.5, "accuracy/flawed": 0.25, "pass_at_2": 0.75})
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "held-out evaluation at step 0: 40 problems, greedy ..."
    assert out[1] == "held-out evaluation at step 3: 40 problems, greedy and 2 samples each ..."
    assert out[2].startswith("held-out evaluation at step 3: accuracy 0.500  pass@2 0.750  (")
    assert (tmp_path / "train.log").read_text().count("held-out evaluation") == 3


def test_run_names_tell_runs_apart_and_are_configurable():
    assert run_name(compose_config("train", ["game=lsp_zero", "seed=2"])) == "lsp_zero-lsp-s2"
    cfg = compose_config("train", ["algorithm=grpo", "game=grpo_data"])
    assert run_name(cfg, "lr=1e-05") == "grpo_data-grpo-s0 lr=1e-05"
    cfg = compose_config("train", ["logger.run_name=${game.name}-lr${optim.lr}"])
    assert run_name(cfg) == "lsp-lr3e-05"


def test_sample_tables_read_each_answer_beside_its_raw_text(tmp_path):
    """The toy world writes answers with their digits reversed ('41' is 14): the table shows the
    decoded value, the query's true value and whether they agree, next to the raw answer."""
    import torch

    from lsp_exp.tasks.arith.task import ArithTask

    task = ArithTask(outputs=str(tmp_path))  # (answer_columns builds nothing)
    queries, answers = ["3+11", "3+11", "5*", "5*"], ["41", "14", "5", "x"]
    columns = task.answer_columns(queries, answers)
    assert columns == {"decoded": [14, 41, 5, None], "expected": [14, 14, None, None],
                       "correct": [True, False, None, None]}
    rows = sample_rows(["3+11", "5*"], answers, {"reward": torch.tensor([[1.0, 0.0], [0.0, 0.0]])},
                       {"value": torch.tensor([0.5, 1.0])}, answer_columns=columns)
    assert list(rows)[:5] == ["query", "answer", "decoded", "expected", "correct"]
    assert rows["reward"] == [1.0, 0.0, 0.0, 0.0] and rows["value"] == [0.5, 0.5, 1.0, 1.0]


def test_a_store_that_refuses_the_logged_model_costs_a_warning_not_the_run(monkeypatch, caplog):
    from types import SimpleNamespace

    from mlflow.exceptions import MlflowException

    import lsp_exp.run.final_model as final_model
    from lsp_exp.run.tracking import _log_entry

    def refuse(logger, **entry):
        raise MlflowException("logged models need an MLflow 3 server")

    monkeypatch.setattr(final_model, "log_model_entry", refuse)
    logger = SimpleNamespace()
    _log_entry(logger, {"base_model": None, "dtype": "float32", "max_new_tokens": 8})
    assert not hasattr(logger, "model_id") and "refused it as a logged model" in caplog.text
