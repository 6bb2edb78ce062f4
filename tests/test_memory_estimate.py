"""The memory estimate (lsp_exp/run/memory.py) by hand, and its use at start: a configuration whose
estimate exceeds the machine's memory stops in one line, before any weight is loaded."""
import json

import pytest
from transformers import LlamaConfig, LlamaForCausalLM

from lsp_exp.cli.train import train
from lsp_exp.run.memory import GIB, LOGPROB_CHUNKS, Architecture, StepShape, estimate, largest_fitting
from lsp_exp.run.memory_check import architecture
from lsp_exp.run.validation import ConfigError

from conftest import compose_config, tiny_overrides

TINY = Architecture(hidden=8, intermediate=16, layers=2, heads=2, kv_heads=1, vocab=100, tied=True)


def test_parameter_count_matches_transformers():
    config = LlamaConfig(vocab_size=100, hidden_size=8, intermediate_size=16, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True)
    model = LlamaForCausalLM(config)
    assert Architecture.of(config).params() == sum(p.numel() for p in model.parameters())
    assert Architecture.of(config) == TINY


def test_paper_model_size_from_its_published_config():
    arch = architecture("meta-llama/Llama-3.2-3B-Instruct")
    assert arch.params() == pytest.approx(3.21e9, rel=0.01)   # Llama-3.2-3B: 3.21B parameters


def test_estimate_by_hand():
    """N x G = 2 x 2 rows of 1 + 2 + 3 = 6 tokens, float32 (b = 4), full fine-tune, micro-batch 2.
    P = 100*8 + 2*(2*64 + 2*8*4 + 3*8*16 + 16) + 8 = 1992 (kv_dim = 4)."""
    shape = StepShape(n_queries=2, group_size=2, query_tokens=2, answer_tokens=3, prompt_tokens=1, judge_tokens=5,
                      judge_prompt_tokens=10)
    e = estimate(TINY, shape, dtype_bytes=4, lora=None, micro_batch_size=2, fused_head=False)
    p = 1992
    assert TINY.params() == p
    assert e.parts["static"] == p * 4 + p * 4 + 3 * p * 4                 # weights, reference copy, grads + AdamW
    act = (6 * 8 + 2 * 4 + 4 * 16) * 4                                     # per token and layer
    logits = 2 * 3 * 100 * 4                                               # the 3 answer positions only
    assert e.parts["update"] == 2 * 6 * 2 * act + 2 * logits + LOGPROB_CHUNKS
    fused = estimate(TINY, shape, dtype_bytes=4, lora=None, micro_batch_size=2)   # the output layer in chunks
    assert fused.parts["update"] == 2 * 6 * 2 * act + LOGPROB_CHUNKS
    kv = 2 * 2 * 4 * 4                                                     # K and V, 2 layers, kv_dim 4, 4 bytes
    assert e.parts["generation"] == 4 * 6 * kv + 4 * 100 * 4              # all 4 rows decoded at once
    assert e.parts["judge"] == 4 * (10 + 6 + 5) * kv + 4 * 100 * 4
    parts = estimate(TINY, shape, dtype_bytes=4, lora=None, micro_batch_size=2, generation_batch_size=1)
    assert parts.parts["generation"] == 1 * 6 * kv + 1 * 100 * 4
    assert e.total == e.parts["static"] + e.parts["update"]
    lora = estimate(TINY, shape, dtype_bytes=4, lora=(2, ["q_proj", "v_proj"]), micro_batch_size=2)
    adapter = 2 * (2 * (8 + 8) + 2 * (8 + 4))                              # r (in + out) per target and layer
    assert lora.parts["static"] == p * 4 + 4 * adapter * 4                 # no copy: the adapter is switched off
    sharded = estimate(TINY, shape, dtype_bytes=4, lora=None, micro_batch_size=2, shards=4)
    assert sharded.parts["static"] == p * 4 + p * 4 + 3 * p * 4 / 4


def test_checkpointing_keeps_only_layer_inputs():
    shape = StepShape(n_queries=2, group_size=2, query_tokens=2, answer_tokens=3, prompt_tokens=1)
    plain = estimate(TINY, shape, dtype_bytes=4, lora=None, micro_batch_size=4)
    checkpointed = estimate(TINY, shape, dtype_bytes=4, lora=None, micro_batch_size=4, checkpointing=True)
    act = (6 * 8 + 2 * 4 + 4 * 16) * 4
    assert plain.parts["update"] - checkpointed.parts["update"] == 4 * 6 * (2 * act - 2 * 8 * 4 - act)


def test_largest_fitting_micro_batch():
    shape = StepShape(n_queries=8, group_size=8, query_tokens=2, answer_tokens=3, prompt_tokens=1)
    fits = lambda size: estimate(TINY, shape, dtype_bytes=4, lora=None, micro_batch_size=size)  # noqa: E731
    budget = fits(16).total
    assert largest_fitting(budget, fits) == 16
    assert largest_fitting(fits(1).total - 1, fits) is None


def test_a_config_that_cannot_fit_stops_at_start_with_the_micro_batch_that_would(shared_outputs, tmp_path):
    """A model directory with only its config.json (a 128k vocabulary, hidden 2048) and N x G = 64
    answers of 2048 tokens: refused before any weight is loaded, with a micro-batch size that fits."""
    model_dir = tmp_path / "big"
    model_dir.mkdir()
    config = LlamaConfig(vocab_size=128256, hidden_size=2048, intermediate_size=5632, num_hidden_layers=2,
                         num_attention_heads=16, num_key_value_heads=4).to_dict()   # float32: 178 GiB, 22 at 4 rows
    (model_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError) as error:
        train(compose_config("train", tiny_overrides(
            shared_outputs, f"model.path={model_dir}", "game.n_queries=8", "game.group_size=8",
            "game.max_answer_tokens=2048", "logger=none")))
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith("estimated peak memory ") and "GiB of RAM" in message
    assert "trainer.micro_batch_size=" in message and "would fit" in message
    fits = int(message.split("trainer.micro_batch_size=")[2].split(" ")[0])
    assert 1 <= fits < 64
    assert float(message.split("estimated peak memory ")[1].split(" GiB")[0]) > 24   # more than this machine has
