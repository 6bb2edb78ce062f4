"""Whether the run's longest sequences fit the models' contexts, checked at start from each model's config
and tokenizer, before any weight is loaded.

The policy's context (`context_tokens`: the config's `max_position_embeddings` or its like, or the
tokenizer's `model_max_length`, the smaller) must hold the Challenger's prompt and a query of
`game.max_query_tokens`; the Solver's prompt (a longest query in the chat template) and an answer of
`game.max_answer_tokens`; with `game.self_reward`, the judge's prompt (its rubric around a longest query
and answer) and its reply of `game.judge.max_new_tokens` (the frozen reference is the same model). A
reward model's input (its chat template around a longest query and answer) must fit its own context and
its `max_length` (a longer input would be cut). A query is `game.max_query_tokens` tokens when the
Challenger writes it, else the longest prompt read. A run that would exceed one stops in one line naming
the lengths and the keys that change them.
"""
from __future__ import annotations

from dataclasses import dataclass

from hydra._internal.utils import _locate  # what the game's `_target_` is built from
from omegaconf import DictConfig
from transformers import AutoTokenizer

from lsp_exp.core.generation import chat_prompts
from lsp_exp.core.models import find_local_or_cached
from lsp_exp.core.prompt_bound import context_tokens
from lsp_exp.errors import ConfigError
from lsp_exp.games.challenger import ChallengerGame
from lsp_exp.games.challenger_prompt import challenger_prompt
from lsp_exp.judge.templates import TEMPLATES
from lsp_exp.tasks.base import Task

ROWS_PER_CALL = 1024   # prompts counted per call of the tokenizer
STYLES = ("toy", "paper")


@dataclass(frozen=True)
class Stretch:
    """One sequence the run builds: its prompt's parts and what is generated after it, against a limit."""

    name: str
    parts: tuple[tuple[str, int], ...]   # (what, tokens) of the prompt; a `what` ending in "=" names a key
    reply: tuple[str, int] | None        # (the key that bounds it, tokens) generated after the prompt
    limit: int
    why: str                             # where the limit comes from
    keys: tuple[str, ...]                # the keys that shorten it

    @property
    def prompt(self) -> int:
        return sum(n for _, n in self.parts)

    @property
    def tokens(self) -> int:
        return self.prompt + (self.reply[1] if self.reply else 0)

    def describe(self) -> str:
        parts = " + ".join(f"{what}{n}" if what.endswith("=") else f"{what} {n:,}" for what, n in self.parts)
        text = f"{self.name} is {self.prompt:,} tokens" + (f" ({parts})" if len(self.parts) > 1 else "")
        if self.reply:
            text += f" and its reply up to {self.reply[0]}={self.reply[1]}: {self.tokens:,}"
        return f"{text}, over {self.limit:,} ({self.why})"


def check_context(cfg: DictConfig, task: Task, tokenizer, model_path: str, prompts: list[str] | None = None) -> None:
    """Every sequence of the run within its model's context, or one line (ConfigError) naming those
    over it. `prompts`: a data game's prompts (its queries). Nothing is checked for a tokenizer with no
    chat template (the model check says so once the model is loaded)."""
    if not getattr(tokenizer, "chat_template", None):
        return
    over = [s for s in stretches(cfg, task, tokenizer, model_path, prompts) if s.tokens > s.limit]
    if over:
        keys = list(dict.fromkeys(key for s in over for key in s.keys))
        raise ConfigError(f"the run's longest sequences do not fit: {'; '.join(s.describe() for s in over)}; "
                          f"lower {', '.join(keys)}, or use a model with a longer context")


def stretches(cfg: DictConfig, task: Task, tokenizer, model_path: str, prompts: list[str] | None) -> list[Stretch]:
    """The Challenger's, the Solver's, the judge's and each reward model's longest sequence."""
    game = cfg.game
    limit, why = context_tokens(tokenizer, model_path)
    answer = int(game.max_answer_tokens)
    query = _Query(game, prompts, lambda texts: _count(tokenizer, texts, chat=False))
    out = []
    style = game.prompt if game.prompt != "auto" else task.challenger_style
    if game.challenger and _writes_queries(game) and style in STYLES:
        user_turn = challenger_prompt(style, game.task, game.template)
        out.append(Stretch(f"the Challenger's prompt ({style})", (("the prompt", _count(tokenizer, [user_turn])[0]),),
                           ("game.max_query_tokens", int(game.max_query_tokens)), limit, why,
                           ("game.max_query_tokens",)))
    out.append(Stretch("the Solver's prompt", (("the chat template", _count(tokenizer, [""])[0]), query.part),
                       ("game.max_answer_tokens", answer), limit, why, (*query.keys, "game.max_answer_tokens")))
    name = game.judge.template if game.judge.template != "auto" else task.judge_template
    if game.self_reward and name in TEMPLATES:
        template = TEMPLATES[name]
        rubric = _count(tokenizer, [template.render("", "")])[0]
        reply = int(game.judge.max_new_tokens or template.max_new_tokens)
        out.append(Stretch("the judge's prompt", ((f"the {name} rubric", rubric), query.part,
                                                  ("an answer of game.max_answer_tokens=", answer)),
                           ("game.judge.max_new_tokens", reply), limit, why,
                           (*query.keys, "game.max_answer_tokens", "game.judge.max_new_tokens")))
    for key, node in reward_models(cfg.reward, "reward"):
        out.extend(_reward_stretch(key, node, query, answer))
    return out


class _Query:
    """A longest query: `game.max_query_tokens` when the Challenger writes it, else the longest prompt
    read (counted once, when first asked for)."""

    def __init__(self, game: DictConfig, prompts: list[str] | None, count_raw):
        self.game, self.prompts, self.count_raw, self._part = game, prompts, count_raw, None
        self.from_challenger = bool(game.challenger) or prompts is None
        self.keys = ("game.max_query_tokens",) if self.from_challenger else ()

    @property
    def part(self) -> tuple[str, int]:
        if self._part is None:
            if self.from_challenger:
                self._part = ("a query of game.max_query_tokens=", int(self.game.max_query_tokens))
            else:
                what = (f"the longest prompt of game.prompts_path={self.game.prompts_path}" if self.game.prompts_path
                        else "the longest of the task's training prompts")
                self._part = (what, max(self.count_raw(self.prompts), default=0))
        return self._part


def _reward_stretch(key: str, node: DictConfig, query: _Query, answer: int) -> list[Stretch]:
    """A reward model's input, against its context and `max_length`; none when its tokenizer cannot be
    read here or has no chat template (the reward model says so when it is loaded or scores)."""
    path = find_local_or_cached(node.path, f"{key}.path", f"reward model {node.get('name', key)!r}")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError):
        return []
    if not getattr(tokenizer, "chat_template", None):
        return []
    limit, why = context_tokens(tokenizer, path)
    keys = [*query.keys, "game.max_answer_tokens"]
    if node.get("max_length") and int(node.max_length) < limit:
        limit, why = int(node.max_length), f"{key}.max_length={node.max_length}: a longer input is cut"
        keys.append(f"{key}.max_length")
    else:
        why = f"the reward model's context: {why}"
    template = tokenizer.apply_chat_template([{"role": "user", "content": ""}, {"role": "assistant", "content": ""}],
                                             tokenize=False)
    overhead = len(tokenizer(template, add_special_tokens=False)["input_ids"])
    return [Stretch(f"the input of the reward model ({key})", (("its chat template", overhead), query.part,
                                                               ("an answer of game.max_answer_tokens=", answer)),
                    None, limit, why, tuple(keys))]


def reward_models(node, key: str):
    """(key, node) of every reward model (`load_reward_model` with a path) in a reward config tree."""
    if not isinstance(node, DictConfig):
        return
    if str(node.get("_target_", "")).endswith("load_reward_model") and node.get("path"):
        yield key, node
    for name, child in node.items_ex(resolve=False):
        if isinstance(child, DictConfig):
            yield from reward_models(child, f"{key}.{name}")


def _writes_queries(game: DictConfig) -> bool:
    """The query source is the Challenger (`ChallengerGame` or a subclass): its prompt is known."""
    try:
        target = _locate(str(game.queries._target_))
    except (ImportError, AttributeError):
        return False
    return isinstance(target, type) and issubclass(target, ChallengerGame)


def _count(tokenizer, texts: list[str], chat: bool = True) -> list[int]:
    """Tokens of each text, as a user turn in the chat template (`chat`) or as it is."""
    out = []
    for start in range(0, len(texts), ROWS_PER_CALL):
        batch = texts[start:start + ROWS_PER_CALL]
        out += [len(ids) for ids in tokenizer(chat_prompts(tokenizer, batch) if chat else batch,
                                              add_special_tokens=False)["input_ids"]]
    return out
