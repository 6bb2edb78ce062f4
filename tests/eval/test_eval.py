"""`lsp-eval`: its metrics against hand-computed values, and a run evaluated end to end."""
import math

import mlflow
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from lsp_exp.cli.evaluate import evaluate
from lsp_exp.eval.metrics import conditional_perplexity, distinct_n, self_bleu, spaced_chars, text_overlap, win_rate
from lsp_exp.tasks.arith.tokenizer import build_tokenizer
from lsp_exp.cli.train import train

from tests.helpers.tiny_run import TINY_WORLD, compose_config, tiny_overrides
from tests.helpers.tiny_run import latest_run_id


def test_win_rate_counts_wins_ties_and_splits():
    model, base = torch.tensor([1.0, 0.0, 1.0, 0.5]), torch.tensor([0.0, 0.0, 1.0, 1.0])
    # diffs 1, 0, 0, -0.5: one win, two ties, one loss.
    out = win_rate(model, base, ["a", "a", "b", "b"], tie_value=0.5)
    assert out["win_rate"] == pytest.approx((1 + 0.5 * 2) / 4)
    assert (out["tie_rate"], out["loss_rate"]) == (0.5, 0.25)
    assert out["win_rate/a"] == pytest.approx(0.75) and out["win_rate/b"] == pytest.approx(0.25)
    assert win_rate(model, base, tie_value=0.0)["win_rate"] == pytest.approx(0.25)
    assert win_rate(model, base, margin=0.6)["tie_rate"] == pytest.approx(0.75)  # -0.5 is now a tie
    assert "win_rate/a" not in win_rate(model, base, ["a"] * 4)


def test_distinct_n_and_self_bleu():
    texts = [[1, 2, 3], [1, 2, 4]]
    assert distinct_n(texts, 1) == pytest.approx(4 / 6)   # {1, 2, 3, 4} of 6 unigrams
    assert distinct_n(texts, 2) == pytest.approx(3 / 4)   # (1,2) twice, (2,3), (2,4)
    assert distinct_n([[1]], 2) == 0.0
    same = [list("12+3*4")] * 4
    assert self_bleu(same) == pytest.approx(1.0)
    varied = [list("12+3*4"), list("5-19"), list("7*8+0"), list("13-2*6")]
    assert self_bleu(varied) < self_bleu(same[:2] + varied[:2]) < 1.0
    assert math.isnan(self_bleu([[1, 2]]))


def test_text_overlap_and_character_spacing():
    assert spaced_chars("147") == "1 4 7"
    exact = text_overlap(["the cat sat on the mat"], ["the cat sat on the mat"])
    assert exact == {"bleu": pytest.approx(1.0), "rouge_l": pytest.approx(1.0)}
    assert text_overlap(["a b"], ["c d"], n_gram=2)["rouge_l"] == 0.0


def test_perplexity_of_a_uniform_model_is_the_vocabulary_size():
    tokenizer = build_tokenizer()
    tokenizer.padding_side = "left"
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, pad_token_id=tokenizer.pad_token_id)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        model.lm_head.weight.zero_()  # every logit 0: each token has probability 1 / V
    ppl = conditional_perplexity(model, tokenizer, ["2+3", "12*9+1"], ["5", "901"], batch_size=1)
    assert ppl == pytest.approx(len(tokenizer), rel=1e-4)


def test_lsp_eval_logs_into_the_run_and_a_base_run(shared_outputs):
    uri = f"sqlite:///{shared_outputs}/mlflow.db"
    train(compose_config("train", tiny_overrides(shared_outputs, "game=lsp_zero", "+tags.arm=eval_me")))
    run_id = latest_run_id(shared_outputs)
    common = TINY_WORLD + [f"paths.outputs={shared_outputs}", f"logger.tracking_uri={uri}", "win_rate.max_prompts=12",
                           "perplexity.max_rows=6"]
    (metrics,) = evaluate(compose_config("eval", common + ["run=\"filter:tags.arm = 'eval_me'\""]))
    assert {"accuracy", "win_rate", "tie_rate", "bleu", "rouge_l", "perplexity", "perplexity_ngram"} <= set(metrics)
    assert 1 < metrics["perplexity_ngram"] < 12   # the answers' 11 characters and the end, better than uniform
    assert 0 <= metrics["win_rate"] <= 1 and metrics["perplexity"] > 1
    client = mlflow.MlflowClient(uri)
    logged = client.get_run(run_id).data
    assert logged.metrics["eval/win_rate"] == pytest.approx(metrics["win_rate"]) and "lsp_eval" in logged.tags
    diversity = client.get_metric_history(run_id, "eval/diversity/distinct_1")
    assert [m.step for m in diversity] == [2, 3]    # one point per sample table (every 2 steps of 3, and the last)
    assert all(0 < m.value <= 1 for m in diversity)
    (base,) = evaluate(compose_config("eval", common + ["+tags.arm=base", "logger.experiment_name=evals"]))
    assert base["win_rate"] == pytest.approx(0.5) and base["tie_rate"] == 1.0  # the base against itself
    exp = client.get_experiment_by_name("evals")
    (base_run,) = client.search_runs([exp.experiment_id], filter_string="tags.arm = 'base'")
    assert base_run.data.tags["arm"] == "base" and base_run.info.status == "FINISHED"


def test_lsp_eval_llm_judge_reads_the_judge_model_without_copying_it(shared_outputs, monkeypatch):
    """`win_rate.judge=llm`: the judge model is loaded once and read in place (a 3B judge would
    otherwise be held twice): `Reference` must not deep-copy it."""
    from types import SimpleNamespace

    import lsp_exp.core.models

    def no_copy(obj, memo=None):
        raise AssertionError("the judge model was deep-copied")

    monkeypatch.setattr(lsp_exp.core.models, "copy", SimpleNamespace(deepcopy=no_copy))
    (base,) = evaluate(compose_config("eval", TINY_WORLD + [
        f"paths.outputs={shared_outputs}", "logger=none", "win_rate.judge=llm", "win_rate.max_prompts=4",
        "heldout.enabled=false", "perplexity.enabled=false", "diversity=false"]))
    assert base["win_rate"] == pytest.approx(0.5) and base["tie_rate"] == 1.0  # the base against itself


def test_pass_at_k_and_per_slice_accuracy_by_hand(monkeypatch):
    """evaluate_solver on canned answers: 3 problems in slices a/b, greedy answers and k=2 samples
    each; every figure computed by hand."""
    from types import SimpleNamespace

    import lsp_exp.eval.heldout as heldout_mod
    from lsp_exp.tasks.base import HeldoutSet

    truth = ["1", "2", "3"]
    greedy = ["1", "x", "3"]                                  # right, wrong, right
    sampled = ["1", "y", "z", "2", "q", "r"]                  # prompt-major: p0 (1 of 2), p1 (1 of 2), p2 (0 of 2)

    def generate(model, tokenizer, prompts, *, do_sample, num_return_sequences=1, **kwargs):
        assert len(prompts) == 3
        return SimpleNamespace(texts=sampled if do_sample else greedy)

    monkeypatch.setattr(heldout_mod, "generate", generate)
    monkeypatch.setattr(heldout_mod, "chat_prompts", lambda tokenizer, texts: list(texts))
    model = torch.nn.Linear(1, 1)
    model.device = torch.device("cpu")
    heldout = HeldoutSet(["p0", "p1", "p2"], lambda i, text: text == truth[i], [["a"], ["a", "b"], ["b"]], truth)
    metrics = heldout_mod.evaluate_solver(model, None, heldout, samples=2)
    assert metrics == pytest.approx({
        "accuracy": 2 / 3, "accuracy/a": 1 / 2, "accuracy/b": 1 / 2,
        "pass_at_1": (1 / 2 + 1 / 2 + 0) / 3, "pass_at_1/a": 1 / 2, "pass_at_1/b": 1 / 4,
        "pass_at_2": 2 / 3, "pass_at_2/a": 1.0, "pass_at_2/b": 1 / 2})
    assert model.training  # left as it was found


def test_ngram_perplexity_by_hand():
    """Interpolated Kneser-Ney (nltk, discount d = 0.1), n = 2, fitted on 'ab' and 'b', scored on 'ab'
    and 'a' (each with its end </s>). Training bigrams: (<s>,a) (a,b) (b,</s>) (<s>,b) (b,</s>): 4
    types; continuation unigrams P(a) = 1/4, P(b) = 2/4, P(</s>) = 1/4. With c = count, N1+ = types:
      P(a|<s>)   = (1 - d)/2 + d * 2/2 * 1/4 = 0.475      P(b|a)    = (1 - d)/1 + d * 1/1 * 2/4 = 0.95
      P(</s>|b)  = (2 - d)/2 + d * 1/2 * 1/4 = 0.9625     P(</s>|a) = 0 + d * 1/1 * 1/4 = 0.025
    perplexity = (0.475 * 0.95 * 0.9625 * 0.475 * 0.025) ** (-1/5)."""
    from lsp_exp.eval.metrics import ngram_perplexity

    expected = (0.475 * 0.95 * 0.9625 * 0.475 * 0.025) ** (-1 / 5)
    assert ngram_perplexity(["ab", "b"], ["ab", "a"], n=2, tokenize=list) == pytest.approx(expected, rel=1e-12)
    # words, n = 3 (the default): a test text equal to the only training text is likelier than a shuffled one
    assert ngram_perplexity(["the cat sat"], ["the cat sat"]) < ngram_perplexity(["the cat sat"], ["sat the cat"])


def test_lsp_eval_checks_the_run_before_loading_any_model(shared_outputs, monkeypatch):
    """A wrong run id or a filter that matches nothing fails at once, naming `run=`, before a model is built."""
    import lsp_exp.cli.evaluate as evaluate_mod
    from lsp_exp.run.chaining import InitFromError

    def no_build(*args, **kwargs):
        raise AssertionError("a model was built before the run was checked")

    monkeypatch.setattr(evaluate_mod, "build", no_build)
    common = [f"paths.outputs={shared_outputs}", f"logger.tracking_uri=sqlite:///{shared_outputs}/mlflow.db"]
    with pytest.raises(InitFromError, match=r"^run='0{32}': no such MLflow run in sqlite:///"):
        evaluate(compose_config("eval", common + ["run=" + "0" * 32]))
    with pytest.raises(InitFromError, match=r"^run=\"filter:tags.arm = 'nobody'\": no finished MLflow run matches"):
        evaluate(compose_config("eval", common + ["run=\"filter:tags.arm = 'nobody'\""]))


def test_the_lsp_eval_examples_parse():
    """Every `lsp-eval` example of conf/eval.yaml and of lsp-eval's docstring is an override Hydra parses."""
    import re
    import shlex

    from hydra.core.override_parser.overrides_parser import OverridesParser

    import lsp_exp.cli.evaluate as evaluate_mod
    from lsp_exp.run.config import PROJECT_ROOT

    text = (PROJECT_ROOT / "conf" / "eval.yaml").read_text() + evaluate_mod.__doc__
    examples = [line.split("lsp-eval", 1)[1].split("  #")[0] for line in text.splitlines()
                if re.match(r"\s*#?\s*lsp-eval ", line)]
    assert len(examples) >= 6
    for example in examples:
        for arg in shlex.split(example.replace("<MLflow run id>", "x").replace("<run id>", "x")):
            OverridesParser.create().parse_overrides([arg])
