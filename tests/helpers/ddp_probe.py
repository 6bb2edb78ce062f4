"""`lsp-train` with probes, for the DDP tests: `python tests/helpers/ddp_probe.py <overrides>`.

Lightning's DDP launcher starts rank 1 with this same command line, so every rank runs the probes:
- each rank writes, after each self-play step, a digest of its trainable weights and its count of
  skipped updates to `$DDP_PROBE_DIR/rank<r>.jsonl` (and one line for the weights at the start);
- `DDP_PROBE_NAN_RANK=r DDP_PROBE_NAN_STEP=s`: rank r's loss is NaN at step s (the other ranks' are not);
- `DDP_PROBE_NO_SYNC=1` (a planted bug, to show the test catches it): backward without DDP's
  gradient all-reduce.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
from pathlib import Path


def digest(module) -> str:
    h = hashlib.sha1()
    for name, p in sorted(module.policy.named_parameters()):
        if p.requires_grad:
            h.update(name.encode())
            h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class _Setter:
    """monkeypatch.setattr for a process that ends with the run."""

    @staticmethod
    def setattr(obj, name, value):
        setattr(obj, name, value)


def install() -> None:
    """The probes, through public hooks only (Lightning's batch hooks, the algorithm's loss)."""
    from lsp_exp.run.self_play import SelfPlayModule

    out = Path(os.environ["DDP_PROBE_DIR"])

    def write(self, record):
        with open(out / f"rank{self.global_rank}.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")

    def on_train_batch_start(self, batch, batch_idx):
        if batch_idx == 0:
            write(self, {"step": -1, "digest": digest(self), "skipped": self.skipped_steps})

    def on_train_batch_end(self, outputs, batch, batch_idx):
        write(self, {"step": batch_idx, "digest": digest(self), "skipped": self.skipped_steps})

    SelfPlayModule.on_train_batch_start = on_train_batch_start
    SelfPlayModule.on_train_batch_end = on_train_batch_end

    if "DDP_PROBE_NAN_RANK" in os.environ:  # that rank's loss is NaN at that step
        from tests.helpers.step_probe import poison_losses

        rank, step = int(os.environ["DDP_PROBE_NAN_RANK"]), int(os.environ["DDP_PROBE_NAN_STEP"])
        poison_losses(_Setter(), [step], when=lambda module: module.global_rank == rank)

    if os.environ.get("DDP_PROBE_NO_SYNC") == "1":
        real_backward = SelfPlayModule.manual_backward

        def manual_backward(self, loss, *args, **kwargs):
            wrapped = self.trainer.strategy.model
            sync_off = wrapped.no_sync() if hasattr(wrapped, "no_sync") else contextlib.nullcontext()
            with sync_off:
                return real_backward(self, loss, *args, **kwargs)

        SelfPlayModule.manual_backward = manual_backward


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))   # the repository: tests.helpers.step_probe
    install()
    from lsp_exp.cli.train import main

    main()
