"""The conformance matrix: every check on tiny random configs of real architectures
(tests/helpers/architectures.py), decided by running them, not by lists (docs/method.md §15,
"Which architectures"). The self-play steps of each architecture are in test_conformance_steps.py.

(a) the project's log-probs, entropy and log-prob gradients equal log_softmax(model(x).logits / T)
    of each row run alone, to 1e-5 in float32 (gradients: of each tensor's largest entry), with left
    padding, a shared prefix and T = 0.7 (the entropy is a diagnostic: no gradient flows through it);
(b) the fused output layer is used exactly where it is exact (checked, one log line otherwise);
(d) dropout is off after loading (generation in training mode samples what eval mode would), and
    `min_new_tokens` is refused;
and the start-up check (core/conformance.py) passes or refuses each architecture in one line.
"""
from __future__ import annotations

import pytest
import torch

from tests.helpers.architectures import ARCHITECTURES, BY_NAME, build
from tests.helpers.conformance import REFUSED, T, alone, batch, padded, with_dropout
from lsp_exp.core.conformance import check_architecture
from lsp_exp.core.dropout import disable_dropout
from lsp_exp.core.fused_head import output_layer
from lsp_exp.core.generation import check_min_new_tokens, chat_prompts, generate
from lsp_exp.core.kv_cache import repeat_is_exact
from lsp_exp.core.logprobs import LogprobOptions, token_logprobs
from lsp_exp.core.special_tokens import ModelSetupError

NAMES = [a.name for a in ARCHITECTURES]
# Caches whose rows cannot be repeated (transformers 5.25: the hybrid Mamba layers keep their states out of it)
NO_CACHE_REPEAT = {"falcon_h1", "recurrent_gemma"}


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: one thread (two contending threads make each small matmul ~100x slower here);
    conftest restores the count."""
    torch.set_num_threads(1)


@pytest.mark.parametrize("share", [True, False], ids=["shared-prefix", "no-sharing"])
@pytest.mark.parametrize("name", NAMES)
def test_a_logprobs_entropy_and_gradients_equal_log_softmax_of_the_logits(name, share):
    model, tok = build(name)
    disable_dropout(model)
    model.train()          # as in the update
    rows, ids, mask = batch(model, padded(tok).pad_token_id)
    counted = (mask[:, :-1] * mask[:, 1:]).bool()                # context and target both real
    entropy_mask = counted & (torch.arange(11) % 3 != 0)         # a part of them
    weights = torch.randn(counted.shape, generator=torch.Generator().manual_seed(1))
    names, params = zip(*[(n, p) for n, p in model.named_parameters() if p.requires_grad], strict=True)

    logp, entropy = token_logprobs(model, ids, mask, entropy_mask=entropy_mask.float(), temperature=T,
                                   options=LogprobOptions(share_prefixes=share))
    got = torch.autograd.grad((logp * weights)[counted].sum(), params, allow_unused=True)

    want_logp, want_entropy = torch.zeros_like(logp), torch.zeros_like(logp)
    for i, row in enumerate(rows):
        want_logp[i, 12 - len(row):], want_entropy[i, 12 - len(row):] = alone(model, row)
    want = torch.autograd.grad((want_logp * weights)[counted].sum(), params, allow_unused=True)

    torch.testing.assert_close(logp[counted], want_logp[counted], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(entropy, want_entropy[entropy_mask].mean().detach(), rtol=1e-5, atol=1e-5)
    # Gradients to 1e-5 of each tensor's largest entry: summing the same terms in another order (rows in a
    # batch, a shared prefix's copies) differs by float32 rounding, ~1e-6 of it (RMSNorm computes in float32
    # whatever the model's dtype, so even a float64 model shows it).
    close = [torch.allclose(torch.zeros_like(p) if a is None else a, torch.zeros_like(p) if b is None else b,
                            rtol=0, atol=1e-5 * max(float(b.abs().max()) if b is not None else 0.0, 1.0))
             for p, a, b in zip(params, got, want, strict=True)]
    if name in REFUSED:   # RecurrentGemma: its pad positions take part in the backward (why it is refused)
        assert not all(close)
    else:
        assert all(close), [n for n, ok in zip(names, close, strict=True) if not ok]


@pytest.mark.parametrize("name", NAMES)
def test_b_the_output_layer_is_fused_exactly_where_that_is_exact(name, caplog):
    """Exact: log_softmax(lm_head(decoder(x))) equals log_softmax(model(x).logits) over the whole
    vocabulary to 1e-5 (computed here, independently of the project's check)."""
    model, _ = build(name)
    ids = torch.randint(0, model.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        hidden = model.get_decoder()(input_ids=ids).last_hidden_state
        fused = model.get_output_embeddings()(hidden).float().log_softmax(-1)
        plain = model(input_ids=ids).logits.float().log_softmax(-1)
    exact = bool((fused - plain).abs().max() < 1e-5)
    assert exact == BY_NAME[name].fused_exact            # the table in architectures.py says so too
    with caplog.at_level("WARNING", logger="lsp_exp.core.fused_head"):
        chosen = output_layer(model) is not None
    assert chosen == exact
    lines = [r.getMessage() for r in caplog.records if r.name == "lsp_exp.core.fused_head"]
    if exact:
        assert lines == []
    else:
        assert len(lines) == 1 and lines[0].startswith(f"{type(model).__name__}: log-probs from the model's logits")
    fresh, _ = build(name)
    with torch.autocast("cpu", dtype=torch.bfloat16):   # the check in the context the passes run in
        assert (output_layer(fresh) is not None) == exact


def test_b_falcon_h1_and_recurrent_gemma_take_the_logits_path():
    for name in ("falcon_h1", "recurrent_gemma"):
        model, _ = build(name)
        assert output_layer(model) is None, name


@pytest.mark.parametrize("name", NAMES)
def test_the_start_up_check_passes_or_refuses_in_one_line(name):
    model, tok = build(name)
    disable_dropout(model)
    if name in REFUSED:
        with pytest.raises(ModelSetupError) as refused:
            check_architecture(model, padded(tok), name)
        line = str(refused.value)
        assert "\n" not in line and line.startswith(f"model '{name}' ({type(model).__name__}): {REFUSED[name]}")
        assert line.endswith("this architecture cannot be trained here")
        return
    found = check_architecture(model, padded(tok), name)
    assert found["fused"] == BY_NAME[name].fused_exact
    assert found["repeat_cache"] == (name not in NO_CACHE_REPEAT)
    assert found["tolerance"] < 2e-3   # float32
    for key in ("padding", "padding+prefixes", "cache", "training_mode"):
        assert found["padding_gradient"] == 0.0
        assert found[key] <= found["tolerance"], key


def test_the_start_up_check_refuses_a_noise_left_on_in_training_mode():
    """A dropout that did not go through load_policy (or a router's jitter) is named, in one line."""
    model, tok = build("gpt2")   # GPT-2's configs set dropout 0.1 everywhere
    with pytest.raises(ModelSetupError, match=r"^model 'gpt2' \(GPT2LMHeadModel\): the forward in training mode and "
                                              r"in eval mode differ by [\d.]+ nats"):
        check_architecture(model, padded(tok), "gpt2")


@pytest.mark.parametrize("name", ["llama", "falcon_h1"])
def test_a_cache_that_cannot_be_repeated_prefills_every_copy(name, caplog):
    """Falcon-H1's hybrid cache repeats its attention rows but not its Mamba states: generation then
    prefills every copy (the same samples as one prefill per copy would give) and log-prob passes
    share no prefix; a cache that can be repeated is."""
    model, tok = build(name)
    with caplog.at_level("WARNING", logger="lsp_exp.core.kv_cache"):
        assert repeat_is_exact(model) == (name not in NO_CACHE_REPEAT)
    assert len(caplog.records) == (name in NO_CACHE_REPEAT)
    tok = padded(tok)
    prompts = chat_prompts(tok, ["Hi", "What is 12+3*4?"])
    out = generate(model, tok, prompts, max_new_tokens=3, do_sample=False, num_return_sequences=2)
    one = generate(model, tok, prompts, max_new_tokens=3, do_sample=False)
    assert torch.equal(out.input_ids[::2], one.input_ids) and torch.equal(out.input_ids[1::2], one.input_ids)


@pytest.mark.parametrize("name", NAMES)
def test_d_dropout_is_off_after_load_and_sampling_in_training_mode_is_eval_modes(name, tmp_path, caplog):
    """load_policy switches off every dropout, the model's and LoRA's (0.1 each), with one log line:
    a forward in training mode equals eval mode's, and so does what generation samples."""
    from omegaconf import OmegaConf

    from lsp_exp.core.models import load_policy

    (model, tok), keys = with_dropout(name)
    assert keys, "the architecture has dropout rates to switch off"
    model.save_pretrained(tmp_path)
    cfg = OmegaConf.create({"dtype": "float32", "attn_implementation": BY_NAME[name].attn, "lora": {
        "enabled": True, "r": 4, "alpha": 8, "dropout": 0.1, "target_modules": list(BY_NAME[name].lora_targets)}})
    with caplog.at_level("WARNING", logger="lsp_exp.core.dropout"):
        policy = load_policy(cfg, str(tmp_path)).train()
    lines = [r.getMessage() for r in caplog.records if r.name == "lsp_exp.core.dropout"]
    assert len(lines) == 1 and "lora_dropout 0.1" in lines[0], lines
    assert not any(isinstance(m, torch.nn.modules.dropout._DropoutNd) and m.p > 0 for m in policy.modules())
    ids = torch.arange(3, 15)[None]
    with torch.no_grad():
        train = policy(input_ids=ids).logits
        policy.eval()
        assert torch.equal(train, policy(input_ids=ids).logits)
    if name in REFUSED:
        return
    tok = padded(tok)
    prompts = chat_prompts(tok, ["Hi"])
    sampled = {}
    for mode in ("train", "eval"):
        getattr(policy, mode)()
        sampled[mode] = generate(policy, tok, prompts, max_new_tokens=4, num_return_sequences=2,
                                 generator=torch.Generator().manual_seed(3)).input_ids
    assert torch.equal(sampled["train"], sampled["eval"])


def test_d_min_new_tokens_is_refused_at_start_in_one_line():
    model, tok = build("llama")
    model.generation_config.min_new_tokens = 3
    expected = ("model 'my-model': generation_config.json sets min_new_tokens=3, which masks the end tokens while "
                "sampling but not in the log-probs the update scores; remove it (or set it to 0) in the model's "
                "generation_config.json")
    for check in (lambda: check_min_new_tokens(model, "my-model"),
                  lambda: check_architecture(model, padded(tok), "my-model")):
        with pytest.raises(ModelSetupError) as refused:
            check()
        assert str(refused.value) == expected
    model.generation_config.min_new_tokens = 0
    check_min_new_tokens(model, "my-model")   # 0 (or unset): nothing masked, accepted
