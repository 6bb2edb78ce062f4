"""The GPU check: one script that shows the real path working on a GPU, with its figures.

    python experiments/gpu_check/check.py --out DIR          # on the GPU machine (experiments/gpu_check/README.md)
    python experiments/gpu_check/check.py --dry-run --out DIR  # the same items with tiny models on this CPU

Items, one line each, then a summary (and DIR/gpu_check.json):
1. `gpu_tests`: the gpu-marked tests (tests/system/test_gpu.py);
   `conformance`: the conformance matrix in bf16 for Llama, Gemma 2 and Falcon-H1
   (tests/core/test_conformance_gpu.py): the output layer each takes, the start-up check,
   log-probs against the model's logits, one LoRA and one full lsp step, sampling with dropout off;
2. `selfplay <shape> <lora|full>`: self-play steps (game=lsp: Challenger, Solver, the judge, a reward
   model) of randomly initialised Llama-3.2-1B- and 3B-shaped models with the Llama-3 vocabulary in
   bf16, at the paper's N, G and lengths, with the micro-batch size the memory estimate picks for the
   device: s/step split into generation / judge / reward / reference / update, generated tokens/s,
   peak GPU memory against the estimate, the update's MFU. Random models rarely emit an end token,
   so every generation runs to its limit: the heaviest step of that shape;
3. `fsdp <shape> full`: the same full fine-tune under trainer=fsdp (FSDP2) on the one device there is.

An out-of-memory error is a result: it is reported with where it happened and the memory then, and
the next item runs. Items that would not finish inside --budget-s are skipped and listed as such.
It needs no MLflow (logger=none) and runs from the source tree (PYTHONPATH), with the GPU image's
torch, transformers, lightning and peft.
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))   # the repository: tests.helpers
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# Llama-3.2 shapes (published configs); the vocabulary is Llama-3's.
SHAPES = {
    "1B": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
               num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=True),
    "3B": dict(hidden_size=3072, intermediate_size=8192, num_hidden_layers=28, num_attention_heads=24,
               num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=True),
    # the dry run's stand-ins for 1B and 3B
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=1024, tie_word_embeddings=True),
    "tiny2": dict(hidden_size=96, intermediate_size=192, num_hidden_layers=3, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=1024, tie_word_embeddings=True),
}
PAPER_GAME = ["game.n_queries=8", "game.group_size=8", "game.max_query_tokens=256", "game.max_answer_tokens=512"]
DRY_GAME = ["game.n_queries=2", "game.group_size=2", "game.max_query_tokens=8", "game.max_answer_tokens=8",
            "game.judge.max_new_tokens=8"]
PERF = ("gen", "judge", "reward", "ref", "update")


@dataclass
class Item:
    name: str
    kind: str                      # gpu_tests | conformance | selfplay | fsdp
    shape: str = ""
    lora: bool = True
    steps: int = 1
    expected_s: float = 60.0       # wall time it is expected to take (the budget check)


@dataclass
class Result:
    name: str
    status: str                    # ok | failed | oom | skipped
    seconds: float = 0.0
    line: str = ""
    figures: dict = field(default_factory=dict)


def items(dry: bool) -> list[Item]:
    big, small = ("tiny2", "tiny") if dry else ("3B", "1B")
    return [
        Item("gpu_tests", "gpu_tests", expected_s=25 if dry else 90),
        Item("conformance", "conformance", expected_s=30 if dry else 60),
        Item(f"selfplay {small} lora", "selfplay", small, True, steps=2, expected_s=20 if dry else 60),
        Item(f"selfplay {small} full", "selfplay", small, False, steps=1, expected_s=15 if dry else 40),
        Item(f"selfplay {big} lora", "selfplay", big, True, steps=1, expected_s=15 if dry else 70),
        Item(f"selfplay {big} full", "selfplay", big, False, steps=1, expected_s=15 if dry else 75),
        Item(f"fsdp {small} full", "fsdp", small, False, steps=1, expected_s=20 if dry else 45),
    ]


# ---- models ---------------------------------------------------------------------------------------
def save_random_models(shape: str, where: Path, device: str) -> tuple[Path, Path]:
    """A randomly initialised causal LM of `shape` (bf16, Llama-3 conventions: pad = eos, two end ids,
    the chat template) and a reward model of the small shape, saved for `lsp-train` to load."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

    from tests.helpers.real_models import LLAMA3_END_TOKENS, build_llama3_tokenizer

    policy_dir, rm_dir = where / f"policy_{shape}", where / "reward_model"
    tokenizer = build_llama3_tokenizer()
    ends = [tokenizer.convert_tokens_to_ids(t) for t in LLAMA3_END_TOKENS]
    dry = shape.startswith("tiny")
    dtype = torch.float32 if dry else torch.bfloat16
    if not policy_dir.exists():
        config = LlamaConfig(**SHAPES[shape], bos_token_id=tokenizer.bos_token_id, eos_token_id=ends,
                             pad_token_id=None, dtype=dtype)
        with torch.device(device):
            model = LlamaForCausalLM(config).to(dtype)
        model.generation_config = GenerationConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=ends)
        model.save_pretrained(policy_dir)
        tokenizer.save_pretrained(policy_dir)
        del model
    if not rm_dir.exists():
        small = "tiny" if dry else "1B"
        config = LlamaConfig(**{**SHAPES[small], "tie_word_embeddings": False}, num_labels=1,
                             pad_token_id=tokenizer.pad_token_id or ends[-1], dtype=dtype)
        with torch.device(device):
            rm = LlamaForSequenceClassification(config).to(dtype)
        rm.save_pretrained(rm_dir)
        tokenizer.save_pretrained(rm_dir)
        del rm
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
    return policy_dir, rm_dir


# ---- the items -----------------------------------------------------------------------------------
def run_gpu_tests(dry: bool, timeout: float) -> Result:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "tests/system/test_gpu.py",
           "-q", "-p", "no:cacheprovider", "-x"]
    if dry:  # the CPU stand-in: the same tests on the CPU, the quickest one
        env["LSP_TEST_DEVICE"] = "cpu"
        cmd += ["-k", "evaluation"]
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    tail = (out.stdout + out.stderr).strip().splitlines()
    summary = next((line for line in reversed(tail) if re.search(r"\d+ (passed|failed|error)", line)), "no summary")
    failed = [line for line in tail if line.startswith(("FAILED", "ERROR"))]
    return Result("gpu_tests", "ok" if out.returncode == 0 else "failed", line=summary.strip("= "),
                  figures={"returncode": out.returncode, "failed": failed[:10]})


def run_conformance(dry: bool, timeout: float, out: Path) -> Result:
    """The conformance matrix on the device in bf16 for Llama, Gemma 2 and Falcon-H1
    (tests/core/test_conformance_gpu.py); its measured differences from the tests' report."""
    report = out / "conformance.jsonl"
    report.unlink(missing_ok=True)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               LSP_CONFORMANCE_REPORT=str(report))
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "tests/core/test_conformance_gpu.py", "-q",
           "-p", "no:cacheprovider"]
    if dry:  # the CPU stand-in: one architecture
        env["LSP_TEST_DEVICE"] = "cpu"
        cmd += ["-k", "llama"]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    tail = (done.stdout + done.stderr).strip().splitlines()
    summary = next((line for line in reversed(tail) if re.search(r"\d+ (passed|failed|error)", line)), "no summary")
    rows = [json.loads(line) for line in report.read_text().splitlines()] if report.exists() else []
    paths = {r["name"]: "fused" if r["fused"] else "plain" for r in rows if r["check"] == "float32"}
    bf16 = [r for r in rows if r["check"].startswith("bf16")]

    def worst(rs, *keys):
        return max((r[k] for r in rs for k in keys if k in r), default=float("nan"))

    startup = worst(bf16, "padding", "padding+prefixes", "cache", "training_mode")
    line = (f"{summary.strip('= ')}; paths {', '.join(f'{k} {v}' for k, v in paths.items()) or '?'}; bf16: log-prob "
            f"error {worst(bf16, 'logp'):.2g} nats, start-up check {startup:.2g}, "
            f"reference after a step {worst([r for r in rows if r['check'].startswith('step')], 'reference'):.2g}")
    failed = [line for line in tail if line.startswith(("FAILED", "ERROR"))]
    return Result("conformance", "ok" if done.returncode == 0 else "failed", line=line,
                  figures={"returncode": done.returncode, "failed": failed[:10], "rows": rows})


def _json_value(v):
    """A value json cannot write: a non-finite float as null, anything else as its text."""
    return None if isinstance(v, float) and not math.isfinite(v) else str(v)


def selfplay_overrides(item: Item, policy: Path, rm: Path, outputs: Path, dry: bool, micro: int | None) -> list[str]:
    device = ["trainer=cpu", "trainer.precision=32-true", "model.dtype=float32", "reward.dtype=float32"] if dry else \
        ["trainer=gpu", "trainer.precision=bf16-mixed", "model.dtype=bfloat16", "reward.dtype=bfloat16"]
    strategy = ["trainer.strategy=fsdp", "trainer.devices=1"] if item.kind == "fsdp" else []
    # A full fine-tune of the 3B shape keeps float32 master weights, a float32 reference, gradients and
    # moments (docs/method.md §16): 88 GiB at micro-batch 1 as configured; decoding 16 rows at a time and
    # checkpointed layers bring it to 77.7 GiB at micro-batch 8 (docs/operations.md, "Memory").
    lean = ["trainer.generation_batch_size=16", "model.gradient_checkpointing=true"] \
        if item.shape == "3B" and not item.lora else []
    return ["experiment=paper_llama3b/lsp", *device, *strategy, *lean, f"model.path={policy}",
            "model.name=random_llama", f"model.lora.enabled={item.lora}", f"reward.path={rm}",
            *(DRY_GAME if dry else PAPER_GAME), f"trainer.max_steps={item.steps}",
            f"trainer.micro_batch_size={'null' if micro is None else micro}", "trainer.checkpoint_every=0",
            "trainer.enable_progress_bar=false", "logger=none", f"paths.outputs={outputs}",
            "eval.judge_pairs=0", "eval.samples=0"]


def pick_micro_batch(overrides: list[str], policy: Path) -> tuple[int | None, float | None]:
    """The largest micro-batch size whose estimate fits the device (lsp_exp/run/memory.py), and its estimate."""
    from lsp_exp.run.memory import GIB, device_memory, largest_fitting
    from lsp_exp.run.memory_check import estimate_for

    cfg = compose(overrides)
    budget, _ = device_memory(str(cfg.trainer.accelerator))
    fits = largest_fitting(budget, lambda size: estimate_for(cfg, str(policy), size))
    rows = cfg.game.n_queries * cfg.game.group_size
    micro = None if fits is None or fits >= rows else fits
    estimate = estimate_for(cfg, str(policy), micro)
    return micro, estimate.total / GIB if estimate else None


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return hydra_compose(config_name="train", overrides=overrides)


def run_selfplay(item: Item, models: Path, outputs: Path, dry: bool) -> Result:
    import torch

    from lsp_exp.cli.train import train
    from lsp_exp.run.self_play import SelfPlayModule
    from lsp_exp.core.perf import peak_flops

    device = "cpu" if dry else "cuda"
    policy, rm = save_random_models(item.shape, models, device)
    micro, estimate_gib = pick_micro_batch(selfplay_overrides(item, policy, rm, outputs, dry, None), policy)
    overrides = selfplay_overrides(item, policy, rm, outputs, dry, micro)
    steps: list[dict[str, float]] = []
    real = SelfPlayModule.log_dict

    def record(self, metrics, *args, **kwargs):
        if "train/grad_norm" in metrics:
            steps.append(dict(metrics))
        return real(self, metrics, *args, **kwargs)

    SelfPlayModule.log_dict = record
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    try:
        train(compose(overrides))
    finally:
        SelfPlayModule.log_dict = real
    last = steps[-1]
    figures = {f"{k}_s": last.get(f"perf/{k}_s", 0.0) for k in PERF}
    figures.update(step_s=last["perf/step_s"], tokens_per_s=last["perf/tokens_per_s"], micro_batch_size=micro,
                   estimate_gib=estimate_gib, mfu=last.get("perf/mfu", float("nan")), steps=len(steps),
                   answer_len=last.get("train/answer_len"), query_len=last.get("train/query_len"))
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else float("nan")
    figures["peak_gib"] = peak
    if device == "cuda":
        figures["gpu"] = torch.cuda.get_device_name()
        figures["peak_tflops"] = (peak_flops(figures["gpu"]) or float("nan")) / 1e12
    split = ", ".join(f"{k} {figures[f'{k}_s']:.1f}" for k in PERF)
    line = (f"{figures['step_s']:.1f} s/step ({split}), {figures['tokens_per_s']:.0f} tok/s, micro-batch "
            f"{micro or 'all'}, peak {peak:.1f} GiB vs estimate {estimate_gib or float('nan'):.1f} GiB, "
            f"MFU {figures['mfu']:.2f}")
    return Result(item.name, "ok", line=line, figures=figures)


def oom_result(item: Item, err: BaseException) -> Result:
    """Where the out-of-memory error happened (the innermost frames of lsp_exp) and the memory then."""
    import torch

    frames = [f"{Path(f.filename).name}:{f.name}" for f in traceback.extract_tb(err.__traceback__)
              if "lsp_exp" in f.filename]
    figures = {"where": frames[-3:], "allocated_gib": torch.cuda.memory_allocated() / 2**30,
               "peak_gib": torch.cuda.max_memory_allocated() / 2**30, "error": str(err).splitlines()[0][:300]}
    line = (f"out of memory in {' > '.join(frames[-3:]) or '?'}: {figures['allocated_gib']:.1f} GiB allocated, "
            f"peak {figures['peak_gib']:.1f} GiB")
    return Result(item.name, "oom", line=line, figures=figures)


def is_oom(err: BaseException) -> bool:
    import torch

    return isinstance(err, torch.cuda.OutOfMemoryError) or "out of memory" in str(err).lower()


# ---- the run --------------------------------------------------------------------------------------
def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dry-run", action="store_true", help="tiny models on the CPU: check the script itself")
    p.add_argument("--out", default=os.environ.get("OUT") or "gpu_check_out", help="where gpu_check.json goes")
    p.add_argument("--budget-s", type=float, default=330.0, help="skip items that would end after this")
    p.add_argument("--only", default="", help="comma-separated item names (default: all)")
    args = p.parse_args()
    start = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="gpu_check_"))
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        print("gpu_check: no CUDA device (use --dry-run on a CPU)")
        return 2
    print(f"gpu_check: torch {torch.__version__}, "
          f"{torch.cuda.get_device_name() if torch.cuda.is_available() and not args.dry_run else 'CPU (dry run)'}",
          flush=True)
    results = []
    for item in items(args.dry_run):
        if args.only and item.name not in args.only.split(","):
            continue
        elapsed = time.perf_counter() - start
        if elapsed + item.expected_s > args.budget_s:
            results.append(Result(item.name, "skipped", line=f"skipped: {elapsed:.0f} s used of {args.budget_s:.0f}"))
        else:
            t0 = time.perf_counter()
            try:
                if item.kind == "gpu_tests":
                    result = run_gpu_tests(args.dry_run, timeout=max(args.budget_s - elapsed, 30))
                elif item.kind == "conformance":
                    result = run_conformance(args.dry_run, timeout=max(args.budget_s - elapsed, 30), out=out)
                else:
                    result = run_selfplay(item, work / "models", work / "outputs", args.dry_run)
            except Exception as err:  # noqa: BLE001  (every failure is a result; the next item runs)
                if is_oom(err):
                    result = oom_result(item, err)
                else:
                    result = Result(item.name, "failed", line=f"{type(err).__name__}: {str(err).splitlines()[0][:300]}"
                                    if str(err) else type(err).__name__,
                                    figures={"traceback": traceback.format_exc()[-3000:]})
            result.seconds = time.perf_counter() - t0
            results.append(result)
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        r = results[-1]
        print(f"[{r.status}] {r.name} ({r.seconds:.0f} s): {r.line}", flush=True)
    counts = {s: sum(r.status == s for r in results) for s in ("ok", "failed", "oom", "skipped")}
    total = time.perf_counter() - start
    print("summary: " + ", ".join(f"{n} {s}" for s, n in counts.items()) + f"; {total:.0f} s", flush=True)
    (out / "gpu_check.json").write_text(json.dumps({"dry_run": args.dry_run, "seconds": total,
                                                    "results": [asdict(r) for r in results]}, indent=1,
                                                   default=_json_value))
    return 0 if counts["failed"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
