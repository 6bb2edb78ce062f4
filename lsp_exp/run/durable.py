"""Writes that survive a crash of the node: a file's bytes and its folder's entry forced to disk.

A rename is atomic but not durable: after a power loss or a kernel crash, a file renamed into place
without `fsync` can come back empty, and the removal of the file it replaced can reach the disk
first. `fsync_file` then `fsync_dir` before anything older is removed, so the last good copy always
survives (docs/operations.md gives the measured cost).
"""
from __future__ import annotations

import os
from pathlib import Path


def fsync_file(path: Path) -> None:
    """Force the file's bytes (and size) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(folder: Path) -> None:
    """Force the folder's entries (a rename into it, a file created or removed) to disk; a filesystem
    that cannot fsync a folder (EINVAL: some network filesystems) makes entries durable on its own."""
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    except OSError as err:
        if err.errno != 22:  # EINVAL
            raise
    finally:
        os.close(fd)
