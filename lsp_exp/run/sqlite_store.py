"""A sqlite tracking store checked before a run uses it, with one line for each way it can be unusable.

MLflow opens `sqlite:///<file>` lazily and retries a locked or unopenable file for minutes before a
traceback. `preflight` instead checks, in order: the path is not a folder; its folder exists (it is
created) and takes new files (sqlite writes its journal beside the database); an existing file is
an SQLite database (its header) that opens; it can be written, waiting at most `LOCK_WAIT_S`
seconds (`LSP_SQLITE_LOCK_WAIT_S`) for another writer's lock to go.
"""
from __future__ import annotations

import os
import sqlite3
import tempfile
from pathlib import Path

from lsp_exp.errors import LspError

LOCK_WAIT_S = float(os.environ.get("LSP_SQLITE_LOCK_WAIT_S", "60"))
HEADER = b"SQLite format 3\x00"


class TrackingStoreError(LspError, ConnectionError):
    """The sqlite tracking store cannot be used; the message names the key and the file."""


def sqlite_path(uri: str) -> Path | None:
    """The file of a `sqlite:///...` URI (None: an in-memory store)."""
    rest = uri.removeprefix("sqlite://")
    rest = rest[1:] if rest.startswith("/") else rest  # sqlite:///rel -> rel, sqlite:////abs -> /abs
    rest = rest.split("?", 1)[0]
    return Path(rest) if rest and rest != ":memory:" else None


def preflight(uri: str, key: str = "logger.tracking_uri", wait_s: float | None = None) -> None:
    """Raise TrackingStoreError (one line naming `key` and the file) unless the store can be written."""
    path = sqlite_path(uri)
    if path is None:
        return
    wait_s = LOCK_WAIT_S if wait_s is None else wait_s

    def fail(problem: str) -> TrackingStoreError:
        return TrackingStoreError(f"{key}={uri!r}: {problem}")

    if path.is_dir():
        raise fail(f"{path} is a folder, not a database file; name a file in it, e.g. sqlite:///{path}/mlflow.db")
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write_probe_"):
            pass
    except OSError as err:
        raise fail(f"cannot write in {folder} ({_reason(err)}); "
                   "sqlite writes its journal beside the database") from None
    if not path.exists():
        return  # MLflow creates it
    if not path.is_file():
        raise fail(f"{path} is not a regular file")
    try:
        with open(path, "rb") as f:
            head = f.read(len(HEADER))
    except OSError as err:
        raise fail(f"cannot read {path} ({_reason(err)})") from None
    if head and head != HEADER:
        raise fail(f"{path} is not an SQLite database (it starts with {head[:8]!r}); remove it or name another file")
    _try_write(path, wait_s, fail)


def _try_write(path: Path, wait_s: float, fail) -> None:
    """Take sqlite's write lock (waiting at most `wait_s`) and give it back at once."""
    try:
        conn = sqlite3.connect(f"file:{path}?mode=rw", uri=True, timeout=wait_s, isolation_level=None)
    except sqlite3.Error as err:
        raise fail(f"cannot open {path} for writing ({_reason(err)}): read-only, immutable (chattr +i) or not "
                   "a database") from None
    try:
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()  # a damaged header or schema fails here
        conn.execute("BEGIN IMMEDIATE")  # the write lock: waits up to `timeout` for another writer
        try:  # a write, undone (sqlite opens a file it may not write read-only, without a word)
            conn.execute("CREATE TABLE lsp_write_probe (x)")
        finally:
            conn.execute("ROLLBACK")
    except sqlite3.Error as err:
        text = str(err)
        if "locked" in text or "busy" in text:
            raise fail(f"{path} is locked by another writer for more than {wait_s:.0f} s (LSP_SQLITE_LOCK_WAIT_S); "
                       "stop the process that holds it, or wait and run again") from None
        if "readonly" in text or "read-only" in text:
            raise fail(f"{path} is read-only (permissions, an immutable file or a read-only mount)") from None
        raise fail(f"{path} is not a usable SQLite database ({_reason(err)}); remove it or name another file") from None
    finally:
        conn.close()


def _reason(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__
