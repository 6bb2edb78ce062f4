"""The per-step metrics of a self-play step (metric keys: docs/method.md §13)."""
from __future__ import annotations

import math

import torch

from lsp_exp.rl.diagnostics import advantage_stats, zero_std_fraction


def _valid_mean(per_query: torch.Tensor, valid: torch.Tensor) -> float:
    valid = valid.float()
    return float((per_query * valid).sum() / valid.sum().clamp(min=1))


def role_metrics(batch, terms, alpha: float) -> dict[str, float]:
    """Diagnostics of one role: KL, losses, entropy, clipping, advantages, zero-variance groups."""
    name, mask = batch.name, batch.member_mask
    adv_mean, adv_std = advantage_stats(batch.advantages, mask)
    baseline = getattr(batch.advantage_fn, "baseline", None)   # a stateful estimator's (role_baseline)
    return {
        **({f"train/adv_baseline/{name}": float(baseline)} if baseline is not None else {}),
        f"train/kl/{name}": float(terms.kl_mean),
        f"train/kl/beta_{name}": batch.beta,
        f"train/loss/{name}": float(terms.policy.detach()),
        f"train/entropy/{name}": batch.entropy,
        f"train/clip_frac/{name}": float(terms.clip_frac),
        f"train/approx_kl_old/{name}": float(terms.approx_kl),
        f"train/adv_mean/{name}": float(adv_mean),
        f"train/adv_std/{name}": float(adv_std),
        f"train/zero_std_frac/{name}": float(zero_std_fraction(batch.rewards, mask)),
        f"_kl_loss/{name}": alpha * batch.beta * float(terms.kl_mean),
    }


def step_metrics(*, rewards, query_valid, values, answers, queries, roles, terms, weights,
                 grad_norm, solver_rewards) -> dict[str, float]:
    metrics = {
        "train/solver/reward": _valid_mean(rewards.mean(-1), query_valid),
        "train/value_mean": _valid_mean(values, query_valid),
        "train/query_valid_frac": float(query_valid.float().mean()),
        "train/answer_len": float(answers.completion_lengths.float().mean()),
        "train/answer_unfinished_frac": float((~answers.finished).float().mean()),
        "train/grad_norm": grad_norm,
    }
    for batch in roles:
        metrics.update(role_metrics(batch, terms[batch.name], weights[batch.name]))
    # every valid query's group (the Solver's figure without a band, §17.2), also in a Challenger phase
    valid_pairs = query_valid[:, None].expand_as(solver_rewards)
    metrics["train/zero_std_frac"] = float(zero_std_fraction(solver_rewards, valid_pairs))
    metrics["train/loss/kl"] = sum(metrics.pop(f"_kl_loss/{b.name}") for b in roles)
    if queries.rollout is not None:
        metrics["train/query_len"] = float(queries.rollout.completion_lengths.float().mean())
        metrics["train/query_unfinished_frac"] = float((~queries.finished).float().mean())
    return metrics


def reward_metrics(*, scores, truth, judged, sol_rewards, ch_rewards, query_valid, queries, n, g) -> dict[str, float]:
    """The proxy beside the ground truth, the judge, and the rewards each role trains on."""
    metrics = {f"train/reward/{name}": float(v.mean()) for name, v in scores.parts.items()}
    if queries.rollout is not None:
        metrics["train/challenger/reward"] = float(ch_rewards.mean())
    if judged is not None:
        metrics.update(judged.metrics())
        metrics["train/solver/total_reward"] = _valid_mean(sol_rewards.mean(-1), query_valid)
    if truth is not None:  # the verifier beside a proxy reward: reward hacking shows as a gap
        graded = truth.valid.view(n, g)
        metrics["train/solver/true_accuracy"] = float(truth.values.view(n, g)[graded].mean()) if graded.any() else 0.0
        metrics["train/query_valid_frac"] = float((graded.all(-1) & queries.finished.cpu()).float().mean())
    return metrics


def pseudo_label_metrics(rewards, valid, truth, slices: list[list[str]]) -> dict[str, float]:
    """How right a label-free reward's pseudo-labels are, as the verifier (logged only) sees them:
    rewards [N, G] (1 for the answers that state the pseudo-label), valid [N] (the query has one),
    truth the verifier's Scores [N * G], slices each query's slices. A figure without a query to
    count is left out (docs/method.md §17.1)."""
    n, g = rewards.shape
    rewarded = rewards.detach().cpu() > 0.5
    correct = truth.values.cpu().view(n, g) > 0.5
    counted = valid.cpu() & truth.valid.cpu().view(n, g).all(-1) & rewarded.any(-1)
    # the rewarded answers all state the pseudo-label: it is right when they are true-correct
    right = (rewarded & correct).any(-1)
    metrics = {}
    if counted.any():
        metrics["train/pseudo_label/accuracy"] = float(right[counted].float().mean())
        rewarded_pairs = rewarded & counted[:, None]
        metrics["train/pseudo_label/rewarded_true_accuracy"] = float(correct[rewarded_pairs].float().mean())
    for name in dict.fromkeys(s for i, names in enumerate(slices) if counted[i] for s in names):
        in_slice = counted & torch.tensor([name in names for names in slices])
        metrics[f"train/pseudo_label/accuracy/{name}"] = float(right[in_slice].float().mean())
    return metrics


def rzero_metrics(*, repetition, in_band, query_valid, phase) -> dict[str, float]:
    """R-Zero's figures (docs/method.md §17.2), each only when its option is on: the mean repetition
    penalty r_rep and the clusters per query (1: all distinct), the share of valid queries inside the
    Solver's band, and the phase (1: Challenger, 0: Solver)."""
    metrics = {}
    if repetition is not None:
        metrics["train/challenger/repetition_penalty"] = float(repetition.penalty.mean())
        metrics["train/challenger/cluster_frac"] = repetition.clusters / max(1, len(repetition.labels))
    if in_band is not None:
        metrics["train/solver/band_frac"] = _valid_mean(in_band.float(), query_valid)
    if phase is not None:
        metrics["train/phase"] = 1.0 if phase == "challenger" else 0.0
    return metrics


def degenerate_metrics(*, queries, answers, tokenizer, max_query_tokens: int) -> dict[str, float]:
    """The fractions of degenerate generations in a step, `train/degenerate/<who>_<kind>_frac`.

    Kinds: `empty` (nothing but whitespace after decoding), `truncated` (no end token within the
    length limit), `all_pad` (not one token counts: all padding), for queries also `over_length`
    (longer than `game.max_query_tokens`: only a query from a prompt file can be). None of them
    stops a step: an empty or unfinished query is invalid (its answers leave the Solver loss), an
    all-padding row adds nothing to a loss (masked means are clamped)."""
    def kinds(texts, rollout) -> dict[str, float]:
        out = {"empty": sum(not t.strip() for t in texts) / max(1, len(texts))}
        if rollout is not None:
            out["truncated"] = float((~rollout.finished).float().mean())
            out["all_pad"] = float((rollout.completion_lengths == 0).float().mean())
        return out

    metrics = {f"train/degenerate/answer_{k}_frac": v for k, v in kinds(answers.texts, answers).items()}
    metrics.update({f"train/degenerate/query_{k}_frac": v for k, v in kinds(queries.texts, queries.rollout).items()})
    lengths = [len(ids) for ids in tokenizer(list(queries.texts), add_special_tokens=False)["input_ids"]]
    over_length = sum(n > max_query_tokens for n in lengths)
    metrics["train/degenerate/query_over_length_frac"] = over_length / max(1, len(lengths))
    return metrics


def reduce_over_ranks(per_rank: list[dict[str, float]], sums: tuple[str, ...] = ()) -> dict[str, float]:
    """One dict of figures from each rank's: for each key any rank has, the mean of the ranks' finite
    values (NaN when none has one), or their sum for keys starting with one of `sums`.

    A key one rank lacks (e.g. `train/judge/query_points` where no judgement parsed) or a NaN
    (a skipped step's gradient norm) is left out of that key's figure instead of pairing the
    wrong values, so every rank logs, and adapts its KL coefficient to, the same numbers."""
    keys = list(dict.fromkeys(k for metrics in per_rank for k in metrics))
    out = {}
    for key in keys:
        values = [float(m[key]) for m in per_rank if key in m and not math.isnan(float(m[key]))]
        if not values:
            out[key] = float("nan")
        elif key.startswith(sums):
            out[key] = sum(values)
        else:
            out[key] = sum(values) / len(values)
    return out
