"""Peak memory of a self-play step, predicted from the config and the model's architecture
(docs/operations.md, "Memory"), and the micro-batch size that fits a device.

Per device, in bytes, with P the policy's parameters, A the LoRA adapter's, b the bytes of
model.dtype, c those of the compute dtype (core/precision.py: 2 under bf16 autocast, else 4),
m the rows of a micro-batch, L a row's tokens (query or prompt + answer), V the vocabulary:

    static   = full fine-tune (float32 master weights): policy 4P + reference copy 4P + grads and
                 2 AdamW moments 12P / shards + autocast's bf16 copies of the trainable weights 2P (c = 2);
                 under trainer=fsdp: 4P / shards + the gathered policy cP + the reference cP + 12P / shards
               LoRA: base bP + adapter, grads and moments 16A (+ autocast's copies 2A, c = 2)
               + reward model b x its parameters
    update   = activations kept for the backward: m L (layers x act_per_token + outside_layers;
               outside_layers: the final norm and the output layer's input and log-sum-exp,
               4h + 4 (+ s h, full) + s h + 4)
               (checkpointed: each layer's input, m L layers s h, + one layer's act_per_token)
               + the log-prob chunks (2 x 128 MB)
               + the fused output layer's backward, when it trains the head (full fine-tune): its
                 float32 V x h gradient, accumulated in place, 4 V h
               + on the logits path (trainer=fsdp, soft-capped logits: `fused_head=False`) the
                 logits and their gradient 2 m T V c (T: the answer's tokens)
    reference = no graph: m L (s h + 4 h + 4 c I) (the residual stream, a norm's float32 copy, the
               MLP's four I-wide tensors) + the log-prob chunks (+ the logits m T V c on that path)
    generate = KV cache layers kv_dim (k + c) L g + the last logits g V 4   (g: rows decoded at once;
               keys are float32 (k = 4) when the residual stream is, the rotary tables being float32)
    judge    = the same for the judge's prompts (query + answer + rubric) and reply
    peak     = static + max(update, reference pass, generation, judge)

act_per_token (one decoder layer, SDPA attention: no L x L scores kept) is what autograd saves,
measured with saved_tensors_hooks on real widths (run/activation_bytes.py: within 1% for Llama-3.2
1B and 3B shapes, experiments/memory_estimate/). With s the residual stream's bytes (4 for a full
fine-tune's float32 weights, b under LoRA), H heads, r the LoRA rank:

    each RMSNorm: its float32 input 4h + 1/rms 4 (+ its normalised input s h when its weight trains)
    attention:    SDPA's q, k, v (repeated to all H heads under a padding mask) and output 4 c h
                  + its float32 log-sum-exp 4 H + its copy of the padding mask c L (L x L per row)
    MLP:          gate, up and act(gate) 3 c I
    inputs of the Linears: full fine-tune: under bf16 compute autocast casts the float32 input of
                  each of q, k, v, gate, up to its own bf16 copy (5 c h), in float32 they share two
                  (2 c h); down's input c I; o_proj's is SDPA's output
                  LoRA: the frozen Linears keep nothing; each adapter keeps its input (under bf16
                  compute peft casts it to the adapter's float32 and autocast back: a copy per
                  adapter, c h or c I; in float32 the inputs are shared) and the r-wide middle r c

So bf16 full 34h + 8I + 4H + 8 + 2L, float32 full 40h + 16I + 4H + 8 + 4L, bf16 LoRA on the 7
projections 28h + 8I + 14r + 4H + 8 + 2L, float32 LoRA 32h + 16I + 28r + 4H + 8 + 4L. These are
estimates: on a GPU, the CUDA context (~0.5 GB), the caching allocator's fragmentation and
temporaries add to them.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from lsp_exp.core.fused_head import CHUNK_ELEMENTS

GIB = 1024 ** 3
LOGPROB_CHUNKS = 2 * CHUNK_ELEMENTS * 4   # float32: a chunk of logits and one temporary (core/fused_head.py)
LORA_SHAPES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")   # a Llama layer's Linears

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
        shapes = dict(zip(LORA_SHAPES, ((h, h), (h, kv), (h, kv), (h, h), (h, i), (h, i), (i, h)), strict=True))
        return self.layers * sum(r * sum(shapes[t]) for t in targets if t in shapes)

    def activations_per_token(self, compute: int, residual: int | None = None,
                              lora: tuple[int, list[str]] | None = None, row_tokens: int = 0) -> int:
        """Bytes autograd keeps per token in one decoder layer (the module docstring's act_per_token):
        `compute` bytes of the compute dtype, `residual` of the residual stream (default: compute),
        rows of `row_tokens` tokens (the padding mask's copy)."""
        h, i, c, s = self.hidden, self.intermediate, compute, residual or compute
        cast = c != 4      # bf16 compute: each Linear's (or adapter's) input is its own bf16 copy
        attention = 4 * c * h + 4 * self.heads + c * row_tokens
        mlp = 3 * c * i
        if lora is None:
            norms = 2 * (4 * h + 4 + s * h)
            inputs = (5 if cast else 2) * c * h + c * i
            return norms + attention + mlp + inputs
        r, targets = lora[0], set(lora[1])
        qkv, gate_up = len(targets & {"q_proj", "k_proj", "v_proj"}), len(targets & {"gate_proj", "up_proj"})
        if cast:
            inputs = (qkv + gate_up + ("o_proj" in targets)) * c * h
        else:
            inputs = ((qkv > 0) + (gate_up > 0)) * c * h
        inputs += ("down_proj" in targets) * c * i
        middle = len(targets & set(LORA_SHAPES)) * r * c
        return 2 * (4 * h + 4) + attention + mlp + inputs + middle

    def outside_layers_per_token(self, residual: int, full: bool) -> int:
        """Bytes kept per token outside the decoder layers: the final norm, the output layer's input and log-sum-exp."""
        h = self.hidden
        return 4 * h + 4 + (residual * h if full else 0) + residual * h + 4


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
             generation_batch_size: int | None = None, fused_head: bool = True,
             compute_bytes: int | None = None) -> MemoryEstimate:
    """`dtype_bytes`: model.dtype's; `compute_bytes`: the compute dtype's (default: the same)."""
    b, c, p = dtype_bytes, compute_bytes or dtype_bytes, arch.params()
    cache = 2 if c == 2 else 0          # autocast's bf16 copy of each float32 trainable weight
    if lora:
        a = arch.lora_params(*lora)
        static = p * b + 4 * a * 4 + a * cache
        residual = b
    elif shards > 1:                    # FSDP2: float32 shards, the policy gathered and the reference in c
        static = 4 * p / shards + 2 * p * c + 3 * p * 4 / shards
        residual = c
    else:                               # float32 master weights: policy, reference, grads, 2 moments
        static = 4 * p + 4 * p + 3 * p * 4 + p * cache
        residual = 4
    static += reward_params * b
    rows = shape.n_queries * shape.group_size
    m = min(micro_batch_size or rows, rows)
    length = shape.prompt_tokens + shape.query_tokens + shape.answer_tokens   # a Solver row: prompt + query + answer
    layer = arch.activations_per_token(c, residual, lora, length)
    kept = arch.layers * (arch.hidden * residual if checkpointing else layer)
    kept += (layer if checkpointing else 0) + arch.outside_layers_per_token(residual, lora is None)
    # the logits path keeps the completion's logits (logits_to_keep) and their gradient; the fused output
    # layer (core/fused_head.py) only its chunks, and in its backward the head's float32 gradient (the
    # chunks' products added in place) when the head trains
    logits = 0 if fused_head else m * shape.answer_tokens * arch.vocab * c
    head_grad = arch.vocab * arch.hidden * 4 if fused_head and lora is None else 0
    update = m * length * kept + 2 * logits + head_grad + LOGPROB_CHUNKS
    # no graph: the residual stream, a norm's float32 copy, the MLP's gate, up, act and product
    reference = logits + m * length * (residual * arch.hidden + 4 * arch.hidden + 4 * c * arch.intermediate) \
        + LOGPROB_CHUNKS
    kv_per_token = arch.layers * arch.kv_dim * (residual + c)   # keys in the residual's dtype, values in c
    g = min(generation_batch_size or rows, rows)
    generation = g * length * kv_per_token + g * arch.vocab * 4
    judge = 0.0
    if shape.judge_tokens:
        judge = g * (shape.judge_prompt_tokens + length + shape.judge_tokens) * kv_per_token + g * arch.vocab * 4
    if reward_arch is not None:  # a reward model's forward over the pairs, no graph
        reference = max(reference, m * length * reward_arch.hidden * 4 * b)
    return MemoryEstimate({"static": static, "update": update, "reference": reference, "generation": generation,
                           "judge": judge}, micro_batch_size)


def largest_fitting(budget: float, fits_with, rows: int = 4096) -> int | None:
    """The largest micro-batch size (a power of two below `rows`, or `rows`: all of them) whose
    estimate fits `budget` bytes."""
    best = None
    for size in [2 ** k for k in range(13) if 2 ** k < rows] + [rows]:
        if fits_with(size).total <= budget:
            best = size
    return best


def device_memory(accelerator: str) -> tuple[float, str]:
    """(bytes, what) of the device a run trains on: the GPU's memory, or the machine's RAM on a CPU."""
    if accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        return float(props.total_memory), f"the GPU's {props.total_memory / GIB:.0f} GiB ({props.name})"
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return float(total), f"this machine's {total / GIB:.0f} GiB of RAM"
