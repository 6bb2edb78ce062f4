"""What extending the framework costs a user: each extension is written here, in the test, as one
Python file in the user's own package and one YAML in the user's own config directory (added with
`hydra.searchpath`); nothing under `lsp_exp/` or `conf/` is edited.

| extension                                         | files                                    |
|---------------------------------------------------|------------------------------------------|
| a reward as a plain function                       | `my_rewards.py`, `reward/brevity.yaml`    |
| a task (reverse a word) with its own verifier      | `reverse_task.py`, `task/reverse.yaml`    |
| an advantage estimator with a new hyper-parameter  | `my_algos.py`, `algorithm/scaled.yaml`    |
| a stateful advantage estimator (one per role)      | `my_baselines.py`, `algorithm/median.yaml` |
"""
from __future__ import annotations

import ast
import sys
import textwrap
from pathlib import Path

import mlflow
import pytest

from lsp_exp.cli.train import train
from lsp_exp.run.config import PROJECT_ROOT

from tests.helpers.tiny_run import compose_config, runs_of_this_test, tiny_overrides

FAST = ["trainer.max_steps=2", "eval.samples=0", "eval.every_n_steps=0", "eval.judge_pairs=0",
        "eval.sample_table_every=0", "trainer.checkpoint_every=0", "trainer.num_threads=1"]


@pytest.fixture
def user(tmp_path, monkeypatch):
    """A user's package directory (on sys.path) and config directory (on Hydra's search path)."""
    package, conf = tmp_path / "user_pkg", tmp_path / "user_conf"
    package.mkdir()
    conf.mkdir()
    monkeypatch.syspath_prepend(str(package))

    def write(relative: str, text: str) -> Path:
        path = (conf if relative.endswith(".yaml") else package) / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
        return path

    yield write, f"hydra.searchpath=[file://{conf}]"
    for name in ("my_rewards", "reverse_task", "my_algos", "my_baselines"):
        sys.modules.pop(name, None)


def last_run(outputs):
    client = mlflow.MlflowClient(f"sqlite:///{outputs}/mlflow.db")
    # this test's newest (its tag, tests/helpers/tiny_run.py)
    run = runs_of_this_test(f"sqlite:///{outputs}/mlflow.db")[-1]
    return run, {k: [m.value for m in client.get_metric_history(run.info.run_id, k)] for k in run.data.metrics}


def test_a_reward_is_a_plain_function_and_a_yaml(user, shared_outputs):
    write, searchpath = user
    write("my_rewards.py", """
        SEEN = []

        def brevity(queries, answers, max_chars=2):
            values = [1.0 if len(a.strip()) <= max_chars else 0.0 for a in answers]
            SEEN.append(values)
            return values
        brevity.bounds = (0.0, 1.0)
        """)
    write("reward/brevity.yaml", """
        _target_: my_rewards.brevity
        _partial_: true
        name: brevity
        max_chars: 1
        """)
    train(compose_config("train", tiny_overrides(shared_outputs, searchpath, "reward=brevity", "game=grpo_data",
                                                 *FAST)))
    import my_rewards

    run, metrics = last_run(shared_outputs)
    assert run.info.status == "FINISHED" and run.data.params["reward.max_chars"] == "1"
    first = my_rewards.SEEN[0]   # the data game's queries are all valid: the Solver's reward is the mean
    assert metrics["train/solver/reward"][0] == pytest.approx(sum(first) / len(first))


def test_a_task_is_one_file_and_one_yaml(user, tmp_path):
    """Reverse a word: the task builds its own tiny base model (a chat model made in the test),
    has a verifier (exact reversal), held-out words and training words; trained for 2 steps with
    its verifier as the reward (`reward=ground_truth`), by self-play and from its prompts."""
    write, searchpath = user
    write("reverse_task.py", """
        import torch
        from lsp_exp.rewards import Scores
        from lsp_exp.tasks.base import HeldoutSet, Task

        WORDS = ["fox", "tree", "dog", "bird", "cat", "sun", "fish", "moon", "star", "lake"]


        class Reversed:
            bounds = (0.0, 1.0)

            def score(self, queries, answers):
                word = [q.removeprefix("Reverse: ").strip() for q in queries]
                valid = [w.isalpha() for w in word]
                values = [float(v and a.strip() == w[::-1]) for v, w, a in zip(valid, word, answers)]
                return Scores(torch.tensor(values), torch.tensor(valid))


        class ReverseTask(Task):
            name = "reverse"
            challenger_style = "toy"
            judge_template = "toy"

            def __init__(self, outputs):
                self.outputs = outputs

            def base_model(self, force=False):
                from tests.helpers.real_models import save_tiny_model  # a tiny chat model, built in the test
                return str(save_tiny_model(f"{self.outputs}/reverse_base", "qwen", chat_trained=True))

            def heldout(self):
                words = WORDS[:4]
                return HeldoutSet([f"Reverse: {w}" for w in words], lambda i, text: text.strip() == words[i][::-1],
                                  [[f"len{len(w)}"] for w in words], [w[::-1] for w in words])

            def train_prompts(self):
                return [f"Reverse: {w}" for w in WORDS[4:]]

            def ground_truth(self):
                return Reversed()
        """)
    write("task/reverse.yaml", """
        _target_: reverse_task.ReverseTask
        name: reverse
        outputs: ${paths.outputs}
        """)
    for game in ("grpo_data", "lsp_zero"):
        outputs = tmp_path / game
        history = train(compose_config("train", tiny_overrides(
            outputs, searchpath, "task=reverse", "reward=ground_truth", f"game={game}", "game.max_query_tokens=8",
            "game.max_answer_tokens=6", "eval.every_n_steps=0", *FAST, arith=False)))
        assert sorted(history) == [0, 2] and set(history[2]) >= {"accuracy", "accuracy/len3", "accuracy/len4"}
        run, metrics = last_run(outputs)
        assert run.info.status == "FINISHED" and run.data.params["task.name"] == "reverse"
        assert all(0 <= v <= 1 for v in metrics["train/solver/reward"]) and len(metrics["train/solver/reward"]) == 2
        assert (outputs / "reverse_base" / "config.json").is_file()   # model.path=null: the task's base model


def test_an_advantage_with_a_new_hyper_parameter_is_one_file_and_one_yaml(user, shared_outputs):
    write, searchpath = user
    write("my_algos.py", """
        from lsp_exp.rl.advantages import group_mean_advantage

        CALLS = []


        def scaled_advantage(rewards, mask, scale=1.0):
            CALLS.append(scale)
            return scale * group_mean_advantage(rewards, mask)
        """)
    write("algorithm/scaled.yaml", """
        defaults:
          - schema
        name: scaled
        advantage:
          _target_: my_algos.scaled_advantage
          _partial_: true
          scale: 2.5
        policy_loss: reinforce_token
        aggregation: seq_mean_token_sum
        """)
    train(compose_config("train", tiny_overrides(shared_outputs, searchpath, "algorithm=scaled", "game=lsp_zero",
                                                 "reward=tiny_rm", *REWARD_MODEL, *FAST)))
    import my_algos

    assert my_algos.CALLS and set(my_algos.CALLS) == {2.5}   # the hyper-parameter reached the user's function
    run, metrics = last_run(shared_outputs)
    assert run.info.status == "FINISHED"
    assert run.data.params["algorithm.advantage._target_"] == "my_algos.scaled_advantage"


def test_a_stateful_advantage_is_one_file_and_one_yaml_built_per_role_and_checkpointed(user, shared_outputs):
    """A class named with `_partial_: true`: each role gets its own instance, its state goes into the
    checkpoint, and its `baseline` is logged (docs/method.md §17.3)."""
    import torch

    from lsp_exp.run.checkpointing import latest_checkpoint

    write, searchpath = user
    write("my_baselines.py", """
        import torch


        class RunningMedian:
            def __init__(self, window=20):
                self.window, self.means, self.baseline = window, [], None

            def __call__(self, rewards, mask):
                if not mask.any():
                    return torch.zeros_like(rewards)
                self.means = (self.means + [float(rewards[mask].mean())])[-self.window:]
                self.baseline = float(torch.tensor(self.means).median())
                return (rewards - self.baseline) * mask

            def state_dict(self):
                return {"means": self.means, "baseline": self.baseline}

            def load_state_dict(self, state):
                self.means, self.baseline = list(state["means"]), state["baseline"]
        """)
    write("algorithm/median.yaml", """
        defaults:
          - schema
        name: median
        advantage: {_target_: my_baselines.RunningMedian, _partial_: true, window: 10}
        """)
    train(compose_config("train", tiny_overrides(shared_outputs, searchpath, "algorithm=median", "game=lsp_zero",
                                                 "reward=tiny_rm", *REWARD_MODEL, *FAST, "trainer.checkpoint_every=2")))
    run, metrics = last_run(shared_outputs)
    saved = torch.load(latest_checkpoint(shared_outputs / "checkpoints" / run.info.run_id), map_location="cpu",
                       weights_only=False)["advantage_estimators"][0]
    assert set(saved) == {"solver", "challenger"} and all(len(s["means"]) <= 2 for s in saved.values())
    assert saved["solver"]["means"] and saved["solver"]["means"] != saved["challenger"]["means"]  # a state per role
    assert metrics["train/adv_baseline/solver"][-1] == pytest.approx(saved["solver"]["baseline"])
    assert run.data.params["algorithm.advantage.window"] == "10"


REWARD_MODEL = ["reward.bootstrap.steps=2", "reward.bootstrap.hidden_size=16", "reward.bootstrap.intermediate_size=32",
                "reward.bootstrap.num_hidden_layers=1", "reward.bootstrap.num_attention_heads=2"]


def test_only_the_tasks_folder_imports_a_task_package():
    """The core knows nothing of any task: outside `lsp_exp/tasks/`, only the interface
    (`lsp_exp.tasks.base`) may be imported."""
    offenders = []
    for path in (PROJECT_ROOT / "lsp_exp").rglob("*.py"):
        if "tasks" in path.relative_to(PROJECT_ROOT / "lsp_exp").parts[:1]:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            if isinstance(node, ast.ImportFrom) and node.module == "lsp_exp.tasks":
                names = [f"lsp_exp.tasks.{a.name}" for a in node.names]
            for name in names:
                if name.startswith("lsp_exp.tasks") and name != "lsp_exp.tasks.base":
                    offenders.append(f"{path.relative_to(PROJECT_ROOT)}: {name}")
    assert not offenders, offenders


@pytest.mark.parametrize("overrides, message", [
    (["game=grpo_data", "reward=reward_model"], "game.queries (lsp_exp.games.PromptFileGame): game 'grpo_data' "
                                                 "needs prompts"),
    ([], "reward: Interpolation key 'task.world' not found"),   # the arithmetic verifier needs task=arith
    (["reward=ground_truth"], "reward (lsp_exp.rewards.task_ground_truth): reward=ground_truth: task 'prompts' has "
                              "no ground truth"),
])
def test_a_task_without_what_the_run_needs_is_one_line_naming_the_key(tmp_path, overrides, message):
    """task=prompts with no prompt file has no training prompts and no verifier."""
    from tests.helpers.real_models import save_tiny_model, save_tiny_reward_model
    from lsp_exp.errors import ConfigError

    path = save_tiny_model(tmp_path / "model", "qwen")
    rm = save_tiny_reward_model(tmp_path / "rm", "qwen")
    cfg = compose_config("train", tiny_overrides(tmp_path, "task=prompts", f"model.path={path}", "logger=none",
                                                 *overrides, *([f"reward.path={rm}"] if "reward=reward_model" in
                                                               overrides else []), arith=False))
    with pytest.raises(ConfigError) as err:
        train(cfg)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)
