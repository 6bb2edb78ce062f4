"""Inputs bounded before they are tokenized (lsp_exp/core/prompt_bound.py, core/prompts.py,
tasks/arith/data.py): the bound from the model's context and the tokenizer's longest token, a row
over it refused in one line naming the file and the row, memory bounded for a 50 MB row under
RLIMIT_AS, and SIGTERM during a long tokenization ending the run at once (exit 143)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from lsp_exp.core import prompt_bound as pb
from lsp_exp.core.generation import chat_prompts
from lsp_exp.core.models import load_tokenizer
from lsp_exp.core.prompt_bound import PromptBound, PromptTooLongError, prompt_bound
from lsp_exp.core.prompts import read_prompt_rows
from lsp_exp.tasks.arith.shipped import role_dir
from lsp_exp.tasks.arith.data import read_problems

from tests.helpers.tiny_run import compose_config, tiny_overrides

REPO = Path(__file__).resolve().parents[2]   # on a script's sys.path: tests.helpers
TOY_MODEL = role_dir("arith", "base_model")   # the shipped toy model: context 128, longest token 14 characters


def chars(texts):  # a tokenizer of one token per character, and no template
    return [len(t) for t in texts]


def test_the_bound_of_the_toy_model_is_its_context_minus_the_answer():
    tokenizer = load_tokenizer(str(TOY_MODEL))
    bound = prompt_bound(tokenizer, str(TOY_MODEL), 24)
    # 128 positions (config.json) - 24 answer tokens; "</Calculation>", the longest entry, is 14 characters
    assert (bound.max_tokens, bound.chars_per_token, bound.max_chars) == (104, 14, 104 * 14)
    assert "max_position_embeddings=128 minus game.max_answer_tokens=24" in bound.why
    rendered = chat_prompts(tokenizer, ["12+7"])
    assert bound.count(["12+7"]) == [len(tokenizer(rendered, add_special_tokens=False)["input_ids"][0])]


def test_characters_then_tokens_are_checked():
    bound = PromptBound(max_tokens=10, chars_per_token=3, why="a test", count=chars, count_raw=chars)
    bound.check_chars("x" * 30, "f line 1")                    # 10 tokens of 3 characters: may fit
    with pytest.raises(PromptTooLongError, match=r"^f line 2: the prompt is 31 characters \(over 30: 10 tokens of "
                                                 r"at most 3 characters\), more than this run takes "
                                                 r"\(10 tokens: a test\)"):
        bound.check_chars("x" * 31, "f line 2")
    bound.check_tokens(["x" * 10, "y"], ["f line 1", "f line 2"])
    with pytest.raises(PromptTooLongError, match=r"^f line 2: the prompt is 11 tokens"):
        bound.check_tokens(["x" * 10, "y" * 11], ["f line 1", "f line 2"])


def test_a_text_longer_than_one_call_is_counted_in_pieces(monkeypatch):
    monkeypatch.setattr(pb, "BATCH_CHARS", 8)
    calls = []

    def counted(texts):
        calls.append(texts)
        return chars(texts)

    bound = PromptBound(max_tokens=20, chars_per_token=3, why="a test", count=counted, count_raw=counted)
    bound.check_tokens(["aaa bbb ccc ddd eee"], ["r"])       # 19 tokens, 3 pieces cut before a space
    assert max(len(t) for call in calls for t in call) <= 8 and ["aaa bbb"] in calls
    with pytest.raises(PromptTooLongError, match="^r: the prompt is about 25 tokens"):   # 25 > 20 + 2 cuts
        bound.check_tokens(["a" * 25], ["r"])


def test_rows_read_before_the_model_was_built_are_checked_by_number():
    """A task that builds its model reads its files first; the rows are then checked, named by number."""
    from lsp_exp.core.prompt_bound import check_texts

    bound = PromptBound(max_tokens=10, chars_per_token=3, why="a test", count=chars, count_raw=chars)
    check_texts(bound, ["a", "b" * 10], "game.prompts_path='p.jsonl'")
    with pytest.raises(PromptTooLongError, match=r"^game.prompts_path='p.jsonl' row 2: the prompt is 31 characters"):
        check_texts(bound, ["a", "b" * 31], "game.prompts_path='p.jsonl'")
    with pytest.raises(PromptTooLongError, match=r"^game.prompts_path='p.jsonl' row 3: the prompt is 12 tokens"):
        check_texts(bound, ["a", "b", "c" * 12], "game.prompts_path='p.jsonl'")


def write_rows(path: Path, rows: list[dict], as_list: bool = False) -> Path:
    path.write_text(json.dumps(rows) if as_list else "".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("as_list, where", [(False, "line 3"), (True, "item 2")])
def test_a_prompt_file_names_the_row_over_the_bound(tmp_path, as_list, where):
    bound = PromptBound(max_tokens=10, chars_per_token=3, why="a test", count=chars, count_raw=chars)
    path = write_rows(tmp_path / "p.json", [{"prompt": "a"}, {"prompt": "b" * 10}, {"prompt": "c" * 11}], as_list)
    with pytest.raises(PromptTooLongError, match=f"p.json {where}: the prompt is 11 tokens") as err:
        read_prompt_rows(path, bound)
    assert "\n" not in str(err.value)
    path = write_rows(tmp_path / "q.json", [{"prompt": "a"}, {"prompt": "b" * 40}], as_list)
    with pytest.raises(PromptTooLongError, match="q.json (line 2|item 1): the prompt is 40 characters"):
        read_prompt_rows(path, bound)
    assert [r.prompt for r in read_prompt_rows(path)] == ["a", "b" * 40]   # no bound: read as before


def test_a_jsonl_line_over_the_bound_is_refused_before_it_is_read_whole(tmp_path):
    bound = PromptBound(max_tokens=10, chars_per_token=3, why="a test", count=chars, count_raw=chars)
    path = write_rows(tmp_path / "p.jsonl", [{"prompt": "a"}, {"prompt": "b" * (3 << 20)}])
    with pytest.raises(PromptTooLongError, match=f"p.jsonl line 2: the row is over {bound.max_line_bytes:,} bytes"):
        read_prompt_rows(path, bound)
    problems = write_rows(tmp_path / "h.jsonl", [{"prompt": "1+2", "answer": 3}, {"prompt": "1+" * 40, "answer": 1}])
    with pytest.raises(PromptTooLongError, match="h.jsonl line 2: the prompt is 80 characters"):
        read_problems(problems, bound)


def test_a_50_mb_row_is_refused_in_one_line_with_memory_bounded(shared_outputs, tmp_path):
    """lsp-train on the toy world, its address space limited to 3 GiB (RLIMIT_AS; it used to reach
    18.7 GB): a 50 MB prompt in a prompt file (game=grpo_data) and a 50 MB held-out row, each one
    line naming the file and the row."""
    from lsp_exp.nodes import build

    build(compose_config("train", tiny_overrides(shared_outputs)).task, "task").base_model()  # built before the limit
    big = "1+" * (25 << 20) + "1"
    (tmp_path / "prompts.jsonl").write_text(json.dumps({"prompt": "2+3"}) + "\n" + json.dumps({"prompt": big}) + "\n")
    (tmp_path / "heldout.json").write_text(json.dumps([{"prompt": "2+3", "answer": 5}, {"prompt": big, "answer": 1}]))
    script = tmp_path / "run.py"
    script.write_text(f"""
import resource, sys
sys.path.insert(0, {str(REPO)!r})
from tests.helpers.tiny_run import compose_config, tiny_overrides
import lsp_exp.cli.train as entry
resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))
for extra in (["game=grpo_data", "game.prompts_path={tmp_path}/prompts.jsonl"],
              ["task=prompts", "task.heldout_path={tmp_path}/heldout.json", "game=lsp_zero",
               "model.path={TOY_MODEL}"]):
    try:
        entry.hydra_main.__wrapped__(compose_config("train", tiny_overrides({str(shared_outputs)!r}, *extra,
                                                                            arith=extra[0] != "task=prompts")))
    except SystemExit as exit_:
        print("EXIT", exit_.code, file=sys.stderr, flush=True)
""")
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600)
    lines = [line for line in out.stderr.splitlines() if line.startswith(("error:", "EXIT"))]
    assert lines[1::2] == ["EXIT 2", "EXIT 2"], out.stderr[-3000:]
    assert "prompts.jsonl line 2: the row is over" in lines[0] and "more than this run takes" in lines[0]
    assert "heldout.json item 1: the prompt is 52,428,801 characters" in lines[2]
    assert "Traceback" not in out.stderr and "MemoryError" not in out.stderr


def test_sigterm_during_a_long_tokenization_stops_the_run_at_once(shared_outputs, tmp_path):
    """A prompt file of 20,000 rows whose token count is slow (each call of the tokenizer sleeps,
    a stand-in for a large file on a slow machine): SIGTERM while it is counted ends the run with
    exit 143, between two calls."""
    rows = tmp_path / "prompts.jsonl"
    rows.write_text("".join(json.dumps({"prompt": f"{i % 90}+{i % 7}"}) + "\n" for i in range(20000)))
    script = tmp_path / "run.py"
    script.write_text(f"""
import sys, time
sys.path.insert(0, {str(REPO)!r})
from tests.helpers.tiny_run import compose_config, tiny_overrides
import lsp_exp.cli.train as entry
from lsp_exp.core import prompt_bound as pb
from lightning.pytorch.utilities.exceptions import SIGTERMException
pb.BATCH_CHARS = 1000
real = pb.PromptBound.check_tokens
def slow(self, texts, wheres):
    count = self.count
    def counted(batch):
        time.sleep(0.05)
        return count(batch)
    object.__setattr__(self, "count", counted)
    print("COUNTING", flush=True)
    try:
        return real(self, texts, wheres)
    except SIGTERMException:
        print("STOPPED WHILE COUNTING", flush=True)
        raise
pb.PromptBound.check_tokens = slow
entry.hydra_main.__wrapped__(compose_config("train", tiny_overrides({str(shared_outputs)!r}, "game=grpo_data",
                             "game.prompts_path={rows}", "trainer.max_steps=1")))
""")
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if "COUNTING" in line and len([s for s in seen if "COUNTING" in s]) == 2:  # the held-out set, then the file
            break
    os.kill(proc.pid, signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr[-2000:]
    assert "STOPPED WHILE COUNTING" in stdout and "Traceback" not in stderr
    assert "interrupted during start-up (SIGTERM): no MLflow run was started yet" in stderr   # none to mark
