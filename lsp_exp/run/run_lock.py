"""One process trains a run at a time: a lock file next to the run's checkpoints.

`<checkpoint_dir>/run.lock` is created atomically (`O_CREAT | O_EXCL`, which a shared filesystem
honours too) by rank 0 when the run starts, holds the host, the pid and a heartbeat refreshed every
step, and is removed when the process ends normally. A second `lsp-train resume=<the run>` while
it is held is refused in one line. A lock left behind by a process that died without a word
(`kill -9`, a lost node: same host and its pid is gone, or a heartbeat older than `stale_s`) is
taken over, and the caller is told, so the run can be marked as having died.
"""
from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

STALE_S = float(os.environ.get("LSP_LOCK_STALE_S", "900"))  # a heartbeat older than this: the holder is gone


class RunLockedError(RuntimeError):
    """Another live process trains this run; the message names it."""


@dataclass
class StaleLock:
    host: str
    pid: int
    heartbeat: float


class RunLock:
    def __init__(self, directory: Path, stale_s: float = STALE_S):
        self.path = Path(directory) / "run.lock"
        self.stale_s = stale_s
        self.held = False

    def acquire(self) -> StaleLock | None:
        """Take the lock; returns the stale lock it replaced (None if there was none)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        stale = None
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._read()
                if holder is not None and self._alive(holder):
                    raise RunLockedError(
                        f"this run is being trained by pid {holder['pid']} on {holder['host']} (lock {self.path}, "
                        f"heartbeat {time.time() - holder['heartbeat']:.0f} s ago); wait for it or stop it") from None
                self.path.unlink(missing_ok=True)  # left by a process that died without a word
                stale = StaleLock(holder["host"], int(holder["pid"]), float(holder["heartbeat"])) if holder \
                    else StaleLock("?", -1, 0.0)
                continue
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(self._me()))
            self.held = True
            return stale
        raise RunLockedError(f"could not take the lock {self.path}")

    def beat(self) -> None:
        """Refresh the heartbeat (a rename, so a reader never sees half a file)."""
        if self.held:
            tmp = self.path.with_name(self.path.name + f".{os.getpid()}")
            tmp.write_text(json.dumps(self._me()))
            os.replace(tmp, self.path)

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False

    def _me(self) -> dict:
        return {"host": socket.gethostname(), "pid": os.getpid(), "heartbeat": time.time()}

    def _read(self) -> dict | None:
        try:
            holder = json.loads(self.path.read_text())
            return holder if {"host", "pid", "heartbeat"} <= set(holder) else None
        except (OSError, ValueError):
            return None   # unreadable: treated as stale

    def _alive(self, holder: dict) -> bool:
        if holder["host"] == socket.gethostname():
            try:
                os.kill(int(holder["pid"]), 0)
            except ProcessLookupError:
                return False
            except PermissionError:
                return True
            return True
        return time.time() - float(holder["heartbeat"]) < self.stale_s
