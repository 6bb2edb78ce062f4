"""The special tokens a chat model is played with: its end-of-turn ids, its pad id, its chat template.

Real checkpoints differ in ways that silently break RL if they are ignored:
- Llama-3 has no pad token (pad is set to the end token, so "is pad" cannot mean "is padding") and
  its `generation_config.json` lists several end ids (`<|end_of_text|>`, `<|eom_id|>`, `<|eot_id|>`);
- Qwen2.5 pads with `<|endoftext|>`, which is also one of its end ids, while `eos` is `<|im_end|>`.
So a completion is cut *by position* after its first end token (any of the end ids), never by
comparing tokens with the pad id (README, "Real models").
"""
from __future__ import annotations

import torch

from lsp_exp.errors import LspError


class ModelSetupError(LspError, ValueError):
    """The model or its tokenizer lacks what self-play needs (a chat template, an end token)."""


def end_token_ids(model, tokenizer) -> list[int]:
    """Every id that ends a turn: the tokenizer's `eos_token_id` and each `eos_token_id` of the model's
    generation config (an int or a list), in that order, without repeats. Empty when there are none."""
    ids: list[int] = []
    config = getattr(model, "generation_config", None)
    for source in (getattr(tokenizer, "eos_token_id", None), getattr(config, "eos_token_id", None)):
        for token in (source if isinstance(source, (list, tuple)) else [source]):
            if token is not None and int(token) not in ids:
                ids.append(int(token))
    return ids


def end_ids_tensor(model, tokenizer, device) -> torch.Tensor:
    """`end_token_ids` as a tensor on `device`; a ModelSetupError when there is none."""
    ids = end_token_ids(model, tokenizer)
    if not ids:
        raise ModelSetupError(f"model {_name(model)!r}: no end token (neither the tokenizer's eos_token nor the "
                              "generation config's eos_token_id is set); set one in the model's files")
    return torch.tensor(ids, dtype=torch.long, device=device)


def check_chat_model(model, tokenizer, name: str | None = None) -> list[int]:
    """Refuse, in one line naming the model, a tokenizer without a chat template or a model whose end
    ids cannot be found; returns the end ids."""
    name = name or _name(model)
    if not getattr(tokenizer, "chat_template", None):
        raise ModelSetupError(f"model {name!r}: its tokenizer has no chat template (tokenizer_config.json or "
                              "chat_template.jinja); self-play renders every turn with it: use an instruct/chat model")
    ids = end_token_ids(model, tokenizer)
    if not ids:
        raise ModelSetupError(f"model {name!r}: no end token (neither the tokenizer's eos_token nor "
                              "generation_config.json's eos_token_id is set)")
    if tokenizer.pad_token_id is None:
        raise ModelSetupError(f"model {name!r}: the tokenizer has no pad token "
                              "(load it with lsp_exp.core.models.load_tokenizer)")
    return ids


def _name(model) -> str:
    return str(getattr(getattr(model, "config", None), "_name_or_path", "") or type(model).__name__)
