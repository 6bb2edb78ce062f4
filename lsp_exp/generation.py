"""Generation and log-probabilities: the one place the model is sampled and scored.

Prompts are left-padded once; completions are cut after their first end token. Log-probs are
computed in one forward pass per batch, with position ids derived from the attention mask so that
they match what `generate` used for left-padded rows.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lsp_exp.rl.diagnostics import token_entropy


@dataclass
class Rollout:
    """A batch of prompts and their sampled completions (rows aligned)."""

    input_ids: torch.Tensor        # [B, P + T] prompt (left-padded) followed by the completion
    attention_mask: torch.Tensor   # [B, P + T] 1 on real prompt tokens and on completion tokens up to the end token
    completion_mask: torch.Tensor  # [B, P + T] 1 only on completion tokens that count (incl. the end token)
    texts: list[str]               # decoded completions, special tokens removed
    finished: torch.Tensor         # [B] bool: the completion ended with the end token

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
             temperature: float = 1.0, num_return_sequences: int = 1) -> Rollout:
    """Sample (or greedily decode) completions for rendered prompts in one batched call.

    Sampling runs under `torch.inference_mode`; the returned tensors are ordinary tensors (cloned
    out of inference mode), so the update can run autograd through them.
    """
    enc = encode_prompts(tokenizer, prompts, model.device)
    sampling = dict(do_sample=True, temperature=temperature, top_k=0, top_p=1.0) if do_sample else dict(do_sample=False)
    with torch.inference_mode():
        out = model.generate(
            **enc, max_new_tokens=max_new_tokens, num_return_sequences=num_return_sequences,
            pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, **sampling,
        )
    out = out.clone()
    prompt_len = enc["input_ids"].shape[1]
    completion = out[:, prompt_len:]
    is_eos = completion == tokenizer.eos_token_id
    # Keep tokens up to and including the first end token.
    after_eos = (is_eos.cumsum(-1) - is_eos.long()) > 0
    keep = ~after_eos & (completion != tokenizer.pad_token_id)
    prompt_mask = enc["attention_mask"].repeat_interleave(num_return_sequences, dim=0)
    completion_ids = torch.where(keep, completion, torch.full_like(completion, tokenizer.pad_token_id))
    texts = tokenizer.batch_decode(completion_ids, skip_special_tokens=True)
    return Rollout(
        input_ids=torch.cat([out[:, :prompt_len], completion_ids], dim=1),
        attention_mask=torch.cat([prompt_mask, keep.long()], dim=1),
        completion_mask=torch.cat([torch.zeros_like(prompt_mask), keep.long()], dim=1),
        texts=texts,
        finished=is_eos.any(-1),
    )


def token_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                   entropy_mask: torch.Tensor | None = None):
    """log p(token_t | tokens_<t) for t >= 1, shape [B, L - 1] (position ids follow the mask).

    With `entropy_mask` [B, L - 1], also the mean entropy of the predicted distributions over the
    masked positions, from the same forward pass: returns (logp, entropy)."""
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).logits
    logp = F.log_softmax(logits[:, :-1].float(), dim=-1)
    chosen = logp.gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    if entropy_mask is None:
        return chosen
    return chosen, token_entropy(logits[:, :-1].detach(), entropy_mask)

