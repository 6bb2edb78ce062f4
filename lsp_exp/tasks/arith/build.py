"""Build and cache the toy world: tokenizer, tiny base model and data splits, keyed by config (a
shipped world is installed instead: shipped.py)."""
from __future__ import annotations

import fcntl
import hashlib
import json
import shutil
import time
from contextlib import contextmanager
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from transformers import AutoTokenizer, LlamaForCausalLM

from lsp_exp.core.models import load_tokenizer
from lsp_exp.games.challenger_prompt import challenger_user_turn
from lsp_exp.nodes import checked
from lsp_exp.tasks.arith.config import ArithBootstrap, world_key_payload, world_node
from lsp_exp.tasks.arith.data import make_splits, read_problems, write_problems
from lsp_exp.tasks.arith.sft import JudgeSFTConfig, SFTConfig, TinyModelConfig, build_model, train_judge, train_sft
from lsp_exp.tasks.arith.shipped import check_files, copy_checked, shipped
from lsp_exp.tasks.arith.tokenizer import build_tokenizer
from lsp_exp.tasks.arith.world import WorldConfig

FORMAT_VERSION = 1  # bump when the tokenizer, the chat format or the SFT code changes
JUDGE_FORMAT_VERSION = 2  # bump when the judge template, the toy rubric or the judge data change (first world)
STEPS_JUDGE_VERSION = 7   # the same for the worked-steps judge (steps_judge.py; 5 and 6 were tried, not shipped)


def world_config(world: DictConfig) -> WorldConfig:
    fields = WorldConfig.__dataclass_fields__
    return WorldConfig(**{k: v for k, v in OmegaConf.to_container(world).items() if k in fields})


def _base_bootstrap(bootstrap: DictConfig) -> dict:
    """The bootstrap config of the base stage (everything but the judge stage)."""
    return {k: v for k, v in OmegaConf.to_container(bootstrap).items() if k != "judge"}


def _judge_enabled(bootstrap: DictConfig) -> bool:
    return "judge" in bootstrap and bootstrap.judge.steps > 0


def base_key(world: DictConfig, bootstrap: DictConfig) -> str:
    """A short hash of everything that changes what the base stage (SFT on both roles) builds."""
    world, bootstrap = world_node(world), _bootstrap_node(bootstrap)
    payload = {"world": world_key_payload(world), "bootstrap": _base_bootstrap(bootstrap),
               "format": FORMAT_VERSION, "challenger_prompt": challenger_user_turn("arithmetic")}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]


def world_key(world: DictConfig, bootstrap: DictConfig) -> str:
    """The base stage's key, or (with a judge stage) a hash of it and the judge stage's config."""
    key = base_key(world, bootstrap)
    bootstrap = _bootstrap_node(bootstrap)
    if not _judge_enabled(bootstrap):
        return key
    payload = {"base": key, "judge": OmegaConf.to_container(bootstrap.judge), "format": JUDGE_FORMAT_VERSION}
    if world_node(world).answer_format == "steps":
        payload["steps_judge"] = STEPS_JUDGE_VERSION
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]


def _bootstrap_node(bootstrap) -> DictConfig:
    """The recipe with every field; a base-stage recipe (no `judge`) stays without one."""
    if bootstrap is not None and "judge" not in bootstrap:
        full = checked(ArithBootstrap, bootstrap, "task.bootstrap")
        return OmegaConf.create({k: v for k, v in OmegaConf.to_container(full).items() if k != "judge"})
    return checked(ArithBootstrap, bootstrap, "task.bootstrap")


def toy_world_dir(world: DictConfig, bootstrap: DictConfig, outputs: str | Path) -> Path:
    return Path(outputs) / "toy_world" / world_key(world, bootstrap)


def is_complete(path: Path) -> bool:
    return (path / "DONE").is_file()


@contextmanager
def cache_lock(target: Path):
    """Hold `<target>.lock`, so parallel first runs (a multirun's jobs) build a cache entry once."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.with_name(target.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def build_toy_world(world: DictConfig, bootstrap: DictConfig, outputs: str | Path, force: bool = False) -> Path:
    """Return the cached toy world, installing a shipped one or building it when missing.

    Two stages, each cached under its own key: the base (SFT on challenger and solver examples)
    and, when `bootstrap.judge.steps > 0`, the judge stage that continues from the base.
    """
    world, bootstrap = world_node(world), _bootstrap_node(bootstrap)
    target = toy_world_dir(world, bootstrap, outputs)
    if is_complete(target) and not force:
        return target
    with cache_lock(target):
        if is_complete(target) and not force:  # another process built it while we waited
            return target
        return _build_toy_world(world, bootstrap, outputs, target, force)


def _build_toy_world(world: DictConfig, bootstrap: DictConfig, outputs, target: Path, force: bool) -> Path:
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    found = shipped("base_model", target.name)
    if found is not None and not force:
        return _install_shipped(world, found, tmp, target)
    if _judge_enabled(bootstrap):
        base = OmegaConf.create(_base_bootstrap(bootstrap))
        info = _build_judge_stage(world, bootstrap, build_toy_world(world, base, outputs, force), tmp)
    else:
        info = _build_base_stage(world, bootstrap, tmp)
    return publish(tmp, target, {**info, "world": OmegaConf.to_container(world),
                                 "bootstrap": OmegaConf.to_container(bootstrap)})


def _install_shipped(world: DictConfig, found: tuple[str, dict], tmp: Path, target: Path) -> Path:
    """The shipped base model (checked copies), and the data splits drawn again from the world's seed,
    checked against the ones it was trained with."""
    name, entry = found
    info = copy_checked(name, "base_model", tmp / "model")
    write_splits(world, tmp / "data")
    check_files(tmp / "data", entry["data"], f"the data splits of world {name!r} (drawn again from its seed)")
    return publish(tmp, target, info)


def write_splits(world: DictConfig, folder: Path) -> tuple[list, list]:
    """The world's held-out and training splits, drawn from its seed, as JSONL files in `folder`."""
    heldout, train = make_splits(world.seed, world_config(world), world.n_heldout, world.n_train)
    write_problems(folder / "heldout.jsonl", heldout)
    write_problems(folder / "train.jsonl", train)
    return heldout, train


def publish(tmp: Path, target: Path, info: dict) -> Path:
    """Finish a build: write info.json and the DONE marker in `tmp`, then move it to `target`, so a
    cache directory is either complete or absent."""
    (tmp / "info.json").write_text(json.dumps({"key": target.name, **info}, indent=2))
    (tmp / "DONE").write_text("ok\n")
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    return target


def _progress(label: str):
    return Progress(TextColumn(f"[bold]lsp-bootstrap {label}"), BarColumn(),
                    TextColumn("{task.completed}/{task.total}"), TextColumn("loss {task.fields[loss]:.3f}"),
                    TimeElapsedColumn(), TimeRemainingColumn())


def _build_base_stage(world: DictConfig, bootstrap: DictConfig, tmp: Path) -> dict:
    started = time.time()
    wcfg = world_config(world)
    heldout, _ = write_splits(world, tmp / "data")
    tokenizer = build_tokenizer()
    arch = TinyModelConfig(**OmegaConf.to_container(bootstrap.arch))
    sft = SFTConfig(**OmegaConf.to_container(bootstrap.sft))
    model = build_model(tokenizer, arch, bootstrap.seed)
    n_params = sum(p.numel() for p in model.parameters())
    with _progress("SFT") as bar:
        task = bar.add_task("sft", total=sft.steps, loss=float("nan"))
        train_sft(model, tokenizer, wcfg, sft, bootstrap.seed, challenger_user_turn("arithmetic"),
                  {p.text for p in heldout}, on_step=lambda step, loss: bar.update(task, advance=1, loss=loss))
    model.save_pretrained(tmp / "model")
    tokenizer.save_pretrained(tmp / "model")
    return {"parameters": n_params, "sft_seconds": round(time.time() - started, 1),
            "torch_threads": torch.get_num_threads()}


def _build_judge_stage(world: DictConfig, bootstrap: DictConfig, base: Path, tmp: Path) -> dict:
    started = time.time()
    shutil.copytree(base / "data", tmp / "data")
    tokenizer = AutoTokenizer.from_pretrained(base / "model")
    model = LlamaForCausalLM.from_pretrained(base / "model", dtype=torch.float32)
    judge = JudgeSFTConfig(**OmegaConf.to_container(bootstrap.judge))
    heldout = {p.text for p in read_problems(base / "data" / "heldout.jsonl")}
    with _progress("judge stage") as bar:
        task = bar.add_task("judge", total=judge.steps, loss=float("nan"))
        train_judge(model, tokenizer, world_config(world), judge, bootstrap.seed, challenger_user_turn("arithmetic"),
                    heldout, on_step=lambda step, loss: bar.update(task, advance=1, loss=loss))
    model.save_pretrained(tmp / "model")
    tokenizer.save_pretrained(tmp / "model")
    base_info = json.loads((base / "info.json").read_text())
    return {"parameters": base_info["parameters"], "base": base.name, "sft_seconds": base_info["sft_seconds"],
            "judge_seconds": round(time.time() - started, 1), "torch_threads": torch.get_num_threads()}


def load_toy_world(path: str | Path):
    """(model, tokenizer, held-out problems, training problems) of a built toy world directory."""
    path = Path(path)
    model = LlamaForCausalLM.from_pretrained(path / "model", local_files_only=True)
    return model, load_tokenizer(str(path / "model")), read_problems(path / "data" / "heldout.jsonl"), \
        read_problems(path / "data" / "train.jsonl")
