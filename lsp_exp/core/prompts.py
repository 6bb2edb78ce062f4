"""Prompt files: the toy world's splits, plain `prompt` rows, and the Alpaca / AlpacaEval format.

One reader for every file a run or an evaluation takes prompts from (`game.prompts_path`,
`lsp-eval`'s `win_rate.prompts_path`). Accepted: JSONL (one object per line) or a JSON list, each
row having

- `prompt` (the toy world's splits and plain prompt files), or
- `instruction` and an optional `input` (Alpaca; AlpacaEval also has `dataset`, its split).

Optional fields kept: `answer` (a numeric ground truth, toy world), `output` / `reference` (a
reference text for BLEU / ROUGE), and the split: `split`, `dataset` or `difficulty`. A run reads
them within its bound (`core/prompt_bound.py`): a row longer than the model can take is refused in
one line naming the file and the row, before it is tokenized whole.
"""
from __future__ import annotations

import codecs
import itertools
import json
from dataclasses import dataclass
from pathlib import Path

from lsp_exp.core.prompt_bound import PromptBound
from lsp_exp.errors import MissingFileError

SPLIT_FIELDS = ("split", "dataset", "difficulty")


@dataclass(frozen=True)
class PromptRow:
    prompt: str
    split: str = "all"
    reference: str | None = None
    answer: int | None = None


def alpaca_prompt(instruction: str, input_text: str | None) -> str:
    """Alpaca's instruction plus its optional input, as one user turn (chat templates add the rest)."""
    instruction = instruction.strip()
    input_text = (input_text or "").strip()
    return f"{instruction}\n\n{input_text}" if input_text else instruction


def _row(obj: dict, where: str) -> PromptRow:
    if not isinstance(obj, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    if "prompt" in obj:
        prompt = str(obj["prompt"])
    elif "instruction" in obj:
        prompt = alpaca_prompt(str(obj["instruction"]), obj.get("input"))
    else:
        raise ValueError(f"{where}: a row needs a `prompt` field or Alpaca's `instruction` (and `input`) fields")
    if not prompt.strip():
        raise ValueError(f"{where}: empty prompt")
    split = next((str(obj[k]) for k in SPLIT_FIELDS if obj.get(k) not in (None, "")), "all")
    reference = obj.get("reference", obj.get("output"))
    return PromptRow(prompt, split, None if reference is None else str(reference), _int_or_none(obj.get("answer")))


def _int_or_none(value) -> int | None:
    """A numeric ground truth (`answer`: 41 or "41"), or None when there is none."""
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError, OverflowError):  # (JSON's Infinity is a float that int() refuses)
        return None


def read_prompt_rows(path: str | Path, bound: PromptBound | None = None) -> list[PromptRow]:
    """Every row of a prompt file (JSONL or a JSON list); a clear error names the file and line.

    With `bound` (core/prompt_bound.py), a row longer than the run takes is refused in one line
    naming it: JSONL is read a line at a time and a line over `bound.max_line_bytes` is refused
    before it is read whole; every prompt's characters, then its tokens, are checked."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"prompt file not found: {path}")
    with open(path, "rb") as f:
        check_utf8(f, path)  # a binary file is named as one before any row is parsed
        is_list = _first_byte(f) == b"["
        f.seek(0)
        wheres, rows = [], []
        for where, obj in (_list_items(f, path) if is_list else _jsonl_items(f, path, bound)):
            row = _row(obj, where)
            if bound is not None:
                bound.check_chars(row.prompt, where)
            wheres.append(where)
            rows.append(row)
    if not rows:
        raise ValueError(f"{path}: no prompts")
    if bound is not None:
        bound.check_tokens([r.prompt for r in rows], wheres)
    return rows


def check_utf8(f, path: Path) -> None:
    """The whole (binary) file is UTF-8, read in chunks; leaves it at its start."""
    decoder, offset = codecs.getincrementaldecoder("utf-8")(), 0
    while True:
        chunk = f.read(1 << 20)
        try:
            decoder.decode(chunk, final=not chunk)
        except UnicodeDecodeError as err:
            raise _not_utf8(path, offset - len(decoder.getstate()[0]), err) from None
        if not chunk:
            break
        offset += len(chunk)
    f.seek(0)


def _first_byte(f) -> bytes:
    """The file's first byte that is not whitespace (b"" for none)."""
    while chunk := f.read(1 << 16):
        stripped = chunk.lstrip()
        if stripped:
            return stripped[:1]
    return b""


def _not_utf8(path: Path, offset: int, err: UnicodeDecodeError) -> ValueError:
    return ValueError(f"{path}: not a UTF-8 text file (byte {offset + err.start}: {err.reason}); a prompt file is "
                      "JSONL or a JSON list")


def _list_items(f, path: Path):
    """(where, object) of a JSON list, read whole (its memory is the file's size)."""
    objs = _json(_utf8(f.read(), path, 0), str(path), "a prompt file")
    for i, obj in enumerate(objs):
        yield f"{path} item {i}", obj


def jsonl_lines(f, path: Path, max_bytes: int | None = None, refuse=None):
    """(line number, line bytes, offset of the line in the file) of a binary file, a line at a time;
    a line over `max_bytes` is not read whole: `refuse(where, what)` makes the error to raise."""
    offset = 0
    for n in itertools.count(1):
        line = f.readline(max_bytes + 1) if max_bytes else f.readline()
        if not line:
            return
        if max_bytes and len(line) > max_bytes and not line.endswith(b"\n"):
            raise refuse(f"{path} line {n}", f"the row is over {max_bytes:,} bytes")
        yield n, line, offset
        offset += len(line)


def _jsonl_items(f, path: Path, bound: PromptBound | None):
    for n, raw, offset in jsonl_lines(f, path, bound.max_line_bytes if bound else None,
                                      bound.refuse if bound else None):
        line = _utf8(raw, path, offset)
        if line.strip():
            yield f"{path} line {n}", _json(line, f"{path} line {n}", "a prompt row")


def _utf8(raw: bytes, path: Path, offset: int) -> str:
    """`raw` (read at `offset` of `path`) as text; a ValueError naming the file and byte otherwise."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise _not_utf8(path, offset, err) from None


def _json(text: str, where: str, what: str):
    """The JSON value of `text`; a ValueError naming `where` otherwise."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{where}: not valid JSON ({err})") from None
    except RecursionError:
        raise ValueError(f"{where}: not {what} (JSON nested too deeply to read)") from None


def read_prompts(path: str | Path, bound: PromptBound | None = None) -> list[str]:
    """Just the prompt texts (what `game=grpo_data` samples from)."""
    return [r.prompt for r in read_prompt_rows(path, bound)]
