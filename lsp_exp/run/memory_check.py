"""The memory estimate (memory.py) of a run's config, and the check at start: a configuration whose
estimate exceeds the device's memory (on a CPU, the machine's RAM) stops with one line giving the
estimate and the micro-batch size that would fit."""
from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig
from transformers import AutoConfig

from lsp_exp.core.precision import compute_dtype
from lsp_exp.errors import ConfigError
from lsp_exp.run.memory import (GIB, KNOWN_ARCHITECTURES, Architecture, StepShape, device_memory, estimate,
                                largest_fitting)

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
JUDGE_TOKENS = {"paper": 320, "toy": 64}


def architecture(path: str | None) -> Architecture | None:
    """The architecture from a model directory's (or the hub cache's) config.json, or from the
    published configs of the paper's models; None when neither knows it."""
    if not path:
        return None
    if path in KNOWN_ARCHITECTURES and not Path(path).is_dir():
        return Architecture.of(KNOWN_ARCHITECTURES[path])
    try:
        arch = Architecture.of(AutoConfig.from_pretrained(path, local_files_only=True))
    except (OSError, ValueError, TypeError, AttributeError):
        return None
    # a config without Llama's size keys (GPT-2's intermediate size is n_inner, None for 4 h): not known
    return None if any(value is None for value in vars(arch).values()) else arch


def estimate_for(cfg: DictConfig, model_path: str, micro_batch_size: int | None = "config",
                 fused_head: bool | None = None):
    """The estimate of `cfg` (its trainer.micro_batch_size unless one is given); None for a model
    whose architecture is unknown. `fused_head`: whether log-probs skip the full logits (None: as the
    strategy allows; False once the model's own check chose the logits path, core/fused_head.py)."""
    arch = architecture(model_path)
    if arch is None:
        return None
    game, model, trainer = cfg.game, cfg.model, cfg.trainer
    lora = (model.lora.r, list(model.lora.target_modules)) if model.lora.enabled else None
    judge = None
    if game.self_reward:
        judge = game.judge.max_new_tokens or JUDGE_TOKENS.get(str(game.judge.template), 320)
    shape = StepShape(game.n_queries, game.group_size, game.max_query_tokens, game.max_answer_tokens,
                      challenger=bool(game.challenger), judge_tokens=judge)
    reward_arch = architecture(cfg.reward.get("path"))
    shards = _devices(trainer) if str(trainer.strategy) == "fsdp" else 1
    micro = trainer.micro_batch_size if micro_batch_size == "config" else micro_batch_size
    compute = compute_dtype(str(model.dtype), str(trainer.get("precision", "32-true"))).itemsize
    return estimate(arch, shape, dtype_bytes=DTYPE_BYTES.get(str(model.dtype), 4), lora=lora, micro_batch_size=micro,
                    compute_bytes=compute,
                    checkpointing=bool(model.get("gradient_checkpointing")), shards=shards,
                    reward_params=reward_arch.params() if reward_arch else 0, reward_arch=reward_arch,
                    generation_batch_size=trainer.get("generation_batch_size"),
                    fused_head=str(trainer.strategy) != "fsdp" and fused_head is not False)


def check_memory(cfg: DictConfig, model_path: str, fused_head: bool | None = None) -> None:
    """Stop (ConfigError, one line) when the estimate exceeds the device's memory."""
    predicted = estimate_for(cfg, model_path, fused_head=fused_head)
    if predicted is None:
        return
    budget, what = device_memory(str(cfg.trainer.accelerator))
    if predicted.total <= budget:
        return
    fits = largest_fitting(budget, lambda size: estimate_for(cfg, model_path, size, fused_head),
                           cfg.game.n_queries * cfg.game.group_size)
    advice = (f"trainer.micro_batch_size={fits} would fit (estimate "
              f"{estimate_for(cfg, model_path, fits, fused_head).total / GIB:.1f} GiB)"
              if fits else "no micro-batch size fits: use LoRA (model.lora.enabled=true), trainer=fsdp over more "
                           "devices or model.gradient_checkpointing=true")
    raise ConfigError(f"estimated peak memory {predicted.line()} exceeds {what} with "
                      f"trainer.micro_batch_size={cfg.trainer.micro_batch_size}: {advice}")


def _devices(trainer) -> int:
    try:
        return max(int(trainer.devices), 1) * max(int(trainer.num_nodes), 1)
    except (TypeError, ValueError):  # "auto": as many as there are
        return max(torch.cuda.device_count(), 1)
