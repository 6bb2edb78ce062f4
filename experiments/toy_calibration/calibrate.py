"""Calibrate the toy world: is learning measurable with the default budget?

Prints the base model's held-out accuracy (greedy, sampled pass@1, pass@8, by difficulty), then
trains `game=grpo_data` and `game=lsp_zero` with exactly the default budget (`conf/train.yaml`,
what `make run` trains) for each seed, and prints before/after held-out accuracy per arm.

    .venv/bin/python experiments/toy_calibration/calibrate.py                 # seeds 0 1
    .venv/bin/python experiments/toy_calibration/calibrate.py --seeds 0 1 2 --games grpo_data
    .venv/bin/python experiments/toy_calibration/calibrate.py -o optim.lr=1e-4   # extra overrides
"""
from __future__ import annotations

import argparse
import statistics
import time

from hydra import compose, initialize_config_dir

from lsp_exp.run.config import PROJECT_ROOT
from lsp_exp.cli.train import train


TABLE_KEYS = ["accuracy/flawed", "accuracy/unflawed", "pass_at_1", "pass_at_8", "pass_at_8/flawed"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--games", nargs="+", default=["grpo_data", "lsp_zero"])
    parser.add_argument("-o", "--override", action="append", default=[], help="extra Hydra override")
    args = parser.parse_args()

    rows = []
    for game in args.games:
        for seed in args.seeds:
            overrides = [f"game={game}", f"seed={seed}", "trainer.enable_progress_bar=false",
                         "logger.experiment_name=toy-calibration", *args.override]
            with initialize_config_dir(config_dir=str(PROJECT_ROOT / "conf"), version_base="1.3"):
                cfg = compose(config_name="train", overrides=overrides)
            started = time.time()
            history = train(cfg)
            before, after = history[min(history)], history[max(history)]
            rows.append((game, seed, before, after, time.time() - started, cfg.trainer.max_steps))
            print(f"[{game} seed {seed}] greedy {before['accuracy']:.3f} -> {after['accuracy']:.3f} "
                  f"({time.time() - started:.0f} s)", flush=True)

    print("\nbase held-out (before training): " + "  ".join(f"{k} {v:.3f}" for k, v in rows[0][2].items()))
    keys = [k for k in TABLE_KEYS if k in rows[0][3]]
    print("\n| arm | seed | steps | wall s | greedy before | greedy after | gain (points) | "
          + " | ".join(f"{k} after" for k in keys) + " |")
    print("|---" * (7 + len(keys)) + "|")
    for game, seed, before, after, wall, steps in rows:
        gain = 100 * (after["accuracy"] - before["accuracy"])
        print(f"| {game} | {seed} | {steps} | {wall:.0f} | {before['accuracy']:.3f} | {after['accuracy']:.3f} | "
              f"{gain:+.1f} | " + " | ".join(f"{after[k]:.3f}" for k in keys) + " |")
    for game in args.games:
        gains = [100 * (a["accuracy"] - b["accuracy"]) for g, _, b, a, _, _ in rows if g == game]
        spread = f" +- {statistics.stdev(gains):.1f}" if len(gains) > 1 else ""
        print(f"{game}: mean gain {statistics.mean(gains):+.1f}{spread} points over {len(gains)} seed(s)")


if __name__ == "__main__":
    main()
