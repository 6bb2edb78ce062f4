"""Prompt files: the toy world's splits, plain `prompt` rows, and the Alpaca / AlpacaEval format.

One reader for every file a run or an evaluation takes prompts from (`game.prompts_path`,
`lsp-eval`'s `win_rate.prompts_path`). Accepted: JSONL (one object per line) or a JSON list, each
row having

- `prompt` (the toy world's splits and plain prompt files), or
- `instruction` and an optional `input` (Alpaca; AlpacaEval also has `dataset`, its split).

Optional fields kept: `answer` (a numeric ground truth, toy world), `output` / `reference` (a
reference text for BLEU / ROUGE), and the split: `split`, `dataset` or `difficulty`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

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


def read_prompt_rows(path: str | Path) -> list[PromptRow]:
    """Every row of a prompt file (JSONL or a JSON list); a clear error names the file and line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompt file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not a UTF-8 text file (byte {err.start}: {err.reason}); a prompt file is JSONL "
                         "or a JSON list") from None
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            objs = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid JSON ({err})") from None
        except RecursionError:
            raise ValueError(f"{path}: not a prompt file (JSON nested too deeply to read)") from None
        rows = [_row(obj, f"{path} item {i}") for i, obj in enumerate(objs)]
    else:
        rows = []
        for n, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path} line {n}: not valid JSON ({err})") from None
            except RecursionError:
                raise ValueError(f"{path} line {n}: not a prompt row (JSON nested too deeply to read)") from None
            rows.append(_row(obj, f"{path} line {n}"))
    if not rows:
        raise ValueError(f"{path}: no prompts")
    return rows


def read_prompts(path: str | Path) -> list[str]:
    """Just the prompt texts (what `game=grpo_data` samples from)."""
    return [r.prompt for r in read_prompt_rows(path)]
