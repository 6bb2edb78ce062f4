"""The step's speed-ups are exact: the lean sampling loop and the shared-prefix log-prob passes give
what transformers' `generate` and one plain forward pass give (timings live in experiments/bench/)."""
import pytest
import torch

from lsp_exp.core.generation import SamplingOptions, chat_prompts, generate
from lsp_exp.core.logprobs import LogprobOptions, shared_prefix, token_logprobs
from lsp_exp.tasks.arith.sft import TinyModelConfig, build_model
from lsp_exp.tasks.arith.tokenizer import build_tokenizer


@pytest.fixture(scope="module")
def tiny():
    tokenizer = build_tokenizer()
    model = build_model(tokenizer, TinyModelConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                                   num_attention_heads=2), seed=0)
    return model.train(), tokenizer


PROBLEMS = ["1+2", "12+3*4", "7", "19-15*2"]


def test_greedy_lean_loop_matches_transformers_generate(tiny):
    model, tokenizer = tiny
    prompts = chat_prompts(tokenizer, PROBLEMS)
    outs = {}
    for hf in (True, False):
        outs[hf] = generate(model, tokenizer, prompts, max_new_tokens=6, do_sample=False,
                            options=SamplingOptions(hf_generate=hf))
    assert torch.equal(outs[True].input_ids, outs[False].input_ids)
    assert torch.equal(outs[True].completion_mask, outs[False].completion_mask)
    assert outs[True].texts == outs[False].texts


def test_sampling_is_seeded_and_honours_min_new_tokens(tiny):
    model, tokenizer = tiny
    prompts = chat_prompts(tokenizer, PROBLEMS)
    runs = []
    for _ in range(2):
        torch.manual_seed(3)
        runs.append(generate(model, tokenizer, prompts, max_new_tokens=5, num_return_sequences=3))
    assert torch.equal(runs[0].input_ids, runs[1].input_ids) and runs[0].input_ids.shape[0] == 12
    model.generation_config.min_new_tokens = 5
    try:
        forced = generate(model, tokenizer, prompts, max_new_tokens=5, num_return_sequences=3)
    finally:
        model.generation_config.min_new_tokens = None
    assert (forced.completion_lengths == 5).all() and not forced.finished.any()


@pytest.mark.parametrize("problems,copies", [(PROBLEMS, 4), (["1+2", "1+2", "1+2", "12+3*4"], 1)])
def test_shared_prefix_log_probs_entropy_and_gradients_equal_a_plain_pass(tiny, problems, copies):
    model, tokenizer = tiny
    torch.manual_seed(0)
    rollout = generate(model, tokenizer, chat_prompts(tokenizer, problems), max_new_tokens=6,
                       num_return_sequences=copies)
    split = shared_prefix(rollout.input_ids, rollout.attention_mask)
    assert split is not None and split[1].numel() == len(set(problems))  # one prefix per distinct prompt
    mask = rollout.completion_mask[:, 1:].float()
    results = {}
    for share in (False, True):
        model.zero_grad()
        logp, entropy = token_logprobs(model, rollout.input_ids, rollout.attention_mask, entropy_mask=mask,
                                       options=LogprobOptions(share_prefixes=share))
        (logp * mask).sum().backward()
        results[share] = (logp.detach(), entropy, [p.grad.clone() for p in model.parameters()])
    (a, ea, ga), (b, eb, gb) = results[False], results[True]
    torch.testing.assert_close(a * mask, b * mask, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ea, eb, atol=1e-5, rtol=1e-5)
    for x, y in zip(ga, gb, strict=True):
        torch.testing.assert_close(x, y, atol=1e-4, rtol=1e-4)


def test_no_prefix_is_shared_when_rows_differ():
    ids = torch.tensor([[1, 5, 6, 7], [1, 8, 9, 10], [1, 11, 12, 13]])
    assert shared_prefix(ids, torch.ones_like(ids)) is None
