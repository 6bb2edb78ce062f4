"""Benchmark worker: this project's step (`game=grpo_data`, `lsp_zero` or `lsp`), built in-process the way
`lsp_exp.cli.train.train` builds it, run by a Lightning Trainer with `logger=none` and no evaluation.

Timing excludes loading and evaluation (no held-out set, no judging of the judges): per-step wall time
is measured by a callback from the end of one step to the end of the next, and the module's own
`perf/*` split is read from the logged metrics. The Solver's answers are forced to exactly
`max_answer_tokens` tokens (the end token is suppressed until then, `min_new_tokens`) so both
frameworks do the same work; the Challenger and the judge are left to stop when they are done.
"""
from __future__ import annotations

import argparse
import statistics
from collections import defaultdict

from common import add_work_args, Clock, compose, emit, rss_mb, set_threads, summarise


def force_solver_lengths() -> None:
    """Make the Solver's `generate` call (the one `lsp_exp.run.self_play` makes) run to its max length."""
    import lsp_exp.run.self_play as selfplay

    original = selfplay.generate

    def forced(model, tokenizer, prompts, **kwargs):
        config = model.generation_config
        before = config.min_new_tokens
        config.min_new_tokens = kwargs["max_new_tokens"]
        try:
            return original(model, tokenizer, prompts, **kwargs)
        finally:
            config.min_new_tokens = before

    selfplay.generate = forced


def main() -> None:
    p = argparse.ArgumentParser()
    add_work_args(p)
    p.add_argument("--outputs", required=True)
    p.add_argument("--game", default="grpo_data")
    p.add_argument("--natural-lengths", action="store_true", help="let the Solver stop at its end token")
    p.add_argument("--before", action="store_true",
                   help="the step before the speed-ups: transformers' generate, no shared-prefix log-prob passes")
    p.add_argument("--unfused-adamw", action="store_true",
                   help="the earlier optimizer: torch.optim.AdamW without fused=True (optim.fused=false)")
    p.add_argument("overrides", nargs="*", help="extra Hydra overrides, e.g. kl=none")
    args = p.parse_args()
    set_threads(args.threads)

    import lightning as L
    import torch

    from lsp_exp.games import build_game
    from lsp_exp.rewards import build_reward
    from lsp_exp.run.self_play import SelfPlayModule
    from lsp_exp.cli.train import StepStream
    from lsp_exp.core.generation import SamplingOptions
    from lsp_exp.core.logprobs import LogprobOptions
    from lsp_exp.nodes import build
    from lsp_exp.run.step_logging import StepMetricsLogger
    from lsp_exp.run.validation import validate

    cfg = compose([f"game={args.game}", "logger=none", f"paths.outputs={args.outputs}",
                   f"game.n_queries={args.n}", f"game.group_size={args.g}", f"game.max_answer_tokens={args.max_tokens}",
                   f"trainer.max_steps={args.steps}", "trainer.enable_progress_bar=false",
                   "eval.every_n_steps=0", "eval.sample_table_every=0", f"seed={args.seed}",
                   *(["optim.fused=false"] if args.unfused_adamw else []),
                   *(["trainer.hf_generate=true", "trainer.share_prefixes=false"] if args.before else []),
                   *args.overrides])
    validate(cfg)
    if not args.natural_lengths:
        force_solver_lengths()
    L.seed_everything(cfg.seed, verbose=False)
    loader = build(cfg.model, "model")
    tokenizer = loader.tokenizer(args.model_dir)
    policy = loader.policy(args.model_dir).train()
    task = build(cfg.task, "task")
    prompts = None
    if not cfg.game.challenger:  # as lsp-train: game.prompts_path when set, the task's training split otherwise
        from lsp_exp.core.prompts import read_prompts

        prompts = read_prompts(cfg.game.prompts_path) if cfg.game.get("prompts_path") else task.train_prompts()
    reward = build_reward(cfg.reward, task=task)
    sampling, logprob_options = SamplingOptions.of(cfg.trainer), LogprobOptions.of(cfg.trainer)
    game = build_game(cfg.game, task, prompts, cfg.seed, sampling=sampling)
    module = SelfPlayModule(cfg, policy, tokenizer, game, reward, task, judge_template="toy",
                            sampling=sampling, logprobs=logprob_options)

    class Timer(L.Callback):
        def __init__(self):
            self.clock, self.perf = Clock(), defaultdict(list)

        def on_train_start(self, trainer, pl_module):
            self.clock.begin()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.clock.tick()
            for k, v in trainer.callback_metrics.items():
                if k.startswith("perf/") or k in ("train/answer_len", "train/query_len"):
                    self.perf[k].append(float(v))

    timer = Timer()
    trainer = L.Trainer(accelerator="cpu", devices=1, precision=cfg.trainer.precision, max_steps=args.steps,
                        logger=False, log_every_n_steps=1, enable_checkpointing=False, enable_model_summary=False,
                        enable_progress_bar=False, callbacks=[StepMetricsLogger(), timer])
    rss_before = rss_mb()
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader(StepStream(), batch_size=None))
    kept = slice(args.warmup, None)
    perf = {k: statistics.fmean(v[kept] or v) for k, v in timer.perf.items()}
    framework = "lsp-exp" + (" (before)" if args.before else "") + (" unfused AdamW" if args.unfused_adamw else "")
    emit(summarise(timer.clock, args.warmup, args.n * args.g * args.max_tokens,
                   {"framework": framework, "game": args.game, "perf": perf, "rss_before_train_mb": rss_before,
                    "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
