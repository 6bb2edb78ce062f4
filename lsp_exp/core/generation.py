"""Generation: the one place the model is sampled (log-probs of what it sampled: `logprobs.py`).

Prompts are left-padded once; completions are cut by position after their first end token (any of
the model's end ids, `special_tokens.py`): the end token itself counts (it gets a policy gradient and
a KL term), what follows it does not, whatever the pad token is.

**One prefill per distinct prompt** (exact; measured in `experiments/bench/`): with
`num_return_sequences = G`, each prompt is run once and its KV cache repeated G times before
decoding (transformers' `generate` runs every copy), in a short sampling loop under
`torch.inference_mode` (no per-step logits processors or stopping criteria; it honours
`model.generation_config.min_new_tokens`, which `lsp-train` refuses for the policy at start,
`check_min_new_tokens`: scoring does not mask the end ids).

**Parts**: with `SamplingOptions.generation_batch_size` set, at most that many rows are decoded at once
(whole prompts with their copies when they fit, else a prompt's copies in parts) and the parts are
joined into one Rollout (`join_rollouts`), so the KV cache is bounded whatever N x G is. Parts decode
one after another (each as many steps as the longest row), so leave it unset unless the KV cache
does not fit: it is small next to the update's activations and logits (`trainer.micro_batch_size`).

`SamplingOptions` (`trainer.hf_generate`, `trainer.generation_batch_size`) is built once from the
config (`SamplingOptions.of(cfg.trainer)`) and passed to every caller of `generate`.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
from transformers import GenerationConfig

from lsp_exp.core.kv_cache import cache_of, repeat_is_exact, with_cache
from lsp_exp.core.special_tokens import ModelSetupError, end_ids_tensor


@dataclass(frozen=True)
class SamplingOptions:
    """How `generate` decodes (`trainer.hf_generate`, `trainer.generation_batch_size`)."""

    hf_generate: bool = False                 # True: transformers' `generate` (every copy of a prompt prefilled)
    generation_batch_size: int | None = None  # rows decoded at once (None: all of a call's rows)

    @classmethod
    def of(cls, trainer) -> "SamplingOptions":
        """The options a `trainer` config node sets."""
        return cls(hf_generate=bool(trainer.hf_generate), generation_batch_size=trainer.generation_batch_size)


@dataclass
class Rollout:
    """A batch of prompts and their sampled completions (rows aligned)."""

    input_ids: torch.Tensor        # [B, P + T] prompt (left-padded) followed by the completion
    attention_mask: torch.Tensor   # [B, P + T] 1 on real prompt tokens and on completion tokens up to the end token
    completion_mask: torch.Tensor  # [B, P + T] 1 only on completion tokens that count (incl. the end token)
    texts: list[str]               # decoded completions, special tokens removed
    finished: torch.Tensor         # [B] bool: the completion ended with an end token
    temperature: float = 1.0       # the sampling temperature: log-probs of these rows are scored at it
    prompt_length: int | None = None  # columns of the (left-padded) prompt; the completion follows
    captured: torch.Tensor | None = None  # [B, C] with `capture=(marker, columns)`: log-probs of the columns at the
                                          # position after the row's first marker token (NaN: no marker)

    @property
    def completion_lengths(self) -> torch.Tensor:
        return self.completion_mask.sum(-1)


def chat_prompts(tokenizer, user_texts: list[str]) -> list[str]:
    """Render each text as one user turn followed by the assistant header."""
    return [
        tokenizer.apply_chat_template([{"role": "user", "content": t}], tokenize=False, add_generation_prompt=True)
        for t in user_texts
    ]


def encode_prompts(tokenizer, prompts: list[str], device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    enc = tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
    return {k: v.to(device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}


def generate(model, tokenizer, prompts: list[str], *, max_new_tokens: int, do_sample: bool = True,
             temperature: float = 1.0, num_return_sequences: int = 1,
             generator: torch.Generator | None = None, capture: tuple[int, list[int]] | None = None,
             stop_at_capture: bool = False, options: SamplingOptions = SamplingOptions()) -> Rollout:
    """Sample (or greedily decode) completions for rendered prompts.

    Rows are prompt-major: the `num_return_sequences` completions of prompt i are rows
    i * n .. i * n + n - 1. Sampling stops a row at any end id and draws from `generator` when given
    (else the global RNG of the model's device). It runs under `torch.inference_mode`; the returned
    tensors are ordinary tensors (cloned out of inference mode), so the update can run autograd
    through them. With `options.generation_batch_size`, in parts of at most that many rows.

    `capture=(marker, columns)`: also keep, per row, the log-probs (temperature 1) of the token ids
    `columns` right after the row's first `marker` token, from logits the sampling loop computes
    anyway (the judge's score digits after `<Score>`); NaN where a row has no marker, or with
    `options.hf_generate` (the caller then scores those rows itself). With `stop_at_capture` a row stops once
    its log-probs are kept (its text ends with the marker; `finished` is False: no end token).
    """
    kwargs = dict(max_new_tokens=max_new_tokens, do_sample=do_sample, temperature=temperature, generator=generator,
                  capture=capture, stop_at_capture=stop_at_capture, hf_generate=options.hf_generate)
    parts = generation_parts(len(prompts), num_return_sequences, options.generation_batch_size)
    if len(parts) == 1:
        return _generate(model, tokenizer, prompts, num_return_sequences=num_return_sequences, **kwargs)
    return join_rollouts([_generate(model, tokenizer, prompts[first:last], num_return_sequences=copies, **kwargs)
                          for first, last, copies in parts], pad=tokenizer.pad_token_id)


def generation_parts(n_prompts: int, copies: int, max_rows: int | None) -> list[tuple[int, int, int]]:
    """(first prompt, last prompt + 1, copies of each) per call, prompt-major, each at most `max_rows`
    rows: whole prompts with all their copies when `copies <= max_rows`, else one prompt's copies in parts."""
    if not max_rows or n_prompts * copies <= max_rows:
        return [(0, n_prompts, copies)]
    if copies <= max_rows:
        per_call = max_rows // copies
        return [(i, min(i + per_call, n_prompts), copies) for i in range(0, n_prompts, per_call)]
    return [(i, i + 1, min(max_rows, copies - done)) for i in range(n_prompts) for done in range(0, copies, max_rows)]


def join_rollouts(parts: list[Rollout], pad: int) -> Rollout:
    """One Rollout of the parts' rows in order: prompts left-padded and completions right-padded to
    the widest part (the added columns are masked out; position ids, which follow the mask, do not move)."""
    prompt = max(r.prompt_length for r in parts)
    completion = max(r.input_ids.shape[1] - r.prompt_length for r in parts)

    def widen(t: torch.Tensor, r: Rollout, value: int) -> torch.Tensor:
        left, right = prompt - r.prompt_length, completion - (t.shape[1] - r.prompt_length)
        return torch.nn.functional.pad(t, (left, right), value=value)

    return Rollout(
        input_ids=torch.cat([widen(r.input_ids, r, pad) for r in parts]),
        attention_mask=torch.cat([widen(r.attention_mask, r, 0) for r in parts]),
        completion_mask=torch.cat([widen(r.completion_mask, r, 0) for r in parts]),
        texts=[t for r in parts for t in r.texts],
        finished=torch.cat([r.finished for r in parts]),
        temperature=parts[0].temperature,
        prompt_length=prompt,
        captured=torch.cat([r.captured for r in parts]) if parts[0].captured is not None else None,
    )


def _generate(model, tokenizer, prompts: list[str], *, max_new_tokens: int, do_sample: bool, temperature: float,
              num_return_sequences: int, generator: torch.Generator | None,
              capture: tuple[int, list[int]] | None = None, stop_at_capture: bool = False,
              hf_generate: bool = False) -> Rollout:
    enc = encode_prompts(tokenizer, prompts, model.device)
    ends = end_ids_tensor(model, tokenizer, model.device)
    captured = None
    if capture is not None:
        captured = torch.full((len(prompts) * num_return_sequences, len(capture[1])), float("nan"), device=model.device)
    with torch.inference_mode():
        if hf_generate or getattr(model.config, "is_encoder_decoder", False):
            sampling = (dict(do_sample=True, temperature=temperature, top_k=0, top_p=1.0) if do_sample
                        else dict(do_sample=False))
            # `generate` draws from the global RNG only, and fills every field the call leaves unset from
            # the model's generation config (Qwen2.5: repetition_penalty 1.05, top_k 20, ...): a plain
            # config for the call, so the samples come from softmax(z / T), the distribution scored.
            with _seeded_from(generator, model.device), _plain_generation_config(model):
                out = model.generate(
                    **enc, max_new_tokens=max_new_tokens, num_return_sequences=num_return_sequences,
                    pad_token_id=tokenizer.pad_token_id, eos_token_id=ends.tolist(), **sampling,
                )
        else:
            out = _sample(model, enc, max_new_tokens=max_new_tokens, do_sample=do_sample, temperature=temperature,
                          copies=num_return_sequences, ends=ends, pad=tokenizer.pad_token_id, generator=generator,
                          capture=capture, captured=captured, stop_at_capture=stop_at_capture)
    out = out.clone()
    prompt_len = enc["input_ids"].shape[1]
    completion = out[:, prompt_len:]
    is_end = torch.isin(completion, ends)
    # Keep tokens up to and including the first end token, by position: a pad id sampled mid-answer
    # is a real token, and an end token equal to the pad id is still the end (Llama-3: pad = eos).
    keep = (is_end.long().cumsum(-1) - is_end.long()) == 0
    if stop_at_capture and capture is not None:  # a row stopped at its marker: nothing after it counts
        marker = (completion == capture[0]).long()
        keep &= (marker.cumsum(-1) - marker) == 0
    prompt_mask = enc["attention_mask"].repeat_interleave(num_return_sequences, dim=0)
    completion_ids = torch.where(keep, completion, torch.full_like(completion, tokenizer.pad_token_id))
    texts = tokenizer.batch_decode(completion_ids, skip_special_tokens=True)
    return Rollout(
        input_ids=torch.cat([out[:, :prompt_len], completion_ids], dim=1),
        attention_mask=torch.cat([prompt_mask, keep.long()], dim=1),
        completion_mask=torch.cat([torch.zeros_like(prompt_mask), keep.long()], dim=1),
        texts=texts,
        finished=(is_end & keep).any(-1),  # a row stopped at its marker did not end (pad may be an end id)
        temperature=float(temperature) if do_sample else 1.0,
        prompt_length=prompt_len,
        captured=captured.clone() if captured is not None else None,
    )


@contextmanager
def _seeded_from(generator: torch.Generator | None, device: torch.device):
    """With a generator: the global RNGs of the CPU and of `device` seeded from its next draw (so the
    generator advances, as `_sample` advances it), and restored after."""
    if generator is None:
        yield
        return
    seed = int(torch.randint(2**62, (1,), generator=generator, device=generator.device).item())
    device = torch.device(device)
    devices = ([device.index if device.index is not None else torch.cuda.current_device()]
               if device.type == "cuda" else [])
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


@contextmanager
def _plain_generation_config(model):
    """The model's generation config replaced, for one call, by one that sets nothing but its end and pad ids."""
    saved = model.generation_config
    model.generation_config = GenerationConfig(eos_token_id=saved.eos_token_id, pad_token_id=saved.pad_token_id,
                                               bos_token_id=saved.bos_token_id, min_new_tokens=saved.min_new_tokens)
    try:
        yield
    finally:
        model.generation_config = saved


def _min_new_tokens(model) -> int:
    config = getattr(model, "generation_config", None)
    return int(getattr(config, "min_new_tokens", None) or 0)


def check_min_new_tokens(model, name: str) -> None:
    """Refuse a policy whose generation config sets `min_new_tokens`: sampling masks the end ids for
    that many tokens, while the log-probs of the update and the reference are of the unmasked
    distribution, so the update would optimise another policy than the one that sampled."""
    if _min_new_tokens(model):
        raise ModelSetupError(f"model {name!r}: generation_config.json sets min_new_tokens={_min_new_tokens(model)}, "
                              "which masks the end tokens while sampling but not in the log-probs the update scores; "
                              "remove it (or set it to 0) in the model's generation_config.json")


def _sample(model, enc: dict[str, torch.Tensor], *, max_new_tokens: int, do_sample: bool, temperature: float,
            copies: int, ends: torch.Tensor, pad: int, generator: torch.Generator | None = None,
            capture: tuple[int, list[int]] | None = None, captured: torch.Tensor | None = None,
            stop_at_capture: bool = False) -> torch.Tensor:
    """[B * copies, P + T] prompts and completions (T <= max_new_tokens: it stops when every row has
    ended; rows that ended are padded), the same contract as `generate` of transformers.

    Each prompt is prefilled once; its KV cache and last logits are repeated `copies` times (every
    copy is prefilled when the model's cache cannot be repeated, `kv_cache.repeat_is_exact`). With
    `capture=(marker, columns)`, `captured` [B * copies, C] is filled in place (see `generate`);
    `stop_at_capture` ends a row there."""
    ids, mask = enc["input_ids"], enc["attention_mask"]
    position = (mask.cumsum(-1) - 1).clamp(min=0)
    if copies > 1 and not repeat_is_exact(model):  # a cache that cannot be repeated: every copy prefilled
        ids, mask, position = (t.repeat_interleave(copies, dim=0) for t in (ids, mask, position))
        copies = 1
    out = model(input_ids=ids, attention_mask=mask, position_ids=position, use_cache=True, logits_to_keep=1)
    cache, logits = cache_of(out), out.logits[:, -1]
    if copies > 1:
        cache.batch_repeat_interleave(copies)
        logits = logits.repeat_interleave(copies, dim=0)
        ids, mask = ids.repeat_interleave(copies, dim=0), mask.repeat_interleave(copies, dim=0)
        position = position.repeat_interleave(copies, dim=0)
    rows, prompt_len = ids.shape
    full_mask = torch.cat([mask, mask.new_ones(rows, max_new_tokens)], dim=1)
    next_position = position[:, -1:] + 1
    tokens = ids.new_full((rows, max_new_tokens), pad)
    done = torch.zeros(rows, dtype=torch.bool, device=ids.device)
    min_new = _min_new_tokens(model)
    steps = 0
    for t in range(max_new_tokens):
        logits = logits.float()
        if capture is not None and t > 0:  # logits here are the next token's after token t - 1
            hit = (tokens[:, t - 1] == capture[0]) & captured[:, 0].isnan()
            if bool(hit.any()):
                captured[hit] = logits[hit].log_softmax(-1)[:, capture[1]]
                if stop_at_capture:
                    done |= hit
                    if bool(done.all()):
                        break
        if t < min_new:
            logits[:, ends] = float("-inf")
        if do_sample:
            token = torch.multinomial(torch.softmax(logits / temperature, dim=-1), num_samples=1,
                                      generator=generator).squeeze(-1)
        else:
            token = logits.argmax(-1)
        token = token.masked_fill(done, pad)
        tokens[:, t] = token
        done |= torch.isin(token, ends)
        steps = t + 1
        if steps == max_new_tokens or bool(done.all()):
            break
        out = model(input_ids=token[:, None], attention_mask=full_mask[:, :prompt_len + steps],
                    position_ids=next_position + t, use_cache=True, **with_cache(cache))
        cache, logits = cache_of(out), out.logits[:, -1]
    return torch.cat([ids, tokens[:, :steps]], dim=1)
