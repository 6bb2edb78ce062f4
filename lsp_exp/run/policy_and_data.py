"""The data and the policy of a run, in the order that stops a bad run soonest: the data is read
before any model is built or loaded, each row bounded by a model at hand (its tokenizer and context,
core/prompt_bound.py); the run's longest sequences are checked against the models' contexts
(run/context_check.py) and the device's memory against the estimated peak before any weight is
loaded; the loaded policy is checked on a few tokens (core/conformance.py)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import lightning as L
from omegaconf import DictConfig

from lsp_exp.core.conformance import check_architecture
from lsp_exp.core.fused_head import output_layer
from lsp_exp.core.models import resolve_model_path
from lsp_exp.core.prompt_bound import check_texts, prompt_bound
from lsp_exp.core.prompts import read_prompts
from lsp_exp.core.special_tokens import check_chat_model
from lsp_exp.errors import ConfigError
from lsp_exp.nodes import build
from lsp_exp.run.chaining import is_adapter
from lsp_exp.run.context_check import check_context
from lsp_exp.run.memory_check import check_memory
from lsp_exp.tasks.base import HeldoutSet, Task


@dataclass
class PolicyAndData:
    policy: object                  # the trained model (train mode), float32 trainable weights
    tokenizer: object
    model_path: str                 # where its weights came from (the final model's `base_model`)
    heldout: HeldoutSet | None      # the first `eval.max_problems` held-out problems
    prompts: list[str] | None       # a data game's prompts (game=grpo_data); None in self-play


def load_policy_and_data(cfg: DictConfig, task: Task, init: Path | None) -> PolicyAndData:
    """`init`: a run to start from (`init_from`: a full model, or an adapter on the base)."""
    loader = build(cfg.model, "model")
    full_init = init is not None and not is_adapter(init)
    at_hand = str(init) if full_init else (resolve_model_path(cfg.model, task) if cfg.model.get("path")
                                           else task.built_model())
    if at_hand:  # the estimated peak against the device's memory, before anything but its config is read
        check_memory(cfg, at_hand)
    tokenizer = loader.tokenizer(at_hand) if at_hand else None
    heldout, prompts = read_data(cfg, task, prompt_bound(tokenizer, at_hand, cfg.game.max_answer_tokens)
                                 if at_hand else None)
    if at_hand:
        check_context(cfg, task, tokenizer, at_hand, prompts)
    model_path = str(init) if full_init else resolve_model_path(cfg.model, task)  # a first-time bootstrap draws RNG
    if tokenizer is None:  # a model the task built just now: it bounds the rows read (named by number)
        tokenizer = loader.tokenizer(model_path)
        check_data(prompt_bound(tokenizer, model_path, cfg.game.max_answer_tokens), cfg, heldout, prompts)
        check_context(cfg, task, tokenizer, model_path, prompts)
        check_memory(cfg, model_path)  # before any weight is loaded
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    policy = loader.policy(model_path, adapter=init if init is not None and is_adapter(init) else None).train()
    name = cfg.model.get("path") or cfg.model.name
    check_chat_model(policy, tokenizer, name)  # a chat template and end ids
    check_architecture(policy, tokenizer, name)  # padding, the KV cache, training mode, the output layer
    if output_layer(policy) is None:  # the check chose the logits path: the estimate counts the logits too
        check_memory(cfg, model_path, fused_head=False)
    return PolicyAndData(policy, tokenizer, model_path, heldout.head(cfg.eval.max_problems) if heldout else None,
                         prompts)


def read_data(cfg: DictConfig, task: Task, bound) -> tuple:
    """The task's held-out set and a data game's prompts (game=grpo_data), within `bound` when given;
    a malformed, empty or too long file is one line (ConfigError)."""
    task.prompt_bound = bound
    try:
        heldout = task.heldout()
    except ValueError as err:
        raise ConfigError(f"task ({cfg.task._target_}): {err}") from None
    try:
        prompts = None
        if not cfg.game.challenger:
            prompts = read_prompts(cfg.game.prompts_path, bound) if cfg.game.prompts_path else task.train_prompts()
    except ValueError as err:
        raise ConfigError(str(err)) from None
    return heldout, prompts


def check_data(bound, cfg: DictConfig, heldout, prompts) -> None:
    """The rows read before the model was built, against its bound (rows named by number)."""
    try:
        if heldout is not None:
            check_texts(bound, heldout.prompts, f"task.heldout_path={cfg.task.heldout_path!r}"
                        if cfg.task.get("heldout_path") else f"the held-out set of task {cfg.task._target_}")
        if prompts is not None:
            check_texts(bound, prompts, f"game.prompts_path={cfg.game.prompts_path!r}" if cfg.game.prompts_path
                        else f"the training prompts of task {cfg.task._target_}")
    except ValueError as err:
        raise ConfigError(str(err)) from None
