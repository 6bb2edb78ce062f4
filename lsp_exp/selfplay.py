"""The self-play LightningModule: Algorithm 1 of LSP (LSP_SPEC 3.4), one optimizer step per batch.

    challenger prompt --N--> queries --G each--> answers --> R(q, a) [+ R_Q(q, a), the judge]
      --> V(q), advantages --> log-probs of policy and reference --> L_Sol + alpha_Ch * L_Ch
      --> one optimizer step

The maths lives in `lsp_exp.rl` (pure functions); this module only orchestrates and logs.
"""
from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager

import lightning as L
import torch

from lsp_exp.evaluation import evaluate_solver
from lsp_exp.generation import chat_prompts, generate, token_logprobs
from lsp_exp.judge.judge import SelfQualityJudge
from lsp_exp.judge.judging import judge_the_judges
from lsp_exp.judge.templates import get_template
from lsp_exp.models import Reference
from lsp_exp.rl import ADVANTAGE_ESTIMATORS, CHALLENGER_OBJECTIVES, KL_ESTIMATORS, POLICY_LOSSES, get
from lsp_exp.rl.kl import sequence_kl
from lsp_exp.rl.objective import query_values, role_loss
from lsp_exp.rl.self_reward import challenger_rewards, solver_rewards
from lsp_exp.tracking import log_eval, log_sample_table, sample_rows


class SelfPlayModule(L.LightningModule):
    """`verifier`: the ground truth logged beside a proxy reward (None when the reward is the verifier
    or there is none); `labelled_pairs`: (query, answer, correct?) to judge the judges at start."""

    def __init__(self, cfg, policy, tokenizer, game, reward, heldout, eval_slices=None, verifier=None,
                 labelled_pairs=None, judge_template: str = "toy"):
        super().__init__()
        self.automatic_optimization = False
        self.cfg, self.policy, self.tokenizer, self.game, self.reward = cfg, policy, tokenizer, game, reward
        self.heldout, self.eval_slices = heldout, eval_slices
        self.verifier, self.labelled_pairs = verifier, labelled_pairs or []
        self.reference = Reference(policy)
        j = cfg.game.judge
        self.judge = SelfQualityJudge(
            self.reference, tokenizer, get_template(judge_template), max_new_tokens=j.max_new_tokens,
            temperature=j.temperature, fallback_score=j.fallback_score) if cfg.game.self_reward else None
        self.advantage_fn = get(ADVANTAGE_ESTIMATORS, cfg.algorithm.advantage, "algorithm.advantage")
        self.policy_loss_fn = get(POLICY_LOSSES, cfg.algorithm.policy_loss, "algorithm.policy_loss")
        self.kl_estimator = get(KL_ESTIMATORS, cfg.kl.estimator, "kl.estimator")
        self.objective_fn = get(CHALLENGER_OBJECTIVES, cfg.game.challenger_objective, "game.challenger_objective")
        kl = cfg.kl
        self.beta_solver = kl.beta if kl.beta_solver is None else kl.beta_solver
        self.beta_challenger = kl.beta if kl.beta_challenger is None else kl.beta_challenger
        self.eval_history: dict[int, dict[str, float]] = {}
        self.judging: dict[str, float] = {}  # eval/judge/* and eval/reward/* at the start
        self.skipped_steps = 0

    # ---- Lightning plumbing -------------------------------------------------------------------
    def configure_optimizers(self):
        params = [p for p in self.policy.parameters() if p.requires_grad]
        o = self.cfg.optim
        return torch.optim.AdamW(params, lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay)

    def on_fit_start(self):
        # The frozen copy and a reward model are not submodules: Lightning does not move them.
        self.reference.to(self.device)
        if hasattr(self.reward, "to"):
            self.reward.to(self.device)

    def on_train_start(self):
        if self.labelled_pairs:
            metrics = judge_the_judges(self.labelled_pairs, self.reward, self.judge, self.cfg.eval.judge_threshold)
            log_eval(self.logger, 0, metrics)
            self.judging = metrics
        self._evaluate(samples=self.cfg.eval.samples)

    def on_train_end(self):
        self._evaluate(samples=self.cfg.eval.samples)

    # ---- one self-play step --------------------------------------------------------------------
    def training_step(self, batch, batch_idx):
        cfg, g = self.cfg.game, self.cfg.game.group_size
        times: dict[str, float] = defaultdict(float)
        step_start = time.perf_counter()

        with _timed(times, "gen"):
            queries = self.game.queries(self.policy, self.tokenizer)
            answers = generate(self.policy, self.tokenizer, chat_prompts(self.tokenizer, queries.texts),
                               max_new_tokens=cfg.max_answer_tokens, temperature=cfg.temperature,
                               num_return_sequences=g)
        n = len(queries.texts)
        pair_queries = [q for q in queries.texts for _ in range(g)]
        with _timed(times, "reward"):
            scores = self.reward.score(pair_queries, answers.texts)
            rewards = scores.values.view(n, g).to(self.device)
            query_valid = queries.finished.to(self.device) & scores.valid.view(n, g).all(-1)
            truth = self.verifier.score(pair_queries, answers.texts) if self.verifier is not None else None
        judged = None
        if self.judge is not None:
            with _timed(times, "judge"):
                judged = self.judge.score(pair_queries, answers.texts)
        # LSP_SPEC 4.3: r_sol = R + w R_Q and r_ch = objective(V) + w V_Q, V from the task reward alone.
        values = query_values(rewards, query_valid, cfg.invalid_query_value)
        sol_rewards, ch_rewards = rewards, self.objective_fn(values)
        if judged is not None:
            quality = judged.values.view(n, g).to(self.device)
            sol_rewards = solver_rewards(rewards, quality, cfg.self_reward_weight)
            ch_rewards = challenger_rewards(ch_rewards, quality, cfg.self_reward_weight)
        with _timed(times, "ref"), torch.no_grad(), self.reference.model() as ref:
            ref_sol = token_logprobs(ref, answers.input_ids, answers.attention_mask)
            ref_ch = token_logprobs(ref, queries.rollout.input_ids, queries.rollout.attention_mask) if queries.rollout else None

        with _timed(times, "update"):
            sol_mask = answers.completion_mask[:, 1:]
            tok_sol = token_logprobs(self.policy, answers.input_ids, answers.attention_mask)
            solver = role_loss(
                sol_rewards, query_valid[:, None].expand(n, g), (tok_sol * sol_mask).sum(-1),
                sequence_kl(self.kl_estimator, tok_sol, ref_sol, sol_mask), beta=self.beta_solver,
                placement=self.cfg.kl.placement, advantage_fn=self.advantage_fn, policy_loss_fn=self.policy_loss_fn)
            loss = solver.total
            challenger = None
            if queries.rollout is not None:
                ch_mask = queries.rollout.completion_mask[:, 1:]
                tok_ch = token_logprobs(self.policy, queries.rollout.input_ids, queries.rollout.attention_mask)
                challenger = role_loss(
                    ch_rewards[None, :], torch.ones(1, n, dtype=torch.bool, device=self.device),
                    (tok_ch * ch_mask).sum(-1), sequence_kl(self.kl_estimator, tok_ch, ref_ch, ch_mask),
                    beta=self.beta_challenger, placement=self.cfg.kl.placement,
                    advantage_fn=self.advantage_fn, policy_loss_fn=self.policy_loss_fn)
                loss = loss + cfg.alpha_ch * challenger.total
            grad_norm = self._optimizer_step(loss)

        step_s = time.perf_counter() - step_start
        generated = answers.completion_mask.sum() + (queries.rollout.completion_mask.sum() if queries.rollout else 0)
        metrics = self._step_metrics(rewards, query_valid, values, answers, queries, solver, challenger, grad_norm)
        metrics.update(self._reward_metrics(scores, truth, judged, sol_rewards, ch_rewards, query_valid, queries, n, g))
        metrics.update({f"perf/{k}_s": v for k, v in times.items()})
        metrics.update({"perf/step_s": step_s, "perf/tokens_per_s": float(generated) / step_s})
        self.log_dict(metrics, on_step=True, on_epoch=False)
        self.log("valid", metrics["train/query_valid_frac"], prog_bar=True, logger=False)
        self.log("reward", metrics["train/solver/reward"], prog_bar=True, logger=False)

        step = self.global_step
        if self.cfg.eval.sample_table_every and step % self.cfg.eval.sample_table_every == 0:
            per_pair = {"reward": rewards, "solver_reward": sol_rewards, "solver_advantage": solver.advantages}
            if judged is not None:
                per_pair["judge_score"] = judged.values.view(n, g)
            per_query = {"value": values, "challenger_reward": ch_rewards}
            if challenger is not None:
                per_query["challenger_advantage"] = challenger.advantages[0]
            texts = {"judge_reply": judged.texts} if judged is not None else {}
            log_sample_table(self.logger, step, sample_rows(queries.texts, answers.texts, per_pair, per_query, texts))
        every = self.cfg.eval.every_n_steps
        if every and step % every == 0 and step < self.trainer.max_steps:
            self._evaluate(samples=0)

    def _optimizer_step(self, loss: torch.Tensor) -> float:
        """Backward and one optimizer step; a non-finite loss skips the step and is counted."""
        opt = self.optimizers()
        opt.zero_grad(set_to_none=True)
        if not torch.isfinite(loss):
            self.skipped_steps += 1
            self.log("train/nonfinite_skips", float(self.skipped_steps))
            return float("nan")
        self.manual_backward(loss)
        params = [p for p in self.policy.parameters() if p.requires_grad]
        grad_norm = torch.nn.utils.clip_grad_norm_(params, self.cfg.optim.grad_clip or float("inf"))
        opt.step()
        return float(grad_norm)

    def _step_metrics(self, rewards, query_valid, values, answers, queries, solver, challenger, grad_norm):
        valid_f = query_valid.float()
        n_valid = valid_f.sum().clamp(min=1)
        grouped_same = (rewards.max(-1).values == rewards.min(-1).values).float()
        metrics = {
            "train/solver/reward": float((rewards.mean(-1) * valid_f).sum() / n_valid),
            "train/value_mean": float((values * valid_f).sum() / n_valid),
            "train/query_valid_frac": float(valid_f.mean()),
            "train/zero_std_frac": float((grouped_same * valid_f).sum() / n_valid),
            "train/answer_len": float(answers.completion_lengths.float().mean()),
            "train/answer_unfinished_frac": float((~answers.finished).float().mean()),
            "train/kl/solver": float(solver.kl_mean),
            "train/loss/solver": float(solver.policy.detach()),
            "train/loss/kl": float(self.beta_solver * solver.kl_mean),
            "train/grad_norm": grad_norm,
        }
        if challenger is not None:
            metrics.update({
                "train/kl/challenger": float(challenger.kl_mean),
                "train/loss/challenger": float(challenger.policy.detach()),
                "train/query_len": float(queries.rollout.completion_lengths.float().mean()),
                "train/query_unfinished_frac": float((~queries.finished).float().mean()),
            })
            metrics["train/loss/kl"] += self.cfg.game.alpha_ch * self.beta_challenger * float(challenger.kl_mean)
        return metrics

    def _reward_metrics(self, scores, truth, judged, sol_rewards, ch_rewards, query_valid, queries, n, g):
        """The proxy beside the ground truth, the judge, and the rewards each role trains on."""
        metrics = {f"train/reward/{name}": float(v.mean()) for name, v in scores.parts.items()}
        if queries.rollout is not None:
            metrics["train/challenger/reward"] = float(ch_rewards.mean())
        if judged is not None:
            metrics.update(judged.metrics())
            valid = query_valid.float()
            metrics["train/solver/total_reward"] = float((sol_rewards.mean(-1) * valid).sum() / valid.sum().clamp(min=1))
        if truth is not None:  # the verifier beside a proxy reward: reward hacking shows as a gap
            graded = truth.valid.view(n, g)
            metrics["train/solver/true_accuracy"] = float(truth.values.view(n, g)[graded].mean()) if graded.any() else 0.0
            metrics["train/query_valid_frac"] = float((graded.all(-1) & queries.finished.cpu()).float().mean())
        return metrics

    # ---- held-out evaluation -------------------------------------------------------------------
    def _evaluate(self, samples: int) -> None:
        if not self.heldout:
            return
        metrics = evaluate_solver(self.policy, self.tokenizer, self.heldout, samples=samples,
                                  max_new_tokens=self.cfg.game.max_answer_tokens, slices=self.eval_slices)
        self.eval_history[self.global_step] = metrics
        log_eval(self.logger, self.global_step, metrics)


@contextmanager
def _timed(times: dict[str, float], key: str):
    start = time.perf_counter()
    yield
    times[key] += time.perf_counter() - start
