"""One process trains a run at a time: a lock file next to the run's checkpoints.

`<checkpoint_dir>/run.lock` is written by rank 0 when the run starts: the host, the pid, the
process's start time (`/proc`: the boot id and the start tick, so a pid reused by another process
is told apart) and a heartbeat (wall clock) that a thread refreshes every `BEAT_S` seconds. It is
removed when the process ends normally. Every change of holder (take, take over, release) happens
under `fcntl.flock` on `run.lock.guard` beside it, so of two processes that find the same stale
lock exactly one takes it; the file itself is only ever replaced whole (a rename), never seen half
written.

A lock is stale (taken over, and the caller told, so the run can be marked as having died) when
- on this host: its pid is gone, or is another process now (its start time differs);
- on any host: its heartbeat is older than `stale_s` (a heartbeat more than `MAX_SKEW_S` in the
  future, a clock out of step, is not trusted: the file's modification time is used instead).
A live holder on this host is never taken over. A lock that is a directory or that this project did
not write (not JSON, fields of the wrong type) is refused in one line. `acquire(wait_s=...)`
(`resume=auto`: a requeued job) waits, at most that long, for a recent heartbeat to go stale
instead of failing.
"""
from __future__ import annotations

import errno
import fcntl
import json
import logging
import math
import os
import secrets
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from lsp_exp.errors import LspError

log = logging.getLogger(__name__)

STALE_S = float(os.environ.get("LSP_LOCK_STALE_S", "120"))  # no heartbeat for this long: the holder is gone
BEAT_S = float(os.environ.get("LSP_LOCK_BEAT_S", "15"))     # how often the holder's thread refreshes it
MAX_SKEW_S = 300.0      # a heartbeat further in the future than this is a wrong clock, not a recent beat
GUARD_WAIT_S = 30.0     # the guard is held for milliseconds; longer means a stopped process holds it


class RunLockedError(LspError, RuntimeError):
    """Another live process trains this run, or the lock cannot be read; the message names it."""


@dataclass
class StaleLock:
    host: str
    pid: int
    heartbeat: float


def process_start(pid: int) -> str | None:
    """`<boot id>:<start tick>` of a live process (Linux `/proc`), None where it cannot be known or
    the process is gone (a zombie counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()  # after the command name, which may hold spaces
    if fields[0] in ("Z", "X"):
        return None
    return f"{boot}:{fields[19]}"  # field 22 of stat: the start time in clock ticks since boot


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    if Path("/proc").is_dir() and Path(f"/proc/{pid}").is_dir():
        return process_start(pid) is not None  # a zombie is not alive
    return True


class RunLock:
    def __init__(self, directory: Path, stale_s: float = STALE_S, beat_s: float = BEAT_S):
        self.path = Path(directory) / "run.lock"
        self.guard_path = self.path.with_name("run.lock.guard")
        self.stale_s, self.beat_s = stale_s, beat_s
        self.held = False
        self.token = secrets.token_hex(8)
        self._start = process_start(os.getpid())
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ---- taking and giving back ----------------------------------------------------------------
    def acquire(self, wait_s: float = 0.0) -> StaleLock | None:
        """Take the lock; returns the stale lock it replaced (None if there was none). A live
        holder: RunLockedError at once, or, with `wait_s` > 0, after waiting that long for its
        heartbeat to go stale."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        deadline, said = time.monotonic() + wait_s, False
        while True:
            with self._guard():
                holder = self._read()
                if holder is None or not (refusal := self._alive(holder)):
                    try:
                        self._write()
                    except OSError as err:
                        raise RunLockedError(f"cannot write the run lock {self.path} ({' '.join(str(err).split())})") \
                            from None
                    self.held = True
                    self._start_beating()
                    return None if holder is None else StaleLock(holder["host"], holder["pid"], holder["heartbeat"])
            if refusal == "live" or time.monotonic() >= deadline:
                raise RunLockedError(self._refusal(holder, refusal))
            if not said:
                log.warning("%s; waiting up to %.0f s for it to go stale", self._refusal(holder, refusal), wait_s)
                said = True
            time.sleep(min(1.0, max(0.05, deadline - time.monotonic())))

    def release(self) -> None:
        """Give the lock back (only if it is still this process's: a lock taken over is left)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if not self.held:
            return
        self.held = False
        try:
            with self._guard():
                if self._ours():
                    self.path.unlink(missing_ok=True)
        except (OSError, RunLockedError) as err:  # the run is over: a lock left behind goes stale
            log.warning("could not remove the run lock %s (%s)", self.path, err)

    def beat(self) -> None:
        """Refresh the heartbeat (a rename, so a reader never sees half a file); stop beating if
        another process has taken the lock over."""
        if not self.held:
            return
        try:
            if not self._ours():
                log.error("the run lock %s was taken over by another process; this one no longer holds it", self.path)
                self.held = False
                self._stop.set()
                return
            self._write()
        except OSError as err:  # a full disk must not stop training; the lock only goes stale
            log.warning("could not refresh the run lock %s (%s)", self.path, err)

    # ---- internals -----------------------------------------------------------------------------
    def _start_beating(self) -> None:
        if self.beat_s <= 0:
            return
        self._stop.clear()

        def run():
            while not self._stop.wait(self.beat_s):
                self.beat()

        self._thread = threading.Thread(target=run, name="run-lock-heartbeat", daemon=True)
        self._thread.start()

    def _me(self) -> dict:
        return {"host": socket.gethostname(), "pid": os.getpid(), "start": self._start, "heartbeat": time.time(),
                "token": self.token}

    def _write(self) -> None:
        tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.{self.token}.tmp")
        try:
            tmp.write_text(json.dumps(self._me()))
            os.replace(tmp, self.path)
        finally:
            tmp.unlink(missing_ok=True)

    def _ours(self) -> bool:
        try:
            return json.loads(self.path.read_text()).get("token") == self.token
        except (OSError, ValueError, AttributeError):
            return False

    def _guard(self):
        return _Guard(self.guard_path)

    def _read(self) -> dict | None:
        """The holder (None: no lock); RunLockedError, one line, for a lock that cannot be one."""
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return None
        except IsADirectoryError:
            raise RunLockedError(f"the run lock {self.path} is a directory, not a lock file; remove it if no "
                                 "process trains this run") from None
        except (OSError, UnicodeDecodeError) as err:
            raise RunLockedError(f"the run lock {self.path} cannot be read ({' '.join(str(err).split())})") from None
        try:
            holder = json.loads(text)
        except ValueError:
            holder = None
        problem = _malformed(holder)
        if problem:
            raise RunLockedError(f"the run lock {self.path} is not a lock this project wrote ({problem}); remove it "
                                 "if no process trains this run")
        holder["heartbeat"] = float(holder["heartbeat"])
        return holder

    def _alive(self, holder: dict) -> str | None:
        """Why the holder counts as alive ("live": a process on this host; "recent": a recent
        heartbeat), None when it is stale."""
        if holder["host"] == socket.gethostname():
            if not pid_alive(holder["pid"]):
                return None
            start = holder.get("start")
            if start and self._start:
                if start.split(":")[0] != self._start.split(":")[0]:
                    return None  # written before this host's last boot: its process is gone
                return "live" if process_start(holder["pid"]) == start else None  # else the pid was reused
            # no start time to compare (an older lock, or no /proc): the heartbeat decides
        return "recent" if self._age(holder) < self.stale_s else None

    def _age(self, holder: dict) -> float:
        """Seconds since the holder's last heartbeat; a heartbeat from further in the future than
        MAX_SKEW_S (a clock out of step) is replaced by the file's modification time."""
        now = time.time()
        age = now - holder["heartbeat"]
        if age < -MAX_SKEW_S:
            try:
                age = now - self.path.stat().st_mtime
            except OSError:
                age = math.inf
            if age < -MAX_SKEW_S:  # the file's time is as wrong: no heartbeat can be trusted
                age = math.inf
        return max(age, 0.0)

    def _refusal(self, holder: dict, why: str) -> str:
        age = self._age(holder)
        if why == "live":
            return (f"this run is being trained by pid {holder['pid']} on {holder['host']} (lock {self.path}, "
                    f"heartbeat {age:.0f} s ago); wait for it or stop it")
        return (f"this run is being trained by pid {holder['pid']} on {holder['host']} (lock {self.path}, heartbeat "
                f"{age:.0f} s ago); it is taken over once the heartbeat is {self.stale_s:.0f} s old (LSP_LOCK_STALE_S)")


def _malformed(holder) -> str | None:
    """What is wrong with a lock's fields (None: nothing)."""
    if not isinstance(holder, dict):
        return "not a JSON object"
    for key, kinds in (("host", (str,)), ("pid", (int,)), ("heartbeat", (int, float))):
        value = holder.get(key)
        if value is None:
            return f"no {key!r}"
        if isinstance(value, bool) or not isinstance(value, kinds):
            return f"{key!r} is {type(value).__name__} {str(value)[:40]!r}"
    if holder["pid"] <= 0:
        return f"'pid' is {holder['pid']}"
    if not math.isfinite(holder["heartbeat"]):
        return f"'heartbeat' is {holder['heartbeat']}"
    if holder.get("start") is not None and not isinstance(holder["start"], str):
        return f"'start' is {type(holder['start']).__name__}"
    return None


class _Guard:
    """`fcntl.flock` on the guard file for the duration of a `with` (the guard file is never removed:
    removing a flocked file lets two processes lock two different files)."""

    warned = False

    def __init__(self, path: Path):
        self.path, self.fd = path, None

    def __enter__(self):
        try:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except IsADirectoryError:
            raise RunLockedError(f"the run lock's guard {self.path} is a directory; remove it") from None
        except OSError as err:
            raise RunLockedError(f"cannot open the run lock's guard {self.path} ({' '.join(str(err).split())})") \
                from None
        deadline = time.monotonic() + GUARD_WAIT_S
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return self
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(self.fd)
                    raise RunLockedError(f"the run lock's guard {self.path} has been held for {GUARD_WAIT_S:.0f} s "
                                         "by another process (stopped?)") from None
                time.sleep(0.01)
            except OSError as err:
                if err.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                    raise
                if not _Guard.warned:  # e.g. NFS without a lock manager
                    log.warning("file locks are not supported where %s is (%s): taking over a stale run lock is not "
                                "atomic there", self.path, err)
                    _Guard.warned = True
                return self

    def __exit__(self, *exc):
        if self.fd is not None:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_UN)
            except OSError:
                pass
            os.close(self.fd)
            self.fd = None
        return False
