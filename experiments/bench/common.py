"""What both benchmark workers share: the models, the prompts, the step timer's summary, the result line.

Models (`--model`):
- `toy`: the default world's shipped base (`lsp_exp/tasks/arith/assets/worlds/arith/base_model`, ~1M parameters),
  found the way `lsp-train` finds it (the arithmetic task's `base_model`, which installs the shipped world under
  `outputs/`);
- `25m`: a ~25M-parameter Llama built from a `LlamaConfig` with random weights (seed 0), saved to a
  temporary directory with the toy tokenizer, loaded back with `AutoModelForCausalLM` like the toy one;
- `wide128k`: a random-weight 2-layer Llama, hidden 64, with the Llama-3 vocabulary size (128,256; tied
  embeddings, fp32): a narrow model whose memory is all full-vocabulary logits (issue 15). Its tokenizer
  is the toy one with 128,256 - 66 more single-character entries (code points U+20000 on, planes 2-3,
  none of them whitespace), so every id decodes to one character that encodes back to that id.

Prompts: the toy world's training split (what `game=grpo_data` samples from: the task's `train_prompts`).
"""
from __future__ import annotations

import json
import os
import resource
import statistics
import sys
import time
from itertools import pairwise
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RESULT_TAG = "BENCH_RESULT "

# ~25M parameters: 6 layers x (4 * 512^2 attention + 3 * 512 * 2048 MLP) = 25.2M (+ a 66 x 512 embedding).
ARCH_25M = dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=6, num_attention_heads=8,
                max_position_embeddings=256)


def compose(overrides: list[str]):
    """The project's config, composed like `lsp-train` composes it (Hydra's compose API)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from lsp_exp.run import config  # noqa: F401  (registers the schemas)

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return hydra_compose(config_name="train", overrides=overrides)


def toy_paths(outputs: str) -> tuple[str, str]:
    """(toy model directory, training prompt file) of the default config's toy world."""
    from lsp_exp.core.models import resolve_model_path
    from lsp_exp.nodes import build

    cfg = compose([f"paths.outputs={outputs}", "game=grpo_data"])
    task = build(cfg.task, "task")
    model_dir = resolve_model_path(cfg.model, task)
    return model_dir, str(task.directory / "data" / "train.jsonl")


def build_25m(toy_model_dir: str, target: str | Path) -> str:
    """A random-weight ~25M-parameter Llama with the toy tokenizer, saved to `target`."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    target = Path(target)
    if (target / "config.json").is_file():
        return str(target)
    tokenizer = AutoTokenizer.from_pretrained(toy_model_dir, local_files_only=True)
    torch.manual_seed(0)
    a = ARCH_25M
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=a["hidden_size"], intermediate_size=a["intermediate_size"],
        num_hidden_layers=a["num_hidden_layers"], num_attention_heads=a["num_attention_heads"],
        num_key_value_heads=a["num_attention_heads"], max_position_embeddings=a["max_position_embeddings"],
        tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    target.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    return str(target)


# A narrow model with Llama-3's vocabulary: 2 x (4 * 64^2 attention (2 KV heads: 3 * 64^2) + 3 * 64 * 256 MLP)
# = 0.15M in the layers, 8.2M in the (tied) 128,256 x 64 embedding. The "real-width" case.
ARCH_WIDE = dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=512, vocab_size=128256)
WIDE_FIRST_CODEPOINT = 0x20000  # planes 2-3: 131,072 code points, none whitespace, no surrogates


def wide_tokenizer(toy_model_dir: str, vocab_size: int = ARCH_WIDE["vocab_size"]):
    """The toy tokenizer (character-level WordLevel, chat template) with `vocab_size` ids: the extra ids
    are single characters U+20000 + k, so decode(id) re-encodes to the same id."""
    import json as _json

    from tokenizers import Tokenizer
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    toy = AutoTokenizer.from_pretrained(toy_model_dir, local_files_only=True)
    spec = _json.loads(toy.backend_tokenizer.to_str())
    vocab = spec["model"]["vocab"]
    start = max(vocab.values()) + 1
    if len(vocab) != start or len(toy) != start:
        raise SystemExit(f"toy tokenizer ids are not 0..{len(vocab) - 1}: cannot extend it")
    for i in range(start, vocab_size):
        vocab[chr(WIDE_FIRST_CODEPOINT + i - start)] = i
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_json.dumps(spec)), bos_token=toy.bos_token, eos_token=toy.eos_token,
        pad_token=toy.pad_token, unk_token=toy.unk_token, padding_side="left", model_max_length=512)
    tokenizer.chat_template = toy.chat_template
    if len(tokenizer) != vocab_size:
        raise SystemExit(f"wide tokenizer has {len(tokenizer)} ids, expected {vocab_size}")
    return tokenizer


def build_wide(toy_model_dir: str, target: str | Path) -> str:
    """A random-weight 2-layer Llama (hidden 64) with a 128,256-entry vocabulary, saved to `target`."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    target = Path(target)
    if (target / "config.json").is_file():
        return str(target)
    tokenizer = wide_tokenizer(toy_model_dir)
    torch.manual_seed(0)
    config = LlamaConfig(**ARCH_WIDE, tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    model = LlamaForCausalLM(config)
    target.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    return str(target)


def long_prompts(train_prompts: str, target: str | Path, length: int = 32, count: int = 512) -> str:
    """A prompt file of `count` prompts of exactly `length` characters (= tokens: the tokenizers are
    character-level), toy training problems joined by "+" and cut at `length`: what both frameworks'
    `grpo_data`-style runs sample in the memory suite, so their queries are as long as lsp_zero's."""
    problems = read_train_prompts(train_prompts)
    rows, k = [], 0
    while len(rows) < count:
        text = problems[k % len(problems)]
        while len(text) < length:
            k += 1
            text += "+" + problems[k % len(problems)]
        k += 1
        rows.append(json.dumps({"prompt": text[:length]}))
    Path(target).write_text("\n".join(rows) + "\n")
    return str(target)


def read_train_prompts(path: str) -> list[str]:
    return [json.loads(line)["prompt"] for line in Path(path).read_text().splitlines() if line.strip()]


def rss_mb() -> float:
    """Current resident set size of this process (MiB)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


class Clock:
    """Wall (perf_counter) and CPU (process_time: this process's user + system time, which a busy
    shared machine disturbs far less than wall time) at the start and at the end of every step."""

    def __init__(self):
        self.start = self.cpu_start = None
        self.ends, self.cpu_ends = [], []

    def begin(self):
        self.start, self.cpu_start = time.perf_counter(), time.process_time()

    def tick(self):
        self.ends.append(time.perf_counter())
        self.cpu_ends.append(time.process_time())


def _deltas(start: float, ends: list[float]) -> list[float]:
    return [ends[0] - start] + [b - a for a, b in pairwise(ends)]


def summarise(clock: Clock, warmup: int, tokens_per_step: int, extra: dict) -> dict:
    """Per-step wall and CPU times (from the end of one step to the end of the next, so nothing between
    steps is left out); the means leave out the first `warmup` steps."""
    times, cpu = _deltas(clock.start, clock.ends), _deltas(clock.cpu_start, clock.cpu_ends)
    kept = times[warmup:] or times
    mean = statistics.fmean(kept)
    return {"step_s_mean": mean, "step_s_median": statistics.median(kept),
            "step_s_all": times, "cpu_s_all": cpu, "tokens_per_step": tokens_per_step,
            "tokens_per_s": tokens_per_step / mean,
            "rss_before_train_mb": extra.pop("rss_before_train_mb", float("nan")),
            "peak_rss_mb": peak_rss_mb(), **extra}


def emit(result: dict) -> None:
    sys.stdout.flush()
    print(RESULT_TAG + json.dumps(result), flush=True)


def add_work_args(p) -> None:
    """The arguments both frameworks' runners take, so the two sides are given the same work."""
    p.add_argument("--model-dir", required=True)
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--g", type=int, default=8)
    p.add_argument("--max-tokens", type=int, default=8)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)


def set_threads(n: int) -> None:
    import torch

    torch.set_num_threads(n)
    os.environ["OMP_NUM_THREADS"] = str(n)
