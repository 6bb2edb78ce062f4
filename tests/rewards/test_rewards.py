"""Task rewards: reward models (a tiny classifier built here), composites, and judging the judges."""
import pytest
import torch
from omegaconf import OmegaConf
from transformers import LlamaConfig, LlamaForSequenceClassification

from lsp_exp.judge.judging_the_judges import classifier_metrics, judge_the_judges, reward_probabilities
from lsp_exp.core.models import ModelNotFoundError
from lsp_exp.rewards import CompositeReward, RewardModelError, RewardModelReward, Scores, build_reward
from lsp_exp.errors import ConfigError
from lsp_exp.tasks.arith.tokenizer import build_tokenizer

WORLD = OmegaConf.create({"max_operand": 19, "max_small_operand": 9, "share_one_op": 0.3, "share_two_op": 0.3,
                          "share_precedence": 0.4, "flaw": "precedence", "flaw_rate": 0.6, "seed": 0,
                          "n_heldout": 20, "n_train": 20, "name": "arith"})


def reward_cfg(target="lsp_exp.rewards.reward_model.load_reward_model", **kw):
    """A reward's `_target_` config node, as the `reward` group writes it."""
    return OmegaConf.create({"_target_": target, "name": "test", **kw})


VERIFIER = "lsp_exp.tasks.arith.rewards.verifier"


def tiny_classifier(num_labels=1, seed=0):
    tokenizer = build_tokenizer()
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, num_labels=num_labels,
                         pad_token_id=tokenizer.pad_token_id)
    return LlamaForSequenceClassification(config).eval(), tokenizer


@pytest.fixture(scope="module")
def saved_rm(tmp_path_factory):
    path = tmp_path_factory.mktemp("rm")
    model, tokenizer = tiny_classifier()
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_reward_model_scores_the_chat_rendered_pair_in_batches(saved_rm):
    reward = build_reward(reward_cfg(path=str(saved_rm), batch_size=2))
    assert reward.bounds is None  # a raw score is unbounded
    queries, answers = ["1+2", "13-4*2", "5", "7*3"], ["3", "5", "x", "12"]
    scores = reward.score(queries, answers)
    # The same numbers one pair at a time, unpadded: batching and right padding change nothing.
    model, tokenizer = reward.model, reward.tokenizer
    for i, (q, a) in enumerate(zip(queries, answers, strict=True)):
        text = tokenizer.apply_chat_template([{"role": "user", "content": q}, {"role": "assistant", "content": a}],
                                             tokenize=False)
        assert text == f"<bos><|user|>{q}<|end|><|assistant|>{a}<|end|>"
        ids = tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids
        assert scores.values[i].item() == pytest.approx(model(input_ids=ids).logits[0, 0].item(), abs=1e-5)
    assert scores.valid.all()


def test_sigmoid_transform_bounds_the_reward(saved_rm):
    raw = build_reward(reward_cfg(path=str(saved_rm)))
    squashed = build_reward(reward_cfg(path=str(saved_rm), transform="sigmoid"))
    assert squashed.bounds == (0.0, 1.0)
    assert torch.allclose(squashed.score(["1+2"], ["3"]).values, raw.score(["1+2"], ["3"]).values.sigmoid())
    assert raw.bounds is None   # unbounded: refused by the objectives that need V in [0, 1] (test_role_rewards.py)


def test_reward_model_needs_a_scalar_head():
    model, tokenizer = tiny_classifier(num_labels=2)
    with pytest.raises(RewardModelError, match="2-way head.*num_labels=1"):
        RewardModelReward(model, tokenizer)


def test_missing_reward_model_says_what_to_download(tmp_path):
    with pytest.raises(ModelNotFoundError, match="reward.path=.*does not exist"):
        build_reward(reward_cfg(path=str(tmp_path / "nope")))
    with pytest.raises(ModelNotFoundError, match="hf download Skywork/Skywork-Reward-V2-Llama-3.2-3B"):
        build_reward(reward_cfg(path="Skywork/Skywork-Reward-V2-Llama-3.2-3B"))
    with pytest.raises(ModelNotFoundError, match="reward.path is not set"):
        build_reward(reward_cfg(path=None))


class Constant:
    def __init__(self, values, valid=None, bounds=(0.0, 1.0)):
        self.values, self.valid, self.bounds = torch.tensor(values), valid, bounds

    def score(self, queries, answers):
        valid = torch.ones(len(self.values), dtype=torch.bool) if self.valid is None else torch.tensor(self.valid)
        return Scores(self.values, valid)


def test_composite_is_the_weighted_sum_with_each_part_kept():
    reward = CompositeReward({"a": Constant([1.0, 0.0, 1.0]), "b": Constant([0.2, 0.4, 1.0])}, {"b": 0.5})
    scores = reward.score(["q"] * 3, ["a"] * 3)
    assert torch.allclose(scores.values, torch.tensor([1.1, 0.2, 1.5]))
    assert set(scores.parts) == {"a", "b"} and torch.equal(scores.parts["b"], torch.tensor([0.2, 0.4, 1.0]))
    assert reward.bounds == (0.0, 1.5)
    negative = CompositeReward({"a": Constant([1.0])}, {"a": -2.0})
    assert negative.bounds == (-2.0, 0.0)
    assert CompositeReward({"a": Constant([1.0], bounds=None)}).bounds is None
    with pytest.raises(ValueError, match="reward.weights: \\['c'\\] name no part"):
        CompositeReward({"a": Constant([1.0])}, {"c": 1.0})


def test_composite_pairs_are_invalid_if_any_part_says_so():
    reward = CompositeReward({"a": Constant([1.0, 1.0], valid=[True, False]), "b": Constant([1.0, 1.0])})
    scores = reward.score(["q"] * 2, ["a"] * 2)
    assert scores.valid.tolist() == [True, False] and scores.values.tolist() == [2.0, 0.0]


def test_composite_from_config_builds_named_parts(saved_rm):
    cfg = reward_cfg("lsp_exp.rewards.composite.CompositeReward", weights={"verifier": 2.0, "rm": 0.5}, parts={
        "verifier": {"_target_": VERIFIER, "world": WORLD},
        "rm": {"_target_": "lsp_exp.rewards.reward_model.load_reward_model", "path": str(saved_rm),
               "transform": "sigmoid"}})
    reward = build_reward(cfg)
    scores = reward.score(["1+2", "1+2"], ["3", "4"])
    # the reward model's part from an independent path: the same model loaded on its own, not the part's output
    from lsp_exp.rewards.reward_model import load_reward_model

    rm = load_reward_model(str(saved_rm), transform="sigmoid").score(["1+2", "1+2"], ["3", "4"]).values
    assert torch.allclose(scores.parts["rm"], rm) and ((rm > 0) & (rm < 1)).all()
    assert torch.allclose(scores.values, torch.tensor([2.0, 0.0]) + 0.5 * rm)
    assert reward.bounds == (0.0, 2.5)


def test_a_reward_that_cannot_be_built_is_one_line_naming_the_key(saved_rm):
    with pytest.raises(ConfigError, match=r"^reward._target_='nowhere.Oracle': "):
        build_reward(reward_cfg("nowhere.Oracle"))
    with pytest.raises(ConfigError, match=r"reward \(lsp_exp.rewards.reward_model.load_reward_model\): .*colour"):
        build_reward(reward_cfg(path=str(saved_rm), colour="blue"))   # not an argument of the target
    with pytest.raises(ConfigError, match="has no score"):
        build_reward(reward_cfg("collections.OrderedDict"))
    with pytest.raises(RewardModelError, match="reward.transform='tanh'"):
        build_reward(reward_cfg(path=str(saved_rm), transform="tanh"))


# ---- judging the judges ------------------------------------------------------------------------
def test_classifier_metrics_by_hand():
    # predictions > 0.5: [1, 1, 0, 1]; labels [1, 0, 0, 1]: TP 2, FP 1, FN 0.
    metrics = classifier_metrics(torch.tensor([0.9, 0.8, 0.3, 0.6]), torch.tensor([True, False, False, True]))
    assert metrics["precision"] == pytest.approx(2 / 3)
    assert metrics["recall"] == pytest.approx(1.0)
    assert metrics["f1"] == pytest.approx(0.8)
    assert metrics["auc"] == pytest.approx(0.75)  # 3 of the 4 (positive, negative) pairs are ordered right


def test_auc_is_left_out_with_one_class():
    assert "auc" not in classifier_metrics(torch.tensor([0.2, 0.7]), torch.tensor([True, True]))


def test_reward_probabilities():
    assert torch.allclose(reward_probabilities(torch.tensor([0.0, 1.5, 3.0]), (0.0, 3.0)),
                          torch.tensor([0.0, 0.5, 1.0]))
    assert torch.allclose(reward_probabilities(torch.tensor([0.0]), None), torch.tensor([0.5]))


def test_judge_the_judges_scores_the_judge_on_its_scale():
    class FakeJudge:
        bounds = (0.0, 7.0)

        def score(self, queries, answers):
            from lsp_exp.judge.self_quality import JudgeScores
            values = torch.tensor([7.0, 5.0, 6.0, 2.0])
            return JudgeScores(values, torch.zeros(4, dtype=torch.bool), torch.zeros(4, dtype=torch.bool),
                               torch.full((4,), float("nan")), [""] * 4)

    pairs = [("q", "a", True), ("q", "b", False), ("q", "c", True), ("q", "d", False)]
    out = judge_the_judges(pairs, reward=Constant([1.0, 0.0, 0.0, 0.0]), judge=FakeJudge())
    assert out["judge/precision"] == 1.0 and out["judge/recall"] == 1.0 and out["judge/auc"] == 1.0
    assert out["judge/score_correct"] == 6.5 and out["judge/score_wrong"] == 3.5
    assert out["reward/precision"] == 1.0 and out["reward/recall"] == 0.5 and out["reward/auc"] == 0.75
