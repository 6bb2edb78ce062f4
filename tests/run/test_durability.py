"""Durable checkpoints (lsp_exp/run/durable.py, checkpointing.StepCheckpoint.save): the new file's
bytes and its folder's entry reach the disk before the previous checkpoint is removed."""
from __future__ import annotations

import os
import pathlib
from types import SimpleNamespace

import torch

from lsp_exp.run import checkpointing
from lsp_exp.run.checkpointing import StepCheckpoint, latest_checkpoint


class FileTrainer(SimpleNamespace):
    """What `StepCheckpoint.save` asks of a trainer, writing a real (small) torch checkpoint."""

    def __init__(self, step: int):
        super().__init__(global_step=step, is_global_zero=True, world_size=1,
                         strategy=SimpleNamespace(barrier=lambda name: None))

    def save_checkpoint(self, path, weights_only=False):
        torch.save({"global_step": self.global_step, "w": torch.arange(1000.0)}, path)


def test_the_new_checkpoint_and_its_folder_are_synced_before_the_old_one_is_removed(tmp_path, monkeypatch):
    events: list[tuple[str, str]] = []
    real_fsync, real_replace, real_unlink = os.fsync, os.replace, pathlib.Path.unlink

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("rename", f"{pathlib.Path(src).name}->{pathlib.Path(dst).name}"))
        real_replace(src, dst)

    def unlink(self, missing_ok=False):
        events.append(("unlink", self.name))
        real_unlink(self, missing_ok=missing_ok)

    callback = StepCheckpoint(tmp_path, every=1)
    callback.save(FileTrainer(1))
    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(checkpointing.os, "replace", replace)
    monkeypatch.setattr(pathlib.Path, "unlink", unlink)
    callback.save(FileTrainer(2))
    assert events == [("fsync", str(tmp_path / "step_0000002.ckpt.tmp")),   # the bytes
                      ("rename", "step_0000002.ckpt.tmp->step_0000002.ckpt"),
                      ("fsync", str(tmp_path)),                              # the name
                      ("unlink", "step_0000001.ckpt")]                       # only then the old one
    assert latest_checkpoint(tmp_path).name == "step_0000002.ckpt"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_0000002.ckpt"]
