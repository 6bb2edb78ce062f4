"""Loading the policy and its tokenizer, the same way for a task's own base model and a real one.

A task's base model (the toy world's, built by `lsp-bootstrap`) is loaded back through
`AutoModelForCausalLM` / `AutoTokenizer` from its directory, exactly like a local copy of a real model.
"""
from __future__ import annotations

import copy
import os
import pickle
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
from huggingface_hub import try_to_load_from_cache
from omegaconf import DictConfig
from transformers import AutoModelForCausalLM, AutoTokenizer

from lsp_exp.core.dropout import disable_dropout
from lsp_exp.core.precision import check_master_weights
from lsp_exp.core.special_tokens import ModelSetupError
from lsp_exp.errors import MissingFileError
from lsp_exp.nodes import checked

from transformers.pytorch_utils import Conv1D
from transformers.utils import logging as hf_logging

hf_logging.disable_progress_bar()

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ModelNotFoundError(MissingFileError):
    """The model is neither a local directory nor in the Hugging Face cache."""


class ModelLoadError(ModelNotFoundError):
    """The model's weights are there but cannot be loaded safely (a pickle that would run code)."""


@contextmanager
def safe_weights(folder: str | Path):
    """A `.bin` weights file that is a pickle needing code to load is refused by torch's
    `weights_only` load (transformers and peft load with it): nothing runs, and here it is one line
    naming the file instead of a traceback."""
    try:
        yield
    except pickle.UnpicklingError as err:
        folder = Path(folder)
        files = sorted(folder.glob("*.bin")) if folder.is_dir() else []
        if len(files) == 1:
            named = str(files[0])
        else:
            named = f"{folder} ({', '.join(f.name for f in files)})" if files else str(folder)
        why = next((line.strip() for line in str(err).splitlines() if "GLOBAL" in line), "not plain tensors")
        raise ModelLoadError(f"model weights {named} cannot be loaded safely: a pickle that needs code to load "
                             f"({why}); nothing was run") from None


@dataclass
class LoraSpec:
    enabled: bool = False
    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])


@dataclass
class ModelSpec:
    path: Optional[str] = None          # a directory or a hub id already in the cache; None: the task's base model
    dtype: str = "float32"
    attn_implementation: str = "sdpa"
    # recompute each layer's activations in the backward (less memory, ~1/3 more compute)
    gradient_checkpointing: bool = False
    lora: LoraSpec = field(default_factory=LoraSpec)


class HFModel:
    """How a run loads its model (the `model` group's `_target_`): a Hugging Face causal LM from a
    directory or the hub cache, in `dtype`, with `attn_implementation`, fully trainable or under a
    LoRA adapter. Subclass it to load a model another way (quantised, another architecture)."""

    def __init__(self, path: str | None = None, dtype: str = "float32", attn_implementation: str = "sdpa",
                 gradient_checkpointing: bool = False, lora=None):
        self.cfg = checked(ModelSpec, {"path": path, "dtype": dtype, "attn_implementation": attn_implementation,
                                       "gradient_checkpointing": gradient_checkpointing, "lora": lora or {}}, "model")
        spec = self.cfg.lora
        for key, ok, why in (("r", spec.r >= 1, "must be at least 1"), ("alpha", spec.alpha > 0, "must be > 0"),
                             ("dropout", 0 <= spec.dropout < 1, "must be in [0, 1)")):
            if not ok:
                raise ValueError(f"model.lora.{key}={spec[key]!r}: {why}")
        if self.cfg.dtype not in DTYPES:
            raise ValueError(f"model.dtype={dtype!r}: must be {', '.join(DTYPES)}")
        self.path = path

    def policy(self, path: str, adapter: str | Path | None = None):
        return load_policy(self.cfg, path, adapter)

    def frozen(self, path: str):
        return load_frozen(self.cfg, path)

    def tokenizer(self, path: str):
        return load_tokenizer(path)


def resolve_model_path(cfg: DictConfig, task) -> str:
    """`model.path` (a local directory or a hub id already in the cache), or, when it is null, the base
    model the task builds (the toy world's)."""
    if cfg.get("path"):
        return find_local_or_cached(cfg.path, "model.path", f"model {cfg.get('name')!r}")
    built = task.base_model()
    if built is None:
        raise ModelNotFoundError(f"model.path is not set for model {cfg.get('name')!r}, and task {task.name!r} "
                                 "builds no base model: set model.path to a directory or a hub id in the cache")
    return built


def find_local_or_cached(path: str | None, key: str, what: str) -> str:
    """`path` if it is a local directory or a hub id already in the Hugging Face cache; otherwise
    a ModelNotFoundError that says what to download (`key` names the config key)."""
    if not path:
        raise ModelNotFoundError(f"{key} is not set for {what}")
    if Path(path).is_dir():
        return str(path)
    if _looks_like_hub_id(path):
        if isinstance(try_to_load_from_cache(path, "config.json"), str):
            return path
        raise ModelNotFoundError(
            f"{key}={path!r} is not in the Hugging Face cache and HF_HUB_OFFLINE forbids fetching it; "
            f"download it first (`hf download {path}`) or set {key} to a local directory"
        )
    raise ModelNotFoundError(
        f"{key}={path!r}: directory does not exist; download the model there "
        f"(e.g. `hf download <repo-id> --local-dir {path}`) or point {key} at a local copy"
    )


def _looks_like_hub_id(path: str) -> bool:
    """'org/name' (or 'name'), not a filesystem path."""
    return not path.startswith((".", "/", "~")) and path.count("/") <= 1


def load_tokenizer(path: str):
    """The model's tokenizer, left-padding; a model without a pad token (Llama-3) pads with its end
    token, which is safe because completions are masked by position (generation.py)."""
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=_offline())
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def load_frozen(cfg: DictConfig, path: str):
    """A model that is only read (a judge): `model.dtype`, eval mode, no gradients, no adapter."""
    model = _from_pretrained(path, DTYPES[cfg.dtype], cfg.attn_implementation)
    return model.eval().requires_grad_(False)


def load_policy(cfg: DictConfig, path: str, adapter: str | Path | None = None):
    """The trainable policy: full fine-tune, or a LoRA adapter over frozen weights. Trainable weights
    are float32 whatever `model.dtype` (the compute dtype, core/precision.py): a full fine-tune loads
    every weight in float32; LoRA keeps the frozen base in `model.dtype` and the adapter in float32.

    `adapter`: a LoRA adapter of an earlier run (`init_from`), merged into the weights first, so the
    new run starts from (and is anchored to) what the earlier run ended with."""
    stored = DTYPES[cfg.dtype] if cfg.lora.enabled else torch.float32   # master weights (docs/method.md §16)
    model = _from_pretrained(path, stored, cfg.attn_implementation)
    if adapter is not None:
        from peft import PeftModel  # noqa: PLC0415 (peft: ~0.5 s to import; only under LoRA or an adapter)

        with safe_weights(adapter), peft_wrapping():
            model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    if cfg.get("gradient_checkpointing"):
        enable_checkpointing(model)
    if cfg.lora.enabled:
        from peft import LoraConfig, get_peft_model  # noqa: PLC0415 (peft: ~0.5 s to import; only under LoRA)

        lora = LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                          target_modules=list(cfg.lora.target_modules), task_type="CAUSAL_LM")
        try:
            with peft_wrapping():
                model = get_peft_model(model, lora)   # peft keeps the adapter in float32 over a half-precision base
        except ValueError as err:   # e.g. no module matches target_modules (GPT-2 names them c_attn, c_proj...)
            raise ModelSetupError(
                f"model.lora.target_modules={list(cfg.lora.target_modules)}: peft cannot adapt "
                f"{type(model).__name__} ({' '.join(str(err).split())[:200]}); its linear layers are named "
                f"{', '.join(linear_names(model))}") from None
    check_master_weights(model)
    disable_dropout(model)   # of the model and the adapter: sampling and scoring see one distribution
    return model


@contextmanager
def peft_wrapping():
    """Around peft's wrapping of a model: `PeftModel.__init__` reads the model's `is_gradient_checkpointing`,
    which transformers 5.2x deprecates (a FutureWarning on every LoRA run, from peft's code, not ours, and
    nothing a caller can change); only that warning is silenced, only here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        yield


def _from_pretrained(path: str, dtype: torch.dtype, attn_implementation: str):
    """AutoModelForCausalLM from `path`; an attention implementation the architecture does not
    support is one line naming `model.attn_implementation` (e.g. Gemma 2 has no SDPA path)."""
    try:
        with safe_weights(path):
            return AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation=attn_implementation,
                                                        local_files_only=_offline())
    except ValueError as err:
        if "attn_implementation" not in str(err) and "attention implementation" not in str(err):
            raise
        first = " ".join(str(err).split()).split(". ")[0]
        raise ModelSetupError(f"model.attn_implementation={attn_implementation!r}: {first}; set "
                              "model.attn_implementation=eager (or another the model supports)") from None


def linear_names(model) -> list[str]:
    """The last parts of the names of the model's linear layers (what LoRA's target_modules match)."""
    return sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                   if isinstance(module, (torch.nn.Linear, Conv1D)) and name})


def enable_checkpointing(model) -> None:
    """Activation (gradient) checkpointing of every decoder layer, non-reentrant (it needs no input
    that requires grad, so it works under LoRA with frozen embeddings). Log-prob passes stop sharing
    prefixes while it is on in training (`logprobs._cache_dropped`)."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.2x; the old name warns
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


class Reference:
    """pi_ref, the frozen initial model: the policy with its adapter disabled under LoRA (no second
    copy), a frozen deep copy otherwise. `shared=True`: `policy` is never trained (a judge of
    `lsp-eval`), so it is its own reference and is not copied."""

    def __init__(self, policy, shared: bool = False):
        self.policy = policy
        from peft import PeftModel  # noqa: PLC0415 (peft: ~0.5 s to import; not at this module's import)

        self.uses_adapter = isinstance(policy, PeftModel) and not shared
        self.frozen = None
        if shared:
            self.frozen = policy.eval().requires_grad_(False)
        elif not self.uses_adapter:
            self.frozen = copy.deepcopy(policy).eval().requires_grad_(False)

    def to(self, device) -> "Reference":
        if self.frozen is not None:
            self.frozen.to(device)
        return self

    def cast_like_sharded(self, dtype: torch.dtype) -> None:
        """The frozen copy in `dtype`, the dtype a sharded policy's weights take in its forward (FSDP2's
        `param_dtype`): both forwards are then the same computation, so the KL at step 0 is 0."""
        if self.frozen is not None and self.frozen is not self.policy:
            self.frozen.to(dtype)

    @contextmanager
    def model(self):
        """Yield a module that computes pi_ref (use under torch.no_grad())."""
        if self.uses_adapter:
            with self.policy.disable_adapter():
                yield self.policy
        else:
            yield self.frozen


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
