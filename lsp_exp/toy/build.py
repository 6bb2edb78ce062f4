"""Build and cache the toy world: tokenizer, tiny base model and data splits, keyed by config."""
from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from lsp_exp.toy.data import make_splits, write_problems
from lsp_exp.toy.sft import SFTConfig, TinyModelConfig, build_model, train_sft
from lsp_exp.toy.tokenizer import build_tokenizer
from lsp_exp.toy.world import WorldConfig

FORMAT_VERSION = 1  # bump when the tokenizer, the chat format or the SFT code changes
SHIPPED_DIR = Path(__file__).resolve().parent.parent / "assets" / "toy_world"


def world_config(world: DictConfig) -> WorldConfig:
    fields = WorldConfig.__dataclass_fields__
    return WorldConfig(**{k: v for k, v in OmegaConf.to_container(world).items() if k in fields})


def challenger_user_turn(task: str, template: str = "") -> str:
    """The toy Challenger prompt: a short fixed user turn (DESIGN.md)."""
    return f"task: {task}" + (f" template: {template}" if template else "")


def world_key(world: DictConfig, bootstrap: DictConfig) -> str:
    """A short hash of everything that changes what the bootstrap builds."""
    payload = {"world": OmegaConf.to_container(world), "bootstrap": OmegaConf.to_container(bootstrap),
               "format": FORMAT_VERSION, "challenger_prompt": challenger_user_turn("arithmetic")}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]


def toy_world_dir(world: DictConfig, bootstrap: DictConfig, outputs: str | Path) -> Path:
    return Path(outputs) / "toy_world" / world_key(world, bootstrap)


def is_complete(path: Path) -> bool:
    return (path / "DONE").is_file()


def build_toy_world(world: DictConfig, bootstrap: DictConfig, outputs: str | Path, force: bool = False) -> Path:
    """Return the cached toy world, copying a shipped copy or building it (SFT) when missing."""
    target = toy_world_dir(world, bootstrap, outputs)
    if is_complete(target) and not force:
        return target
    shipped = SHIPPED_DIR / target.name
    if is_complete(shipped) and not force:
        shutil.copytree(shipped, target, dirs_exist_ok=True)
        return target
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    started = time.time()
    wcfg = world_config(world)
    heldout, train = make_splits(world.seed, wcfg, world.n_heldout, world.n_train)
    write_problems(tmp / "data" / "heldout.jsonl", heldout)
    write_problems(tmp / "data" / "train.jsonl", train)
    tokenizer = build_tokenizer()
    arch = TinyModelConfig(**OmegaConf.to_container(bootstrap.arch))
    sft = SFTConfig(**OmegaConf.to_container(bootstrap.sft))
    model = build_model(tokenizer, arch, bootstrap.seed)
    n_params = sum(p.numel() for p in model.parameters())
    with Progress(TextColumn("[bold]lsp-bootstrap SFT"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TextColumn("loss {task.fields[loss]:.3f}"), TimeElapsedColumn(), TimeRemainingColumn()) as bar:
        task = bar.add_task("sft", total=sft.steps, loss=float("nan"))
        train_sft(model, tokenizer, wcfg, sft, bootstrap.seed, challenger_user_turn("arithmetic"),
                  {p.text for p in heldout}, on_step=lambda step, loss: bar.update(task, advance=1, loss=loss))
    model.save_pretrained(tmp / "model")
    tokenizer.save_pretrained(tmp / "model")
    info = {"key": target.name, "parameters": n_params, "sft_seconds": round(time.time() - started, 1),
            "torch_threads": torch.get_num_threads(), "world": OmegaConf.to_container(world),
            "bootstrap": OmegaConf.to_container(bootstrap)}
    (tmp / "info.json").write_text(json.dumps(info, indent=2))
    (tmp / "DONE").write_text("ok\n")
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    return target
