"""Memory-lean log-probs (lsp_exp/core/logprobs.py): the same values and gradients as a full-vocabulary
float32 log_softmax (to 1e-5 relative), without keeping a full-size float32 tensor for the backward."""
import pytest
import torch
import torch.nn.functional as F

from lsp_exp.core import fused_head
from lsp_exp.core.logprobs import chosen_logprobs
from lsp_exp.rl.diagnostics import token_entropy


def _plain(logits, targets, temperature):
    return F.log_softmax(logits.float() / temperature, dim=-1).gather(-1, targets[..., None]).squeeze(-1)


@pytest.fixture(params=[None, 3 * 50], ids=["one-chunk", "many-chunks"])
def chunked(request, monkeypatch):
    if request.param:  # 3 positions of a 50-token vocabulary per chunk: 24 positions take 8 chunks
        monkeypatch.setattr(fused_head, "CHUNK_ELEMENTS", request.param)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_values_and_gradients_equal_the_full_log_softmax(chunked, temperature):
    g = torch.Generator().manual_seed(0)
    logits = (3 * torch.randn(4, 6, 50, generator=g)).requires_grad_()
    targets = torch.randint(0, 50, (4, 6), generator=g)
    upstream = torch.randn(4, 6, generator=g)

    lean = chosen_logprobs(logits, targets, temperature)
    (grad_lean,) = torch.autograd.grad((lean * upstream).sum(), logits)
    plain = _plain(logits, targets, temperature)
    (grad_plain,) = torch.autograd.grad((plain * upstream).sum(), logits)

    torch.testing.assert_close(lean, plain, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad_lean, grad_plain, rtol=1e-5, atol=1e-6)


def test_gradient_by_hand():
    # z = [0, ln 3] (p = [1/4, 3/4]), y = 1: log p_y = ln(3/4); d/dz = 1[v = y] - p = [-1/4, 1/4]
    z = torch.tensor([[[0.0, float(torch.log(torch.tensor(3.0)))]]], requires_grad=True)
    out = chosen_logprobs(z, torch.tensor([[1]]))
    out.sum().backward()
    assert out.item() == pytest.approx(float(torch.log(torch.tensor(0.75))), rel=1e-6)
    assert z.grad.flatten().tolist() == pytest.approx([-0.25, 0.25], rel=1e-6)


def test_gradcheck_in_float64(chunked):
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 3, 50, dtype=torch.float64, generator=g, requires_grad=True)
    targets = torch.randint(0, 50, (2, 3), generator=g)
    assert torch.autograd.gradcheck(lambda z: chosen_logprobs(z, targets, 0.8), (logits,))


def test_bf16_logits_are_scored_in_float32_and_keep_no_float32_copy_for_the_backward():
    g = torch.Generator().manual_seed(2)
    logits = (3 * torch.randn(4, 6, 1000, generator=g)).to(torch.bfloat16).requires_grad_()
    targets = torch.randint(0, 1000, (4, 6), generator=g)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        lean = chosen_logprobs(logits, targets, 0.7)
    assert lean.dtype == torch.float32
    torch.testing.assert_close(lean, _plain(logits, targets, 0.7), rtol=1e-5, atol=1e-5)
    full_size = [t for t in saved if t.numel() == logits.numel()]
    assert [t.dtype for t in full_size] == [torch.bfloat16]   # the model's logits only, not an upcast copy
    lean.sum().backward()
    assert logits.grad.dtype == torch.bfloat16


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_entropy_equals_the_full_vocabulary_computation(temperature):
    g = torch.Generator().manual_seed(3)
    logits = 4 * torch.randn(3, 5, 70, generator=g)
    mask = torch.rand(3, 5, generator=g) > 0.3
    p = torch.softmax(logits / temperature, -1)
    per_position = -(p * torch.log_softmax(logits / temperature, -1)).sum(-1)
    expected = per_position[mask].mean()
    got = token_entropy(logits, mask, chunk=2, temperature=temperature)   # 2 positions per chunk
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
