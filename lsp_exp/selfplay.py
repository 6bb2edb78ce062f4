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
from lsp_exp.rl import CHALLENGER_OBJECTIVES, KL_CONTROLLERS, KL_ESTIMATORS, get
from lsp_exp.rl.algorithms import AlgorithmSpec
from lsp_exp.rl.kl_control import AdaptiveKLController, FixedKLController
from lsp_exp.rl.objective import query_values
from lsp_exp.rl.self_reward import challenger_rewards, solver_rewards
from lsp_exp.roles import RoleBatch, role_terms
from lsp_exp.step_metrics import reward_metrics, step_metrics
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
        a = cfg.algorithm
        self.algorithm = AlgorithmSpec(a.advantage, a.policy_loss, a.aggregation, clip_low=a.clip_low,
                                       clip_high=a.clip_low if a.clip_high is None else a.clip_high, epochs=a.epochs)
        self.kl_estimator = get(KL_ESTIMATORS, cfg.kl.estimator, "kl.estimator")
        self.objective_fn = get(CHALLENGER_OBJECTIVES, cfg.game.challenger_objective, "game.challenger_objective")
        self.kl_controllers = {role: kl_controller(cfg.kl, role) for role in ("solver", "challenger")}
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

    def on_save_checkpoint(self, checkpoint):
        checkpoint["kl_controllers"] = {k: c.state_dict() for k, c in self.kl_controllers.items()}

    def on_load_checkpoint(self, checkpoint):
        for k, state in checkpoint.get("kl_controllers", {}).items():
            self.kl_controllers[k].load_state_dict(state)

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
            roles = [RoleBatch("solver", answers, sol_rewards, query_valid[:, None].expand(n, g),
                               token_logprobs(ref, answers.input_ids, answers.attention_mask),
                               self.kl_controllers["solver"].value, cfg.max_answer_tokens)]
            if queries.rollout is not None:
                roles.append(RoleBatch("challenger", queries.rollout, ch_rewards[None, :],
                                       torch.ones(1, n, dtype=torch.bool, device=self.device),
                                       token_logprobs(ref, queries.rollout.input_ids, queries.rollout.attention_mask),
                                       self.kl_controllers["challenger"].value, cfg.max_query_tokens))
        weights = {"solver": 1.0, "challenger": cfg.alpha_ch}
        with _timed(times, "update"):
            epochs = self.algorithm.epochs
            for epoch in range(epochs):  # PPO-style inner epochs over the same playouts (1 for LSP)
                terms = {b.name: role_terms(b, self.policy, estimator=self.kl_estimator, placement=self.cfg.kl.placement,
                                            algorithm=self.algorithm) for b in roles}
                grad_norm = self._optimizer_step(sum(weights[k] * t.total for k, t in terms.items()),
                                                 last=epoch == epochs - 1)
        for b in roles:  # the adaptive controller moves beta towards the target KL (fixed: no-op)
            self.kl_controllers[b.name].update(terms[b.name].kl_mean)

        step_s = time.perf_counter() - step_start
        generated = answers.completion_mask.sum() + (queries.rollout.completion_mask.sum() if queries.rollout else 0)
        metrics = step_metrics(rewards=rewards, query_valid=query_valid, values=values, answers=answers, queries=queries,
                               roles=roles, terms=terms, weights=weights, grad_norm=grad_norm)
        metrics.update(reward_metrics(scores=scores, truth=truth, judged=judged, sol_rewards=sol_rewards,
                                      ch_rewards=ch_rewards, query_valid=query_valid, queries=queries, n=n, g=g))
        metrics.update({f"perf/{k}_s": v for k, v in times.items()})
        metrics.update({"perf/step_s": step_s, "perf/tokens_per_s": float(generated) / step_s})
        self.log_dict(metrics, on_step=True, on_epoch=False)
        self.log("valid", metrics["train/query_valid_frac"], prog_bar=True, logger=False)
        self.log("reward", metrics["train/solver/reward"], prog_bar=True, logger=False)

        step = self.global_step
        if self.cfg.eval.sample_table_every and step % self.cfg.eval.sample_table_every == 0:
            per_pair = {"reward": rewards, "solver_reward": sol_rewards, "solver_advantage": roles[0].advantages}
            if judged is not None:
                per_pair["judge_score"] = judged.values.view(n, g)
            per_query = {"value": values, "challenger_reward": ch_rewards}
            if len(roles) > 1:
                per_query["challenger_advantage"] = roles[1].advantages[0]
            texts = {"judge_reply": judged.texts} if judged is not None else {}
            log_sample_table(self.logger, step, sample_rows(queries.texts, answers.texts, per_pair, per_query, texts))
        every = self.cfg.eval.every_n_steps
        if every and step % every == 0 and step < self.trainer.max_steps:
            self._evaluate(samples=0)

    def _optimizer_step(self, loss: torch.Tensor, last: bool) -> float:
        """Backward and one optimizer step; a non-finite loss skips the update and is counted.

        Lightning counts `global_step` in optimizer steps; `trainer.max_steps` counts self-play
        steps, so only the last of a step's inner epochs goes through Lightning's optimizer wrapper
        (the others step the wrapped torch optimizer directly). A skipped update still counts the
        step (the optimizer steps with no gradients), so a run of bad steps cannot loop forever."""
        opt = self.optimizers()
        opt.zero_grad(set_to_none=True)
        grad_norm = float("nan")
        if torch.isfinite(loss):
            self.manual_backward(loss)
            params = [p for p in self.policy.parameters() if p.requires_grad]
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, self.cfg.optim.grad_clip or float("inf")))
        else:
            self.skipped_steps += 1
            self.log("train/nonfinite_skips", float(self.skipped_steps))
        if last:
            opt.step()
        elif grad_norm == grad_norm:  # not NaN: a real update
            opt.optimizer.step()
        return grad_norm

    # ---- held-out evaluation -------------------------------------------------------------------
    def _evaluate(self, samples: int) -> None:
        if not self.heldout:
            return
        metrics = evaluate_solver(self.policy, self.tokenizer, self.heldout, samples=samples,
                                  max_new_tokens=self.cfg.game.max_answer_tokens, slices=self.eval_slices)
        self.eval_history[self.global_step] = metrics
        log_eval(self.logger, self.global_step, metrics)


def kl_controller(kl, role: str):
    """The role's KL coefficient: `kl.beta_<role>` when set, else `kl.beta`; fixed or adaptive."""
    beta = kl[f"beta_{role}"] if kl[f"beta_{role}"] is not None else kl.beta
    get(KL_CONTROLLERS, kl.controller, "kl.controller")
    if kl.controller == "adaptive":
        return AdaptiveKLController(beta, kl.target, kl.horizon)
    return FixedKLController(beta)


@contextmanager
def _timed(times: dict[str, float], key: str):
    start = time.perf_counter()
    yield
    times[key] += time.perf_counter() - start
