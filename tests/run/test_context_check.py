"""A real model gets real-text lengths (task=prompts) and the toy keeps its own; a run whose longest
sequences exceed a model's context stops at start in one line, before any weight is loaded."""
import json

import pytest

from lsp_exp.core.generation import chat_prompts
from lsp_exp.errors import ConfigError
from lsp_exp.judge.templates import PAPER_RUBRIC
from lsp_exp.nodes import build
from lsp_exp.run.context_check import check_context, stretches
from tests.helpers.real_models import save_tiny_model, save_tiny_reward_model
from tests.helpers.tiny_run import compose_config


def short_context_llama3(path, context: int):
    """A tiny Llama-3-style checkpoint whose config states a `context`-token context, its weights
    removed: a run that gets past the start-up checks would fail to load them."""
    path = save_tiny_model(path, "llama3")
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, "max_position_embeddings": context}))
    for weights in path.glob("*.safetensors"):
        weights.unlink()
    return path


def paper_setting(tmp_path, model, *extra):
    """experiment=paper_llama3b/lsp on a tiny model and reward model, on the CPU, untracked."""
    reward = save_tiny_reward_model(tmp_path / "rm", "llama3")
    return compose_config("train", ["experiment=paper_llama3b/lsp", f"model.path={model}", f"reward.path={reward}",
                                    "trainer=cpu", "logger=none", f"paths.outputs={tmp_path / 'outputs'}", *extra])


@pytest.mark.parametrize("task, query, answer", [("arith", 12, 24), ("arith_direct", 12, 8)])
def test_the_toy_keeps_its_lengths(task, query, answer):
    cfg = compose_config("train", [f"task={task}"])
    assert (cfg.game.max_query_tokens, cfg.game.max_answer_tokens) == (query, answer)
    assert compose_config("eval", [f"task={task}"]).heldout.max_new_tokens == answer


def test_the_toy_fits_its_own_model(tmp_path):
    """The default run (full LSP on the worked-steps world) within the toy model's 128 positions: the
    Challenger's `task: arithmetic` + 12, the Solver's query + 24, the judge's tags + query + answer + 40."""
    from transformers import LlamaConfig

    from lsp_exp.tasks.arith.tokenizer import build_tokenizer

    cfg = compose_config("train")
    LlamaConfig(**cfg.task.bootstrap.arch).save_pretrained(tmp_path)
    found = stretches(cfg, build(cfg.task, "task"), build_tokenizer(), str(tmp_path), None)
    assert [(s.name, s.tokens, s.limit) for s in found] == [("the Challenger's prompt (toy)", 20 + 12, 128),
                                                           ("the Solver's prompt", 4 + 12 + 24, 128),
                                                           ("the judge's prompt", 15 + 12 + 24 + 40, 128)]


def test_task_prompts_gives_a_real_model_real_lengths(tmp_path):
    """What the README's real-model command writes, on a Qwen2.5-style checkpoint: queries of 256 tokens,
    answers of 512, in training and in lsp-eval; the paper's judge reply (320); the paper's temperature."""
    path = save_tiny_model(tmp_path / "qwen", "qwen")
    cfg = compose_config("train", ["task=prompts", "model=qwen2_5_0_5b_instruct", f"model.path={path}",
                                   "reward=reward_model"])
    assert (cfg.game.max_query_tokens, cfg.game.max_answer_tokens, cfg.game.temperature) == (256, 512, 1.0)
    evaluation = compose_config("eval", ["task=prompts", f"model.path={path}", "reward=reward_model"])
    assert evaluation.heldout.max_new_tokens == evaluation.win_rate.max_new_tokens == 512
    task = build(cfg.task, "task")
    tokenizer = build(cfg.model, "model").tokenizer(str(path))
    judge = {s.name: s for s in stretches(cfg, task, tokenizer, str(path), None)}["the judge's prompt"]
    assert judge.reply == ("game.judge.max_new_tokens", 320) and judge.limit == 2048


def test_the_paper_setting_on_a_1024_token_model_stops_in_one_line_naming_the_judge_prompt(tmp_path):
    from lsp_exp.cli.train import train

    model = short_context_llama3(tmp_path / "llama3", 1024)
    tokenizer = build(compose_config("train", ["model=llama3_2_3b_instruct"]).model, "model").tokenizer(str(model))
    rubric = len(tokenizer(chat_prompts(tokenizer, [PAPER_RUBRIC.format(instruction="", response="")]),
                           add_special_tokens=False)["input_ids"][0])
    with pytest.raises(ConfigError) as err:
        train(paper_setting(tmp_path, model))
    message = str(err.value)
    assert "\n" not in message and message.startswith("the run's longest sequences do not fit")
    assert (f"the judge's prompt is {rubric + 256 + 512:,} tokens (the paper rubric {rubric:,} + a query of "
            f"game.max_query_tokens=256 + an answer of game.max_answer_tokens=512) and its reply up to "
            f"game.judge.max_new_tokens=320: {rubric + 256 + 512 + 320:,}, over 1,024 (the model's "
            "max_position_embeddings=1024)") in message
    assert "lower game.max_query_tokens, game.max_answer_tokens, game.judge.max_new_tokens" in message


def test_a_run_that_fits_passes(tmp_path):
    """The same setting with lengths that fit 1024 tokens: nothing is refused, and every sequence is
    counted against the context it runs in."""
    model = short_context_llama3(tmp_path / "llama3", 1024)
    cfg = paper_setting(tmp_path, model, "game.max_query_tokens=64", "game.max_answer_tokens=96",
                        "game.judge.max_new_tokens=64")
    task = build(cfg.task, "task")
    tokenizer = build(cfg.model, "model").tokenizer(str(model))
    check_context(cfg, task, tokenizer, str(model))
    found = stretches(cfg, task, tokenizer, str(model), None)
    assert [s.name for s in found] == ["the Challenger's prompt (paper)", "the Solver's prompt", "the judge's prompt",
                                       "the input of the reward model (reward)"]
    assert all(s.tokens <= s.limit for s in found)
    assert [s.limit for s in found] == [1024, 1024, 1024, 2048]   # the reward model's own context


def test_a_reward_model_input_over_its_max_length_names_it(tmp_path):
    """A data game (its longest prompt is the query) scored by a reward model that would cut the input."""
    model = save_tiny_model(tmp_path / "qwen", "qwen")
    reward = save_tiny_reward_model(tmp_path / "rm", "qwen")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("\n".join(json.dumps({"prompt": p}) for p in ["Say hi.", "The quick brown fox " * 20]))
    cfg = compose_config("train", ["task=prompts", f"model.path={model}", "game=grpo_data",
                                   f"game.prompts_path={prompts}", "reward=reward_model", f"reward.path={reward}",
                                   "reward.max_length=300", "game.max_answer_tokens=256"])
    task = build(cfg.task, "task")
    tokenizer = build(cfg.model, "model").tokenizer(str(model))
    longest = len(tokenizer("The quick brown fox " * 20, add_special_tokens=False)["input_ids"])
    with pytest.raises(ConfigError) as err:
        check_context(cfg, task, tokenizer, str(model), [p["prompt"] for p in map(json.loads, prompts.open())])
    message = str(err.value)
    assert f"the longest prompt of game.prompts_path={prompts} {longest:,} + an answer of game.max_answer_tokens=256" \
           in message and "over 300 (reward.max_length=300: a longer input is cut)" in message
    assert message.endswith("lower game.max_answer_tokens, reward.max_length, or use a model with a longer context")
