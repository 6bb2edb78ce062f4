"""Real tokenizer conventions on a CPU (tests/helpers/real_models.py): Llama-3 (no pad token, so pad = eos;
two end ids in the generation config) and Qwen2.5 (pad is a separate end-of-text token).

Masks keep exactly the tokens up to and including the first end token, whatever the pad; the end
token gets its policy gradient and KL term; log-probs are those of the sampling temperature."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import lsp_exp.core.generation as generation
from lsp_exp.core.generation import SamplingOptions, chat_prompts, generate
from lsp_exp.core.logprobs import LogprobOptions, token_logprobs
from lsp_exp.core.models import load_policy, load_tokenizer
from lsp_exp.rl.algorithms import AlgorithmSpec
from lsp_exp.rl.kl import kl_k1, sequence_kl
from lsp_exp.rl.role_loss import role_loss
from lsp_exp.core.roles import RoleBatch, role_backward
from lsp_exp.core.special_tokens import ModelSetupError, check_chat_model, end_token_ids

from tests.helpers.real_models import (LLAMA3_END_TOKENS, QWEN_END_TOKENS, REAL_RUN, build_tiny_model, save_tiny_model,
                                       save_tiny_reward_model)

STYLES = ["llama3", "qwen"]
END_TOKENS = {"llama3": LLAMA3_END_TOKENS, "qwen": QWEN_END_TOKENS}


def loaded(style, tmp_path):
    """A saved tiny model loaded back the way `lsp-train` loads a real one (pad = eos for Llama-3)."""
    path = save_tiny_model(tmp_path / style, style)
    tokenizer = load_tokenizer(str(path))
    model = load_policy(_cfg(lora=False), str(path)).eval()
    return model, tokenizer


def _cfg(lora: bool):
    from omegaconf import OmegaConf

    return OmegaConf.create({"dtype": "float32", "attn_implementation": "sdpa",
                             "lora": {"enabled": lora, "r": 4, "alpha": 8, "dropout": 0.0,
                                      "target_modules": ["q_proj", "v_proj"]}})


def scripted(model, rows: list[list[int]]):
    """Make greedy decoding emit `rows[r][t]` at step t (the last token repeats): a hook on the head."""
    step = {"t": 0}

    def hook(module, inputs, output):
        t = step["t"]
        step["t"] += 1
        forced = torch.full_like(output[:, -1], -1e4)
        for r, seq in enumerate(rows):
            forced[r, seq[min(t, len(seq) - 1)]] = 0.0
        output = output.clone()
        output[:, -1] = forced
        return output

    return model.lm_head.register_forward_hook(hook)


def words(tokenizer, *texts):
    return [tokenizer(t, add_special_tokens=False).input_ids[0] for t in texts]


@pytest.mark.parametrize("style", STYLES)
def test_end_ids_are_the_tokenizers_eos_and_every_generation_config_end_id(style, tmp_path):
    model, tokenizer = loaded(style, tmp_path)
    ends = tokenizer.convert_tokens_to_ids(list(END_TOKENS[style]))
    assert sorted(end_token_ids(model, tokenizer)) == sorted(ends) and len(ends) == 2
    assert end_token_ids(model, tokenizer)[0] == tokenizer.eos_token_id
    if style == "llama3":
        assert tokenizer.pad_token_id == tokenizer.eos_token_id  # no pad token: pad = eos
    else:
        assert tokenizer.pad_token_id != tokenizer.eos_token_id and tokenizer.pad_token_id in ends


@pytest.mark.parametrize("style", STYLES)
def test_masks_keep_exactly_the_tokens_up_to_the_first_end_token(style, tmp_path):
    model, tokenizer = loaded(style, tmp_path)
    eos = tokenizer.eos_token_id
    other_end = [e for e in end_token_ids(model, tokenizer) if e != eos][0]
    a, b, c = words(tokenizer, "The", " fox", " dog")
    rows = [[a, b, eos, c], [eos, a], [a, other_end, b], [a, b, c, a]]   # end, end only, other end id, unfinished
    handle = scripted(model, rows)
    out = generate(model, tokenizer, chat_prompts(tokenizer, ["Hello", "What is 12+3*4?", "Hi", "7*8"]),
                   max_new_tokens=4, do_sample=False)
    handle.remove()
    width = out.completion_mask.shape[1]
    expected = [[a, b, eos], [eos], [a, other_end], [a, b, c, a]]
    for row in range(4):
        kept = out.input_ids[row][out.completion_mask[row].bool()].tolist()
        assert kept == expected[row], (row, kept)
        completion = slice(width - 4, width)
        assert torch.equal(out.attention_mask[row, completion], out.completion_mask[row, completion])
    assert out.finished.tolist() == [True, True, True, False]
    assert out.completion_lengths.tolist() == [3, 1, 2, 4]        # the end-only answer counts one token
    assert out.texts[1] == "" and out.texts[0] == "The fox"


def test_a_row_stopped_at_the_capture_marker_keeps_nothing_after_it_with_pad_equal_to_eos(tmp_path):
    """The judge stops a row at `<Score>` (`stop_at_capture`): with Llama-3's pad = eos the padding
    after the stop is an end id, yet the row did not end and nothing after the marker counts."""
    model, tokenizer = loaded("llama3", tmp_path)
    assert tokenizer.pad_token_id == tokenizer.eos_token_id
    a, b, marker = words(tokenizer, "The", " fox", " dog")
    eos = tokenizer.eos_token_id
    handle = scripted(model, [[a, marker, b, eos], [a, b, eos]])
    columns = list(words(tokenizer, "The", " fox"))
    out = generate(model, tokenizer, chat_prompts(tokenizer, ["Hello", "Hi"]), max_new_tokens=6, do_sample=False,
                   capture=(marker, columns), stop_at_capture=True)
    handle.remove()
    kept = [out.input_ids[r][out.completion_mask[r].bool()].tolist() for r in range(2)]
    assert kept == [[a, marker], [a, b, eos]]
    assert out.finished.tolist() == [False, True]
    assert not out.captured[0].isnan().any() and out.captured[1].isnan().all()


def test_generation_stops_at_any_end_id(tmp_path):
    model, tokenizer = loaded("llama3", tmp_path)
    end_of_text = tokenizer.convert_tokens_to_ids("<|end_of_text|>")
    assert end_of_text != tokenizer.eos_token_id
    (a,) = words(tokenizer, "The")
    handle = scripted(model, [[a, end_of_text], [end_of_text]])
    prompts = chat_prompts(tokenizer, ["Hello", "Hi"])
    out = generate(model, tokenizer, prompts, max_new_tokens=10, do_sample=False)
    handle.remove()
    prompt_len = generation.encode_prompts(tokenizer, prompts)["input_ids"].shape[1]
    assert out.input_ids.shape[1] == prompt_len + 2 and out.finished.all()


def test_a_pad_token_sampled_mid_answer_is_a_real_token(tmp_path):
    """Qwen's pad (<|endoftext|>) with a generation config that does not list it as an end id: sampled
    mid-answer, it stays in the attention mask, and the next token is scored in its real context."""
    model, tokenizer = loaded("qwen", tmp_path)
    model.generation_config.eos_token_id = [tokenizer.eos_token_id]
    pad = tokenizer.pad_token_id
    a, b = words(tokenizer, "The", " fox")
    handle = scripted(model, [[a, pad, b, tokenizer.eos_token_id], [b, tokenizer.eos_token_id]])
    out = generate(model, tokenizer, chat_prompts(tokenizer, ["Hello there, how are you", "Hi"]), max_new_tokens=5,
                   do_sample=False)
    handle.remove()
    assert out.input_ids[0][out.completion_mask[0].bool()].tolist() == [a, pad, b, tokenizer.eos_token_id]
    assert_batched_equals_alone(model, out)


def assert_batched_equals_alone(model, out, temperature: float = 1.0, options: LogprobOptions = LogprobOptions()):
    batched = token_logprobs(model, out.input_ids, out.attention_mask, temperature=temperature, options=options)
    for i in range(out.input_ids.shape[0]):
        keep = out.attention_mask[i].bool()
        ids = out.input_ids[i][keep][None]
        alone = token_logprobs(model, ids, torch.ones_like(ids), temperature=temperature)[0]
        counted = out.attention_mask[i, 1:].bool() & keep[:-1]  # positions whose context and target are real
        torch.testing.assert_close(batched[i][counted], alone[-int(counted.sum()):], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("share_prefixes", [True, False])
@pytest.mark.parametrize("style", STYLES)
def test_log_probs_of_a_padded_batch_equal_each_sequence_scored_alone(style, share_prefixes, tmp_path, monkeypatch):
    model, tokenizer = loaded(style, tmp_path)
    torch.manual_seed(0)
    out = generate(model, tokenizer, chat_prompts(tokenizer, ["Hi", "Please solve 12+3*4 and show your work."]),
                   max_new_tokens=6, temperature=0.8, num_return_sequences=3)
    assert out.temperature == 0.8
    assert_batched_equals_alone(model, out, temperature=0.8, options=LogprobOptions(share_prefixes=share_prefixes))


def test_log_probs_are_those_of_the_sampling_temperature(tmp_path):
    model, tokenizer = loaded("llama3", tmp_path)
    torch.manual_seed(0)
    out = generate(model, tokenizer, chat_prompts(tokenizer, ["Hello"]), max_new_tokens=5, temperature=0.7,
                   num_return_sequences=2)
    ids, mask = out.input_ids, out.attention_mask
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
        expected = torch.log_softmax(logits / 0.7, -1).gather(-1, ids[:, 1:, None])[..., 0]
        got = token_logprobs(model, ids, mask, temperature=out.temperature)
    counted = out.completion_mask[:, 1:].bool()
    torch.testing.assert_close(got[counted], expected[counted], atol=1e-5, rtol=1e-5)
    at_one = torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None])[..., 0]
    assert not torch.allclose(got[counted], at_one[counted], atol=1e-3)
    # The update scores the rollout at its temperature: the playout log-probs are the tempered ones.
    batch = RoleBatch("solver", out, torch.tensor([[1.0, 0.0]]), torch.ones(1, 2, dtype=torch.bool),
                      got.detach(), 0.0, 5)
    role_backward(batch, model, estimator=kl_k1, placement="advantage", scale=1.0, logprob_options=LogprobOptions(),
                  algorithm=AlgorithmSpec("group_mean", "reinforce_token", "seq_mean_token_sum"), backward=no_backward)
    torch.testing.assert_close(batch.old_logp[counted], expected[counted], atol=1e-5, rtol=1e-5)


def no_backward(loss):
    pass


def test_the_end_token_gets_its_policy_gradient_and_kl_term(tmp_path):
    """Llama-3 (pad = eos). Row 0 answers "The<eot>", row 1 only "<eot>". With the LSP loss
    (seq_mean_token_sum, B' = 2 sequences) and the KL in the loss (k1, beta, mean over 2 members):
        d loss / d logp_t = -A_i / B' + beta / 2   on every counted token, 0 elsewhere."""
    model, tokenizer = loaded("llama3", tmp_path)
    eos = tokenizer.eos_token_id
    (a,) = words(tokenizer, "The")
    handle = scripted(model, [[a, eos], [eos]])
    out = generate(model, tokenizer, chat_prompts(tokenizer, ["Hello", "Hi"]), max_new_tokens=3, do_sample=False)
    handle.remove()
    model.train()
    logp = token_logprobs(model, out.input_ids, out.attention_mask)
    logp.retain_grad()
    token_mask = out.completion_mask[:, 1:].float()
    assert token_mask.sum(-1).tolist() == [2.0, 1.0]
    advantages, beta = torch.tensor([0.5, -1.0]), 0.1
    kl = sequence_kl(kl_k1, logp, logp.detach() - 0.3, token_mask)
    lsp = AlgorithmSpec("group_mean", "reinforce_token", "seq_mean_token_sum")
    loss = role_loss(logp, None, token_mask, advantages, torch.ones(2, dtype=torch.bool), kl, beta=beta,
                     placement="loss", algorithm=lsp, token_weights=lsp.token_weights(token_mask))
    loss.total.backward()
    expected = token_mask * (-advantages[:, None] / 2 + beta / 2)
    torch.testing.assert_close(logp.grad, expected)
    end_position = token_mask[1].nonzero()[0, 0]
    assert out.input_ids[1, end_position + 1] == eos and logp.grad[1, end_position] == pytest.approx(0.55)
    assert model.lm_head.weight.grad[eos].abs().sum() > 0       # the decision to stop is trained


def test_a_model_without_chat_template_or_end_ids_is_refused_naming_it(tmp_path):
    model, tokenizer = build_tiny_model("qwen")
    tokenizer.chat_template = None
    with pytest.raises(ModelSetupError, match="'my-model': its tokenizer has no chat template"):
        check_chat_model(model, tokenizer, "my-model")
    model, tokenizer = build_tiny_model("qwen")
    tokenizer.eos_token = None
    model.generation_config.eos_token_id = None
    with pytest.raises(ModelSetupError, match="'my-model': no end token"):
        check_chat_model(model, tokenizer, "my-model")


def test_lsp_train_refuses_a_model_without_chat_template_in_one_line(tmp_path):
    path = save_tiny_model(tmp_path / "base", "llama3")
    for name in ("chat_template.jinja",):
        (path / name).unlink(missing_ok=True)
    out = subprocess.run([sys.executable, "-m", "lsp_exp.cli.train", "task=prompts", f"model.path={path}",
                          "logger=none", f"paths.outputs={tmp_path}", "trainer.enable_progress_bar=false"],
                         capture_output=True, text=True, timeout=300, env={"HF_HUB_OFFLINE": "1", "PATH": ""})
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert out.returncode == 2 and lines == [f"error: model '{path}': its tokenizer has no chat template "
                                             "(tokenizer_config.json or chat_template.jinja); self-play renders "
                                             "every turn with it: use an instruct/chat model"], out.stderr[-2000:]


@pytest.mark.parametrize("style, game, lora, prompt", [("llama3", "lsp", False, "paper"),
                                                        ("qwen", "lsp_zero", True, "toy"),
                                                        ("llama3", "grpo_data", True, "auto")])
def test_real_style_models_play_every_game(style, game, lora, prompt, tmp_path):
    """Two steps of each game on Llama-3- and Qwen-style checkpoints (the paper's Challenger prompt
    and judge rubric, or the short toy prompt the tiny Qwen can answer; sampling at T = 0.7), full
    fine-tune and LoRA, a raw (unbounded) reward model: the first update moves the
    policy away from the reference (KL > 0 at the second step) and the run ends FINISHED."""
    import json

    import mlflow

    from tests.helpers.tiny_run import compose_config
    from lsp_exp.cli.train import train

    path = save_tiny_model(tmp_path / style, style, chat_trained=True)  # its turns end: queries can be valid
    reward = save_tiny_reward_model(tmp_path / "rm", style)   # raw scores: invalid queries take the step's highest V
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("\n".join(json.dumps({"prompt": p}) for p in ["Say hi.", "What is 12+3*4?", "Name a fox."]))
    store = f"sqlite:///{tmp_path}/mlflow.db"
    cfg = compose_config("train", [*REAL_RUN, f"model.path={path}", f"model.name={style}", f"game={game}",
                                   f"model.lora.enabled={lora}", "model.lora.target_modules=[q_proj,v_proj]",
                                   "game.temperature=0.7", "optim.lr=1e-2", f"game.prompt={prompt}",
                                   f"paths.outputs={tmp_path / 'outputs'}",
                                   f"logger.tracking_uri={store}", "reward=reward_model", f"reward.path={reward}",
                                   *([f"game.prompts_path={prompts}"] if game == "grpo_data" else [])])
    assert train(cfg) == {}   # no held-out set for a real model here: nothing is evaluated
    client = mlflow.MlflowClient(store)
    run = client.search_runs([client.get_experiment_by_name("lsp-exp").experiment_id])[0]
    assert run.info.status == "FINISHED"

    def metric(key):
        return [m.value for m in client.get_metric_history(run.info.run_id, key)]

    grad_norm, role = metric("train/grad_norm"), "solver" if game == "grpo_data" else "challenger"
    assert grad_norm[0] > 0 and all(g == g for g in grad_norm), grad_norm  # a learning signal, nothing non-finite
    kl = metric(f"train/kl/{role}")
    assert kl[0] == 0.0 and kl[1] != 0.0, kl       # step 0: policy = reference; step 1: the update moved it


def test_a_reward_model_without_pad_token_reads_its_score_at_the_final_end_token(tmp_path):
    """Llama-3-style reward model (pad = eos = <|eot_id|>, which also closes the rendered answer): the
    score is the head at that last <|eot_id|> of each row, batched or alone; transformers' pooling
    (the last token that is not the pad id) would read the token before it."""
    from lsp_exp.rewards.reward_model import load_reward_model

    reward = load_reward_model(str(save_tiny_reward_model(tmp_path / "rm", "llama3")), batch_size=3)
    queries, answers = ["Say hi.", "What is 12+3*4?", "Name a fox."], ["Hi!", "24", "The quick brown fox"]
    scores = reward.score(queries, answers).values
    model, tokenizer = reward.model, reward.tokenizer
    for i, (q, a) in enumerate(zip(queries, answers, strict=True)):
        ids = tokenizer(reward.render(q, a), return_tensors="pt", add_special_tokens=False).input_ids
        assert ids[0, -1] == tokenizer.convert_tokens_to_ids("<|eot_id|>") == tokenizer.pad_token_id
        with torch.no_grad():
            at_end = model.score(model.model(input_ids=ids).last_hidden_state[:, -1])[0, 0]
            pooled_by_transformers = model(input_ids=ids).logits[0, 0]
        assert scores[i].item() == pytest.approx(at_end.item(), abs=1e-5)
        assert scores[i].item() != pytest.approx(pooled_by_transformers.item(), abs=1e-5)


def test_the_hf_generate_path_samples_what_is_scored(tmp_path, monkeypatch):
    """`trainer.hf_generate` (the benchmark's baseline): transformers' `generate` would apply the checkpoint's
    own processors (Qwen2.5's repetition_penalty 1.05); here it decodes exactly what `_sample` does."""
    model, tokenizer = loaded("qwen", tmp_path)
    assert model.generation_config.repetition_penalty == 1.05
    prompts = chat_prompts(tokenizer, ["Hello there", "What is 12+3*4?", "Name a fox."])
    ours = generate(model, tokenizer, prompts, max_new_tokens=24, do_sample=False)
    theirs = generate(model, tokenizer, prompts, max_new_tokens=24, do_sample=False,
                      options=SamplingOptions(hf_generate=True))
    assert torch.equal(ours.completion_mask, theirs.completion_mask)
    assert torch.equal(ours.input_ids[ours.completion_mask.bool()], theirs.input_ids[theirs.completion_mask.bool()])
    assert model.generation_config.repetition_penalty == 1.05  # the model's own config is back


def test_sampling_draws_from_the_tempered_distribution(tmp_path):
    """Logits forced to (0, log 3) on two tokens: at T = 0.5 the second is drawn with probability
    9 / 10 (softmax(z / T)); at T = 1, 3 / 4. 4000 draws each (binomial std < 0.007)."""
    model, tokenizer = loaded("llama3", tmp_path)
    a, b = words(tokenizer, "The", " fox")

    def hook(module, inputs, output):
        forced = torch.full_like(output[:, -1], -1e4)
        forced[:, a], forced[:, b] = 0.0, torch.log(torch.tensor(3.0))
        output = output.clone()
        output[:, -1] = forced
        return output

    handle = model.lm_head.register_forward_hook(hook)
    generator = torch.Generator().manual_seed(0)
    for temperature, expected in ((0.5, 0.9), (1.0, 0.75)):
        out = generate(model, tokenizer, chat_prompts(tokenizer, ["Hi"]), max_new_tokens=1, temperature=temperature,
                       num_return_sequences=4000, generator=generator)
        share = (out.input_ids[:, -1] == b).float().mean().item()
        assert share == pytest.approx(expected, abs=0.03), (temperature, share)
    handle.remove()


def test_later_ppo_epochs_score_at_the_sampling_temperature(tmp_path):
    """A second inner epoch over the same playouts, the policy unchanged: ratio 1 on every token, so
    nothing is clipped and the approximate KL to the playout policy is 0, at T = 0.7."""
    model, tokenizer = loaded("qwen", tmp_path)
    torch.manual_seed(0)
    out = generate(model, tokenizer, chat_prompts(tokenizer, ["Hello"]), max_new_tokens=6, temperature=0.7,
                   num_return_sequences=3)
    with torch.no_grad():
        ref = token_logprobs(model, out.input_ids, out.attention_mask, temperature=0.7)
    batch = RoleBatch("solver", out, torch.tensor([[1.0, 0.0, 0.5]]), torch.ones(1, 3, dtype=torch.bool), ref, 0.1, 6)
    spec = AlgorithmSpec("group_mean", "clipped", "token_mean", clip_low=0.01, clip_high=0.01, epochs=2)
    role_backward(batch, model, estimator=kl_k1, placement="advantage", algorithm=spec, scale=1.0,
                  logprob_options=LogprobOptions(), backward=no_backward)
    second = role_backward(batch, model, estimator=kl_k1, placement="advantage", algorithm=spec, scale=1.0,
                           logprob_options=LogprobOptions(), backward=no_backward)
    assert float(second.approx_kl) == pytest.approx(0.0, abs=1e-7) and float(second.clip_frac) == 0.0
