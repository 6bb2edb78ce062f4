"""`tiny_rm`: a small sequence classifier trained on synthetic (query, answer, correct?) pairs, so the
paper-faithful "reward model" setting runs on a CPU and its reward hacking can be seen against the
verifier (ground truth).

It is trained on the verifier's labels (it knows better than the base's flawed teacher, as the
paper's reward model knows better than its base), but it is small and briefly trained: an
imperfect proxy that the Solver can learn to exploit. Built once, cached under
`outputs/toy_rm/<key>` (each shipped world's is installed from `assets/worlds/<name>/reward_model`:
shipped.py).
"""
from __future__ import annotations

import hashlib
import json
import random
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from transformers import LlamaConfig, LlamaForSequenceClassification

from lsp_exp.nodes import checked
from lsp_exp.tasks.arith.build import cache_lock, publish, world_config
from lsp_exp.tasks.arith.config import world_key_payload, world_node
from lsp_exp.tasks.arith.data import make_splits
from lsp_exp.tasks.arith.judge_data import sample_answer
from lsp_exp.tasks.arith.sft import lr_at
from lsp_exp.tasks.arith.shipped import copy_checked, shipped
from lsp_exp.tasks.arith.tokenizer import build_tokenizer
from lsp_exp.tasks.arith.answers import answer_value
from lsp_exp.tasks.arith.steps_judge import solver_like_answer
from lsp_exp.tasks.arith.world import WorldConfig, sample_problem

FORMAT_VERSION = 1


@dataclass
class TinyRMConfig:
    """Shape and training recipe of the tiny reward model (`reward.bootstrap`)."""

    seed: int = 0
    hidden_size: int = 64
    intermediate_size: int = 256
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    steps: int = 1500
    batch_size: int = 128
    lr: float = 2e-3
    final_lr_frac: float = 0.1
    warmup_steps: int = 50


def labelled_example(rng: random.Random, world: WorldConfig, exclude: set[str]) -> tuple[str, str, float]:
    """A world problem (never a held-out one), a Solver-like answer, and the verifier's label."""
    while True:
        problem = sample_problem(rng, world)
        if problem.text not in exclude:
            break
    if world.answer_format == "steps":
        answer = solver_like_answer(rng, problem.text, world)
    else:
        answer = sample_answer(rng, problem.text, problem.answer)
    return problem.text, answer, float(answer_value(answer, world) == problem.answer)


def train_tiny_rm(cfg: TinyRMConfig, world: WorldConfig, exclude: set[str], tokenizer):
    torch.manual_seed(cfg.seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers, num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_attention_heads, max_position_embeddings=64, num_labels=1,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    model = LlamaForSequenceClassification(config)
    rng = random.Random(f"tiny-rm-{cfg.seed}")
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.99))
    model.train()
    for step in range(cfg.steps):
        rows = [labelled_example(rng, world, exclude) for _ in range(cfg.batch_size)]
        texts = [tokenizer.apply_chat_template([{"role": "user", "content": q}, {"role": "assistant", "content": a}],
                                               tokenize=False) for q, a, _ in rows]
        enc = tokenizer(texts, return_tensors="pt", padding=True, padding_side="right", add_special_tokens=False)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        logits = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits[:, 0]
        loss = F.binary_cross_entropy_with_logits(logits, torch.tensor([r[2] for r in rows]))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    return model.eval(), loss.item()


def tiny_rm_dir(world: DictConfig, cfg: DictConfig, outputs: str | Path) -> Path:
    world, cfg = world_node(world), checked(TinyRMConfig, cfg, "reward.bootstrap")
    payload = {"world": world_key_payload(world), "rm": OmegaConf.to_container(cfg), "format": FORMAT_VERSION}
    return Path(outputs) / "toy_rm" / hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]


def build_tiny_rm(world: DictConfig, cfg: DictConfig, outputs: str | Path, force: bool = False) -> Path:
    """The cached tiny reward model directory (installed from the shipped one, or trained: ~1 minute)."""
    target = tiny_rm_dir(world, cfg, outputs)
    if (target / "DONE").is_file() and not force:
        return target
    with cache_lock(target):  # parallel first runs build it once
        if (target / "DONE").is_file() and not force:
            return target
        return _build_tiny_rm(world, cfg, target, force)


def _build_tiny_rm(world: DictConfig, cfg: DictConfig, target: Path, force: bool) -> Path:
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    found = shipped("reward_model", target.name)
    if found is not None and not force:
        return publish(tmp, target, copy_checked(found[0], "reward_model", tmp))
    started = time.time()
    rm_cfg = TinyRMConfig(**OmegaConf.to_container(cfg))
    wcfg = world_config(world)
    heldout, _ = make_splits(world.seed, wcfg, world.n_heldout, 0)
    tokenizer = build_tokenizer()
    model, last_loss = train_tiny_rm(rm_cfg, wcfg, {p.text for p in heldout}, tokenizer)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    return publish(tmp, target, {
        "parameters": sum(p.numel() for p in model.parameters()), "last_loss": last_loss,
        "train_seconds": round(time.time() - started, 1), "torch_threads": torch.get_num_threads(),
        "config": asdict(rm_cfg), "world": OmegaConf.to_container(world)})
