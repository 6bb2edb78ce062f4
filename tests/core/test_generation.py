"""Tokenizer, chat format, rollouts and log-probs on a tiny random model."""
import torch

from lsp_exp.core.generation import chat_prompts, generate
from lsp_exp.core.logprobs import token_logprobs
from lsp_exp.tasks.arith.sft import TinyModelConfig, build_model
from lsp_exp.tasks.arith.tokenizer import JUDGE_TAGS, build_tokenizer


def tiny():
    tokenizer = build_tokenizer()
    model = build_model(tokenizer, TinyModelConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                                   num_attention_heads=2), seed=0)
    return model.eval(), tokenizer


def test_tokenizer_round_trip_and_chat_template():
    tokenizer = build_tokenizer()
    text = tokenizer.apply_chat_template([{"role": "user", "content": "12+3*4"}], tokenize=False,
                                         add_generation_prompt=True)
    assert text == "<bos><|user|>12+3*4<|end|><|assistant|>"
    ids = tokenizer(text, add_special_tokens=False).input_ids
    assert len(ids) == 2 + 6 + 2 and tokenizer.decode(ids) == text
    for tag in JUDGE_TAGS:  # the judge's tags are single tokens already
        assert len(tokenizer(tag, add_special_tokens=False).input_ids) == 1


def test_rollout_masks_stop_at_the_end_token():
    model, tokenizer = tiny()
    torch.manual_seed(0)
    out = generate(model, tokenizer, chat_prompts(tokenizer, ["1+2", "12+3*45"]), max_new_tokens=5,
                   num_return_sequences=3)
    assert out.input_ids.shape[0] == 6 and len(out.texts) == 6
    eos = tokenizer.eos_token_id
    for row, mask, finished in zip(out.input_ids, out.completion_mask, out.finished, strict=True):
        kept = row[mask.bool()].tolist()
        assert (eos in kept) == bool(finished)
        if finished:
            assert kept[-1] == eos and kept.count(eos) == 1
    assert not out.input_ids.requires_grad and out.input_ids.is_inference() is False


def test_left_padded_log_probs_equal_unpadded_ones():
    model, tokenizer = tiny()
    prompts = chat_prompts(tokenizer, ["1+2", "12+3*45"])
    torch.manual_seed(0)
    out = generate(model, tokenizer, prompts, max_new_tokens=4)
    batched = token_logprobs(model, out.input_ids, out.attention_mask)
    for i in range(2):
        keep = out.attention_mask[i].bool()
        ids = out.input_ids[i][keep][None]
        single = token_logprobs(model, ids, torch.ones_like(ids))
        n = keep.sum() - 1
        counted = out.attention_mask[i, 1:][-n:].bool()
        torch.testing.assert_close(batched[i, -n:][counted], single[0], atol=1e-5, rtol=1e-5)


def test_evaluation_leaves_every_global_rng_as_it_was():
    """Held-out sampling draws from a generator of its own: the training trajectory is not moved,
    and the same evaluation twice gives the same figures."""
    from lsp_exp.eval.heldout import evaluate_solver
    from lsp_exp.tasks.base import HeldoutSet

    model, tokenizer = tiny()
    problems = HeldoutSet(["1+2", "12+3*4"], lambda i, text: text == ["3", "42"][i], [["one_op"], ["precedence"]],
                          ["3", "42"])
    torch.manual_seed(123)
    before = torch.get_rng_state()
    first = evaluate_solver(model, tokenizer, problems, samples=4, max_new_tokens=3)
    assert torch.equal(torch.get_rng_state(), before)
    assert evaluate_solver(model, tokenizer, problems, samples=4, max_new_tokens=3) == first
    assert torch.equal(torch.get_rng_state(), before)
