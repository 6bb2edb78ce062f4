"""The self-play LightningModule: Algorithm 1 of LSP (docs/method.md §2), one optimizer step per batch.

    1. play     the Challenger writes N queries, the Solver answers each G times
    2. score    R(q, a) for every answer; the judge's R_Q in full LSP
    3. rewards  V(q), r_sol = R + w R_Q, r_ch = objective(V) + w V_Q
    4. ref      the frozen reference's log-probs of both roles' playouts
    5. update   L_Sol + alpha_Ch * L_Ch over micro-batches, one optimizer step

The maths lives in `lsp_exp.rl` (pure functions); the step returns a `StepRecord` (run/playout.py)
that callbacks log: run/step_logging.py (metrics), run/sample_tables.py, run/evaluation.py (held-out).
"""
from __future__ import annotations

import math
import time
from contextlib import contextmanager, nullcontext

import lightning as L
import torch
from lightning.pytorch.strategies import ModelParallelStrategy

from lsp_exp.core.checkpoint_keys import check_checkpoint_keys
from lsp_exp.core.generation import SamplingOptions
from lsp_exp.core.logprobs import LogprobOptions
from lsp_exp.core.micro_batch import logprobs_in_chunks
from lsp_exp.core.models import Reference
from lsp_exp.core.precision import autocast, compute_dtype
from lsp_exp.core.roles import RoleBatch, role_backward
from lsp_exp.core.sharding import full_state_dict, gathered, is_sharded, shard
from lsp_exp.errors import LspError
from lsp_exp.games.base import StatefulGame
from lsp_exp.judge.self_quality import SelfQualityJudge
from lsp_exp.judge.templates import get_template
from lsp_exp.nodes import build
from lsp_exp.rewards.base import DeviceReward
from lsp_exp.rl import KL_ESTIMATORS, get
from lsp_exp.rl.advantages import is_stateful
from lsp_exp.rl.algorithms import algorithm_spec
from lsp_exp.rl.kl_control import kl_controller
from lsp_exp.rl.role_rewards import challenger_advantage_fn, challenger_objective, invalid_query_value, role_rewards
from lsp_exp.run.checkpointing import gather_objects
from lsp_exp.run.playout import Graded, Playout, StepRecord, grade, play
from lsp_exp.run.rzero import RZero
from lsp_exp.tasks.base import Task


class NonFiniteLossError(LspError):
    """Too many non-finite losses in a row (`trainer.max_consecutive_nonfinite`)."""


class SelfPlayModule(L.LightningModule):
    """`task`: what the callbacks ask of the task (its reading of answers, its kinds of query);
    `verifier`: the ground truth logged beside a proxy reward (None when the reward is the verifier
    or there is none); `sampling` and `logprobs`: how the policy is sampled and scored."""

    def __init__(self, cfg, policy, tokenizer, game, reward, task: Task, *, sampling: SamplingOptions,
                 logprobs: LogprobOptions, verifier=None, judge_template: str = "paper"):
        super().__init__()
        self.automatic_optimization = False
        self.cfg, self.policy, self.tokenizer, self.game, self.reward = cfg, policy, tokenizer, game, reward
        self.task, self.verifier, self.sampling, self.logprobs = task, verifier, sampling, logprobs
        self.reference = Reference(policy)
        # docs/method.md §16
        self.compute_dtype = compute_dtype(cfg.model.get("dtype", "float32"), cfg.trainer.precision)
        j = cfg.game.judge
        self.judge = SelfQualityJudge(
            self.reference, tokenizer, get_template(judge_template), max_new_tokens=j.max_new_tokens,
            temperature=j.temperature, fallback_score=j.fallback_score, score_from=j.score_from,
            sampling=sampling) if cfg.game.self_reward else None
        self.algorithm = algorithm_spec(cfg.algorithm, build)  # names, or a user's functions from `_target_`
        # each role's own advantage estimator (a stateful one, e.g. role_baseline, keeps a state per role)
        self.advantage_estimators = {role: self.algorithm.role_estimator() for role in ("solver", "challenger")}
        self.kl_estimator = get(KL_ESTIMATORS, cfg.kl.estimator, "kl.estimator")
        self.objective_fn = challenger_objective(cfg.game.challenger_objective, build)  # a name, or a user's function
        self.kl_controllers = {role: kl_controller(cfg.kl, role) for role in ("solver", "challenger")}
        self.invalid_query_value = invalid_query_value(cfg.game.invalid_query_value, getattr(reward, "bounds", None))
        self.role_weights = {"solver": 1.0, "challenger": cfg.game.alpha_ch}
        self.rzero = RZero(cfg.game, getattr(reward, "bounds", None))  # repetition penalty, band, phases (§17.2)
        self.skipped_steps = 0           # updates skipped for a non-finite loss or gradient norm
        self.consecutive_nonfinite = 0
        self.resumed_at: int | None = None  # the step of the checkpoint this run resumed from
        self.final_weights: dict | None = None  # the full weights gathered at the end of a sharded run

    # ---- one self-play step (Algorithm 1) ----------------------------------------------------------
    def training_step(self, batch, batch_idx) -> dict[str, StepRecord]:
        game, seconds, start, step = self.cfg.game, {}, time.perf_counter(), self.global_step
        # 1. play: N queries (the Challenger's, or a data game's) and G sampled answers to each
        with _timed(seconds, "gen"), self.gathered_policy(), self.autocast_context():
            playout = play(self.game, self.policy, self.tokenizer, group_size=game.group_size, sampling=self.sampling,
                           max_answer_tokens=game.max_answer_tokens, temperature=game.temperature)
        # 2. score: the task reward R (and the verifier beside a proxy); the judge's R_Q in full LSP
        with _timed(seconds, "reward"):
            graded = grade(playout, self.reward, self.verifier, self.device)
        judged = self._judge(playout, seconds) if self.judge is not None else None
        # 3. role rewards: V(q), r_sol = R + w R_Q, r_ch = objective(V) + w V_Q (rl/role_rewards.py)
        quality = judged.values.to(self.device).view(playout.n, -1) if judged is not None else None
        repetition = self.rzero.repetition(playout.queries, self.tokenizer)  # R-Zero's r_rep (None: off)
        rewards = role_rewards(graded.rewards, graded.query_valid, objective=self.objective_fn, quality=quality,
                               invalid_value=self.invalid_query_value, weight=game.self_reward_weight,
                               penalty=None if repetition is None else repetition.penalty.to(self.device),
                               penalty_weight=self.rzero.penalty_weight, floor=self.rzero.floor)
        in_band = self.rzero.in_band(graded.query_valid, rewards.values)  # the Solver's band (None: every valid)
        # 4. the reference's token log-probs of both roles' playouts
        with _timed(seconds, "ref"):
            roles = self._role_batches(playout, graded, rewards, graded.query_valid if in_band is None else in_band)
        phase = self.rzero.phase(step)  # under game.schedule only that role is updated (None: both)
        roles = [b for b in roles if phase in (None, b.name)]
        # 5. update: the backward of L_Sol + alpha_Ch L_Ch and one optimizer step (per inner epoch)
        with _timed(seconds, "update"):
            terms, grad_norm = self._update(roles)
        seconds["step"] = time.perf_counter() - start
        return {"step": StepRecord(step, playout, graded, judged, rewards, roles, terms, grad_norm,
                                   self.role_weights, seconds, repetition=repetition, in_band=in_band, phase=phase)}

    def _judge(self, playout: Playout, seconds: dict[str, float]):
        """R_Q of every pair [N * G], by the frozen reference (docs/method.md §8)."""
        with _timed(seconds, "judge"), self.gathered_reference(), self.autocast_context():
            return self.judge.score(playout.pair_queries, playout.answers.texts)

    def _role_batches(self, playout: Playout, graded: Graded, rewards, solver_queries: torch.Tensor) -> list[RoleBatch]:
        """The Solver's N x G answers (members: answers to `solver_queries` [N], the valid queries in
        the band) and, in self-play, the Challenger's N queries as one group [1, N], each with its
        rewards and pi_ref's log-probs."""
        n, g, game, queries = playout.n, playout.group_size, self.cfg.game, playout.queries
        with torch.no_grad(), self.gathered_reference(), self.autocast_context(), self.reference.model() as ref:
            roles = [RoleBatch("solver", playout.answers, rewards.solver, solver_queries[:, None].expand(n, g),
                               logprobs_in_chunks(ref, playout.answers, self.logprobs),
                               self.kl_controllers["solver"].value, game.max_answer_tokens,
                               advantage_fn=self.advantage_estimators["solver"])]
            if queries.rollout is not None:
                all_members = torch.ones(1, n, dtype=torch.bool, device=self.device)
                advantage_fn = challenger_advantage_fn(self.advantage_estimators["challenger"],
                                                       bool(graded.query_valid.any()))
                roles.append(RoleBatch("challenger", queries.rollout, rewards.challenger[None, :], all_members,
                                       logprobs_in_chunks(ref, queries.rollout, self.logprobs),
                                       self.kl_controllers["challenger"].value, game.max_query_tokens,
                                       advantage_fn=advantage_fn))
        return roles

    def _update(self, roles: list[RoleBatch]):
        """`algorithm.epochs` optimizer steps over the same playouts (1 for LSP; PPO-style inner
        epochs otherwise); returns the last epoch's loss terms and gradient norm (NaN: skipped).
        Then beta follows the KL of all ranks (adaptive control; fixed: no-op)."""
        epochs, skipped = self.algorithm.epochs, False
        for epoch in range(epochs):
            terms, grad_norm = self._optimizer_step(roles, last=epoch == epochs - 1)
            skipped |= not math.isfinite(grad_norm)
        self._count_skip(skipped)  # a step with a skipped update counts once, whatever its inner epochs
        if math.isfinite(grad_norm):
            for name, kl in self._kl_over_ranks(terms).items():
                if math.isfinite(kl):
                    self.kl_controllers[name].update(kl)
        return terms, grad_norm

    def _optimizer_step(self, roles: list[RoleBatch], last: bool):
        """Backward of L = sum_role weight * L_role over micro-batches (`trainer.micro_batch_size`) and
        one optimizer step; returns (the roles' loss terms, the gradient norm: NaN when the update was
        skipped). A non-finite loss or gradient norm skips the update (counted per step, `_count_skip`).

        Lightning counts `global_step` in optimizer steps; `trainer.max_steps` counts self-play
        steps, so only the last of a step's inner epochs goes through Lightning's optimizer wrapper
        (the others step the wrapped torch optimizer directly). A skipped update still counts the
        step (the optimizer steps with no gradients), so a run of bad steps cannot loop forever.
        Every rank runs every backward (each micro-batch's gradients are reduced across ranks), and
        every rank skips when one does (the decision is reduced), so none waits for the others."""
        opt = self.optimizers()
        opt.zero_grad(set_to_none=True)
        with self.autocast_context():  # ends before the step: autocast's cached weight casts would be stale after it
            terms = {b.name: role_backward(b, self.policy, estimator=self.kl_estimator, placement=self.cfg.kl.placement,
                                           algorithm=self.algorithm, scale=self.role_weights[b.name],
                                           logprob_options=self.logprobs, backward=self.manual_backward)
                     for b in roles}
        loss = sum(self.role_weights[k] * float(t.total) for k, t in terms.items())
        params = [p for p in self.policy.parameters() if p.requires_grad]
        grad_norm = float(_full(torch.nn.utils.clip_grad_norm_(params, self.cfg.optim.grad_clip or float("inf"))))
        finite_on_this_rank = math.isfinite(loss) and math.isfinite(grad_norm)
        if not self.trainer.strategy.reduce_boolean_decision(finite_on_this_rank, all=True):
            grad_norm = float("nan")
        finite = math.isfinite(grad_norm)
        if not finite:
            opt.zero_grad(set_to_none=True)  # clipping a non-finite norm leaves NaN gradients behind
        if last:
            opt.step()
        elif finite:  # a real update
            opt.optimizer.step()
        if finite and not _all_finite(p for p in self.policy.parameters() if p.requires_grad):
            raise NonFiniteLossError(
                f"the update at step {self.global_step} made the weights non-finite (finite loss and gradient norm "
                f"{grad_norm:.3g}): stopping; the last checkpoint holds the last good weights; lower optim.lr")
        return terms, grad_norm

    def _kl_over_ranks(self, terms) -> dict[str, float]:
        """Each role's mean sequence KL, averaged over the ranks that have a finite one, so beta stays
        the same on every rank."""
        per_rank = gather_objects({name: float(t.kl_mean) for name, t in terms.items()}, self.trainer)
        out = {}
        for name in terms:
            values = [r[name] for r in per_rank if name in r and math.isfinite(r[name])]
            out[name] = sum(values) / len(values) if values else float("nan")
        return out

    def _count_skip(self, skipped: bool) -> None:
        """Count a step whose update (or one of its inner epochs' updates) was skipped; too many in a
        row stop the run (`trainer.max_consecutive_nonfinite` counts steps, not inner epochs)."""
        if not skipped:
            self.consecutive_nonfinite = 0
            return
        self.skipped_steps += 1
        self.consecutive_nonfinite += 1
        limit = self.cfg.trainer.get("max_consecutive_nonfinite", 20)
        if self.consecutive_nonfinite >= limit:
            raise NonFiniteLossError(
                f"{self.consecutive_nonfinite} non-finite losses or gradients in a row (the last at step "
                f"{self.global_step - 1}; {self.skipped_steps} skipped in all): stopping "
                f"(trainer.max_consecutive_nonfinite={limit}); lower optim.lr or check the reward")

    # ---- devices and precision --------------------------------------------------------------------
    def configure_model(self):
        """trainer=fsdp (Lightning's ModelParallelStrategy): shard the policy with FSDP2 (core/sharding.py)."""
        if isinstance(self.trainer.strategy, ModelParallelStrategy) and not is_sharded(self.policy):
            shard(self.policy, self.trainer.strategy.root_device, param_dtype=self.compute_dtype)
            self.reference.cast_like_sharded(self.compute_dtype)
            self.strict_loading = False  # the gathered state dict names a tied weight once (lm_head = embeddings)

    def autocast_context(self):
        """The policy's forwards in the compute dtype (core/precision.py); never around an optimizer step."""
        return autocast(self.device, self.compute_dtype)

    def gathered_policy(self):
        """The policy's full weights (a sharded policy is gathered on every rank; else nothing to do)."""
        return gathered(self.policy)

    def gathered_reference(self):
        """The full weights for passes of pi_ref when it is the (sharded) policy with its adapter off."""
        return gathered(self.policy) if self.reference.uses_adapter else nullcontext()

    # ---- Lightning plumbing -----------------------------------------------------------------------
    def configure_optimizers(self):
        params = [p for p in self.policy.parameters() if p.requires_grad]
        o = self.cfg.optim
        # fused: one kernel for all parameters (TRL's default too); no measurable step-time change on CPU
        # (experiments/bench)
        return torch.optim.AdamW(params, lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay, fused=o.fused)

    def on_fit_start(self):
        # The frozen copy and a reward model are not submodules: Lightning does not move them.
        self.reference.to(self.device)
        if isinstance(self.reward, DeviceReward):
            self.reward.to(self.device)

    def on_train_start(self):
        """Each rank plays its own games: rollouts (and a data game's sampler) draw from seed + rank,
        whatever the start-up (run/evaluation.py's callback runs before this hook) drew. A resumed run
        has its saved streams instead (the game's is loaded with the checkpoint, the global RNGs are
        set at its first step: checkpointing.py)."""
        if self.resumed_at is not None:
            return
        L.seed_everything(self.cfg.seed + self.global_rank, workers=True, verbose=False)
        if isinstance(self.game, StatefulGame):
            self.game.reseed(self.cfg.seed + self.global_rank)

    def on_save_checkpoint(self, checkpoint):
        checkpoint["kl_controllers"] = {k: c.state_dict() for k, c in self.kl_controllers.items()}
        estimators = {k: e.state_dict() for k, e in self.advantage_estimators.items() if is_stateful(e)}
        if estimators:  # one per rank, as each rank's baselines follow its own rewards
            checkpoint["advantage_estimators"] = gather_objects(estimators, self.trainer)
        checkpoint["counters"] = {"skipped_steps": self.skipped_steps,
                                  "consecutive_nonfinite": self.consecutive_nonfinite}
        if isinstance(self.game, StatefulGame):
            checkpoint["game"] = gather_objects(self.game.state_dict(), self.trainer)  # one per rank
        trainable = {n for n, p in self.named_parameters() if p.requires_grad}
        if len(trainable) < len(checkpoint["state_dict"]):  # LoRA: only the adapter is saved
            checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trainable}

    def on_load_checkpoint(self, checkpoint):
        for k, state in checkpoint.get("kl_controllers", {}).items():
            self.kl_controllers[k].load_state_dict(state)
        if checkpoint.get("advantage_estimators"):
            saved = checkpoint["advantage_estimators"]
            for k, state in saved[self.global_rank % len(saved)].items():
                if is_stateful(self.advantage_estimators[k]):
                    self.advantage_estimators[k].load_state_dict(state)
        for k, v in checkpoint.get("counters", {}).items():
            setattr(self, k, v)
        if checkpoint.get("game") and isinstance(self.game, StatefulGame):
            self.game.load_state_dict(checkpoint["game"][self.global_rank % len(checkpoint["game"])])
        if "state_dict" in checkpoint:  # (a sharded run's strategy has loaded them non-strictly already)
            check_checkpoint_keys(set(checkpoint["state_dict"]), self)   # every weight of this run, none other
            self.strict_loading = len(checkpoint["state_dict"]) == len(self.state_dict())
        self.resumed_at = checkpoint.get("global_step", 0)

    def on_train_end(self):
        if is_sharded(self.policy):  # every rank takes part; rank 0 saves them as the final model
            self.final_weights = full_state_dict(self.policy)


def _all_finite(params) -> bool:
    """Every value of every tensor finite: their largest absolute value (one fused pass, no
    full-size temporary, one device synchronisation) is finite; a NaN or inf anywhere makes it not."""
    params = list(params)
    return not params or bool(torch.isfinite(_full(torch.nn.utils.get_total_norm(params, norm_type=float("inf")))))


def _full(value: torch.Tensor) -> torch.Tensor:
    """A norm over sharded parameters (FSDP2: a DTensor) as a plain tensor, the same on every rank."""
    return value.full_tensor() if hasattr(value, "full_tensor") else value


@contextmanager
def _timed(seconds: dict[str, float], key: str):
    start = time.perf_counter()
    yield
    seconds[key] = seconds.get(key, 0.0) + time.perf_counter() - start
