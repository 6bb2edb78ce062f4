"""The memory estimate (lsp_exp/run/memory.py) by hand, and its use at start: a configuration whose
estimate exceeds the machine's memory stops in one line, before any weight is loaded."""
import json
import sys

import pytest
from transformers import LlamaConfig, LlamaForCausalLM

from lsp_exp.cli.memory import read_budget
from lsp_exp.cli.train import train
from lsp_exp.run.activation_bytes import CONFIGS, LORA_TARGETS, measure
from lsp_exp.run.memory import LOGPROB_CHUNKS, Architecture, StepShape, estimate, largest_fitting
from lsp_exp.run.memory_check import architecture
from lsp_exp.errors import ConfigError

from tests.helpers.tiny_run import compose_config, tiny_overrides

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
    """N x G = 2 x 2 rows of 1 + 2 + 3 = 6 tokens, float32 (b = c = 4), full fine-tune, micro-batch 2
    (lsp_exp/run/memory.py's docstring; docs/operations.md "Memory").
    P = 100*8 + 2*(2*64 + 2*8*4 + 3*8*16 + 16) + 8 = 1992 (kv_dim = 4)."""
    shape = StepShape(n_queries=2, group_size=2, query_tokens=2, answer_tokens=3, prompt_tokens=1, judge_tokens=5,
                      judge_prompt_tokens=10)
    e = estimate(TINY, shape, dtype_bytes=4, lora=None, micro_batch_size=2, fused_head=False)
    p = 1992
    assert TINY.params() == p
    assert e.parts["static"] == 4 * p + 4 * p + 3 * p * 4                 # float32 weights, reference, grads + AdamW
    act = 40 * 8 + 16 * 16 + 4 * 2 + 8 + 4 * 6                            # float32 full: 40h + 16I + 4H + 8 + 4L
    outside = 4 * 8 + 4 + 4 * 8 + 4 * 8 + 4                                # final norm, the head's input, lse
    logits = 2 * 3 * 100 * 4                                               # the 3 answer positions only
    assert e.parts["update"] == 2 * 6 * (2 * act + outside) + 2 * logits + LOGPROB_CHUNKS
    assert e.parts["reference"] == logits + 2 * 6 * (4 * 8 + 4 * 8 + 4 * 4 * 16) + LOGPROB_CHUNKS
    fused = estimate(TINY, shape, dtype_bytes=4, lora=None, micro_batch_size=2)   # the output layer in chunks
    head_grad = 100 * 8 * 4                                                # float32 V x h gradient (in place)
    assert fused.parts["update"] == 2 * 6 * (2 * act + outside) + head_grad + LOGPROB_CHUNKS
    kv = 2 * 4 * (4 + 4)                                                   # 2 layers, kv_dim 4, float32 K and V
    assert e.parts["generation"] == 4 * 6 * kv + 4 * 100 * 4              # all 4 rows decoded at once
    assert e.parts["judge"] == 4 * (10 + 6 + 5) * kv + 4 * 100 * 4
    parts = estimate(TINY, shape, dtype_bytes=4, lora=None, micro_batch_size=2, generation_batch_size=1)
    assert parts.parts["generation"] == 1 * 6 * kv + 1 * 100 * 4
    assert e.total == e.parts["static"] + e.parts["update"]
    lora = estimate(TINY, shape, dtype_bytes=4, lora=(2, ["q_proj", "v_proj"]), micro_batch_size=2)
    adapter = 2 * (2 * (8 + 8) + 2 * (8 + 4))                              # r (in + out) per target and layer
    assert lora.parts["static"] == p * 4 + 4 * adapter * 4                 # no copy: the adapter is switched off
    lora_act = 2 * (4 * 8 + 4) + (4 * 4 * 8 + 4 * 2 + 4 * 6) + 3 * 4 * 16 + 4 * 8 + 2 * 2 * 4   # q, v share their input
    assert lora.parts["update"] == 2 * 6 * (2 * lora_act + 4 * 8 + 4 + 4 * 8 + 4) + LOGPROB_CHUNKS   # no head gradient
    sharded = estimate(TINY, shape, dtype_bytes=4, lora=None, micro_batch_size=2, shards=4)
    assert sharded.parts["static"] == 4 * p / 4 + 2 * p * 4 + 3 * p * 4 / 4   # shards + the gathered policy + reference


def test_bf16_estimate_counts_master_weights_and_autocast_copies():
    """model.dtype bfloat16 (c = 2): a full fine-tune keeps float32 weights, reference, grads and
    moments plus autocast's bf16 copies (22 P); LoRA a bf16 base and a float32 adapter (16 A + 2 A);
    keys are float32 where the residual stream is (core/precision.py, docs/method.md §16)."""
    shape = StepShape(n_queries=2, group_size=2, query_tokens=2, answer_tokens=3, prompt_tokens=1)
    p, targets = 1992, ["q_proj", "v_proj"]
    full = estimate(TINY, shape, dtype_bytes=2, lora=None, micro_batch_size=2)
    assert full.parts["static"] == 4 * p + 4 * p + 12 * p + 2 * p
    assert full.parts["generation"] == 4 * 6 * 2 * 4 * (4 + 2) + 4 * 100 * 4   # float32 keys, bf16 values
    lora = estimate(TINY, shape, dtype_bytes=2, lora=(2, targets), micro_batch_size=2)
    assert lora.parts["static"] == 2 * p + 16 * TINY.lora_params(2, targets) + 2 * TINY.lora_params(2, targets)
    assert lora.parts["generation"] == 4 * 6 * 2 * 4 * (2 + 2) + 4 * 100 * 4
    upcast = estimate(TINY, shape, dtype_bytes=4, compute_bytes=2, lora=None, micro_batch_size=2)   # bf16-mixed
    assert upcast.parts["static"] == full.parts["static"]
    sharded = estimate(TINY, shape, dtype_bytes=2, lora=None, micro_batch_size=2, shards=4)
    assert sharded.parts["static"] == 4 * p / 4 + 2 * p * 2 + 12 * p / 4


def test_activations_per_token_closed_forms():
    """The docstring's closed forms (memory.py; docs/operations.md "Memory"), h 8, I 16, H 2, r 2,
    rows of L = 6 tokens, LoRA on the 7 projections."""
    h, i, heads, r, length = 8, 16, 2, 2, 6
    seven = (r, ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    assert TINY.activations_per_token(2, 4, None, length) == 34 * h + 8 * i + 4 * heads + 8 + 2 * length
    assert TINY.activations_per_token(4, 4, None, length) == 40 * h + 16 * i + 4 * heads + 8 + 4 * length
    assert TINY.activations_per_token(2, 2, seven, length) == 28 * h + 8 * i + 14 * r + 4 * heads + 8 + 2 * length
    assert TINY.activations_per_token(4, 4, seven, length) == 32 * h + 16 * i + 28 * r + 4 * heads + 8 + 4 * length


def test_checkpointing_keeps_only_layer_inputs():
    shape = StepShape(n_queries=2, group_size=2, query_tokens=2, answer_tokens=3, prompt_tokens=1)
    plain = estimate(TINY, shape, dtype_bytes=4, lora=None, micro_batch_size=4)
    checkpointed = estimate(TINY, shape, dtype_bytes=4, lora=None, micro_batch_size=4, checkpointing=True)
    act = TINY.activations_per_token(4, 4, None, 6)
    assert plain.parts["update"] - checkpointed.parts["update"] == 4 * 6 * (2 * act - 2 * 8 * 4 - act)


def _estimated(arch: Architecture, name: str, rank: int, tokens: tuple[int, int]) -> int:
    """memory.py's act_per_token for a config of activation_bytes.CONFIGS; the slope between two
    token counts sees the padding mask's copy as rows of tokens[0] + tokens[1] tokens."""
    lora, compute = CONFIGS[name]
    c = compute.itemsize
    return arch.activations_per_token(c, c if lora else 4, (rank, list(LORA_TARGETS)) if lora else None, sum(tokens))


def test_saved_activation_bytes_by_hand():
    """The hook count (run/activation_bytes.py) of a Llama layer of width 64 is exactly the closed
    forms (memory.py's docstring): every saved tensor is accounted for."""
    arch = Architecture(hidden=64, intermediate=128, layers=2, heads=4, kv_heads=2, vocab=256, tied=True)
    measured = measure(64, 128, 4, 2, rank=2, tokens=(8, 16))
    assert set(measured) == set(CONFIGS)
    for name, value in measured.items():
        assert value == _estimated(arch, name, 2, (8, 16)), name


@pytest.mark.parametrize("shape", [(2048, 8192, 32, 8), (3072, 8192, 24, 8)], ids=["llama3.2-1b", "llama3.2-3b"])
def test_activation_estimate_matches_real_widths(shape):
    """The bytes autograd saves per token and layer of a Llama-3.2-1B- and 3B-shaped layer
    (bf16 full, LoRA r16 on the 7 projections under bf16 autocast, 32-true full and LoRA) are within
    15% of the estimate (1.000 each today: experiments/memory_estimate/)."""
    h, i, heads, kv = shape
    arch = Architecture(h, i, 28, heads, kv, 128256, True)
    for name, value in measure(h, i, heads, kv, rank=16, tokens=(8, 16)).items():
        assert value / _estimated(arch, name, 16, (8, 16)) == pytest.approx(1, abs=0.15), name


@pytest.mark.parametrize("budget", ["-1", "nan", "inf", "0", "eighty"])
def test_memory_budget_must_be_a_positive_number(budget):
    with pytest.raises(ConfigError) as error:
        read_budget(budget)
    assert str(error.value) == f"LSP_MEMORY_BUDGET_GIB={budget!r}: must be a finite number of GiB above 0"
    assert read_budget(None) == 80 and read_budget("139") == 139


@pytest.mark.parametrize("budget, override, line", [
    ("nan", "trainer.micro_batch_size=16", "LSP_MEMORY_BUDGET_GIB='nan': must be a finite number of GiB above 0"),
    ("-1", "trainer.micro_batch_size=16", "LSP_MEMORY_BUDGET_GIB='-1': must be a finite number of GiB above 0"),
    ("80", "trainer.micro_batch_size=0", "trainer.micro_batch_size=0: must be at least 1 row (or null: the whole "
                                         "batch in one pass)"),
], ids=["budget-nan", "budget-negative", "micro-batch-0"])
def test_lsp_memory_refuses_bad_input_in_one_line(budget, override, line, tmp_path, monkeypatch, capsys):
    """`lsp-memory` (in-process) with a budget of nan or -1 or a micro-batch of 0: one line
    naming the key on stderr, exit 2, no table."""
    from hydra.core.global_hydra import GlobalHydra

    from lsp_exp.cli import memory

    monkeypatch.setenv("LSP_MEMORY_BUDGET_GIB", budget)
    monkeypatch.setattr(sys, "argv", ["lsp-memory", "experiment=paper_llama3b/lsp", override,
                                      f"paths.outputs={tmp_path}"])
    try:
        with pytest.raises(SystemExit) as exit_:
            memory.main()
    finally:
        GlobalHydra.instance().clear()
    out = capsys.readouterr()
    assert exit_.value.code == 2 and out.out == ""
    assert out.err == f"error: lsp-memory: {line}\n"


def test_largest_fitting_micro_batch():
    shape = StepShape(n_queries=8, group_size=8, query_tokens=2, answer_tokens=3, prompt_tokens=1)

    def fits(size):
        return estimate(TINY, shape, dtype_bytes=4, lora=None, micro_batch_size=size)

    budget = fits(16).total
    assert largest_fitting(budget, fits) == 16
    assert largest_fitting(fits(1).total - 1, fits) is None
    assert largest_fitting(fits(64).total, fits, rows=64) == 64       # all N x G = 64 rows, not 4096
    assert largest_fitting(fits(64).total, fits, rows=48) == 48       # 32, then all 48 rows


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
