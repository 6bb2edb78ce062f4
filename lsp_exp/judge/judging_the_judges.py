"""Judging the judges: the judge and the reward model as classifiers of correctness on a fixed
labelled set of (query, answer, correct?) pairs (torchmetrics' binary precision, recall, F1, AUC)."""
from __future__ import annotations

import torch
from torchmetrics.functional.classification import binary_auroc, binary_f1_score, binary_precision, binary_recall


def classifier_metrics(probs: torch.Tensor, labels: torch.Tensor, threshold: float = 0.5) -> dict[str, float]:
    """probs [B] in [0, 1] (higher = "correct"), labels [B] bool. AUC is threshold-free; precision,
    recall and F1 predict "correct" where probs > threshold."""
    target = labels.long()
    preds = probs.float().clamp(0, 1)
    # binary_* predict positive where preds > threshold; AUC needs both classes.
    metrics = {
        "precision": binary_precision(preds, target, threshold=threshold),
        "recall": binary_recall(preds, target, threshold=threshold),
        "f1": binary_f1_score(preds, target, threshold=threshold),
    }
    if 0 < int(target.sum()) < len(target):
        metrics["auc"] = binary_auroc(preds, target)
    return {k: float(v) for k, v in metrics.items()}


def reward_probabilities(values: torch.Tensor, bounds: tuple[float, float] | None) -> torch.Tensor:
    """A reward's scores mapped to [0, 1]: min-max by its declared range, or a sigmoid if unbounded."""
    if bounds is None:
        return values.float().sigmoid()
    low, high = bounds
    return ((values.float() - low) / (high - low)).clamp(0, 1)


def judge_the_judges(pairs: list[tuple[str, str, bool]], reward=None, judge=None,
                     judge_threshold: float = 5.5) -> dict[str, float]:
    """`eval/reward/*` for the task reward and `eval/judge/*` for the self-quality judge (0-7 scores
    divided by 7; "correct" predicted above `judge_threshold`). A reward with `grades_groups = True`
    (it scores a query's G answers together, `reward=majority_vote`) is not judged: it has no verdict
    on one pair."""
    queries, answers = [p[0] for p in pairs], [p[1] for p in pairs]
    labels = torch.tensor([p[2] for p in pairs])
    out: dict[str, float] = {}
    # a reward that grades a query's group of answers together (a majority vote) is no per-pair classifier
    if reward is not None and not getattr(reward, "grades_groups", False):
        scores = reward.score(queries, answers)
        probs = reward_probabilities(scores.values, reward.bounds)
        out.update({f"reward/{k}": v for k, v in classifier_metrics(probs, labels).items()})
    if judge is not None:
        judged = judge.score(queries, answers)
        top = judge.bounds[1]
        metrics = classifier_metrics(judged.values / top, labels, judge_threshold / top)
        out.update({f"judge/{k}": v for k, v in metrics.items()})
        out["judge/parse_fail_frac"] = float(judged.parse_fail.float().mean())
        out["judge/score_correct"] = float(judged.values[labels].mean())
        out["judge/score_wrong"] = float(judged.values[~labels].mean())
    return out
