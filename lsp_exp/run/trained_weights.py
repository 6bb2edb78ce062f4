"""The weights `lsp-eval` evaluates, loaded as the run that made them used them: the base model, a
full model folder, or a LoRA adapter over the base, or over what the run started from (`init_from`:
a full model folder, or an earlier run's adapter merged into the base first)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lsp_exp.core.models import peft_wrapping, safe_weights
from lsp_exp.core.special_tokens import check_chat_model
from lsp_exp.run.chaining import is_adapter


@dataclass
class Target:
    """One model to evaluate: where its weights are, and the run to log into (None: a new run)."""

    label: str
    path: str | None          # None: the base model itself
    run_id: str | None
    below: str | None = None  # a LoRA run's `init_from`: the weights its adapter goes over (a folder or an adapter)


def load_model(loader, base_path: str, target: Target):
    """(model in eval mode, tokenizer) of `target`: its weights over the base they were trained on."""
    path, below = target.path, target.below
    if path is None:
        model, tokenizer = loader.policy(base_path), loader.tokenizer(base_path)
    elif not is_adapter(Path(path)):
        model, tokenizer = loader.policy(path), loader.tokenizer(path)
    elif below is not None and not is_adapter(Path(below)):  # an adapter over init_from's full model
        model, tokenizer = loader.policy(below, adapter=path), loader.tokenizer(below)
    elif below is not None:  # an adapter over the base with an earlier run's adapter merged in
        model, tokenizer = merge_adapter(loader.policy(base_path, adapter=below), path), loader.tokenizer(base_path)
    else:
        model, tokenizer = loader.policy(base_path, adapter=path), loader.tokenizer(base_path)
    check_chat_model(model, tokenizer, path or base_path)
    return model.eval(), tokenizer


def merge_adapter(model, adapter: str):
    """`model` with the LoRA adapter at `adapter` merged into its weights (loaded without running code)."""
    from peft import PeftModel  # noqa: PLC0415 (peft: ~0.5 s to import; only for a chained LoRA run)

    with safe_weights(adapter), peft_wrapping():
        return PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
