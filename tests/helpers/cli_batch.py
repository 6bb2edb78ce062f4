"""Run the `lsp-train` console entry for many argument lists, paying its imports once.

    python tests/helpers/cli_batch.py cases.json results.json

`cases.json` is a list of {"argv": [...], "env": {...}, "fsize": <bytes, optional: RLIMIT_FSIZE, a full disk>}.
The heavy imports (torch, Lightning, transformers, MLflow) take most of a CLI call's time, so this process
imports `lsp_exp.cli.train` once
and forks one child per case; each child does what the `lsp-train` console script does
(`sys.exit(main())` with `sys.argv` set) and, like the interpreter, prints the traceback of an
uncaught exception and exits 1. Its stdout and stderr go to files; `results.json` gets
[{"rc", "stdout", "stderr", "seconds"}] in the order of the cases. The children run in parallel.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import time
import traceback


def run_case(case: dict, out_path: str, err_path: str) -> None:
    """In the forked child: the console script's `sys.exit(main())`, then exit without cleanup."""
    for fd, path in ((1, out_path), (2, err_path)):
        handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(handle, fd)
        os.close(handle)
    os.environ.update(case.get("env", {}))
    if case.get("fsize"):  # a full disk: no file of the case's may grow past this many bytes (EFBIG, not a kill)
        import resource
        import signal

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (case["fsize"], case["fsize"]))
    sys.argv = ["lsp-train", *case["argv"]]
    code = 1
    try:
        from lsp_exp.cli.train import main

        sys.exit(main())
    except SystemExit as exit_:
        if exit_.code is None:
            code = 0
        elif isinstance(exit_.code, int):
            code = exit_.code
        else:
            print(exit_.code, file=sys.stderr)
    except BaseException:  # noqa: BLE001 (what the interpreter does with an uncaught exception)
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def main(cases_path: str, results_path: str) -> None:
    cases = json.loads(open(cases_path).read())
    import lsp_exp.cli.train  # noqa: F401  (the expensive part, once)

    work = tempfile.mkdtemp(prefix="cli_batch_")
    children = {}
    for i, case in enumerate(cases):
        out, err = os.path.join(work, f"{i}.out"), os.path.join(work, f"{i}.err")
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            run_case(case, out, err)
        children[pid] = (i, out, err, time.perf_counter())
    results: list[dict | None] = [None] * len(cases)
    while children:
        pid, status, usage = os.wait4(-1, 0)
        i, out, err, start = children.pop(pid)
        results[i] = {"rc": os.waitstatus_to_exitcode(status), "stdout": open(out).read(),
                      "stderr": open(err).read(), "seconds": round(time.perf_counter() - start, 2),
                      "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 2)}
    with open(results_path, "w") as f:
        json.dump(results, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
