"""Peak memory of a self-play step, predicted from the config and the model's architecture
(docs/operations.md, "Memory"), and the micro-batch size that fits a device.

Per device, in bytes, with b the bytes of a weight (model.dtype), P the policy's parameters,
A the LoRA adapter's, m the rows of a micro-batch, L a row's tokens (query or prompt + answer):

    static   = weights P b  [+ reference copy P b, full fine-tune]  [+ reward model]
               + trainable state: full fine-tune (grads + 2 AdamW moments) 3 P b / shards,
                                  LoRA 4 A x 4 bytes (fp32 adapter, grads, moments)
    update   = activations kept for the backward: m L layers x act_per_token   (checkpointed: m L layers h b
               + one layer's) + the log-prob chunks (2 x 128 MB); on the logits path (FSDP2, soft-capped
               logits: `fused_head=False`) also the logits and their gradient 2 m T V b (T: the answer's
               tokens, the only positions projected onto the vocabulary)
    generate = KV cache 2 layers kv_dim L g b + the last logits g V 4   (g: rows decoded at once)
    judge    = the same for the judge's prompts (query + answer + rubric) and reply
    peak     = static + max(update, reference pass, generation, judge)

act_per_token (a decoder layer, SDPA attention: no L x L scores kept) counts the tensors autograd
keeps: the two norms' inputs and outputs, q, k, v, the attention output, the MLP's gate, up, act
and product: (6 h + 2 kv_dim + 4 I) b. These are estimates: on a GPU, the CUDA context (~0.5 GB),
the caching allocator's fragmentation and temporaries add to them; `experiments/bench` compares
them with measured CPU peaks.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from lsp_exp.core.fused_head import CHUNK_ELEMENTS

GIB = 1024 ** 3
LOGPROB_CHUNKS = 2 * CHUNK_ELEMENTS * 4   # float32: a chunk of logits and one temporary (core/fused_head.py)

# Published architectures of the paper's models, for estimates before the weights are downloaded.
KNOWN_ARCHITECTURES = {
    "meta-llama/Llama-3.2-3B-Instruct": dict(hidden_size=3072, intermediate_size=8192, num_hidden_layers=28,
                                             num_attention_heads=24, num_key_value_heads=8, vocab_size=128256,
                                             tie_word_embeddings=True),
    "meta-llama/Llama-3.2-1B-Instruct": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                                             num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
                                             tie_word_embeddings=True),
    "Skywork/Skywork-Reward-V2-Llama-3.2-3B": dict(hidden_size=3072, intermediate_size=8192, num_hidden_layers=28,
                                                   num_attention_heads=24, num_key_value_heads=8, vocab_size=128256,
                                                   tie_word_embeddings=False),
}


@dataclass(frozen=True)
class Architecture:
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    tied: bool

    @classmethod
    def of(cls, config) -> "Architecture":
        get = config.get if isinstance(config, dict) else lambda k, d=None: getattr(config, k, d)
        heads = get("num_attention_heads")
        return cls(get("hidden_size"), get("intermediate_size"), get("num_hidden_layers"), heads,
                   get("num_key_value_heads") or heads, get("vocab_size"), bool(get("tie_word_embeddings", False)))

    @property
    def kv_dim(self) -> int:
        return self.hidden // self.heads * self.kv_heads

    def layer_params(self) -> int:
        h, kv = self.hidden, self.kv_dim
        return 2 * h * h + 2 * h * kv + 3 * h * self.intermediate + 2 * h

    def params(self) -> int:
        embeddings = self.vocab * self.hidden * (1 if self.tied else 2)
        return embeddings + self.layers * self.layer_params() + self.hidden

    def lora_params(self, r: int, targets: list[str]) -> int:
        h, kv, i = self.hidden, self.kv_dim, self.intermediate
        shapes = {"q_proj": (h, h), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (h, h),
                  "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}
        return self.layers * sum(r * sum(shapes[t]) for t in targets if t in shapes)

    def activations_per_token(self, b: int) -> int:
        return (6 * self.hidden + 2 * self.kv_dim + 4 * self.intermediate) * b


@dataclass
class MemoryEstimate:
    parts: dict[str, float]      # bytes of each part of the peak
    micro_batch_size: int | None

    @property
    def total(self) -> float:
        return self.parts["static"] + max(self.parts[k] for k in ("update", "reference", "generation", "judge"))

    def line(self) -> str:
        shown = ", ".join(f"{k} {v / GIB:.1f}" for k, v in self.parts.items() if k != "static" and v)
        return f"{self.total / GIB:.1f} GiB ({self.parts['static'] / GIB:.1f} static; peaks of {shown})"


@dataclass
class StepShape:
    """What one self-play step runs, per rank."""
    n_queries: int
    group_size: int
    query_tokens: int            # the Challenger's generation limit
    answer_tokens: int           # the Solver's
    prompt_tokens: int = 64      # a rendered prompt around a query (chat template, challenger instruction)
    challenger: bool = True      # the Challenger generates (self-play) and is trained
    judge_tokens: int | None = None  # the judge's reply limit (None: no judge)
    judge_prompt_tokens: int = 400   # the rubric around a (query, answer) pair


def estimate(arch: Architecture, shape: StepShape, *, dtype_bytes: int, lora: tuple[int, list[str]] | None,
             micro_batch_size: int | None, checkpointing: bool = False, shards: int = 1,
             reward_params: int = 0, reward_arch: Architecture | None = None,
             generation_batch_size: int | None = None, fused_head: bool = True) -> MemoryEstimate:
    b, p = dtype_bytes, arch.params()
    static = p * b + reward_params * b
    if lora:
        static += 4 * arch.lora_params(*lora) * 4
    else:
        static += p * b + 3 * p * b / shards
    rows = shape.n_queries * shape.group_size
    m = min(micro_batch_size or rows, rows)
    length = shape.prompt_tokens + shape.query_tokens + shape.answer_tokens   # a Solver row: prompt + query + answer
    kept = arch.layers * (arch.hidden * b if checkpointing else arch.activations_per_token(b))
    one_layer = arch.activations_per_token(b) if checkpointing else 0
    # the logits path keeps the completion's logits (logits_to_keep) and their gradient; the fused output
    # layer (core/fused_head.py) only its chunks
    logits = 0 if fused_head else m * shape.answer_tokens * arch.vocab * b
    update = m * length * kept + m * length * one_layer + 2 * logits + LOGPROB_CHUNKS
    reference = logits + m * length * arch.hidden * 4 * b + LOGPROB_CHUNKS   # no graph: one layer's temporaries
    kv_per_token = 2 * arch.layers * arch.kv_dim * b
    g = min(generation_batch_size or rows, rows)
    generation = g * length * kv_per_token + g * arch.vocab * 4
    judge = 0.0
    if shape.judge_tokens:
        judge = g * (shape.judge_prompt_tokens + length + shape.judge_tokens) * kv_per_token + g * arch.vocab * 4
    if reward_arch is not None:  # a reward model's forward over the pairs, no graph
        reference = max(reference, m * length * reward_arch.hidden * 4 * b)
    return MemoryEstimate({"static": static, "update": update, "reference": reference, "generation": generation,
                           "judge": judge}, micro_batch_size)


def largest_fitting(budget: float, fits_with) -> int | None:
    """The largest micro-batch size (a power of two, or all rows) whose estimate fits `budget` bytes."""
    best, size = None, 1
    while size <= 4096:
        estimate_ = fits_with(size)
        if estimate_.total <= budget:
            best = size
        size *= 2
    return best


def device_memory(accelerator: str) -> tuple[float, str]:
    """(bytes, what) of the device a run trains on: the GPU's memory, or the machine's RAM on a CPU."""
    import torch

    if accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        return float(props.total_memory), f"the GPU's {props.total_memory / GIB:.0f} GiB ({props.name})"
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return float(total), f"this machine's {total / GIB:.0f} GiB of RAM"
