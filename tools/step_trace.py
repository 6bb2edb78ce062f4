"""Follow one self-play step through the code: the project files it runs, and the calls from a
lower layer into a higher one (README, Layout). Runs a 2-step toy run and traces its second step
(the step and its callbacks).

    python tools/step_trace.py            # from the repository root (PYTHONPATH=<checkout> for another one)
"""
from __future__ import annotations

import importlib
import os
import sys

from lsp_exp.cli.train import main as train

ORDER = {"cli": 0, "run": 1, "eval": 2, "tasks": 3, "games": 4, "rewards": 4, "judge": 5, "core": 6, "rl": 7,
         "nodes.py": 8, "errors.py": 8}


def layer(path: str) -> int:
    return ORDER.get(path.split("/")[0], 9)


def main() -> None:
    sys.argv = ["lsp-train", "trainer.max_steps=2", "logger=none", "eval.max_problems=8", "eval.samples=0",
                "trainer.enable_progress_bar=false", "eval.judge_pairs=0",
                f"paths.outputs=/tmp/step_trace_{os.getpid()}"]
    loop = importlib.import_module("lightning.pytorch.loops.training_epoch_loop")._TrainingEpochLoop
    files: list[str] = []
    upward: set[tuple[str, str, str]] = set()

    def profile(frame, event, arg):
        name = frame.f_code.co_filename
        if event != "call" or "/lsp_exp/" not in name:
            return
        here = name.split("/lsp_exp/")[1]
        if here not in files:
            files.append(here)
        caller = frame.f_back.f_code.co_filename if frame.f_back else ""
        if "/lsp_exp/" in caller and layer(here) < layer(caller.split("/lsp_exp/")[1]):
            upward.add((caller.split("/lsp_exp/")[1], here, frame.f_code.co_name))

    advance = loop.advance

    def traced(self, *args, **kwargs):
        if self.trainer.global_step != 1:
            return advance(self, *args, **kwargs)
        sys.setprofile(profile)
        try:
            return advance(self, *args, **kwargs)
        finally:
            sys.setprofile(None)

    loop.advance = traced
    try:
        train()
    except SystemExit:
        pass
    print(f"files one step runs through: {len(files)}")
    print("\n".join(f"  {f}" for f in files))
    print(f"calls from a lower layer into a higher one: {len(upward)}")
    print("\n".join(f"  {a} -> {b}:{fn}" for a, b, fn in sorted(upward)))


if __name__ == "__main__":
    main()
