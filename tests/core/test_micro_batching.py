"""Micro-batches (trainer.micro_batch_size) give the full batch's gradient: for every algorithm,
KL placement and aggregation, for the Solver's [N, G] groups and the Challenger's [1, N] group,
with gradient checkpointing off and on (docs/method.md §15). fp32, relative tolerance 1e-5."""
import copy

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from lsp_exp.core import logprobs
from lsp_exp.core.generation import Rollout, generation_parts, join_rollouts
from lsp_exp.core.logprobs import LogprobOptions
from lsp_exp.core.models import enable_checkpointing
from lsp_exp.core.micro_batch import logprobs_in_chunks, row_chunks
from lsp_exp.core.roles import RoleBatch, role_backward
from lsp_exp.rl.algorithms import AlgorithmSpec
from lsp_exp.rl.kl import kl_k3

VOCAB = 61
ALGORITHMS = {  # conf/algorithm/*.yaml: advantage, policy loss, aggregation, epochs
    "lsp": ("group_mean", "reinforce_token", "seq_mean_token_sum", 1),
    "grpo": ("group_std", "clipped", "seq_mean_token_mean", 1),
    "dr_grpo": ("group_mean", "clipped", "seq_mean_token_sum_norm", 1),
    "rloo": ("rloo", "reinforce_token", "seq_mean_token_sum", 1),
    "reinforce_pp": ("batch_norm", "clipped", "token_mean", 1),
    "ppo": ("group_mean", "clipped", "token_mean", 2),
}


def tiny_policy(checkpointing: bool) -> LlamaForCausalLM:
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, pad_token_id=0))
    if checkpointing:
        enable_checkpointing(model)
    return model.train()


def rollout(groups: int, members: int, seed: int) -> Rollout:
    """`groups` prompts (left-padded, different lengths) with `members` completions each (different
    lengths, some cut early), prompt-major, as `generate` returns them."""
    g = torch.Generator().manual_seed(seed)
    prompt_width, completion_width = 6, 7
    rows = groups * members
    ids = torch.randint(1, VOCAB, (rows, prompt_width + completion_width), generator=g)
    prompt_mask = torch.ones(rows, prompt_width, dtype=torch.long)
    for i in range(groups):
        group = slice(i * members, (i + 1) * members)
        ids[group, :prompt_width] = ids[i * members, :prompt_width]          # one prompt per group
        prompt_mask[group, :i % 3] = 0                                       # left padding
    ids[:, :prompt_width][prompt_mask == 0] = 0
    lengths = torch.randint(1, completion_width + 1, (rows,), generator=g)
    keep = (torch.arange(completion_width)[None, :] < lengths[:, None]).long()
    ids[:, prompt_width:][keep == 0] = 0
    return Rollout(input_ids=ids, attention_mask=torch.cat([prompt_mask, keep], 1),
                   completion_mask=torch.cat([torch.zeros_like(prompt_mask), keep], 1), texts=[""] * rows,
                   finished=lengths < completion_width, temperature=0.8, prompt_length=prompt_width)


def batches(reference) -> list[RoleBatch]:
    """The Solver (N=3 queries x G=4 answers, one query invalid) and the Challenger (N=5 queries, one group)."""
    solver, challenger = rollout(3, 4, seed=1), rollout(1, 5, seed=2)
    g = torch.Generator().manual_seed(3)
    valid = torch.tensor([True, False, True])[:, None].expand(3, 4)
    with torch.no_grad():
        return [RoleBatch("solver", solver, torch.rand(3, 4, generator=g), valid,
                          logprobs_in_chunks(reference, solver), 0.05, 7),
                RoleBatch("challenger", challenger, torch.rand(1, 5, generator=g), torch.ones(1, 5, dtype=torch.bool),
                          logprobs_in_chunks(reference, challenger), 0.1, 7)]


def step_gradients(policy, reference, spec: AlgorithmSpec, placement: str, micro: int | None):
    """The gradients of L_Sol + 0.5 L_Ch at each inner epoch (the policy moved between epochs), and the loss terms."""
    roles = batches(reference)
    grads, terms = [], []
    optimizer = torch.optim.SGD(policy.parameters(), lr=0.5)
    for _ in range(spec.epochs):
        policy.zero_grad(set_to_none=True)
        terms.append([role_backward(b, policy, estimator=kl_k3, placement=placement, algorithm=spec, scale=scale,
                                    logprob_options=LogprobOptions(micro_batch_size=micro),
                                    backward=torch.Tensor.backward)
                      for b, scale in zip(roles, (1.0, 0.5), strict=True)])
        grads.append(torch.cat([p.grad.flatten() for p in policy.parameters()]))
        optimizer.step()
    return grads, terms, roles


@pytest.fixture(scope="module")
def reference():
    torch.manual_seed(1)
    return LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, pad_token_id=0)).eval()


@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain", "checkpointed"])
@pytest.mark.parametrize("placement", ["advantage", "loss", "reward"])
@pytest.mark.parametrize("algorithm", list(ALGORITHMS))
def test_micro_batches_give_the_full_batch_gradient(reference, algorithm, placement, checkpointing):
    advantage, loss, aggregation, epochs = ALGORITHMS[algorithm]
    spec = AlgorithmSpec(advantage, loss, aggregation, clip_low=0.02, clip_high=0.03, epochs=epochs)
    full_grads, full_terms, full_roles = step_gradients(tiny_policy(False), reference, spec, placement, None)
    for micro in (5, 1):  # 5: the Solver's groups of 4 are cut across micro-batches; 1: one row at a time
        grads, terms, roles = step_gradients(tiny_policy(checkpointing), reference, spec, placement, micro)
        for epoch, (got, want) in enumerate(zip(grads, full_grads, strict=True)):
            assert float(want.norm()) > 1e-3
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7, msg=f"epoch {epoch}, micro={micro}")
        for got, want in zip(terms, full_terms, strict=True):
            for g_role, w_role in zip(got, want, strict=True):
                for field in ("policy", "kl", "kl_mean", "clip_frac", "approx_kl"):
                    assert float(getattr(g_role, field)) == pytest.approx(float(getattr(w_role, field)), rel=1e-5,
                                                                          abs=1e-6), field
        for got, want in zip(roles, full_roles, strict=True):
            torch.testing.assert_close(got.advantages, want.advantages, rtol=1e-5, atol=1e-7)
            assert got.entropy == pytest.approx(want.entropy, rel=1e-5)
    if epochs > 1:
        assert float(full_terms[1][0].clip_frac) > 0  # the second epoch's ratios moved: clipping is exercised


def test_checkpointed_layers_drop_the_cache_so_shared_prefixes_are_turned_off(reference, monkeypatch):
    """Under gradient checkpointing in training, transformers' layers run without the KV cache: the
    tail of a shared-prefix pass would attend to nothing. Forcing the sharing on shows the guard matters."""
    batch = batches(reference)[0]
    plain = logprobs.token_logprobs(tiny_policy(False), batch.rollout.input_ids, batch.rollout.attention_mask)
    checkpointed = tiny_policy(True)
    guarded = logprobs.token_logprobs(checkpointed, batch.rollout.input_ids, batch.rollout.attention_mask)
    counted = batch.rollout.completion_mask[:, 1:].bool()
    torch.testing.assert_close(guarded[counted], plain[counted], rtol=1e-5, atol=1e-6)
    monkeypatch.setattr(logprobs, "_cache_dropped", lambda model: False)
    try:
        forced = logprobs.token_logprobs(checkpointed, batch.rollout.input_ids, batch.rollout.attention_mask)
    except AttributeError:  # transformers 5.2x returns no cache at all (`None.batch_repeat_interleave`)
        return
    assert not torch.allclose(forced[counted], plain[counted], atol=1e-3)  # or a cache the layers never filled


def test_row_chunks_and_generation_parts():
    assert row_chunks(5, None) == [slice(0, 5)]
    assert row_chunks(5, 2) == [slice(0, 2), slice(2, 4), slice(4, 5)]
    assert generation_parts(3, 4, None) == [(0, 3, 4)]
    assert generation_parts(3, 4, 8) == [(0, 2, 4), (2, 3, 4)]          # whole prompts with their 4 copies
    assert generation_parts(2, 4, 3) == [(0, 1, 3), (0, 1, 1), (1, 2, 3), (1, 2, 1)]  # a prompt's copies in parts


def test_joined_rollouts_score_like_the_parts(reference):
    """Parts of different prompt and completion widths, padded into one batch, score as each part alone."""
    a, b = rollout(1, 2, seed=4), rollout(2, 2, seed=5)
    b = Rollout(b.input_ids[:, 2:-3], b.attention_mask[:, 2:-3], b.completion_mask[:, 2:-3], b.texts,
                b.finished, b.temperature, prompt_length=4)
    joined = join_rollouts([a, b], pad=0)
    assert joined.input_ids.shape == (6, 13) and joined.prompt_length == 6
    with torch.no_grad():
        together = logprobs_in_chunks(reference, joined, LogprobOptions(micro_batch_size=3))
        alone = [logprobs_in_chunks(reference, r) for r in (a, b)]
    counted = joined.completion_mask[:, 1:].bool()
    torch.testing.assert_close(together[:2][counted[:2]], alone[0][a.completion_mask[:, 1:].bool()],
                               rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(together[2:][counted[2:]], alone[1][b.completion_mask[:, 1:].bool()],
                               rtol=1e-5, atol=1e-6)
    copy.deepcopy(joined)  # an ordinary dataclass of tensors


@pytest.mark.parametrize("share", [True, False], ids=["shared-prefix", "plain"])
def test_scoring_from_the_first_completion_token_equals_a_full_log_softmax(reference, share):
    """chunk_logprobs projects only positions from the first completion token on (logits_to_keep):
    on every counted position the log-prob and the entropy equal a plain full-vocabulary pass."""
    from lsp_exp.core.micro_batch import chunk_logprobs

    batch = batches(reference)[0]
    r = batch.rollout
    counted = r.completion_mask[:, 1:].bool()
    with torch.no_grad():
        logp, entropy_sum = chunk_logprobs(reference, r, slice(0, 12), entropy_mask=batch.token_mask,
                                           options=LogprobOptions(share_prefixes=share))
        position = (r.attention_mask.cumsum(-1) - 1).clamp(min=0)
        logits = reference(input_ids=r.input_ids, attention_mask=r.attention_mask, position_ids=position).logits
    z = logits[:, :-1].float() / r.temperature
    plain = torch.log_softmax(z, -1).gather(-1, r.input_ids[:, 1:, None]).squeeze(-1)
    torch.testing.assert_close(logp[counted], plain[counted], rtol=1e-5, atol=1e-5)
    assert bool((logp[:, :r.prompt_length - 1] == 0).all())   # nothing scored before the first completion token
    entropy = -(torch.softmax(z, -1) * torch.log_softmax(z, -1)).sum(-1)
    torch.testing.assert_close(entropy_sum, entropy[counted].sum(), rtol=1e-5, atol=1e-5)
