"""The run lock (lsp_exp/run/run_lock.py): one winner of a contested takeover, staleness by process
start time and heartbeat age, clock skew, malformed locks in one line, `resume=auto` waiting.
Real processes: concurrent takeovers by forked processes, a holder killed with `kill -9`."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from lsp_exp.run.run_lock import MAX_SKEW_S, RunLock, RunLockedError, process_start

ROOT = Path(__file__).resolve().parents[2]


def write_lock(folder: Path, **fields) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    holder = {"host": socket.gethostname(), "pid": os.getpid(), "heartbeat": time.time(), **fields}
    path = folder / "run.lock"
    path.write_text(json.dumps(holder))
    return path


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_100_rounds_of_two_concurrent_takeovers_have_exactly_one_winner_each(tmp_path):
    """Each round: two forked processes, released together from a barrier, take over the stale lock
    the previous round's winner left (it exits without releasing: a dead pid); both stay alive until
    both have answered, so the loser sees a live holder. A fresh interpreter forks them (no threads
    of the test process are forked)."""
    script = textwrap.dedent(f"""
        import json, multiprocessing as mp, os, sys
        sys.path.insert(0, {str(ROOT)!r})
        from lsp_exp.run.run_lock import RunLock, RunLockedError
        folder = {str(tmp_path)!r}

        def contender(start, done, out, i):
            start.wait()
            try:
                RunLock(folder, beat_s=0).acquire()
                out[i] = 1         # won
            except RunLockedError:
                out[i] = 0         # refused
            done.wait()            # alive until both have answered
            os._exit(0)            # no release: the next round finds a stale lock

        ctx = mp.get_context("fork")
        winners = []
        for _ in range(100):
            start, done, out = ctx.Barrier(2), ctx.Barrier(2), ctx.Array("i", [-1, -1])
            procs = [ctx.Process(target=contender, args=(start, done, out, i)) for i in range(2)]
            for p in procs:
                p.start()
            for p in procs:
                p.join(timeout=60)
            assert -1 not in out[:], "a contender did not answer"
            winners.append(sum(out[:]))
        print(json.dumps(winners))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    winners = json.loads(out.stdout.strip().splitlines()[-1])
    assert len(winners) == 100 and set(winners) == {1}, winners


def test_a_holder_killed_with_kill_9_is_taken_over_and_a_live_one_refused(tmp_path):
    script = (f"import sys, time; sys.path.insert(0, {str(ROOT)!r}); from lsp_exp.run.run_lock import RunLock; "
              f"RunLock({str(tmp_path)!r}).acquire(); print('HELD', flush=True); time.sleep(600)")
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "HELD"
        with pytest.raises(RunLockedError, match=f"being trained by pid {proc.pid} on .*wait for it or stop it") as err:
            RunLock(tmp_path, beat_s=0).acquire(wait_s=0.5)   # a live process on this host: no waiting it out
        assert "\n" not in str(err.value)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    lock = RunLock(tmp_path, beat_s=0)
    stale = lock.acquire()
    assert stale is not None and stale.pid == proc.pid
    lock.release()
    assert not (tmp_path / "run.lock").exists()


def test_a_pid_reused_by_another_process_is_stale(tmp_path):
    """The lock names a live pid (this test's) but another process start: the pid was reused."""
    assert process_start(os.getpid()) is not None
    boot = process_start(os.getpid()).split(":")[0]
    write_lock(tmp_path, start=f"{boot}:1", heartbeat=time.time())
    stale = RunLock(tmp_path, beat_s=0).acquire()
    assert stale is not None and stale.pid == os.getpid()


def test_a_lock_from_before_a_reboot_and_one_of_a_dead_pid_are_stale(tmp_path):
    write_lock(tmp_path / "a", start="another-boot:123")
    write_lock(tmp_path / "b", pid=dead_pid())
    for folder in ("a", "b"):
        assert RunLock(tmp_path / folder, beat_s=0).acquire() is not None


def test_the_heartbeat_decides_for_another_host_and_a_future_heartbeat_is_bounded(tmp_path):
    now = time.time()
    write_lock(tmp_path / "recent", host="elsewhere", heartbeat=now - 10)
    with pytest.raises(RunLockedError, match="heartbeat 10 s ago.*taken over once the heartbeat is 120 s old"):
        RunLock(tmp_path / "recent", stale_s=120, beat_s=0).acquire()
    write_lock(tmp_path / "old", host="elsewhere", heartbeat=now - 500)
    assert RunLock(tmp_path / "old", stale_s=120, beat_s=0).acquire().host == "elsewhere"
    # a clock slightly ahead: counts as a beat just now
    write_lock(tmp_path / "ahead", host="elsewhere", heartbeat=now + 60)
    with pytest.raises(RunLockedError, match="heartbeat 0 s ago"):
        RunLock(tmp_path / "ahead", stale_s=120, beat_s=0).acquire()
    # a clock far ahead (a day): not trusted; the file was last written 500 s ago by this clock
    path = write_lock(tmp_path / "future", host="elsewhere", heartbeat=now + 86400)
    os.utime(path, (now - 500, now - 500))
    assert RunLock(tmp_path / "future", stale_s=120, beat_s=0).acquire() is not None
    # ... and not mistaken for stale when the file itself was written just now
    write_lock(tmp_path / "future_fresh", host="elsewhere", heartbeat=now + 10 * MAX_SKEW_S)
    with pytest.raises(RunLockedError, match="heartbeat 0 s ago"):
        RunLock(tmp_path / "future_fresh", stale_s=120, beat_s=0).acquire()


def test_waiting_out_a_recent_heartbeat_then_taking_over(tmp_path):
    """`resume=auto`: a heartbeat 1 s younger than stale is waited out (bounded by wait_s), not refused."""
    write_lock(tmp_path, host="elsewhere", heartbeat=time.time() - 1.0)
    lock = RunLock(tmp_path, stale_s=1.5, beat_s=0)
    with pytest.raises(RunLockedError):
        RunLock(tmp_path, stale_s=1.5, beat_s=0).acquire()        # no waiting: refused at once
    stale = lock.acquire(wait_s=30)
    assert stale is not None and stale.host == "elsewhere"
    assert json.loads((tmp_path / "run.lock").read_text())["pid"] == os.getpid()


@pytest.mark.parametrize("content, reason", [
    ("", "not a JSON object"),
    ("{not json", "not a JSON object"),
    ("[1, 2]", "not a JSON object"),
    ('{"host": "h", "heartbeat": 1.0}', "no 'pid'"),
    ('{"host": "h", "pid": "123", "heartbeat": 1.0}', "'pid' is str '123'"),
    ('{"host": "h", "pid": true, "heartbeat": 1.0}', "'pid' is bool"),
    ('{"host": "h", "pid": -4, "heartbeat": 1.0}', "'pid' is -4"),
    ('{"host": 7, "pid": 12, "heartbeat": 1.0}', "'host' is int"),
    ('{"host": "h", "pid": 12, "heartbeat": "soon"}', "'heartbeat' is str"),
    ('{"host": "h", "pid": 12, "heartbeat": NaN}', "'heartbeat' is nan"),
    ('{"host": "h", "pid": 12, "heartbeat": 1.0, "start": 5}', "'start' is int"),
])
def test_a_malformed_lock_is_one_line(tmp_path, content, reason):
    (tmp_path / "run.lock").write_text(content)
    with pytest.raises(RunLockedError, match=f"is not a lock this project wrote \\({reason}.*remove it") as err:
        RunLock(tmp_path, beat_s=0).acquire()
    assert "\n" not in str(err.value)


def test_a_lock_that_is_a_directory_is_one_line(tmp_path):
    (tmp_path / "run.lock").mkdir()
    with pytest.raises(RunLockedError, match="is a directory, not a lock file") as err:
        RunLock(tmp_path, beat_s=0).acquire()
    assert "\n" not in str(err.value)


def test_the_heartbeat_thread_beats_and_release_leaves_a_lock_taken_over(tmp_path):
    lock = RunLock(tmp_path, beat_s=0.05)
    lock.acquire()
    first = json.loads((tmp_path / "run.lock").read_text())["heartbeat"]
    deadline = time.monotonic() + 30
    while json.loads((tmp_path / "run.lock").read_text())["heartbeat"] == first and time.monotonic() < deadline:
        time.sleep(0.05)
    assert json.loads((tmp_path / "run.lock").read_text())["heartbeat"] > first
    write_lock(tmp_path, pid=os.getpid(), token="someone-else")   # another process took it over
    lock.release()
    assert json.loads((tmp_path / "run.lock").read_text())["token"] == "someone-else"


def test_a_lock_that_cannot_be_written_is_one_line(tmp_path, immutable):
    immutable(tmp_path)                                   # a real fault: nothing can be created in the folder
    with pytest.raises(RunLockedError, match="cannot open the run lock's guard .*Operation not permitted") as err:
        RunLock(tmp_path, beat_s=0).acquire()
    assert "\n" not in str(err.value)
