"""Deterministic data splits of the toy world: held-out test set, RL training split, SFT stream.

The held-out set and the `grpo_data` training split are disjoint, and the SFT stream never shows
a held-out problem. The held-out set follows the world's shares; the training split follows
`world.train_shares` when set (a data set that covers some classes more than others).
"""
from __future__ import annotations

import json
import random
from pathlib import Path

from lsp_exp.core.prompt_bound import PromptBound
from lsp_exp.core.prompts import check_utf8, jsonl_lines
from lsp_exp.errors import MissingFileError
from lsp_exp.tasks.arith.world import Problem, WorldConfig, sample_problem


def make_splits(seed: int, world: WorldConfig, n_heldout: int, n_train: int) -> tuple[list[Problem], list[Problem]]:
    """Unique held-out problems, then unique training problems not in the held-out set."""
    rng = random.Random(f"splits-{seed}")
    heldout: dict[str, Problem] = {}
    while len(heldout) < n_heldout:
        p = sample_problem(rng, world)
        heldout.setdefault(p.text, p)
    train: dict[str, Problem] = {}
    while len(train) < n_train:
        p = sample_problem(rng, world, world.train_shares)
        if p.text not in heldout:
            train.setdefault(p.text, p)
    return list(heldout.values()), list(train.values())


def write_problems(path: Path, problems: list[Problem]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for p in problems:
            f.write(json.dumps({"prompt": p.text, "answer": p.answer, "difficulty": p.difficulty}) + "\n")


def read_problems(path: str | Path, bound: PromptBound | None = None) -> list[Problem]:
    """Read a JSONL split written by `write_problems` (fields: prompt, answer, difficulty), a line at
    a time; with `bound`, a row longer than the run takes is refused naming it (core/prompt_bound.py)."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"problem file not found: {path} (run `lsp-bootstrap` to build the toy world)")
    problems, wheres = [], []
    with open(path, "rb") as f:
        try:
            check_utf8(f, path)
        except ValueError:
            raise ValueError(f"{path}: not a text file (JSONL rows with prompt, answer, difficulty)") from None
        for n, raw, _ in jsonl_lines(f, path, bound.max_line_bytes if bound else None, bound.refuse if bound else None):
            line = raw.decode("utf-8")
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                problems.append(Problem(str(row["prompt"]), int(row["answer"]), str(row.get("difficulty", "unknown"))))
            except (json.JSONDecodeError, KeyError, TypeError, ValueError, OverflowError, RecursionError) as err:
                reason = "JSON nested too deeply" if isinstance(err, RecursionError) else f"{type(err).__name__}: {err}"
                raise ValueError(f"{path} line {n}: not a problem row (JSON with prompt and an integer answer): "
                                 f"{reason}") from None
            wheres.append(f"{path} line {n}")
            if bound is not None:
                bound.check_chars(problems[-1].text, wheres[-1])
    if not problems:
        raise ValueError(f"{path}: no problems in it")
    if bound is not None:
        bound.check_tokens([p.text for p in problems], wheres)
    return problems
