"""`init_from` (a run starts from another run's final weights) and prompt files (Alpaca format)."""
import json

import mlflow
import pytest
import torch
from transformers import AutoModelForCausalLM

from lsp_exp.run.chaining import InitFromError, find_run, resolve_init_from
from lsp_exp.core.prompts import alpaca_prompt, read_prompt_rows, read_prompts
from lsp_exp.cli.train import train

from tests.helpers.tiny_run import compose_config, tiny_overrides
from tests.helpers.tiny_run import latest_run_id


FIRST_FILTER = "init_from=\"filter:tags.arm = 'first'\""  # Hydra needs the value quoted (it has spaces)


def _weights(path):
    return AutoModelForCausalLM.from_pretrained(path).state_dict()


def test_init_from_run_id_and_filter_start_from_the_earlier_runs_weights(shared_outputs):
    uri = f"sqlite:///{shared_outputs}/mlflow.db"
    train(compose_config("train", tiny_overrides(shared_outputs, "game=lsp_zero", "optim.lr=1e-2", "+tags.arm=first")))
    first = latest_run_id(shared_outputs)
    path = resolve_init_from(first, uri, str(shared_outputs))
    assert path == shared_outputs / "init_from" / first / "model"
    trained = _weights(path)
    # The filter form finds the same run; a second stage then starts from those weights.
    assert find_run("filter:tags.arm = 'first'", uri) == first
    train(compose_config("train", tiny_overrides(shared_outputs, "game=grpo_data", "trainer.max_steps=1",
                                                 "optim.lr=1e-12", FIRST_FILTER)))
    second = latest_run_id(shared_outputs)
    run = mlflow.MlflowClient(uri).get_run(second)
    assert run.data.tags["init_from"] == "filter:tags.arm = 'first'"
    chained = _weights(resolve_init_from(second, uri, str(shared_outputs)))
    # lr 1e-12: the second run's weights are the first run's (up to one negligible step).
    assert all(torch.allclose(chained[k], trained[k], atol=1e-6) for k in trained)


def test_a_run_that_keeps_its_model_local_chains_from_it(shared_outputs):
    """logger.log_model=false (a full 3B model is ~6 GB): no model/ artifact and no logged model; the
    model stays under outputs/models/<run id>/model, which init_from=<run id> finds by the run's tag."""
    uri = f"sqlite:///{shared_outputs}/mlflow.db"
    train(compose_config("train", tiny_overrides(shared_outputs, "game=lsp_zero", "trainer.max_steps=1",
                                                 "eval.every_n_steps=0", "logger.log_model=false")))
    run_id = latest_run_id(shared_outputs)
    client = mlflow.MlflowClient(uri)
    run = client.get_run(run_id)
    assert "model" not in {a.path for a in client.list_artifacts(run_id)}
    assert not [m for m in client.search_logged_models([run.info.experiment_id]) if m.source_run_id == run_id]
    kept = shared_outputs / "models" / run_id / "model"
    assert run.data.tags["final_model_dir"] == str(kept.resolve()) and (kept / "config.json").is_file()
    assert resolve_init_from(run_id, uri, str(shared_outputs)) == kept.resolve()


def test_init_from_errors_name_what_was_looked_for(shared_outputs, tmp_path):
    uri = f"sqlite:///{shared_outputs}/mlflow.db"
    with pytest.raises(InitFromError, match="does not exist"):
        resolve_init_from(str(tmp_path / "nowhere"), uri, str(tmp_path))
    with pytest.raises(InitFromError, match="no finished MLflow run matches"):
        resolve_init_from("filter:tags.arm = 'never-logged'", uri, str(tmp_path))
    with pytest.raises(InitFromError, match="not a directory, an MLflow run id"):
        resolve_init_from("lsp-then-rl", uri, str(tmp_path))
    (tmp_path / "empty").mkdir()
    with pytest.raises(InitFromError, match="neither a model"):
        resolve_init_from(str(tmp_path / "empty"), uri, str(tmp_path))


def test_prompt_files_read_plain_toy_and_alpaca_rows(tmp_path):
    alpaca = [{"instruction": "Give three tips.", "input": "", "output": "Eat, sleep, walk."},
              {"instruction": "Translate.", "input": "bonjour", "output": "hello", "dataset": "koala"}]
    (tmp_path / "alpaca.json").write_text(json.dumps(alpaca))
    rows = read_prompt_rows(tmp_path / "alpaca.json")
    assert [r.prompt for r in rows] == ["Give three tips.", "Translate.\n\nbonjour"]
    assert [r.split for r in rows] == ["all", "koala"] and rows[1].reference == "hello"
    assert alpaca_prompt("Do it.", None) == "Do it."
    (tmp_path / "toy.jsonl").write_text('{"prompt": "2+3*4", "answer": 14, "difficulty": "precedence"}\n\n')
    (row,) = read_prompt_rows(tmp_path / "toy.jsonl")
    assert (row.prompt, row.answer, row.split) == ("2+3*4", 14, "precedence")
    assert read_prompts(tmp_path / "toy.jsonl") == ["2+3*4"]
    (tmp_path / "bad.jsonl").write_text('{"prompt": "1+1"}\n{"question": "no prompt"}\n')
    with pytest.raises(ValueError, match="line 2"):
        read_prompt_rows(tmp_path / "bad.jsonl")


def test_grpo_data_trains_on_an_alpaca_file(shared_outputs, tmp_path):
    rows = [{"instruction": f"{a}+{b}", "input": ""} for a, b in [(1, 2), (3, 4), (5, 6)]]
    (tmp_path / "alpaca.json").write_text(json.dumps(rows))
    history = train(compose_config("train", tiny_overrides(shared_outputs, "game=grpo_data", "logger=none",
                                                           f"game.prompts_path={tmp_path / 'alpaca.json'}")))
    assert max(history) == 3


def test_a_filter_picks_the_newest_finished_match_and_the_seed_the_config_names(tmp_path):
    """In a store of runs made here: of the matching runs, a newer FAILED or RUNNING one is passed over
    for the newest FINISHED one; `${seed}` in the paper's lsp_rl filter selects that seed's run."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = mlflow.MlflowClient(uri)
    exp = client.create_experiment("chain")
    made = {}
    for i, (seed, status) in enumerate([("0", "FINISHED"), ("0", "FINISHED"), ("1", "FINISHED"), ("0", "FAILED"),
                                        ("0", None), ("1", "KILLED")]):
        run = client.create_run(exp, start_time=1_000_000 + i, tags={"experiment": "paper_llama3b", "arm": "lsp",
                                                                     "seed": seed})
        if status:
            client.set_terminated(run.info.run_id, status)
        made[i] = run.info.run_id
    for seed, newest_finished in (("0", made[1]), ("1", made[2])):
        spec = compose_config("train", ["experiment=paper_llama3b/lsp_rl", f"seed={seed}"]).init_from
        assert spec == f"filter:tags.experiment = 'paper_llama3b' and tags.arm = 'lsp' and tags.seed = '{seed}'"
        assert find_run(spec, uri) == newest_finished
    with pytest.raises(InitFromError, match="no finished MLflow run matches"):
        find_run("filter:tags.arm = 'lsp' and tags.seed = '2'", uri)
