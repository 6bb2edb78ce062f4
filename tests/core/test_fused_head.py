"""Log-probs from the last hidden states (lsp_exp/core/fused_head.py): the same values, entropy and
gradients (hidden states, weight, bias) as lm_head followed by a full log_softmax, to 1e-5 in fp32,
without the [positions, vocabulary] logits."""
import pytest
import torch
from transformers import Gemma2Config, Gemma2ForCausalLM, LlamaConfig, LlamaForCausalLM

from lsp_exp.core import fused_head
from lsp_exp.core.fused_head import PROBE_TOKENS, fused_difference, fused_logprobs, output_layer
from lsp_exp.core.probe import probe_ids


@pytest.fixture(params=[None, 3 * 40], ids=["one-chunk", "many-chunks"])
def chunked(request, monkeypatch):
    if request.param:  # 3 positions of a 40-token vocabulary per chunk
        monkeypatch.setattr(fused_head, "CHUNK_ELEMENTS", request.param)


def plain(hidden, head, targets, temperature):
    z = head(hidden).float() / temperature
    logp = torch.log_softmax(z, -1)
    return logp.gather(-1, targets[..., None]).squeeze(-1), -(logp.exp() * logp).sum(-1)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("bias", [False, True])
def test_values_entropy_and_gradients_equal_lm_head_then_log_softmax(chunked, temperature, bias):
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    head = torch.nn.Linear(8, 40, bias=bias)
    hidden = torch.randn(3, 5, 8, generator=g, requires_grad=True)
    targets = torch.randint(0, 40, (3, 5), generator=g)
    mask = torch.rand(3, 5, generator=g) > 0.4
    upstream = torch.randn(3, 5, generator=g)

    got, entropy = fused_logprobs(hidden, head, targets, temperature, mask)
    grads = torch.autograd.grad((got * upstream).sum(), [hidden, *head.parameters()])
    want, want_entropy = plain(hidden, head, targets, temperature)
    want_grads = torch.autograd.grad((want * upstream).sum(), [hidden, *head.parameters()])

    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(entropy, want_entropy[mask].sum(), rtol=1e-5, atol=1e-6)
    for a, b in zip(grads, want_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_gradcheck_in_float64(chunked):
    g = torch.Generator().manual_seed(1)
    head = torch.nn.Linear(4, 40, dtype=torch.float64)
    hidden = torch.randn(2, 3, 4, dtype=torch.float64, generator=g, requires_grad=True)
    targets = torch.randint(0, 40, (2, 3), generator=g)
    assert torch.autograd.gradcheck(lambda h, w, b: fused_logprobs(h, _head(w, b), targets, 0.8)[0],
                                    (hidden, head.weight, head.bias))


def _head(weight, bias):
    head = torch.nn.Linear(weight.shape[1], weight.shape[0], dtype=weight.dtype)
    head.weight, head.bias = weight, bias  # the tensors under test, not copies
    return head


def test_a_frozen_output_layer_gets_no_gradient_and_bf16_activations_score_in_float32():
    torch.manual_seed(0)
    head = torch.nn.Linear(8, 40, bias=False).requires_grad_(False)   # LoRA: the output layer is frozen
    hidden = torch.randn(2, 3, 8).to(torch.bfloat16).requires_grad_()
    targets = torch.randint(0, 40, (2, 3))
    got, _ = fused_logprobs(hidden, head, targets)
    assert got.dtype == torch.float32
    want, _ = plain(hidden, head.to(torch.bfloat16), targets, 1.0)    # lm_head in the activations' dtype
    torch.testing.assert_close(got, want, rtol=1e-2, atol=1e-2)
    got.sum().backward()
    assert hidden.grad.dtype == torch.bfloat16 and head.weight.grad is None


def _llama(cls=LlamaForCausalLM):
    torch.manual_seed(0)
    model = cls(LlamaConfig(vocab_size=40, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                            num_attention_heads=2, num_key_value_heads=1))
    with torch.no_grad():
        model.lm_head.weight.mul_(50.0)   # logits of a few units, as a trained model's
    return model


class HalvedLogitsLlama(LlamaForCausalLM):
    """An architecture no list knows: its logits are lm_head(h) / 2 (a config key of its own, say)."""

    def forward(self, *args, **kwargs):
        out = super().forward(*args, **kwargs)
        out.logits = out.logits / 2
        return out


def test_the_fused_path_is_chosen_by_checking_once_per_model(caplog):
    """The first request runs both paths on a few tokens and keeps the verdict on the model: a plain
    output layer is fused; a model whose logits are transformed (here in its forward, under no config
    key anyone listed) takes the logits path, with one log line naming it and the difference."""
    llama = _llama()
    decoder, head = output_layer(llama)
    assert decoder is llama.model and head is llama.lm_head and llama._lsp_fused_head_exact is True
    halved = _llama(HalvedLogitsLlama)
    with caplog.at_level("WARNING", logger="lsp_exp.core.fused_head"):
        assert output_layer(halved) is None
        calls = []
        halved.register_forward_hook(lambda *a: calls.append(1))
        assert output_layer(halved) is None and calls == []      # the verdict is kept: no second check
    assert len(caplog.records) == 1
    line = caplog.records[0].getMessage()
    assert line.startswith("HalvedLogitsLlama: log-probs from the model's logits (the plain path)") and "nats" in line
    diff, tol, _ = fused_difference(halved, halved.model, halved.lm_head)
    assert diff > 0.1 and tol < 1e-4       # float32: 4 ulps at the largest logit
    gemma = Gemma2ForCausalLM(Gemma2Config(vocab_size=40, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                                           num_attention_heads=2, num_key_value_heads=1, head_dim=4,
                                           final_logit_softcapping=3.0))
    assert output_layer(gemma) is None   # soft-capped logits: the logits path


def test_under_bf16_autocast_the_tolerance_is_bf16s_and_a_plain_layer_stays_fused():
    llama, halved = _llama(), _llama(HalvedLogitsLlama)
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
        diff, tol, _ = fused_difference(llama, llama.model, llama.lm_head)
        assert output_layer(llama) is not None and output_layer(halved) is None
        scale = float(llama(input_ids=probe_ids(llama, PROBE_TOKENS)[None]).logits.float().abs().max())
    # 4 units of bf16 rounding (and of a float32 sum over the hidden width, 8) at the largest logit
    assert diff <= tol and tol == pytest.approx(4 * (2 ** -7 + 8 ** 0.5 * 2 ** -23) * max(1.0, scale), rel=1e-6)


def test_while_forwards_are_collectives_nothing_is_checked_or_kept(monkeypatch):
    """FSDP2, not gathered: every forward is a collective, so no rank runs the check on its own; the
    logits path is taken and no verdict is kept (it is made at start, before sharding, or gathered)."""
    from lsp_exp.core import fused_head as fh

    llama = _llama()
    monkeypatch.setattr(fh, "collective_forwards", lambda model: True)
    assert output_layer(llama) is None and fh.VERDICT not in llama.__dict__
    monkeypatch.setattr(fh, "collective_forwards", lambda model: False)
    assert output_layer(llama) is not None and llama.__dict__[fh.VERDICT] is True
