"""The sqlite tracking store preflighted at start (lsp_exp/run/sqlite_store.py): one line for each way
it cannot be used, made with real faults (a folder, garbage bytes, a damaged page, chattr +i on the
file and on its folder, a write lock held by another connection)."""
from __future__ import annotations

import os
import sqlite3
import threading
from pathlib import Path

import pytest

from lsp_exp.run.sqlite_store import TrackingStoreError, preflight, sqlite_path
from lsp_exp.run.tracking_failures import TrackingUnreachableError, check_reachable


def good_db(path: Path) -> Path:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE t (x)")
    conn.executemany("INSERT INTO t VALUES (?)", [(i,) for i in range(2000)])
    conn.commit()
    conn.close()
    return path


def test_sqlite_paths():
    assert sqlite_path("sqlite:///rel/mlflow.db") == Path("rel/mlflow.db")
    assert sqlite_path("sqlite:////abs/mlflow.db") == Path("/abs/mlflow.db")
    assert sqlite_path("sqlite:///:memory:") is None


def test_a_new_or_good_store_passes(tmp_path):
    preflight(f"sqlite:///{tmp_path}/new/mlflow.db")        # its folder is created; MLflow creates the file
    preflight(f"sqlite:///{good_db(tmp_path / 'good.db')}")
    assert sqlite3.connect(tmp_path / "good.db").execute("SELECT count(*) FROM t").fetchone() == (2000,)
    assert sqlite3.connect(tmp_path / "good.db").execute(
        "SELECT name FROM sqlite_master").fetchall() == [("t",)]   # the write probe was rolled back


def damaged(tmp_path: Path) -> Path:
    data = bytearray(good_db(tmp_path / "src.db").read_bytes())
    data[100:600] = b"\xff" * 500   # the schema page after the header
    (tmp_path / "damaged.db").write_bytes(data)
    return tmp_path / "damaged.db"


@pytest.mark.parametrize("case, expected", [
    ("folder", "is a folder, not a database file"),
    ("garbage", "is not an SQLite database \\(it starts with b'PK"),
    ("damaged", "is not a usable SQLite database \\(database disk image is malformed\\)"),
    ("under_a_file", "cannot write in .*afile"),
])
def test_an_unusable_store_is_one_line(tmp_path, case, expected):
    if case == "folder":
        (tmp_path / "mlflow.db").mkdir()
        uri = f"sqlite:///{tmp_path}/mlflow.db"
    elif case == "garbage":
        (tmp_path / "mlflow.db").write_bytes(b"PK\x03\x04" + os.urandom(4000))   # e.g. a zip where the store was
        uri = f"sqlite:///{tmp_path}/mlflow.db"
    elif case == "damaged":
        uri = f"sqlite:///{damaged(tmp_path)}"
    else:
        (tmp_path / "afile").write_text("x")
        uri = f"sqlite:///{tmp_path}/afile/mlflow.db"
    with pytest.raises(TrackingUnreachableError, match=f"^logger.tracking_uri='sqlite:///.*{expected}") as err:
        check_reachable(uri)
    assert "\n" not in str(err.value)


def test_an_immutable_store_or_folder_is_one_line(tmp_path, immutable):
    db = good_db(tmp_path / "mlflow.db")
    immutable(db)
    with pytest.raises(TrackingStoreError, match="mlflow.db is read-only"):
        preflight(f"sqlite:///{db}")
    folder = tmp_path / "frozen"
    folder.mkdir()
    good_db(folder / "mlflow.db")
    immutable(folder)
    with pytest.raises(TrackingStoreError, match="cannot write in .*frozen.*Operation not permitted.*journal"):
        preflight(f"sqlite:///{folder}/mlflow.db")


def test_a_store_locked_by_another_writer_is_waited_for_within_the_bound(tmp_path):
    db = good_db(tmp_path / "mlflow.db")
    holder = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN EXCLUSIVE")                        # a real write lock, as a writing process holds it
    with pytest.raises(TrackingStoreError, match="is locked by another writer for more than 1 s") as err:
        preflight(f"sqlite:///{db}", wait_s=1)
    assert "\n" not in str(err.value)
    release = threading.Timer(0.5, lambda: holder.execute("ROLLBACK"))   # let go while the preflight waits
    release.start()
    preflight(f"sqlite:///{db}", wait_s=60)
    release.join()
    holder.close()


def test_lsp_train_with_a_folder_as_its_store_stops_in_one_line(tmp_path, capsys):
    from tests.helpers.tiny_run import compose_config

    from lsp_exp.cli.train import hydra_main

    (tmp_path / "mlflow.db").mkdir()
    cfg = compose_config("train", [f"paths.outputs={tmp_path}", f"logger.tracking_uri=sqlite:///{tmp_path}/mlflow.db"])
    with pytest.raises(SystemExit) as exit_:
        hydra_main.__wrapped__(cfg)
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert exit_.value.code == 2 and len(errors) == 1 and "is a folder, not a database file" in errors[0]
