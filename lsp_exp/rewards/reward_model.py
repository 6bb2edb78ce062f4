"""A preference reward model as the task reward: any Hugging Face sequence classifier with one scalar
output (the paper's Skywork-Reward-V2-Llama-3.2-3B, or the toy world's `tiny_rm`).

The (query, answer) pair is rendered with the model's own chat template as one user turn and one
assistant turn, scored in batches, truncated to `max_length` tokens (right padding, so positions
are those of an unpadded sequence). The score is read at each row's last real token, found from the
attention mask: transformers' own pooling looks for the last token that is not the pad id, which
for a tokenizer without a pad token (Llama-3: pad = eos = the turn's final `<|eot_id|>`) is the
token *before* the end. The raw score is unbounded; `transform: sigmoid` maps it to (0, 1), which
the bounded Challenger objectives need.
"""
from __future__ import annotations

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from lsp_exp.core.models import find_local_or_cached
from lsp_exp.errors import LspError
from lsp_exp.rewards.base import Scores

TRANSFORMS = ("none", "sigmoid")


class RewardModelError(LspError, ValueError):
    """The reward model cannot be used (wrong head, bad settings)."""


class RewardModelReward:
    def __init__(self, model, tokenizer, *, max_length: int = 1024, batch_size: int = 32, transform: str = "none"):
        num_labels = getattr(model.config, "num_labels", None)
        if num_labels != 1:
            raise RewardModelError(
                f"reward model {getattr(model.config, '_name_or_path', '')!r} has a {num_labels}-way head; "
                "a reward model must output one scalar (num_labels=1)")
        if transform not in TRANSFORMS:
            raise RewardModelError(f"reward.transform={transform!r}: available: {', '.join(TRANSFORMS)}")
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        if model.config.pad_token_id is None:
            model.config.pad_token_id = tokenizer.pad_token_id
        self.model = model.eval().requires_grad_(False)
        self.tokenizer, self.max_length, self.batch_size, self.transform = tokenizer, max_length, batch_size, transform
        self.bounds = (0.0, 1.0) if transform == "sigmoid" else None

    def to(self, device) -> "RewardModelReward":
        self.model.to(device)
        return self

    def render(self, query: str, answer: str) -> str:
        messages = [{"role": "user", "content": query}, {"role": "assistant", "content": answer}]
        return self.tokenizer.apply_chat_template(messages, tokenize=False)

    @torch.inference_mode()
    def raw_scores(self, queries: list[str], answers: list[str]) -> torch.Tensor:
        """The classifier's scalar for each pair, [B] float32 on the CPU."""
        texts = [self.render(q, a) for q, a in zip(queries, answers, strict=True)]
        device = next(self.model.parameters()).device
        out = []
        for start in range(0, len(texts), self.batch_size):
            enc = self.tokenizer(texts[start:start + self.batch_size], return_tensors="pt", padding=True,
                                 padding_side="right", truncation=True, max_length=self.max_length,
                                 add_special_tokens=False)
            out.append(self._last_token_scores(enc["input_ids"].to(device), enc["attention_mask"].to(device)).cpu())
        return torch.cat(out) if out else torch.zeros(0)

    def _last_token_scores(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """[B] float32: the scalar head at each row's last real token (right padding: mask.sum - 1).
        Models without a `score` head over a decoder (encoders with a pooled classifier) use
        transformers' own pooling."""
        head, backbone = getattr(self.model, "score", None), getattr(self.model, "base_model", None)
        if head is None or backbone is None or backbone is self.model:
            return self.model(input_ids=input_ids, attention_mask=attention_mask).logits[:, 0].float()
        hidden = backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        last = attention_mask.sum(-1) - 1
        return head(hidden[torch.arange(hidden.shape[0], device=hidden.device), last])[:, 0].float()

    def score(self, queries: list[str], answers: list[str]) -> Scores:
        values = self.raw_scores(queries, answers)
        if self.transform == "sigmoid":
            values = values.sigmoid()
        return Scores(values, torch.ones_like(values, dtype=torch.bool))


def load_reward_model(path: str | None, *, dtype: str = "float32", **kwargs) -> RewardModelReward:
    """Load a sequence classifier and its tokenizer from a directory or the hub cache (offline)."""
    path = find_local_or_cached(path, "reward.path", "the reward model")
    model = AutoModelForSequenceClassification.from_pretrained(path, dtype=getattr(torch, dtype))
    tokenizer = AutoTokenizer.from_pretrained(path)
    return RewardModelReward(model, tokenizer, **kwargs)
