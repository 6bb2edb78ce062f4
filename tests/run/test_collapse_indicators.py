"""The collapse indicators (lsp_exp/run/collapse.py, docs/method.md §17.4) against hand values, the
query memory's bound and saved state, and the `train/collapse/*` keys of a short run."""
from __future__ import annotations

import math
import random
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf

from torchmetrics.text import BLEUScore

from lsp_exp.cli.train import train
from lsp_exp.eval.metrics import diversity as query_diversity, self_bleu as self_bleu_on_counts
from lsp_exp.run.checkpointing import latest_checkpoint
from lsp_exp.run.collapse import QueryMemory, collapse_metrics, query_tokens, success_histogram
from lsp_exp.run.step_logging import StepMetricsLogger

from tests.helpers.tiny_run import TINY_RM, compose_config, run_of, tiny_overrides

def self_bleu(token_lists: list[list]) -> float:
    """The oracle: torchmetrics' smoothed BLEU-4 of each sequence against all the others, averaged."""
    bleu = BLEUScore(n_gram=4, smooth=True)
    texts = [" ".join(map(str, t)) for t in token_lists]
    return sum(float(bleu([texts[i]], [[t for j, t in enumerate(texts) if j != i]])) for i in range(len(texts))) / len(
        texts)


KEYS = {f"train/collapse/{k}" for k in ("distinct_1", "distinct_2", "self_bleu", "seen_before_frac",
                                        "all_fail_frac", "mixed_frac", "all_pass_frac")}


def test_distinct_n_and_self_bleu_by_hand():
    d = query_diversity([[1, 2, 3], [1, 2, 4]])
    assert d["distinct_1"] == pytest.approx(4 / 6)    # unigrams 1 2 3 1 2 4: 4 distinct of 6
    assert d["distinct_2"] == pytest.approx(3 / 4)    # bigrams 12 23 12 24: 3 distinct of 4
    assert d["self_bleu"] == pytest.approx(self_bleu([[1, 2, 3], [1, 2, 4]]))
    same = query_diversity([[5, 6, 7, 8]] * 3)
    assert same == pytest.approx({"distinct_1": 4 / 12, "distinct_2": 3 / 9, "self_bleu": 1.0})  # a collapse
    assert math.isnan(query_diversity([[1, 2]])["self_bleu"])   # no other query to compare with


def test_self_bleu_on_counts_is_torchmetrics_self_bleu():
    """lsp_exp/eval/metrics.py:self_bleu (lsp-eval's and the step's) against torchmetrics on random
    sequences: repeats, empty ones, shorter than 4 tokens."""
    rng = random.Random(0)
    for _ in range(60):
        lists = [[rng.randint(0, 4) for _ in range(rng.randint(0, 12))] for _ in range(rng.randint(2, 8))]
        if rng.random() < 0.3:
            lists[1] = list(lists[0])
        assert self_bleu_on_counts(lists) == pytest.approx(self_bleu(lists), abs=1e-6)
    assert self_bleu_on_counts([[1, 2, 3, 4]] * 2) == pytest.approx(1.0)
    assert self_bleu_on_counts([[1, 2, 3, 4], [5, 6, 7, 8]]) == 0.0     # no shared unigram


def test_the_counted_tokens_of_each_query():
    rollout = SimpleNamespace(input_ids=torch.tensor([[9, 9, 5, 6, 0], [9, 7, 8, 4, 2]]),
                              completion_mask=torch.tensor([[0, 0, 1, 1, 0], [0, 0, 1, 1, 1]]))
    assert query_tokens(rollout) == [[5, 6], [8, 4, 2]]   # no prompt, no padding; the end token (2) counts


def test_seen_before_repeats_in_a_step_and_the_bound_evicts_the_oldest():
    memory = QueryMemory(3)
    assert memory.seen_before(["a", "b", " a "]) == pytest.approx(1 / 3)   # "a" again: seen at its 2nd occurrence
    assert list(memory.texts) == ["a", "b", "a"]
    assert memory.seen_before(["b", "c"]) == pytest.approx(1 / 2)          # b remembered; a (oldest) evicted
    assert list(memory.texts) == ["a", "b", "c"]
    assert memory.seen_before(["d", "a"]) == 0.0     # d pushes a out before a is looked up: not among the last 3
    assert list(memory.texts) == ["c", "d", "a"]
    off = QueryMemory(0)
    assert off.seen_before(["a", "a"]) == 0.0 and not off.texts
    assert math.isnan(memory.seen_before([]))
    with pytest.raises(ValueError, match="trainer.health.query_memory"):
        QueryMemory(-1)


def test_the_memory_round_trips_and_a_smaller_memory_keeps_the_newest():
    memory = QueryMemory(4)
    memory.seen_before(["x", "y", "z"])
    again = QueryMemory(4)
    again.load_state_dict(memory.state_dict())
    step = ["z", "w", "x"]
    assert again.seen_before(step) == memory.seen_before(step) == pytest.approx(1 / 3)  # w evicts x: x is new
    assert list(again.texts) == list(memory.texts) == ["z", "z", "w", "x"]
    small = QueryMemory(2)
    small.load_state_dict(memory.state_dict())
    assert list(small.texts) == ["w", "x"]


def test_the_success_histogram_by_hand():
    rewards = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [0.0, 1.0, 0.0], [1.0, 1.0, 1.0], [0.5, 0.5, 0.5]])
    valid = torch.tensor([True, True, True, False, True])   # the 4th (all pass) is invalid: not counted
    assert success_histogram(rewards, valid, (0.0, 1.0)) == pytest.approx(
        {"all_fail": 1 / 4, "mixed": 2 / 4, "all_pass": 1 / 4})   # a tie at 0.5 is neither pass nor fail: mixed
    unbounded = torch.tensor([[2.0, 2.0], [5.0, 5.0], [2.0, 5.0], [3.0, 3.0]])   # the step's min 2 and max 5
    assert success_histogram(unbounded, torch.ones(4, dtype=torch.bool), None) == pytest.approx(
        {"all_fail": 1 / 4, "mixed": 2 / 4, "all_pass": 1 / 4})
    for rewards, valid, bounds in [(torch.full((2, 2), 3.0), torch.ones(2, dtype=torch.bool), None),  # all tied
                                   (torch.ones(2, 2), torch.zeros(2, dtype=torch.bool), (0.0, 1.0))]:  # none valid
        assert all(math.isnan(v) for v in success_histogram(rewards, valid, bounds).values())


def test_a_data_game_gets_the_histogram_only():
    queries = SimpleNamespace(rollout=None, texts=["1+1", "2+2"])
    m = collapse_metrics(queries=queries, rewards=torch.tensor([[1.0, 1.0], [0.0, 1.0]]),
                         valid=torch.ones(2, dtype=torch.bool), bounds=(0.0, 1.0), memory=QueryMemory(8))
    assert m == {"train/collapse/all_fail_frac": 0.0, "train/collapse/mixed_frac": 0.5,
                 "train/collapse/all_pass_frac": 0.5}


def test_a_figure_with_nothing_to_count_is_left_out_not_logged_as_nan():
    """No valid query: no histogram; one query: no self-BLEU (NaN would also break the equality of two
    runs' metric histories, tests/system/test_train_e2e.py)."""
    queries = SimpleNamespace(rollout=None, texts=["1+1", "2+2"])
    m = collapse_metrics(queries=queries, rewards=torch.ones(2, 2), valid=torch.zeros(2, dtype=torch.bool),
                         bounds=(0.0, 1.0), memory=QueryMemory(8))
    assert m == {}


def test_the_logger_saves_and_loads_its_memory_per_rank():
    module = SimpleNamespace(cfg=OmegaConf.create({"trainer": {"health": {"query_memory": 3}}}))
    logger = StepMetricsLogger()
    logger._memory(module).seen_before(["a", "b"])
    checkpoint = {}
    logger.on_save_checkpoint(None, module, checkpoint)
    assert checkpoint["query_memory"] == [{"size": 3, "texts": ["a", "b"]}]
    resumed = StepMetricsLogger()
    resumed.on_load_checkpoint(SimpleNamespace(global_rank=0), module, checkpoint)
    assert list(resumed.memory.texts) == ["a", "b"]
    older = StepMetricsLogger()   # a checkpoint from before the memory: an empty one
    older.on_load_checkpoint(SimpleNamespace(global_rank=0), module, {"generated_tokens": [{"solver": 1}]})
    assert not older.memory.texts and older.memory.size == 3


def test_a_short_run_logs_the_indicators_and_checkpoints_the_memory(shared_outputs):
    # the tiny reward model grades every pair (the tiny world's verifier finds no valid query): a histogram
    train(compose_config("train", tiny_overrides(shared_outputs, "game=lsp_zero", "reward=tiny_rm", *TINY_RM,
                                                 "trainer.max_steps=2",
                                                 "trainer.checkpoint_every=2", "eval.samples=0",
                                                 "eval.every_n_steps=0", "eval.judge_pairs=0",
                                                 "eval.sample_table_every=0", "+tags.failcase=collapse")))
    run, history, _ = run_of(shared_outputs, "collapse")
    assert KEYS <= set(history)
    histogram = {k for k in KEYS if k.endswith(("_fail_frac", "mixed_frac", "_pass_frac"))}
    assert all([s for s, _ in history[k]] == [0, 1] for k in KEYS - histogram)   # the queries' figures every step
    # the histogram on the steps with a valid query (here step 0; a step with none leaves it out)
    assert all(history[k] and {s for s, _ in history[k]} <= {0, 1} for k in histogram)
    assert sum(history[f"train/collapse/{k}"][0][1] for k in ("all_fail_frac", "mixed_frac", "all_pass_frac")) == 1
    ckpt = latest_checkpoint(shared_outputs / "checkpoints" / run.info.run_id)
    saved = torch.load(ckpt, map_location="cpu", weights_only=True)["query_memory"]   # loads safely
    texts = saved[0]["texts"]
    assert saved[0]["size"] == 4096 and len(texts) == 4      # 2 steps x 2 queries
    replay = QueryMemory(4096)
    expected = [replay.seen_before(texts[:2]), replay.seen_before(texts[2:])]
    assert [v for _, v in history["train/collapse/seen_before_frac"]] == pytest.approx(expected)
