"""Tiny offline models whose tokenizers follow real Hugging Face chat-model conventions (a test helper).

Both tokenizers are byte-level BPEs trained here on a fixed corpus (deterministic, no hub access).
Special tokens are appended after the learned vocabulary, as in the real checkpoints.

* Llama-3 (meta-llama/Llama-3.2-3B-Instruct): bos ``<|begin_of_text|>`` is prepended on *every*
  encode (post-processor) and also written by the chat template, eos is ``<|eot_id|>``, there is
  **no pad token**, and config / generation_config list several end ids (``LLAMA3_END_TOKENS``).
* Qwen2.5-Instruct: ChatML (``<|im_start|>role\\n...<|im_end|>\\n``), no bos token in the
  tokenizer (though config.bos_token_id is set, as in the real config), eos ``<|im_end|>`` and a
  separate pad ``<|endoftext|>``; generation_config lists both end ids (``QWEN_END_TOKENS``).

Both pad on the left. The generation configs sample, with the real checkpoints' sampling defaults.
"""
from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import (GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedModel, PreTrainedTokenizerFast,
                          Qwen2Config, Qwen2ForCausalLM)

LLAMA3_SPECIALS = ("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                   "<|eot_id|>", "<|eom_id|>")
LLAMA3_END_TOKENS = ("<|end_of_text|>", "<|eot_id|>")
QWEN_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
QWEN_END_TOKENS = ("<|im_end|>", "<|endoftext|>")

LLAMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|start_header_id|>{{ message['role'] }}<|end_header_id|>"
    "\n\n{{ message['content'] | trim }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_CORPUS = [
    "The quick brown fox jumps over the lazy dog.", "Hello, world! How are you today?",
    "You are a helpful assistant.", "Please solve the following problem and show your work.",
    "What is the answer? The answer is 42.", "Write a short question about arithmetic.",
    "12+3*4=24", "7*8=56", "100-37=63", "(5+6)*2=22", "9/3=3", "1 2 3 4 5 6 7 8 9 10 11 12 13 14 15",
    "0123456789 2024 1999 3.14 -17 +8 = 256", "Score: 10", "Score: 7 out of 10", "<Score>9</Score>",
    "Calculation: 12+3*4 = 12+12 = 24", "<Calculation>2*3+1=7</Calculation>",
    "Instruction: compute the value.", "Response: the value is 15.",
    "user\n\nassistant\n\nsystem\n\n", "The judge gives a score between 0 and 10.",
    "Let me think step by step. First, multiply; then add.", "It's a good answer, isn't it?",
    "Is this correct? Yes. No. Maybe.\n", "Numbers like 1, 22, 333 and 4444 appear often.\n\n",
]


# The real pre-tokenizer splits: Llama-3 groups digits by up to 3, Qwen2 splits every digit.
_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}%s"
          r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def _bpe(specials: tuple[str, ...], digits: str, vocab_size: int = 512) -> Tokenizer:
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_SPLIT % digits), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=1, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    core.train_from_iterator(_CORPUS * 3, trainer=trainer)
    core.add_special_tokens(list(specials))  # appended after the learned vocab, like the real ones
    return core


def build_llama3_tokenizer() -> PreTrainedTokenizerFast:
    core = _bpe(LLAMA3_SPECIALS, digits="{1,3}")
    bos = LLAMA3_SPECIALS[0]
    core.post_processor = processors.TemplateProcessing(  # Llama-3 prepends bos on every encode
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, core.token_to_id(bos))])
    tok = PreTrainedTokenizerFast(tokenizer_object=core, bos_token=bos, eos_token="<|eot_id|>",
                                  padding_side="left", model_max_length=4096)
    tok.chat_template = LLAMA3_CHAT_TEMPLATE
    return tok


def build_qwen_tokenizer() -> PreTrainedTokenizerFast:
    core = _bpe(QWEN_SPECIALS, digits="")
    core.normalizer = normalizers.NFC()  # what transformers' Qwen2Tokenizer rebuilds on reload anyway
    tok = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|im_end|>",
                                  pad_token="<|endoftext|>", padding_side="left", model_max_length=4096)
    tok.chat_template = QWEN_CHAT_TEMPLATE
    tok.init_kwargs["unk_token"] = None  # saved as null like Qwen2.5, else Qwen2Tokenizer reloads unk=<|endoftext|>
    return tok


def build_tiny_model(style: str, seed: int = 0) -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    """(model in eval mode, tokenizer) for style "llama3" or "qwen", with real-checkpoint ids."""
    if style == "llama3":
        tok = build_llama3_tokenizer()
        end_ids = tok.convert_tokens_to_ids(list(LLAMA3_END_TOKENS))
        ids = dict(bos_token_id=tok.bos_token_id, eos_token_id=end_ids, pad_token_id=None)
        gen = dict(ids, do_sample=True, temperature=0.6, top_p=0.9)
        config_cls, model_cls = LlamaConfig, LlamaForCausalLM
    elif style == "qwen":
        tok = build_qwen_tokenizer()
        end_ids = tok.convert_tokens_to_ids(list(QWEN_END_TOKENS))
        # Qwen2.5's config.json: bos = eos of pretraining (<|endoftext|>), eos = <|im_end|>.
        ids = dict(bos_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        gen = dict(ids, eos_token_id=end_ids, do_sample=True, temperature=0.7, top_p=0.8, top_k=20,
                   repetition_penalty=1.05)
        config_cls, model_cls = Qwen2Config, Qwen2ForCausalLM
    else:
        raise ValueError(f"unknown style {style!r} (expected 'llama3' or 'qwen')")
    config = config_cls(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=2048,
                        tie_word_embeddings=False, **ids)
    config._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    model = model_cls(config).to(torch.float32).eval()
    model.generation_config = GenerationConfig(**gen)
    return model, tok


def instruct(model, tok, steps: int = 80) -> PreTrainedModel:
    """A few steps of supervised chat training, so that the model writes short turns that end with its
    end token (a random model almost never samples it): enough for games whose turns must finish."""
    pairs = [(q, a) for q, a in zip(_CORPUS[0::2], _CORPUS[1::2], strict=True)]
    texts = [tok.apply_chat_template([{"role": "user", "content": q}, {"role": "assistant", "content": a}],
                                     tokenize=False) for q, a in pairs]
    enc = tok(texts, return_tensors="pt", padding=True, padding_side="right", add_special_tokens=False)
    labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-2)
    model.train()
    for _ in range(steps):
        loss = model(**enc, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def save_tiny_model(path, style: str, seed: int = 0, chat_trained: bool = False) -> Path:
    """Write model, tokenizer (with chat template) and generation_config.json to `path`;
    `chat_trained`: after a few steps of `instruct`."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model, tok = build_tiny_model(style, seed)
    if chat_trained:
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
            model = instruct(model, tok)
            tok.pad_token = None  # saved as the real checkpoint has it: no pad token
        else:
            model = instruct(model, tok)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    model.generation_config.save_pretrained(path)
    return path


def save_tiny_reward_model(path, style: str, seed: int = 1) -> Path:
    """A tiny sequence classifier with one scalar head (a raw, unbounded score, like Skywork-Reward-V2)
    on the tokenizer of `style`, saved to `path`."""
    from transformers import LlamaForSequenceClassification, Qwen2ForSequenceClassification

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model, tok = build_tiny_model(style, seed)
    cls = LlamaForSequenceClassification if style == "llama3" else Qwen2ForSequenceClassification
    config = model.config
    config.num_labels = 1
    torch.manual_seed(seed)
    reward_model = cls(config).to(torch.float32).eval()
    reward_model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


# A short self-play run on one of these models (task=prompts: no toy world), no evaluation.
REAL_RUN = ["task=prompts", "trainer.max_steps=2", "trainer.enable_progress_bar=false",
            "trainer.checkpoint_every=0", "game.n_queries=4", "game.group_size=3", "game.max_query_tokens=16",
            "game.max_answer_tokens=5", "game.judge.max_new_tokens=8", "eval.every_n_steps=0",
            "eval.sample_table_every=0", "eval.judge_pairs=0", "eval.samples=0"]
