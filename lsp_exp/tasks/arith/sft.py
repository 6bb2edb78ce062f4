"""Supervised training of the tiny base model on both roles (challenger and solver examples)."""
from __future__ import annotations

import math
import random
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM

from lsp_exp.tasks.arith.judge_data import judge_example
from lsp_exp.tasks.arith.answers import teacher_text
from lsp_exp.tasks.arith.world import WorldConfig, sample_problem


@dataclass
class TinyModelConfig:
    """The tiny Llama's shape (also the `model.bootstrap.arch` config schema)."""

    hidden_size: int = 128
    intermediate_size: int = 512
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    max_position_embeddings: int = 128


@dataclass
class SFTConfig:
    """The bootstrap's supervised training recipe (also the `model.bootstrap.sft` config schema)."""

    steps: int = 8000
    batch_size: int = 64
    lr: float = 2e-3
    final_lr_frac: float = 0.1
    warmup_steps: int = 100
    challenger_share: float = 0.1
    weight_decay: float = 0.0


@dataclass
class JudgeSFTConfig(SFTConfig):
    """The judge stage (`model.bootstrap.judge`): continue from the base on a mix of judge examples
    and the base's own SFT examples (so the Solver and Challenger modes are not forgotten).
    `steps: 0` skips the stage (no judge mode)."""

    steps: int = 3000
    lr: float = 1e-3
    judge_share: float = 0.5


def build_model(tokenizer, cfg: TinyModelConfig, seed: int) -> LlamaForCausalLM:
    """A randomly initialised tiny Llama, deterministic from `seed`."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers, num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_attention_heads, max_position_embeddings=cfg.max_position_embeddings,
        tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, attn_implementation="sdpa",
    )
    return LlamaForCausalLM(config)


def sft_example(rng: random.Random, world: WorldConfig, challenger_prompt: str,
                challenger_share: float) -> tuple[str, str]:
    """(user turn, assistant turn): a challenger example (prompt -> problem) or a solver example."""
    problem = sample_problem(rng, world)
    if rng.random() < challenger_share:
        return challenger_prompt, problem.text
    return problem.text, teacher_text(problem, rng, world)


def encode_batch(tokenizer, pairs: list[tuple[str, str]]) -> dict[str, torch.Tensor]:
    """Token ids (right-padded) with labels only on the assistant turn and its end token."""
    rows, label_rows = [], []
    for user, assistant in pairs:
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": user}], tokenize=False,
                                               add_generation_prompt=True)
        p_ids = tokenizer(prompt, add_special_tokens=False).input_ids
        a_ids = tokenizer(assistant, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
        rows.append(p_ids + a_ids)
        label_rows.append([-100] * len(p_ids) + a_ids)
    width = max(map(len, rows))
    pad = tokenizer.pad_token_id
    input_ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows])
    labels = torch.tensor([r + [-100] * (width - len(r)) for r in label_rows])
    return {"input_ids": input_ids, "attention_mask": (labels != -100) | (input_ids != pad), "labels": labels}


def grouped_loss(model, tokenizer, groups: list[list[tuple[str, str]]]) -> torch.Tensor:
    """Mean token cross-entropy on assistant turns over sub-batches padded separately."""
    total, count = 0.0, 0
    for group in filter(None, groups):
        batch = encode_batch(tokenizer, group)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        labels = batch["labels"][:, 1:]
        total = total + F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels.flatten(), reduction="sum")
        count += int((labels != -100).sum())
    return total / count


def lr_at(step: int, cfg: SFTConfig) -> float:
    """Linear warm-up, then cosine decay from `lr` to `lr * final_lr_frac`."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    t = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * (cfg.final_lr_frac + (1 - cfg.final_lr_frac) * 0.5 * (1 + math.cos(math.pi * t)))


def train_sft(model, tokenizer, world: WorldConfig, cfg: SFTConfig, seed: int, challenger_prompt: str,
              exclude: set[str], on_step=None) -> None:
    """Train `model` in place; problems in `exclude` (the held-out set) are never shown."""
    rng = random.Random(f"sft-{seed}")

    def batch() -> list[list[tuple[str, str]]]:
        pairs = []
        while len(pairs) < cfg.batch_size:
            user, assistant = sft_example(rng, world, challenger_prompt, cfg.challenger_share)
            if user not in exclude:
                pairs.append((user, assistant))
        return [[p for p in pairs if p[0] == challenger_prompt], [p for p in pairs if p[0] != challenger_prompt]]

    _optimise(model, tokenizer, cfg, batch, on_step)


def train_judge(model, tokenizer, world: WorldConfig, cfg: JudgeSFTConfig, seed: int, challenger_prompt: str,
                exclude: set[str], on_step=None) -> None:
    """The judge stage: `judge_share` of each batch are judge examples graded by the toy rubric with
    the teacher's beliefs (toy/judge_data.py), the rest the base's own SFT examples."""
    rng = random.Random(f"judge-{seed}")

    def batch() -> list[list[tuple[str, str]]]:
        judge, base = [], []
        while len(judge) + len(base) < cfg.batch_size:
            if rng.random() < cfg.judge_share:
                judge.append(judge_example(rng, world, exclude))
                continue
            user, assistant = sft_example(rng, world, challenger_prompt, cfg.challenger_share)
            if user not in exclude:
                base.append((user, assistant))
        return [judge, [p for p in base if p[0] == challenger_prompt], [p for p in base if p[0] != challenger_prompt]]

    _optimise(model, tokenizer, cfg, batch, on_step)


def _optimise(model, tokenizer, cfg: SFTConfig, next_batch, on_step) -> None:
    """AdamW with the warm-up/cosine schedule of `lr_at`, gradient clipping at 1."""
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.99), weight_decay=cfg.weight_decay)
    model.train()
    for step in range(cfg.steps):
        groups = next_batch()
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        opt.zero_grad(set_to_none=True)
        loss = grouped_loss(model, tokenizer, groups)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if on_step is not None:
            on_step(step, loss.item())
