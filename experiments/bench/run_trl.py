"""Benchmark worker: TRL's `GRPOTrainer` on the same model, prompts and work as `run_lsp.py`.

Equal work: N prompts x G completions per step (`per_device_train_batch_size = N * G`,
`num_generations = G`, one optimizer step per generation, `num_iterations = 1`), completions forced
to exactly `max_completion_length` tokens (`generation_kwargs={"min_new_tokens": L}`), temperature 1,
no top-k / top-p, a KL term to a frozen reference (`beta = 0.05`, as `kl=fixed`: one reference
forward pass per step), fp32 without gradient checkpointing (this project's defaults; TRL's own
defaults are bf16 autocast and checkpointing, which would make it do other work), the same
verifier as the reward, learning rate 3e-5, gradient clipping 1.0, no logging, no saving, no eval.

`--micro K`: the same step in micro-batches of K rows, as this project's `trainer.micro_batch_size=K`:
`per_device_train_batch_size = K`, `gradient_accumulation_steps = N * G / K`, `generation_batch_size =
N * G` (one generation of all N x G completions per optimizer step, so no old-log-prob pass either).
"""
from __future__ import annotations

import argparse
import tempfile

from common import add_work_args, Clock, emit, read_train_prompts, rss_mb, set_threads, summarise


def main() -> None:
    p = argparse.ArgumentParser()
    add_work_args(p)
    p.add_argument("--prompts", required=True)
    p.add_argument("--beta", type=float, default=0.05)
    p.add_argument("--micro", type=int, default=None, help="rows per forward/backward (gradient accumulation)")
    args = p.parse_args()
    set_threads(args.threads)

    import torch
    import trl
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from lsp_exp.tasks.arith.verifier_reward import ArithmeticReward
    from lsp_exp.tasks.arith.world import WorldConfig

    tokenizer = AutoTokenizer.from_pretrained(args.model_dir, local_files_only=True)
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=torch.float32, attn_implementation="sdpa",
                                                 local_files_only=True)
    prompts = read_train_prompts(args.prompts)
    dataset = Dataset.from_list([{"prompt": [{"role": "user", "content": q}]} for q in prompts])
    verifier = ArithmeticReward(WorldConfig())

    def verifier_reward(prompts, completions, **kwargs):
        queries = [p[-1]["content"] for p in prompts]
        answers = [c[-1]["content"] for c in completions]
        return verifier.score(queries, answers).values.tolist()

    class Timer(TrainerCallback):
        def __init__(self):
            self.clock = Clock()

        def on_train_begin(self, *a, **k):
            self.clock.begin()

        def on_step_end(self, *a, **k):
            self.clock.tick()

    out = tempfile.mkdtemp(prefix="trl-bench-")
    rows = args.n * args.g
    if args.micro and args.micro < rows:
        if rows % args.micro:
            raise SystemExit(f"--micro {args.micro} must divide N x G = {rows}")
        batching = dict(per_device_train_batch_size=args.micro, gradient_accumulation_steps=rows // args.micro,
                        generation_batch_size=rows)
    else:
        batching = dict(per_device_train_batch_size=rows, gradient_accumulation_steps=1, steps_per_generation=1)
    config = GRPOConfig(
        output_dir=out, num_generations=args.g, num_iterations=1, **batching,
        max_completion_length=args.max_tokens, generation_kwargs={"min_new_tokens": args.max_tokens},
        temperature=1.0, top_p=1.0, top_k=0, beta=args.beta, loss_type="grpo", scale_rewards="none",
        learning_rate=3e-5, adam_beta1=0.9, adam_beta2=0.99, weight_decay=0.0, max_grad_norm=1.0,
        lr_scheduler_type="constant", warmup_steps=0,
        max_steps=args.steps, seed=args.seed, use_cpu=True, bf16=False, fp16=False, gradient_checkpointing=False,
        logging_steps=10**9, save_strategy="no", eval_strategy="no", report_to="none", disable_tqdm=True,
        dataloader_num_workers=0, log_completions=False, remove_unused_columns=False,
    )
    timer = Timer()
    trainer = GRPOTrainer(model=model, reward_funcs=verifier_reward, args=config, train_dataset=dataset,
                          processing_class=tokenizer, callbacks=[timer])
    rss_before = rss_mb()
    trainer.train()
    lengths = trainer._metrics["train"].get("completions/mean_length", [])
    emit(summarise(timer.clock, args.warmup, args.n * args.g * args.max_tokens,
                   {"framework": f"trl {trl.__version__}", "game": "GRPOTrainer", "batching": batching,
                    "rss_before_train_mb": rss_before,
                    "perf": {"train/answer_len": sum(lengths) / len(lengths) if lengths else float("nan")},
                    "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
