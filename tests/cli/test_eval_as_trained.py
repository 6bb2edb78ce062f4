"""`lsp-eval run=<id>` evaluates the run as it was trained: its task, model (`model.path`, LoRA),
reward and answer length come from the config the run logged, so the run id and the store are all the
command needs; an override that would load other weights than the run's is one line naming the key
and the run's value. Each evaluation is the real console script in its own process (what it prints
is what a user sees: no MLflow download bars, no warnings); the four run side by side."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import yaml

from lsp_exp.cli.train import train
from tests.helpers.real_models import REAL_RUN, save_tiny_model, save_tiny_reward_model
from tests.helpers.tiny_run import compose_config, tiny_overrides

HELDOUT = [{"prompt": "Say hi.", "reference": "Hi!", "split": "greeting"},
           {"prompt": "What is 12+3*4?", "reference": "24", "split": "math"},
           {"prompt": "What is 7*8?", "reference": "56", "split": "math"}]
PROMPTS = ["Say hi.", "What is 12+3*4?", "Name a fox.", "What is 9/3?"]


def start_lsp_eval(outputs: Path, *args: str) -> tuple[subprocess.Popen, float]:
    """The `lsp-eval` console script with `args`, the store and outputs under `outputs`, started."""
    script = Path(sys.executable).with_name("lsp-eval")
    command = [str(script)] if script.is_file() else [sys.executable, "-m", "lsp_exp.cli.evaluate"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_ENABLE")}  # MLflow's own defaults
    process = subprocess.Popen([*command, *args, f"paths.outputs={outputs}",
                                f"logger.tracking_uri=sqlite:///{outputs}/mlflow.db"], cwd=outputs, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**env, "HF_HUB_OFFLINE": "1"})
    return process, time.perf_counter()


def train_run(outputs: Path, arm: str, overrides: list[str]) -> str:
    """One training run logged to the store under `outputs`, tagged `arm`; its id."""
    train(compose_config("train", [*overrides, f"paths.outputs={outputs}",
                                   f"logger.tracking_uri=sqlite:///{outputs}/mlflow.db", f"+tags.arm={arm}"]))
    client = mlflow.MlflowClient(f"sqlite:///{outputs}/mlflow.db")
    (run,) = client.search_runs([client.get_experiment_by_name("lsp-exp").experiment_id],
                                filter_string=f"tags.arm = '{arm}'")
    return run.info.run_id


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, shared_outputs):
    """A Llama-3-style tiny model (no pad token) and its reward model; one step of a LoRA run and of a
    full fine-tune on them (task=prompts with a held-out file, reward=reward_model), each in its own
    store, and a one-step run of the tiny toy world; then `lsp-eval run=<id>` of each (the full run's with
    `reward.batch_size=2`), and of the LoRA run with another `model.path`. Returns
    {case: (run id, store, rc, stdout, stderr, wall s)} and the files."""
    root = tmp_path_factory.mktemp("as_trained")
    model = save_tiny_model(root / "llama3", "llama3", chat_trained=True)
    other = save_tiny_model(root / "other", "llama3", seed=1)
    rm = save_tiny_reward_model(root / "rm", "llama3")
    heldout, prompts = root / "heldout.jsonl", root / "prompts.jsonl"
    heldout.write_text("\n".join(json.dumps(row) for row in HELDOUT))
    prompts.write_text("\n".join(json.dumps({"prompt": p}) for p in PROMPTS))
    real = [*REAL_RUN, "trainer.max_steps=1", "game=grpo_data", f"game.prompts_path={prompts}",
            f"task.heldout_path={heldout}", f"model.path={model}", "model.name=llama3",
            "model.lora.target_modules=[q_proj,v_proj]", "reward=reward_model", f"reward.path={rm}"]
    runs = {kind: (train_run(root / kind, kind, [*real, f"model.lora.enabled={kind == 'lora'}"]), root / kind)
            for kind in ("lora", "full")}
    runs["toy"] = (train_run(shared_outputs, "as_trained_toy", tiny_overrides(
        shared_outputs, "trainer.max_steps=1", "eval.samples=0", "eval.judge_pairs=0", "game=lsp_zero")),
        shared_outputs)
    runs["contradiction"] = runs["lora"]
    extra = {"toy": ["win_rate.max_prompts=8", "perplexity.max_rows=8"], "contradiction": [f"model.path={other}"],
             "full": ["reward.batch_size=2"]}   # a key lsp-eval's default reward (arithmetic) has not: onto the run's
    started = {case: start_lsp_eval(outputs, f"run={run_id}", *extra.get(case, []))
               for case, (run_id, outputs) in runs.items()}
    results = {}
    for case, (process, start) in started.items():
        stdout, stderr = process.communicate(timeout=600)
        results[case] = (*runs[case], process.returncode, stdout, stderr, time.perf_counter() - start)
    return {"results": results, "model": model, "other": other, "rm": rm, "heldout": heldout}


def quiet(case) -> None:
    """Exit 0, and nothing on stderr: no traceback, no warning, no download bar."""
    _, _, rc, stdout, stderr, _ = case
    assert rc == 0 and stderr.strip() == "", stderr[-3000:]
    assert "Downloading artifacts" not in stdout and "Warning" not in stdout, stdout[-3000:]


def logged(case, folder: Path) -> tuple[dict, dict]:
    """The run's metrics and the config lsp-eval logged into it (`eval/config.yaml`)."""
    run_id, outputs = case[:2]
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"  # this test's own download (restored after it)
    client = mlflow.MlflowClient(f"sqlite:///{outputs}/mlflow.db")
    config = Path(client.download_artifacts(run_id, "eval/config.yaml", str(folder))).read_text()
    return client.get_run(run_id).data.metrics, yaml.safe_load(config)


@pytest.mark.parametrize("kind", ["lora", "full"])
def test_a_real_convention_run_is_evaluated_with_its_id_alone(evaluated, kind, tmp_path):
    """The run's task (its held-out file), model (its path, LoRA or not), reward model and answer length:
    held-out accuracy, a win rate judged by the run's reward model and a perplexity, logged into the run."""
    case = evaluated["results"][kind]
    print(f"lsp-eval run=<{kind} run>: {case[-1]:.1f} s (beside the other three)")
    quiet(case)
    metrics, cfg = logged(case, tmp_path)
    assert {"eval/accuracy", "eval/accuracy/math", "eval/win_rate", "eval/perplexity"} <= set(metrics), metrics
    assert 0 <= metrics["eval/win_rate"] <= 1 and metrics["eval/perplexity"] > 1
    assert cfg["model"]["path"] == str(evaluated["model"]) and cfg["model"]["lora"]["enabled"] is (kind == "lora")
    assert cfg["task"]["heldout_path"] == str(evaluated["heldout"]) and cfg["reward"]["path"] == str(evaluated["rm"])
    assert cfg["heldout"]["max_new_tokens"] == cfg["win_rate"]["max_new_tokens"] == 5  # the run's answer length
    assert cfg["reward"]["batch_size"] == (2 if kind == "full" else 32)   # the override, on the run's reward node


def test_an_override_that_contradicts_the_run_is_one_line(evaluated):
    """model.path=<another model> on a LoRA run (its adapter loads only over the run's base): one line naming
    the key and the run's value, exit 2, before any model is loaded; nothing is logged into the run."""
    run_id, outputs, rc, _, stderr, _ = evaluated["results"]["contradiction"]
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert rc == 2 and len(lines) == 1, stderr[-3000:]
    assert lines[0] == (f"error: run={run_id!r} was trained with model.path={str(evaluated['model'])!r}; this "
                        f"command's model.path={str(evaluated['other'])!r} cannot evaluate its weights as trained "
                        "(drop the override)")
    client = mlflow.MlflowClient(f"sqlite:///{outputs}/mlflow.db")
    assert len(client.get_metric_history(run_id, "eval/eval_s")) == 1   # the run=<id> evaluation's alone


def test_a_toy_run_is_evaluated_in_its_own_world(evaluated, tmp_path):
    """A run of the tiny toy world (40 held-out problems, not the default world's 2000): lsp-eval run=<id>
    evaluates it there, with the arithmetic verifier, and logs its accuracy into the run."""
    case = evaluated["results"]["toy"]
    quiet(case)
    metrics, cfg = logged(case, tmp_path)
    assert {"eval/accuracy", "eval/win_rate", "eval/perplexity"} <= set(metrics), metrics
    assert cfg["task"]["world"]["n_heldout"] == 40 and cfg["reward"]["name"] == "arithmetic"
