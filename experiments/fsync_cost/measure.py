"""The cost of a durable checkpoint (lsp_exp/run/durable.py): write a file of N MB the way a
checkpoint is written, then time `fsync` of the file, the rename into place and `fsync` of its
folder, the median of 3 (docs/operations.md, Checkpoints and resume).

    .venv/bin/python experiments/fsync_cost/measure.py outputs/fsync_probe   # a folder on the disk to measure
"""
from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

from lsp_exp.run.durable import fsync_dir, fsync_file


def measure(folder: Path, megabytes: int, repeats: int = 3) -> tuple[float, float]:
    """(seconds to write, seconds for the two fsyncs and the rename), medians."""
    data = os.urandom(1 << 20)
    write, sync = [], []
    for _ in range(repeats):
        tmp, final = folder / "probe.ckpt.tmp", folder / "probe.ckpt"
        start = time.perf_counter()
        with open(tmp, "wb") as f:
            for _ in range(megabytes):
                f.write(data)
        written = time.perf_counter()
        fsync_file(tmp)
        os.replace(tmp, final)
        fsync_dir(folder)
        write.append(written - start)
        sync.append(time.perf_counter() - written)
        final.unlink()
    return statistics.median(write), statistics.median(sync)


def main() -> None:
    folder = Path(sys.argv[1] if len(sys.argv) > 1 else "outputs/fsync_probe")
    folder.mkdir(parents=True, exist_ok=True)
    for megabytes in (12, 100, 1000):   # 12 MB: the toy world's checkpoint (1.06M parameters, AdamW's moments)
        write, sync = measure(folder, megabytes)
        print(f"{megabytes:5d} MB: write {write:.3f} s, fsync file + rename + fsync folder {sync:.3f} s")
    folder.rmdir()


if __name__ == "__main__":
    main()
