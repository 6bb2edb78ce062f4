"""A reward and a judge whose every value the tests can compute by hand from a sample table's text.

`ProbeReward` plays "a policy that answers right about half the time": R(q, a) is 0.75 or 0.25 by
the parity of a checksum of the pair's text, so a group of answers almost always has a spread
(non-zero Solver advantages), and a valid query's value V is never 0 or 1 (an invalid one's is the
configured `invalid_query_value`, so the two are told apart in the table). The pairs of the first
query of each call are ungradable (`valid=False`): every step has an invalid query.

`fake_judge_replies` stands in for the frozen judge's generation: a reply per (query, answer) pair
with a score from the same checksum (0-7), except the first pair of each call, whose reply does not
parse (the judge's `fallback_score`). The tests read the scores back from the replies' text.
"""
from __future__ import annotations

import json
import re
import tempfile
import zlib
from pathlib import Path
from types import SimpleNamespace

import mlflow
import torch

from lsp_exp.rewards.base import Scores

HIGH, LOW = 0.75, 0.25


def probe_reward(query: str, answer: str) -> float:
    """R(q, a), computed the same way by the tests."""
    return HIGH if zlib.crc32(f"{query}\n{answer}".encode()) % 2 == 0 else LOW


def probe_score(query: str, answer: str) -> int:
    """The judge's score of a pair, 0-7."""
    return zlib.crc32(f"judge:{query}\n{answer}".encode()) % 8


UNPARSEABLE = "I cannot grade this."


def reply_text(query: str, answer: str) -> str:
    k = probe_score(query, answer)
    return f"Graded.<Calculation>{'+'.join(['1'] * k + ['0'] * (7 - k))}={k}</Calculation><Score>{k}</Score>"


def score_of_reply(reply: str) -> int | None:
    """The score written in a reply (the tests' own reading, not the project's parser)."""
    found = re.findall(r"<Score>(\d)</Score>", reply)
    return int(found[-1]) if found else None


class ProbeReward:
    bounds = (0.0, 1.0)

    def __init__(self, world=None):
        self.calls = 0

    def score(self, queries: list[str], answers: list[str]) -> Scores:
        self.calls += 1
        first = queries[0] if queries else None
        valid = torch.tensor([q != first for q in queries])
        values = torch.tensor([probe_reward(q, a) if ok else 0.0
                               for q, a, ok in zip(queries, answers, valid, strict=True)])
        return Scores(values, valid)


def install_fake_judge(monkeypatch) -> dict[str, tuple[str, str]]:
    """Replace the judge's generation by `reply_text` of each pair (the first pair of a call: a reply
    that does not parse). Returns the map prompt -> (query, answer) it filled."""
    import lsp_exp.judge.self_quality as sq

    pairs: dict[str, tuple[str, str]] = {}
    real_prompts = sq.SelfQualityJudge.prompts

    def prompts(self, queries, answers):
        out = real_prompts(self, queries, answers)
        pairs.update(zip(out, zip(queries, answers, strict=True), strict=True))
        return out

    def generate(model, tokenizer, prompts, **kwargs):
        texts = [UNPARSEABLE if i == 0 else reply_text(*pairs[p]) for i, p in enumerate(prompts)]
        return SimpleNamespace(texts=texts)

    monkeypatch.setattr(sq.SelfQualityJudge, "prompts", prompts)
    monkeypatch.setattr(sq, "generate", generate)
    return pairs


# ---- reading a run back -------------------------------------------------------------------------

def run_by_tag(uri: str, key: str, value: str):
    client = mlflow.MlflowClient(uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()],
                              filter_string=f"tags.{key} = '{value}'")
    assert len(runs) == 1, f"{len(runs)} runs tagged {key}={value}"
    return client, runs[0]


def metric_history(client, run_id: str) -> dict[str, dict[int, float]]:
    run = client.get_run(run_id)
    return {k: {m.step: m.value for m in client.get_metric_history(run_id, k)} for k in run.data.metrics}


def sample_tables(client, run_id: str) -> dict[int, list[dict]]:
    """step -> the table's rows as dicts."""
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for art in client.list_artifacts(run_id, "samples"):
            table = json.loads(Path(client.download_artifacts(run_id, art.path, tmp)).read_text())
            rows = [dict(zip(table["columns"], row, strict=True)) for row in table["data"]]
            out[int(Path(art.path).stem.removeprefix("step_"))] = rows
    return out


def groups(rows: list[dict], g: int) -> list[list[dict]]:
    """The table's rows cut into the step's queries (G consecutive rows each), each group checked to
    hold one query."""
    assert len(rows) % g == 0, len(rows)
    out = [rows[i:i + g] for i in range(0, len(rows), g)]
    for group in out:
        assert len({r["query"] for r in group}) == 1, [r["query"] for r in group]
    return out



def poison_losses(monkeypatch, steps, when=lambda module: True):
    """The policy loss is NaN at the given self-play steps (on the modules `when` picks, e.g. one DDP
    rank), through public hooks: Lightning's `on_train_batch_start` and the algorithm's `loss`."""
    from lsp_exp.run.self_play import SelfPlayModule
    from lsp_exp.rl.algorithms import AlgorithmSpec
    from lsp_exp.rl.losses import PolicyLossOutput

    state = {"poison": False}
    real_start, real_loss = SelfPlayModule.on_train_batch_start, AlgorithmSpec.loss

    def on_train_batch_start(self, batch, batch_idx):
        state["poison"] = batch_idx in steps and when(self)
        return real_start(self, batch, batch_idx)

    def loss(self, *args, **kwargs):
        out = real_loss(self, *args, **kwargs)
        return PolicyLossOutput(out.loss * float("nan"), out.clip_frac, out.approx_kl) if state["poison"] else out

    monkeypatch.setattr(SelfPlayModule, "on_train_batch_start", on_train_batch_start)
    monkeypatch.setattr(AlgorithmSpec, "loss", loss)
