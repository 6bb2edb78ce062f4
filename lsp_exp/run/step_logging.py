"""The per-step figures of a self-play step (metric keys: docs/method.md §13): a Lightning callback
that reads the step's `StepRecord` and logs it to the progress bar and the store, before the step's
checkpoint (StepCheckpoint comes after it in the callback list), so the store is never behind one."""
from __future__ import annotations

import torch
from lightning.pytorch.callbacks import Callback

from lsp_exp.core.perf import mfu, peak_flops
from lsp_exp.run.collapse import QueryMemory, collapse_metrics
from lsp_exp.run.step_metrics import (degenerate_metrics, pseudo_label_metrics, reduce_over_ranks, reward_metrics,
                                      rzero_metrics, step_metrics)
from lsp_exp.run.checkpointing import gather_objects
from lsp_exp.run.playout import StepRecord


class StepMetricsLogger(Callback):
    """`train/*` and `perf/*` of every step (the mean over ranks; cumulative token counts summed),
    and the progress bar's `valid` and `reward`. Counts the tokens the policy generated (the arms'
    budget, `train/tokens/<role>`), saved per rank with each checkpoint."""

    def __init__(self):
        self.tokens = {"solver": 0, "challenger": 0}
        self.last: dict[str, float] = {}   # the last step's figures (what a sweeper's `optimized_metric` reads)
        self._n_params: int | None = None
        self.memory: QueryMemory | None = None   # the Challenger's recent queries (trainer.health.query_memory)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        record: StepRecord = outputs["step"]
        metrics = self.figures(record, module)
        # One gather per step: every rank gets the same figures, whatever keys each rank produced.
        metrics = reduce_over_ranks(gather_objects(metrics, trainer), sums=("train/tokens/",))
        metrics["train/nonfinite_skips"] = float(module.skipped_steps)
        module.log_dict(metrics, on_step=True, on_epoch=False, logger=False)  # the progress bar and callbacks
        if module.logger is not None:  # the store gets them now, before this step's checkpoint
            module.logger.log_metrics(metrics, step=record.step)
        module.log("valid", metrics["train/query_valid_frac"], prog_bar=True, logger=False)
        module.log("reward", metrics["train/solver/reward"], prog_bar=True, logger=False)
        self.last = metrics

    def figures(self, record: StepRecord, module) -> dict[str, float]:
        """This rank's figures of one step."""
        playout, graded, rewards, cfg = record.playout, record.graded, record.rewards, module.cfg.game
        queries, answers = playout.queries, playout.answers
        metrics = step_metrics(rewards=graded.rewards, query_valid=graded.query_valid, values=rewards.values,
                               answers=answers, queries=queries, roles=record.roles, terms=record.terms,
                               weights=record.weights, grad_norm=record.grad_norm, solver_rewards=rewards.solver)
        metrics.update(rzero_metrics(repetition=record.repetition, in_band=record.in_band,
                                     query_valid=graded.query_valid, phase=record.phase))
        metrics.update(reward_metrics(scores=graded.scores, truth=graded.truth, judged=record.judged,
                                      sol_rewards=rewards.solver, ch_rewards=rewards.challenger,
                                      query_valid=graded.query_valid, queries=queries, n=playout.n,
                                      g=playout.group_size))
        metrics.update(degenerate_metrics(queries=queries, answers=answers, tokenizer=module.tokenizer,
                                          max_query_tokens=cfg.max_query_tokens))
        metrics.update({f"train/queries/{k}": v for k, v in module.task.query_metrics(queries.texts).items()})
        if getattr(module.reward, "pseudo_labels", False) and graded.truth is not None:  # a label-free reward
            metrics.update(pseudo_label_metrics(graded.rewards, graded.query_valid, graded.truth,
                                                module.task.query_slices(queries.texts)))
        metrics.update(collapse_metrics(queries=queries, rewards=graded.rewards, valid=graded.query_valid,
                                        bounds=getattr(module.reward, "bounds", None), memory=self._memory(module)))
        seconds = record.seconds
        metrics.update({f"perf/{k}_s": v for k, v in seconds.items()})
        self.tokens["solver"] += int(answers.completion_mask.sum())
        generated = answers.completion_mask.sum()
        if queries.rollout is not None:
            self.tokens["challenger"] += int(queries.rollout.completion_mask.sum())
            generated = generated + queries.rollout.completion_mask.sum()
        metrics["perf/tokens_per_s"] = float(generated) / seconds["step"]
        if module.device.type == "cuda":  # the update's model FLOPs utilisation (lsp_exp/core/perf.py)
            metrics.update(self._mfu(record, module, seconds["update"] / module.algorithm.epochs))
        metrics.update({f"train/tokens/{role}": float(count) for role, count in self.tokens.items()})  # cumulative
        return metrics

    def _mfu(self, record: StepRecord, module, seconds: float) -> dict[str, float]:
        peak = peak_flops(torch.cuda.get_device_name(module.device))
        if peak is None or seconds <= 0:
            return {}
        tokens = sum(int(b.rollout.attention_mask.sum()) for b in record.roles)
        if self._n_params is None:
            self._n_params = sum(p.numel() for p in module.policy.parameters())
        return {"perf/mfu": mfu(self._n_params, tokens, seconds, peak, lora=module.reference.uses_adapter)}

    def _memory(self, module) -> QueryMemory:
        if self.memory is None:
            self.memory = QueryMemory(int(module.cfg.trainer.health.query_memory))
        return self.memory

    def on_save_checkpoint(self, trainer, module, checkpoint):
        checkpoint["generated_tokens"] = gather_objects(dict(self.tokens), trainer)  # one per rank
        checkpoint["query_memory"] = gather_objects(self._memory(module).state_dict(), trainer)  # one per rank

    def on_load_checkpoint(self, trainer, module, checkpoint):
        tokens = checkpoint.get("generated_tokens", {})
        rank = trainer.global_rank
        self.tokens.update(tokens[rank % len(tokens)] if isinstance(tokens, list) else tokens)
        memories = checkpoint.get("query_memory") or [{}]
        self._memory(module).load_state_dict(memories[rank % len(memories)])
