"""Tiny random configs of real architectures that the installed transformers builds offline (a
test helper for the conformance matrix): hidden 32, 2 layers, the vocabulary of a tiny real-convention
tokenizer (tests/helpers/real_models.py, a few hundred tokens), each architecture's own conventions kept
(tied embeddings, biases, learned positions, soft caps, logit scales and multipliers as its
released checkpoints set them).

`build(name)` returns (model in eval mode, tokenizer). Random weights give logits of about 0.1, where
a soft cap of 30 changes nothing measurable; the output layer is scaled so that the logits spread
like a trained model's (a standard deviation of about `LOGIT_STD`), so that a transform of the logits
shows in the log-probs as it would on a real checkpoint.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field

import torch
import transformers
from transformers import GenerationConfig

from tests.helpers.real_models import LLAMA3_END_TOKENS, QWEN_END_TOKENS, build_llama3_tokenizer, build_qwen_tokenizer

LOGIT_STD = 4.0
SMALL = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             max_position_embeddings=2048)


@dataclass(frozen=True)
class Arch:
    name: str
    config: str                       # transformers config class
    model: str                        # transformers causal-LM class
    extra: dict = field(default_factory=dict)
    tokenizer: str = "llama3"         # real_models style: llama3 (pad = eos) or qwen (its own pad)
    lora_targets: tuple[str, ...] = ("q_proj", "v_proj")
    attn: str = "sdpa"
    fused_exact: bool = True          # logits = lm_head(last hidden state): the fused path is exact
    small: bool = True                # SMALL applies (GPT-2 names its sizes otherwise)


ARCHITECTURES = [
    Arch("llama", "LlamaConfig", "LlamaForCausalLM"),
    Arch("mistral", "MistralConfig", "MistralForCausalLM", {"sliding_window": 8}),
    Arch("qwen2", "Qwen2Config", "Qwen2ForCausalLM", tokenizer="qwen"),
    Arch("qwen3", "Qwen3Config", "Qwen3ForCausalLM", {"head_dim": 8}, tokenizer="qwen"),
    Arch("qwen3_moe", "Qwen3MoeConfig", "Qwen3MoeForCausalLM",
         {"head_dim": 8, "num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 16}, tokenizer="qwen"),
    Arch("mixtral", "MixtralConfig", "MixtralForCausalLM", {"num_local_experts": 4, "num_experts_per_tok": 2,
                                                           "intermediate_size": 16}),
    Arch("gemma", "GemmaConfig", "GemmaForCausalLM", {"head_dim": 8}),
    Arch("gemma2", "Gemma2Config", "Gemma2ForCausalLM", {"head_dim": 8, "sliding_window": 8},  # soft cap 30
         attn="eager", fused_exact=False),
    Arch("gemma3", "Gemma3TextConfig", "Gemma3ForCausalLM", {"head_dim": 8, "sliding_window": 8}),
    Arch("phi3", "Phi3Config", "Phi3ForCausalLM", lora_targets=("qkv_proj", "o_proj")),
    Arch("phi", "PhiConfig", "PhiForCausalLM", {"partial_rotary_factor": 0.5}),
    Arch("olmo2", "Olmo2Config", "Olmo2ForCausalLM"),
    Arch("granite", "GraniteConfig", "GraniteForCausalLM",   # granite-3.x: logits / 8, scaled residuals
         {"logits_scaling": 8.0, "embedding_multiplier": 12.0, "residual_multiplier": 0.22,
          "attention_multiplier": 0.125}, fused_exact=False),
    Arch("cohere", "CohereConfig", "CohereForCausalLM", fused_exact=False),       # logit_scale 0.0625
    Arch("gpt_neox", "GPTNeoXConfig", "GPTNeoXForCausalLM", lora_targets=("query_key_value", "dense")),
    Arch("gpt2", "GPT2Config", "GPT2LMHeadModel", {"n_embd": 32, "n_layer": 2, "n_head": 4, "n_positions": 2048},
         lora_targets=("c_attn", "c_proj"), small=False),                        # learned positions, biases
    Arch("falcon_h1", "FalconH1Config", "FalconH1ForCausalLM",                   # Falcon-H1-0.5B's multipliers
         {"head_dim": 8, "mamba_d_ssm": 32, "mamba_n_heads": 4, "mamba_d_head": 8, "mamba_d_state": 8,
          "mamba_chunk_size": 8, "lm_head_multiplier": 0.0390625, "embedding_multiplier": 5.656854249492381},
         lora_targets=("q_proj", "v_proj", "in_proj"), fused_exact=False),
    Arch("recurrent_gemma", "RecurrentGemmaConfig", "RecurrentGemmaForCausalLM",  # soft cap 30
         {"head_dim": 8, "lru_width": 32, "block_types": ["recurrent", "attention"], "attention_window_size": 16},
         lora_targets=("q_proj", "v_proj", "linear_x"), fused_exact=False),
]
BY_NAME = {a.name: a for a in ARCHITECTURES}


@functools.cache
def _tokenizer(style: str):
    return build_llama3_tokenizer() if style == "llama3" else build_qwen_tokenizer()


def tokenizer_for(arch: Arch):
    """A fresh copy of the architecture's tokenizer (the trained BPE is built once per session)."""
    import copy

    return copy.deepcopy(_tokenizer(arch.tokenizer))


def config_for(arch: Arch, **overrides):
    tok = _tokenizer(arch.tokenizer)
    ends = tok.convert_tokens_to_ids(list(LLAMA3_END_TOKENS if arch.tokenizer == "llama3" else QWEN_END_TOKENS))
    pad = tok.pad_token_id if tok.pad_token_id is not None else ends[-1]
    ids = dict(bos_token_id=tok.bos_token_id if tok.bos_token_id is not None else pad, eos_token_id=ends,
               pad_token_id=pad)
    config = getattr(transformers, arch.config)(**{**(SMALL if arch.small else {}), "vocab_size": len(tok), **ids,
                                                   **arch.extra, **overrides})
    config._attn_implementation = arch.attn
    return config


def build(name: str, seed: int = 0, **overrides):
    """(model in eval mode, float32, logits spread like a trained model's, tokenizer)."""
    arch = BY_NAME[name]
    config = config_for(arch, **overrides)
    torch.manual_seed(seed)
    model = getattr(transformers, arch.model)(config).to(torch.float32).eval()
    _spread_logits(model)
    tok = tokenizer_for(arch)
    model.generation_config = GenerationConfig(bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id,
                                               pad_token_id=config.pad_token_id)
    return model, tok


@torch.no_grad()
def _spread_logits(model) -> None:
    """Scale the output layer (the embeddings when tied) so the logits' std is about LOGIT_STD."""
    ids = torch.arange(24).mul(37).remainder(model.config.vocab_size)[None]
    std = model(input_ids=ids).logits.float().std()
    head = model.get_output_embeddings()
    head.weight.mul_(LOGIT_STD / float(std))
