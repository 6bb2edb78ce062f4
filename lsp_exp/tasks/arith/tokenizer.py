"""The toy world's character-level tokenizer, built once for every role the model will play.

It already holds what later features need (the judge's tags and score digits, a system role),
so adding a role does not change the vocabulary and invalidate earlier results (docs/method.md §12).
"""
from __future__ import annotations

import string

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<|end|>", "<unk>"
ROLE_TOKENS = ["<|system|>", "<|user|>", "<|assistant|>"]
JUDGE_TAGS = [f"<{t}>" for t in ("Instruction", "Response", "Calculation", "Score")] + [
    f"</{t}>" for t in ("Instruction", "Response", "Calculation", "Score")
]
CHARACTERS = list(string.digits + string.ascii_lowercase + " +-*()=:,.?!/'") + ["\n"]

# One user turn, one assistant turn: <bos><|user|>12+3*4<|end|><|assistant|>61<|end|>
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}<|end|>"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def build_tokenizer() -> PreTrainedTokenizerFast:
    """A deterministic character-level fast tokenizer with a chat template."""
    specials = [PAD, BOS, EOS, UNK, *ROLE_TOKENS]
    vocab = {tok: i for i, tok in enumerate(specials + JUDGE_TAGS + CHARACTERS)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("[\\s\\S]"), behavior="isolated")
    core.decoder = decoders.Fuse()
    core.add_special_tokens(specials)
    core.add_tokens(JUDGE_TAGS)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=UNK,
        padding_side="left", model_max_length=512,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer
