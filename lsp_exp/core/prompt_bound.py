"""How long a prompt read from a file may be, derived from the lengths the run uses, so that one huge
row is refused in one line before it is tokenized (it used to take the machine: a 50 MB prompt
reached 18.7 GB).

A Solver prompt (the chat template around the row's text) and its answer must fit in the model's
context: `max_tokens` = the context (`max_position_embeddings`, or the tokenizer's
`model_max_length`) minus the answer tokens. No token is longer than the tokenizer's longest
vocabulary entry (`chars_per_token` characters; a byte-level entry counts a character per byte, so
this bounds characters too), so a text of more than `max_tokens * chars_per_token` characters has
more than `max_tokens` tokens: it is refused without tokenizing it (`check_chars`, while the file
is read, a line at a time: `max_line_bytes`). The rows within that are then counted, in calls of
about a million characters (`check_tokens`). A reader refuses the first row over the bound, naming
the file and the row.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from transformers import AutoConfig

from lsp_exp.core.generation import chat_prompts
from lsp_exp.errors import LspError

BATCH_CHARS = 1 << 20     # characters tokenized per call (signals are handled between calls)
UNKNOWN_CONTEXT = 1 << 20  # a model that states no context length


class PromptTooLongError(LspError, ValueError):
    """A row is longer than the run can take; the message names the file, the row and the bound."""


@dataclass(frozen=True)
class PromptBound:
    max_tokens: int                                  # a rendered prompt's tokens, at most
    chars_per_token: int                             # the tokenizer's longest token, in characters
    why: str                                         # where max_tokens comes from (for the message)
    count: Callable[[list[str]], list[int]] | None = None      # tokens of each text once rendered
    count_raw: Callable[[list[str]], list[int]] | None = None  # tokens of each text as it is

    @property
    def max_chars(self) -> int:
        return self.max_tokens * self.chars_per_token

    @property
    def max_line_bytes(self) -> int:
        """A JSONL line's bytes, at most, for a row within the bound: each character is at most 12
        bytes in JSON (a \\uXXXX surrogate pair), with room for the row's other fields."""
        return 12 * self.max_chars + (1 << 20)

    def refuse(self, where: str, what: str) -> PromptTooLongError:
        return PromptTooLongError(f"{where}: {what}, more than this run takes ({self.max_tokens:,} tokens: "
                                  f"{self.why}); shorten or remove the row")

    def check_chars(self, text: str, where: str) -> None:
        if len(text) > self.max_chars:
            raise self.refuse(where, f"the prompt is {len(text):,} characters (over {self.max_chars:,}: "
                                     f"{self.max_tokens:,} tokens of at most {self.chars_per_token} characters)")

    def check_tokens(self, texts: Sequence[str], wheres: Sequence[str]) -> None:
        """Count each text's tokens once rendered, in calls of about BATCH_CHARS characters (signals
        are handled between calls). A text longer than that is counted in pieces cut at whitespace
        (the template's tokens once, each piece's own), allowing a token per cut."""
        if self.count is None:
            return
        short = [i for i, t in enumerate(texts) if len(t) <= BATCH_CHARS]
        for batch in _batches(short, [len(texts[i]) for i in short]):
            for i, n in zip(batch, self.count([texts[i] for i in batch]), strict=True):
                if n > self.max_tokens:
                    raise self.refuse(wheres[i], f"the prompt is {n:,} tokens")
        template = None
        for i in (i for i, t in enumerate(texts) if len(t) > BATCH_CHARS):
            template = self.count([""])[0] if template is None else template
            pieces = _pieces(texts[i])
            n = template + sum(self.count_raw([piece])[0] for piece in pieces)
            if n > self.max_tokens + len(pieces) - 1:
                raise self.refuse(wheres[i], f"the prompt is about {n:,} tokens")


def _batches(index: list[int], sizes: list[int]):
    """`index` in runs whose sizes add up to about BATCH_CHARS."""
    batch, total = [], 0
    for i, size in zip(index, sizes, strict=True):
        if batch and total + size > BATCH_CHARS:
            yield batch
            batch, total = [], 0
        batch.append(i)
        total += size
    if batch:
        yield batch


def _pieces(text: str) -> list[str]:
    """`text` in pieces of at most BATCH_CHARS characters, each cut before a whitespace when there is one."""
    pieces, start = [], 0
    while start < len(text):
        end = min(start + BATCH_CHARS, len(text))
        if end < len(text):
            cut = max(text.rfind(" ", start + 1, end), text.rfind("\n", start + 1, end))
            end = cut if cut > start else end
        pieces.append(text[start:end])
        start = end
    return pieces


def check_texts(bound: PromptBound, texts: Sequence[str], name: str) -> None:
    """`bound` over texts already read, each named `<name> row <i>` (from 1)."""
    wheres = [f"{name} row {i + 1}" for i in range(len(texts))]
    for text, where in zip(texts, wheres, strict=True):
        bound.check_chars(text, where)
    bound.check_tokens(texts, wheres)


def longest_token(tokenizer) -> int:
    """The characters of the tokenizer's longest vocabulary entry (added tokens included)."""
    return max((len(token) for token in tokenizer.get_vocab()), default=1) or 1


def context_tokens(tokenizer, model_path: str | None) -> tuple[int, str]:
    """The model's context length and where it was read."""
    found = []
    if model_path:
        try:
            config = AutoConfig.from_pretrained(model_path, local_files_only=True)
            for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
                value = getattr(getattr(config, "text_config", None) or config, key, None)
                if isinstance(value, int) and value > 0:
                    found.append((value, f"the model's {key}={value}"))
                    break
        except (OSError, ValueError, TypeError):
            pass
    limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(limit, int) and 0 < limit < 1 << 30:
        found.append((limit, f"the tokenizer's model_max_length={limit}"))
    if not found:
        return UNKNOWN_CONTEXT, f"no context length stated; {UNKNOWN_CONTEXT:,} assumed"
    return min(found)


def prompt_bound(tokenizer, model_path: str | None, answer_tokens: int,
                 key: str = "game.max_answer_tokens") -> PromptBound:
    """The bound of a Solver prompt: the model's context minus the answer's tokens (`key`)."""
    context, source = context_tokens(tokenizer, model_path)
    max_tokens = max(context - int(answer_tokens), 1)

    def count_raw(texts: list[str]) -> list[int]:
        return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]

    def count(texts: list[str]) -> list[int]:
        return count_raw(chat_prompts(tokenizer, texts))

    return PromptBound(max_tokens, longest_token(tokenizer), f"{source} minus {key}={answer_tokens}", count,
                       count_raw)
