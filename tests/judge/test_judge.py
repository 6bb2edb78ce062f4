"""The self-quality judge: prompt templates, reply parsing, the toy rubric, the judge object (how R_Q
enters the rewards: tests/rl/test_role_rewards.py)."""
import random

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from lsp_exp.judge.self_quality import SelfQualityJudge
from lsp_exp.judge.parsing import parse_calculation, parse_judgement
from lsp_exp.judge.templates import TEMPLATES, get_template
from lsp_exp.core.models import Reference
from lsp_exp.tasks.arith.judge_data import judge_example, labelled_pairs
from lsp_exp.tasks.arith.rubric import believed_value, grade, judgement_text
from lsp_exp.tasks.arith.sft import TinyModelConfig, build_model
from lsp_exp.tasks.arith.tokenizer import build_tokenizer
from lsp_exp.tasks.arith.world import Problem, WorldConfig

WORLD = WorldConfig()


# ---- templates ---------------------------------------------------------------------------------
def test_toy_template_renders_the_pair_between_tags():
    assert get_template("toy").render("2+3*4", "41") == "judge: <Instruction>2+3*4</Instruction><Response>41</Response>"


def test_paper_template_has_the_rubric_and_the_output_format():
    text = get_template("paper").render("Write a haiku.", "Leaves fall {softly}.")
    assert "<Instruction>Write a haiku.</Instruction>" in text
    assert "<Response>Leaves fall {softly}.</Response>" in text  # braces in model text stay verbatim
    assert text.count("\n1. ") == 1 and "7. " in text and "<Calculation>" in text and "<Score>" in text


def test_unknown_template_is_refused():
    with pytest.raises(ValueError, match="available: paper, toy"):
        get_template("nope")


# ---- parsing -----------------------------------------------------------------------------------
@pytest.mark.parametrize("text, score, source", [
    ("fine. <Calculation>1+1+1+1+0+1+0=5</Calculation><Score>5</Score>", 5.0, "score"),
    ("<Score> 7 </Score>", 7.0, "score"),
    ("<Score>3</Score> then again <Score>4</Score>", 4.0, "score"),                  # the last tag counts
    ("no score tag <Calculation>1+0+1+0+1+0+1=4</Calculation>", 4.0, "calculation"),  # the sum, not the '=4'
    ("<Calculation>1+1+1=9</Calculation><Score>9</Score>", 3.0, "calculation"),     # out-of-range score
    ("<Score>-1</Score><Calculation>0+0=0</Calculation>", 0.0, "calculation"),
    ("<Score>five</Score>", None, "none"),
    ("<Calculation>1+x=2</Calculation>", None, "none"),
    ("<Calculation>7+7=14</Calculation>", None, "none"),                             # sum out of range
    ("", None, "none"),
    ("<Score>5", None, "none"),                                                      # unclosed tag
])
def test_parse_judgement(text, score, source):
    judgement = parse_judgement(text)
    assert (judgement.score, judgement.source) == (score, source)


def test_parse_returns_the_criteria_of_a_seven_term_calculation():
    judgement = parse_judgement("<Calculation>1+1+0+1+0+1+0=4</Calculation><Score>4</Score>")
    assert judgement.criteria == (1, 1, 0, 1, 0, 1, 0)
    assert parse_judgement("<Calculation>2+1=3</Calculation>").criteria is None
    assert parse_calculation(" 1 + 0 +1 = 2") == (2, (1, 0, 1))


@given(st.text(max_size=200))
def test_parsing_never_raises_and_stays_in_range(text):
    judgement = parse_judgement(text)
    assert judgement.score is None or 0 <= judgement.score <= 7


# ---- the toy rubric ----------------------------------------------------------------------------
@pytest.mark.parametrize("query, answer, expected, criteria", [
    ("2+3*4", "41", 14, (1, 1, 1, 1, 1, 1, 1)),     # right, canonical (answers are reversed digits)
    ("2+3*4", "02", 14, (1, 1, 1, 1, 0, 1, 0)),     # 20: wrong but plausible
    ("2+3*4", "410", 14, (1, 1, 1, 1, 1, 0, 0)),    # right value, not canonical
    ("2+3*4", "-41", 14, (1, 1, 1, 0, 0, 1, 0)),    # wrong sign
    ("2+3*4", "x", 14, (1, 1, 0, 0, 0, 0, 0)),      # not a number
    ("50+50", "001", 100, (1, 0, 1, 1, 1, 1, 1)),   # outside the world's bounds: task but not clear
    ("7+*", "7", None, (0, 0, 1, 0, 0, 1, 0)),      # no task
])
def test_rubric_criteria(query, answer, expected, criteria):
    assert grade(query, answer, WORLD, expected) == criteria


def test_believed_value_is_the_teachers():
    flawed = "2+3*4"  # the teacher answers (2+3)*4 = 20 with probability flaw_rate
    beliefs = {believed_value(flawed, WORLD, random.Random(i)) for i in range(50)}
    assert beliefs == {14, 20}
    assert believed_value(flawed, WORLD, None) == 14          # rng=None: the verifier
    assert believed_value("50+50", WORLD, random.Random(0)) == 100
    assert believed_value("7+*", WORLD, random.Random(0)) is None


def test_judgement_text_round_trips_through_the_parser():
    text = judgement_text((1, 1, 1, 1, 0, 1, 0), 14)
    assert text == "query ok, expect 41, answer wrong. <Calculation>1+1+1+1+0+1+0=5</Calculation><Score>5</Score>"
    assert judgement_text((0, 0, 0, 0, 0, 0, 0), None).startswith("no task, no number. <Calculation>")
    assert parse_judgement(text).score == 5.0


def test_judge_examples_are_consistent_with_the_rubric():
    rng = random.Random(0)
    for _ in range(200):
        prompt, reply = judge_example(rng, WORLD, set())
        assert prompt.startswith("judge: <Instruction>")
        judgement = parse_judgement(reply)
        assert judgement.source == "score" and judgement.score == sum(judgement.criteria)


def test_labelled_pairs_are_balanced_and_labelled_by_the_verifier():
    problems = [Problem("2+3*4", 14, "precedence"), Problem("5+6", 11, "one_op")]
    pairs = labelled_pairs(problems, WORLD, 40, seed=0)
    assert sum(p[2] for p in pairs) == 20
    for query, answer, correct in pairs:
        assert correct == (answer == {"2+3*4": "41", "5+6": "11"}[query])


# ---- the judge object --------------------------------------------------------------------------
def test_judge_scores_every_pair_in_one_batch_with_the_frozen_reference(monkeypatch):
    tokenizer = build_tokenizer()
    policy = build_model(tokenizer, TinyModelConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                                    num_attention_heads=2), seed=0)
    calls = []
    import lsp_exp.judge.self_quality as judge_module

    def fake_generate(model, tok, prompts, **kwargs):
        calls.append((model, prompts, kwargs))
        replies = ["ok <Score>6</Score>", "<Calculation>1+0+1+0+1+0+0=3</Calculation>", "garbage"]

        class Out:
            texts = replies[: len(prompts)]
        return Out()

    monkeypatch.setattr(judge_module, "generate", fake_generate)
    reference = Reference(policy)
    judge = SelfQualityJudge(reference, tokenizer, TEMPLATES["toy"], fallback_score=1.0)
    scores = judge.score(["1+2", "3+4", "5*6"], ["3", "7", "03"])
    assert len(calls) == 1 and calls[0][0] is reference.frozen and calls[0][2]["do_sample"] is False
    assert "<Instruction>3+4</Instruction><Response>7</Response>" in calls[0][1][1]
    assert scores.values.tolist() == [6.0, 3.0, 1.0]
    assert scores.parse_fail.tolist() == [False, True, True]
    assert scores.unscored.tolist() == [False, False, True]
    metrics = scores.metrics()
    assert metrics["train/judge/parse_fail_frac"] == pytest.approx(2 / 3)
    assert metrics["train/judge/unscored_frac"] == pytest.approx(1 / 3)
    assert metrics["train/judge/query_points"] == 1.0  # criteria 1-2 of the one 7-term calculation


def test_greedy_judge_generates_each_distinct_pair_once_and_shares_its_judgement(monkeypatch):
    """A group's Solver often repeats an answer; greedy judging is a function of the pair, so the
    batch holds each distinct (query, answer) once and every copy gets its judgement."""
    tokenizer = build_tokenizer()
    policy = build_model(tokenizer, TinyModelConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                                    num_attention_heads=2), seed=0)
    import lsp_exp.judge.self_quality as judge_module
    seen = []

    def fake_generate(model, tok, prompts, **kwargs):
        seen.append(prompts)

        class Out:  # the score of a prompt is the length of its answer, so copies are traceable
            texts = [f"<Score>{len(p.split('<Response>')[1].split('</Response>')[0])}</Score>" for p in prompts]
        return Out()

    monkeypatch.setattr(judge_module, "generate", fake_generate)
    queries, answers = ["1+2", "1+2", "3+4", "1+2", "3+4"], ["3", "3", "7", "03", "7"]
    greedy = SelfQualityJudge(Reference(policy), tokenizer, TEMPLATES["toy"]).score(queries, answers)
    assert len(seen[0]) == 3  # ("1+2", "3"), ("3+4", "7"), ("1+2", "03")
    assert greedy.values.tolist() == [1.0, 1.0, 1.0, 2.0, 1.0]
    assert greedy.texts == ["<Score>1</Score>"] * 3 + ["<Score>2</Score>", "<Score>1</Score>"]
    assert greedy.metrics()["train/judge/distinct_frac"] == pytest.approx(3 / 5)
    sampled = SelfQualityJudge(Reference(policy), tokenizer, TEMPLATES["toy"], temperature=1.0).score(queries, answers)
    assert len(seen[1]) == 5 and sampled.metrics()["train/judge/distinct_frac"] == 1.0  # samples are independent
    assert sampled.values.tolist() == greedy.values.tolist()


def test_judging_distinct_pairs_matches_judging_every_row_on_a_real_model():
    tokenizer = build_tokenizer()
    policy = build_model(tokenizer, TinyModelConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                                    num_attention_heads=2), seed=0)
    judge = SelfQualityJudge(Reference(policy), tokenizer, TEMPLATES["toy_steps"], max_new_tokens=6)
    queries, answers = ["1+2", "3+4", "1+2", "5*6"], ["1+2=3", "3+4=7", "1+2=3", "5*6=03"]
    once = judge.score(queries, answers)
    rows = [judge._score([q], [a]) for q, a in zip(queries, answers, strict=True)]
    assert once.texts == [r.texts[0] for r in rows]
    assert torch.allclose(once.values, torch.cat([r.values for r in rows]), atol=1e-5)


def test_judge_generates_real_replies_on_a_tiny_model():
    tokenizer = build_tokenizer()
    policy = build_model(tokenizer, TinyModelConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                                    num_attention_heads=2), seed=0)
    judge = SelfQualityJudge(Reference(policy), tokenizer, TEMPLATES["toy"], max_new_tokens=6)
    scores = judge.score(["1+2"] * 4, ["3", "4", "x", ""])
    assert scores.values.shape == (4,) and len(scores.texts) == 4
    assert scores.unscored.all() and (scores.values == 0).all()  # an untrained model: fallback, counted


def test_in_a_training_step_an_invalid_query_collects_no_judge_score(shared_outputs, monkeypatch):
    """Full LSP with a judge that gives every pair 7 points: a valid query's Challenger reward is
    -V + 7, an invalid one's -1 (V = the verifier's upper bound, no V_Q). The tiny test policy
    writes no valid problem at the first step, so every query there is worth exactly -1."""
    from lsp_exp.cli.train import train
    from lsp_exp.judge.self_quality import JudgeScores
    from tests.helpers.tiny_run import run_of

    from tests.helpers.tiny_run import compose_config, tiny_overrides

    def always_seven(self, queries, answers):
        n = len(queries)
        return JudgeScores(torch.full((n,), 7.0), torch.zeros(n, dtype=torch.bool), torch.zeros(n, dtype=torch.bool),
                           torch.full((n,), 2.0), ["<Score>7</Score>"] * n)

    monkeypatch.setattr(SelfQualityJudge, "score", always_seven)
    train(compose_config("train", tiny_overrides(shared_outputs, "game=lsp", "trainer.max_steps=1", "eval.samples=0",
                                                 "eval.judge_pairs=0", "+tags.failcase=invalid_vq")))
    _, history, _ = run_of(shared_outputs, "invalid_vq")
    assert history["train/query_valid_frac"][0][1] == 0.0
    assert history["train/challenger/reward"][0][1] == -1.0           # not -1 + 7
    assert history["train/judge/score"][0][1] == 7.0


def test_the_reply_parser_is_linear_in_the_reply_length():
    """A hostile 300k-character reply (every opening tag unclosed) once took 38 s with a lazy regex;
    it is now read by two reverse searches (no timing is asserted here). The last complete calculation
    still wins."""
    hostile = "<Calculation>1+" * 20_000 + "<Calculation>1+1+1+1+1+1+1=7</Calculation>"
    judgement = parse_judgement(hostile)
    assert judgement.score == 7.0 and judgement.source == "calculation"
    assert parse_judgement("<Calculation>1+1" * 5).source == "none"


# ---- the score read from the digit probabilities (toy_steps, G-Eval style) ----------------------
def test_expected_score_is_the_mean_of_the_digit_distribution_after_the_score_tag(monkeypatch):
    """R_Q = sum_k k p(k) with p the model's next-token distribution after `<Score>`, renormalised
    over the digits 0-7 (checked against a forward pass done here by hand); a reply without
    `<Score>` falls back to its text, then to the fallback score."""
    import lsp_exp.judge.self_quality as judge_module
    from lsp_exp.judge.self_quality import score_digit_ids

    tokenizer = build_tokenizer()
    policy = build_model(tokenizer, TinyModelConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                                    num_attention_heads=2), seed=0)
    replies = ["02,32 <Score>7</Score>", "-4 <Score>", "<Calculation>1+1+0+0+0+0+0=2</Calculation>", "none"]

    class Out:  # no captured log-probs: the rows are read by the extra forward pass
        texts, captured = replies, None

    monkeypatch.setattr(judge_module, "generate", lambda *args, **kwargs: Out())
    judge = SelfQualityJudge(Reference(policy), tokenizer, TEMPLATES["toy_steps"], fallback_score=1.5)
    assert judge.score_from == "probabilities"
    queries, answers = ["3+4*5", "3-7", "1+1", "2+2"], ["4*5=02,3+20=32", "3-7=4", "x", "y"]
    scores = judge.score(queries, answers)
    digits = score_digit_ids(tokenizer)
    assert [tokenizer.decode([d]) for d in digits] == [str(k) for k in range(8)]
    for row, prefix in ((0, "02,32 <Score>"), (1, "-4 <Score>")):
        text = judge.prompts(queries, answers)[row] + prefix
        ids = tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids
        with torch.no_grad():
            logits = judge.reference.frozen(input_ids=ids).logits[0, -1]
        p = torch.softmax(logits[digits], -1)
        assert scores.values[row].item() == pytest.approx(float((p * torch.arange(8)).sum()), abs=1e-5)
    assert scores.values[2].item() == 2.0 and scores.values[3].item() == 1.5
    assert scores.unscored.tolist() == [False, False, False, True]  # row 1 is read at its <Score> tag
    assert scores.parse_fail.tolist() == [False, False, True, True]


def test_score_from_text_keeps_the_written_score_and_bad_settings_are_refused():
    tokenizer = build_tokenizer()
    policy = build_model(tokenizer, TinyModelConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                                    num_attention_heads=2), seed=0)
    assert SelfQualityJudge(Reference(policy), tokenizer, TEMPLATES["toy_steps"], score_from="text").digit_ids is None
    with pytest.raises(ValueError, match="game.judge.score_from='logits'"):
        SelfQualityJudge(Reference(policy), tokenizer, TEMPLATES["toy"], score_from="logits")


def test_log_probs_captured_during_generation_equal_a_forward_pass_after_the_marker():
    """`generate(capture=(marker, columns))` keeps, per row, the log-probs of `columns` right after
    the row's first `marker`: the same as a forward pass over prompt + completion up to the marker
    (the judge reads its score digits so, without a second pass). Rows without it stay NaN."""
    from lsp_exp.core.generation import chat_prompts, generate

    tokenizer = build_tokenizer()
    model = build_model(tokenizer, TinyModelConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                                   num_attention_heads=2), seed=3).eval()
    prompts = chat_prompts(tokenizer, ["1+2", "13-4*5", "7"])
    plain = generate(model, tokenizer, prompts, max_new_tokens=6, do_sample=False)
    first = plain.input_ids[0, plain.prompt_length + 1].item()  # row 0's second token is the marker
    columns = [tokenizer.convert_tokens_to_ids(str(k)) for k in range(8)]
    out = generate(model, tokenizer, prompts, max_new_tokens=6, do_sample=False, capture=(first, columns))
    assert torch.equal(out.input_ids, plain.input_ids)
    for row in range(3):
        completion = out.input_ids[row, out.prompt_length:].tolist()
        if first not in completion[:5]:
            assert out.captured[row].isnan().all()
            continue
        upto = out.prompt_length + completion.index(first) + 1
        mask = out.attention_mask[row:row + 1, :upto]
        with torch.no_grad():
            logits = model(input_ids=out.input_ids[row:row + 1, :upto], attention_mask=mask,
                           position_ids=(mask.cumsum(-1) - 1).clamp(min=0)).logits[0, -1]
        assert torch.allclose(out.captured[row], logits.log_softmax(-1)[columns], atol=1e-5)
    assert not out.captured[0].isnan().any()


def test_generation_stopped_at_the_marker_keeps_the_same_log_probs_and_nothing_after_it():
    """`stop_at_capture`: a row ends right after its marker (the judge needs no more than the digit
    log-probs there); the captured log-probs are those of the full decoding, the text is its prefix."""
    from lsp_exp.core.generation import chat_prompts, generate

    tokenizer = build_tokenizer()
    model = build_model(tokenizer, TinyModelConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                                   num_attention_heads=2), seed=3).eval()
    prompts = chat_prompts(tokenizer, ["1+2", "13-4*5", "7"])
    plain = generate(model, tokenizer, prompts, max_new_tokens=6, do_sample=False)
    marker = plain.input_ids[0, plain.prompt_length + 1].item()
    columns = [tokenizer.convert_tokens_to_ids(str(k)) for k in range(8)]
    full = generate(model, tokenizer, prompts, max_new_tokens=6, do_sample=False, capture=(marker, columns))
    stopped = generate(model, tokenizer, prompts, max_new_tokens=6, do_sample=False, capture=(marker, columns),
                       stop_at_capture=True)
    assert torch.allclose(stopped.captured, full.captured, equal_nan=True)
    for row in range(3):
        completion = full.input_ids[row, full.prompt_length:].tolist()
        kept = stopped.completion_mask[row, stopped.prompt_length:].sum().item()
        if marker in completion[:5]:
            assert kept == completion.index(marker) + 1 and not stopped.finished[row]
            assert full.texts[row].startswith(stopped.texts[row])
        else:
            assert stopped.texts[row] == full.texts[row]
