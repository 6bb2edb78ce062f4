"""Side-by-side benchmark: this project's step against TRL's GRPOTrainer, LSP against grpo_data, scaling.

    .venv-bench/bin/python experiments/bench/bench.py --model toy,25m --steps 20            # vs TRL
    .venv-bench/bin/python experiments/bench/bench.py --suite games --model toy --steps 20  # lsp vs grpo_data
    .venv-bench/bin/python experiments/bench/bench.py --suite scaling --model toy,25m --steps 8
    .venv-bench/bin/python experiments/bench/bench.py --suite memory                          # issue 15: wide128k

Every measured run is its own subprocess (`run_lsp.py`, `run_trl.py`), so its peak resident memory
(`ru_maxrss` of that child, read with `os.wait4`) is its own; runs are sequential, in alternating
order over `--repeats`, each with `--threads` torch threads. Per-step wall time is the median over
the steps after `--warmup` (pooled over repeats); tokens/s = Solver completion tokens per step
(N x G x max tokens, forced) / that time. Model loading and evaluation are not timed.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULT_TAG, ROOT, build_25m, build_wide, long_prompts, toy_paths

HERE = Path(__file__).resolve().parent


def default_python() -> str:
    bench = ROOT / ".venv-bench" / "bin" / "python"
    return str(bench) if bench.exists() else sys.executable


def run_worker(python: str, script: str, args: list[str], log: Path, where: Path = HERE,
               env_extra: dict | None = None) -> dict:
    """Run `where/script` with `python` (cwd `where`); its result line, plus the child's own peak RSS."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "MLFLOW_DISABLE_TELEMETRY": "true",
           "TOKENIZERS_PARALLELISM": "false", "PYTHONWARNINGS": "ignore", **(env_extra or {})}
    with open(log, "w") as out:
        proc = subprocess.Popen([python, str(where / script), *args], stdout=out, stderr=subprocess.STDOUT,
                                cwd=where, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
    text = log.read_text()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{script} {' '.join(args)} failed; log:\n{text[-3000:]}")
    line = next(x for x in reversed(text.splitlines()) if x.startswith(RESULT_TAG))
    result = json.loads(line[len(RESULT_TAG):])
    result["child_maxrss_mb"] = usage.ru_maxrss / 1024  # KiB on Linux
    return result


def pooled(results: list[dict], warmup: int) -> dict:
    """One row from the repeats of one configuration: medians over the steps after `warmup`."""
    steps = [t for r in results for t in r["step_s_all"][warmup:]]
    cpu = [t for r in results for t in r["cpu_s_all"][warmup:]]
    median, cpu_median = statistics.median(steps), statistics.median(cpu)
    perf_keys = sorted({k for r in results for k in r.get("perf", {})})
    perf = {k: statistics.fmean(r["perf"][k] for r in results if k in r["perf"]) for k in perf_keys}
    tokens = results[0]["tokens_per_step"]
    return {"step_s": median, "step_s_mean": statistics.fmean(steps), "cpu_s": cpu_median,
            "tokens_per_s": tokens / median, "tokens_per_cpu_s": tokens / cpu_median,
            "peak_rss_mb": max(r["child_maxrss_mb"] for r in results),
            "rss_before_train_mb": max(r["rss_before_train_mb"] for r in results), "perf": perf,
            "framework": results[0]["framework"], "game": results[0]["game"], "runs": len(results)}


COLUMNS = ["step s (wall)", "CPU s/step", "tok/s (wall)", "tok/CPU-s", "peak RSS MiB", "RSS before train MiB"]


def row(r: dict) -> list[float]:
    return [r["step_s"], r["cpu_s"], r["tokens_per_s"], r["tokens_per_cpu_s"], r["peak_rss_mb"],
            r["rss_before_train_mb"]]


def ratio(a: dict, b: dict) -> list[float]:
    return [x / y for x, y in zip(row(a), row(b), strict=True)]


def table(rows: list[list], header: list[str]) -> str:
    cells = [header] + [[f"{c:.3f}" if isinstance(c, float) and abs(c) < 10 else
                         (f"{c:.0f}" if isinstance(c, float) else str(c)) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def environment(python: str) -> str:
    code = ("import importlib.metadata as m, torch; "
            "names = sorted(d.metadata['Name'] for d in m.distributions()); "
            "bad = [n for n in names if n and n.lower().startswith("
            "('nvidia', 'torchvision', 'torchaudio', 'triton'))]; "
            "v = lambda n: m.version(n) if n in names else '-'; "
            "print(f'torch {torch.__version__}, transformers {v(\"transformers\")}, trl {v(\"trl\")}, '"
            "f'lightning {v(\"lightning\")}; CUDA/vision/audio packages: {bad or \"none\"}')")
    out = subprocess.run([python, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; {python}: {out}"


# ---- suite "memory" (issue 15): today's code (a worktree of TODAY) vs the new defaults vs TRL -------------------
TODAY = "ef61e40"  # the code before memory-lean log-probs, micro-batching and checkpointing (d9e81b3, 96b00e8)
GiB = 1024.0  # MiB per GiB


def short_sha(rev: str) -> str:
    return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short=7", rev], capture_output=True, text=True,
                          check=True).stdout.strip()


def today_worktree(path: Path, commit: str) -> Path:
    """A git worktree of `commit` at `path` (created once; `git worktree remove` it when done). Both sides run
    from one: the code measured is a commit's, not a working tree that someone may be editing meanwhile."""
    if not (path / "experiments" / "bench" / "run_lsp.py").is_file():
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(path), commit], check=True,
                       stdout=subprocess.DEVNULL)
    head = subprocess.run(["git", "-C", str(path), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()
    if not commit.startswith(head) and not head.startswith(commit):
        raise SystemExit(f"{path} is at {head}, not {commit}: remove it (git worktree remove {path}) "
                         "or pass --today-worktree")
    return path


def memory_arms(args, model_dir: str, prompts32: str, worktree: Path, new: Path) -> dict:
    """name -> (kind, python, script dir, worker args, extra env). Our side: lsp_zero (the issue's case) and
    grpo_data on 32-token prompts (the line compared with TRL); answers forced to --max-tokens. The new
    code's and TRL's workers are those of the worktree `new` (its lsp_exp on PYTHONPATH)."""
    work = ["--model-dir", model_dir, "--n", str(args.n), "--g", str(args.g), "--max-tokens", str(args.max_tokens),
            "--steps", str(args.steps), "--warmup", str(args.warmup), "--threads", str(args.threads)]
    query = f"game.max_query_tokens={args.query_tokens}"

    def ours(game: str, *overrides: str):
        extra = [query] if game == "lsp_zero" else [f"game.prompts_path={prompts32}"]
        return ("lsp", args.python, new / "experiments" / "bench",
                ["--outputs", args.outputs, "--game", game, *work, *extra, *overrides], {"PYTHONPATH": str(new)})

    def micro(k: str) -> str:
        return f"trainer.micro_batch_size={k}"

    arms = {}
    # today's code: its own worker (run_lsp.py of that commit), its own conf/, the main venv's interpreter
    today_out = Path(tempfile.gettempdir()) / "lsp-bench-today-outputs"
    today_out.mkdir(exist_ok=True)
    arms["today lsp_zero"] = ("lsp", args.today_python, worktree / "experiments" / "bench",
                              ["--outputs", str(today_out), "--game", "lsp_zero", *work, query],
                              {"PYTHONPATH": str(worktree)})
    for k in args.micro.split(","):
        arms[f"new lsp_zero micro={k}"] = ours("lsp_zero", micro(k))
    for k in filter(None, args.checkpointing.split(",")):
        arms[f"new lsp_zero micro={k} +ckpt"] = ours("lsp_zero", micro(k), "model.gradient_checkpointing=true")
    rec = args.recommend
    arms["new grpo_data micro=null"] = ours("grpo_data", micro("null"))
    arms[f"new grpo_data micro={rec}"] = ours("grpo_data", micro(rec))
    trl_work = ["--prompts", prompts32, *work]
    trl_env = {"PYTHONPATH": str(new)}  # (TRL's worker takes the verifier from lsp_exp)
    arms["trl GRPOTrainer batch=64"] = ("trl", args.trl_python, new / "experiments" / "bench", trl_work, trl_env)
    arms[f"trl GRPOTrainer micro={rec}"] = ("trl", args.trl_python, new / "experiments" / "bench",
                                            [*trl_work, "--micro", rec], trl_env)
    if args.arms:
        wanted = [a.strip() for a in args.arms.split(";") if a.strip()]
        arms = {k: v for k, v in arms.items() if any(k.startswith(w) for w in wanted)}
    return arms


def memory_row(r: dict) -> dict:
    steps, cpu = r["step_s_all"], r["cpu_s_all"]
    return {"peak_gib": r["child_maxrss_mb"] / GiB, "before_gib": r["rss_before_train_mb"] / GiB,
            "wall_s": statistics.fmean(steps), "cpu_s": statistics.fmean(cpu), "last_wall_s": steps[-1],
            "last_cpu_s": cpu[-1], "steps": len(steps), "perf": r.get("perf", {}), "load": r.get("load")}


def memory_table(rows: dict, today: str = "today lsp_zero", trl: str = "trl GRPOTrainer batch=64") -> str:
    """Peak RSS, s/step, the perf split; ratios to today's code (lsp_zero rows) and to TRL (grpo_data rows)."""
    base = rows.get(today)
    header = ["run", "peak RSS GiB", "RSS before GiB", "s/step wall", "CPU s/step", "last step wall", "last step CPU",
              "gen s", "ref s", "update s", "peak / today", "wall / today", "CPU / today", "last CPU / today",
              "peak / TRL", "CPU / TRL", "load avg", "code"]
    def order(name: str):  # today, then lsp_zero, grpo_data, TRL; within each the biggest micro-batch first
        group = next(i for i, key in enumerate(("today", "lsp_zero", "grpo_data", "trl", "")) if key in name)
        micro = re.search(r"micro=(\d+)", name)
        return group, -(int(micro.group(1)) if micro else 10**9), name

    body = []
    for name, r in sorted(rows.items(), key=lambda item: order(item[0])):
        perf = r["perf"]
        vs_today = [r["peak_gib"] / base["peak_gib"], r["wall_s"] / base["wall_s"], r["cpu_s"] / base["cpu_s"],
                    r["last_cpu_s"] / base["last_cpu_s"]] if base and "lsp_zero" in name else ["", "", "", ""]
        ref = rows.get(trl)
        vs_trl = [r["peak_gib"] / ref["peak_gib"], r["cpu_s"] / ref["cpu_s"]] if ref and "grpo_data" in name or (
            ref and name.startswith("trl")) else ["", ""]
        cells = [r["peak_gib"], r["before_gib"], r["wall_s"], r["cpu_s"], r["last_wall_s"], r["last_cpu_s"],
                 *[perf.get(f"perf/{k}_s", "") for k in ("gen", "ref", "update")], *vs_today, *vs_trl]
        digits = [2, 2, 1, 1, 1, 1, 1, 1, 1, 3, 3, 3, 3, 3, 3]
        body.append([name, *[f"{c:.{d}f}" if isinstance(c, float) else c for c, d in zip(cells, digits, strict=True)],
                     r.get("load") or "", r.get("code", "")])
    return table(body, header)


def run_memory(args, work: Path, toy_dir: str, prompts: str) -> None:
    if not args.table_only:
        model_dir = build_wide(toy_dir, work / "wide128k")
        prompts32 = long_prompts(prompts, work / f"prompts{args.query_tokens}.jsonl", length=args.query_tokens)
        worktree = today_worktree(Path(args.today_worktree), TODAY)
        new_sha = short_sha(args.new_commit)
        new = today_worktree(Path(tempfile.gettempdir()) / f"lsp-new-{new_sha}", new_sha)
        print(f"today's code: {worktree} ({TODAY}), interpreter {environment(args.today_python)}", flush=True)
        print(f"new code and TRL's worker: {new} ({new_sha})", flush=True)
    results_path = Path(args.results) if args.results else None
    rows = json.loads(results_path.read_text()) if results_path and results_path.is_file() else {}
    arms = {} if args.table_only else memory_arms(args, model_dir, prompts32, worktree, new)
    for name, (kind, python, where, wargs, env) in arms.items():
        script = "run_trl.py" if kind == "trl" else "run_lsp.py"
        log = work / f"memory-{name.replace(' ', '_').replace('=', '')}.log"
        load_before = os.getloadavg()[0]
        print(f"[memory] {name} ... (load average {load_before:.1f}; log {log})", flush=True)
        result = run_worker(python, script, wargs, log, where=where, env_extra=env)
        rows[name] = memory_row(result)
        rows[name]["load"] = f"{load_before:.1f}-{os.getloadavg()[0]:.1f}"
        rows[name]["code"] = TODAY if name.startswith("today") else new_sha
        print(f"    peak {rows[name]['peak_gib']:.2f} GiB, {rows[name]['wall_s']:.1f} s/step wall, "
              f"{rows[name]['cpu_s']:.1f} CPU s/step", flush=True)
        if results_path:  # every finished run is kept: a later call adds to (or replaces) rows
            results_path.write_text(json.dumps(rows, indent=1))
    print(f"\nmodel wide128k (2 layers, hidden 64, vocab 128,256, fp32), N {args.n} x G {args.g}, queries "
          f"{args.query_tokens} tokens, answers {args.max_tokens} tokens (forced), {args.steps} steps (all timed), "
          f"{args.threads} thread(s); logs in {work}\n")
    print(memory_table(rows))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--suite", default="trl", choices=["trl", "games", "scaling", "memory"])
    p.add_argument("--model", default=None, help="comma-separated: toy, 25m, wide128k (default toy; memory: wide128k)")
    p.add_argument("--steps", type=int, default=None, help="default 20 (memory: 2)")
    p.add_argument("--warmup", type=int, default=None, help="default 3 (memory: 0, every step timed)")
    p.add_argument("--n", type=int, default=8, help="prompts (queries) per step")
    p.add_argument("--g", type=int, default=8, help="answers per prompt")
    p.add_argument("--max-tokens", type=int, default=None, help="completion length (forced); default 8 (memory: 128)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--python", default=default_python(), help="interpreter of both workers")
    g = p.add_argument_group("suite memory (issue 15)")
    g.add_argument("--query-tokens", type=int, default=32, help="lsp_zero: game.max_query_tokens; grpo_data and "
                   "TRL: prompts of this many tokens")
    g.add_argument("--micro", default="null,32,16,8", help="trainer.micro_batch_size values of the new code")
    g.add_argument("--checkpointing", default="",
                   help="micro-batch sizes also run with model.gradient_checkpointing=true")
    g.add_argument("--recommend", default="8", help="the micro-batch size of the grpo_data and TRL micro-batched rows "
                   "(8: the recommendation, see the README)")
    g.add_argument("--today-worktree", default=str(Path(tempfile.gettempdir()) / f"lsp-{TODAY}"),
                   help=f"a git worktree of {TODAY} (created when missing)")
    g.add_argument("--today-python", default=str(ROOT / ".venv" / "bin" / "python"),
                   help="interpreter of today's code (PYTHONPATH is set to its worktree)")
    g.add_argument("--trl-python", default=default_python(), help="interpreter of TRL's worker")
    g.add_argument("--arms", default="", help="only the runs whose names start with one of these (';'-separated)")
    g.add_argument("--results", default=None, help="JSON file the runs are added to (and the table printed from)")
    g.add_argument("--table-only", action="store_true", help="run nothing: print the table of --results")
    g.add_argument("--new-commit", default="HEAD", help="the commit of the new code (run from a worktree of it "
                   "under the temp folder, created when missing; it must hold this suite's workers)")
    p.add_argument("--outputs", default=str(ROOT / "outputs"), help="where the toy world is found / copied")
    p.add_argument("--before", action="store_true",
                   help="suite trl: also run this project's step as it was before the speed-ups "
                   "(generation.py switches)")
    p.add_argument("--unfused-adamw", action="store_true",
                   help="suite trl: also run this project's step with the earlier unfused AdamW (optim.fused=false)")
    p.add_argument("--json", help="also write the rows to this file")
    args = p.parse_args()
    memory = args.suite == "memory"
    for key, plain, suite in (("model", "toy", "wide128k"), ("steps", 20, 2), ("warmup", 3, 0),
                              ("max_tokens", 8, 128)):
        if getattr(args, key) is None:
            setattr(args, key, suite if memory else plain)

    print(environment(args.python), flush=True)
    work = Path(tempfile.mkdtemp(prefix="lsp-bench-"))
    toy_dir, prompts = toy_paths(args.outputs)
    if memory:
        if args.model != "wide128k":
            raise SystemExit("--suite memory runs --model wide128k only")
        run_memory(args, work, toy_dir, prompts)
        return
    dirs = {"toy": toy_dir}
    if "25m" in args.model:
        dirs["25m"] = build_25m(toy_dir, work / "llama25m")
    if "wide128k" in args.model:
        dirs["wide128k"] = build_wide(toy_dir, work / "wide128k")
    common = ["--steps", str(args.steps), "--warmup", str(args.warmup), "--threads", str(args.threads)]
    rows, out = [], {}
    for model in args.model.split(","):
        def lsp(game: str, n: int, g: int, *extra: str, model_dir: str = dirs[model]):
            return ("run_lsp.py", ["--model-dir", model_dir, "--outputs", args.outputs, "--game", game, "--n", str(n),
                                   "--g", str(g), "--max-tokens", str(args.max_tokens), *common, *extra])

        def trl(n: int, g: int, model_dir: str = dirs[model]):
            return ("run_trl.py", ["--model-dir", model_dir, "--prompts", prompts, "--n", str(n), "--g", str(g),
                                   "--max-tokens", str(args.max_tokens), *common])

        if args.suite == "trl":
            arms = {"lsp-exp grpo_data": lsp("grpo_data", args.n, args.g), "trl GRPOTrainer": trl(args.n, args.g)}
            if args.before:
                arms["lsp-exp grpo_data (before)"] = lsp("grpo_data", args.n, args.g, "--before")
            if args.unfused_adamw:
                arms["lsp-exp grpo_data, unfused AdamW"] = lsp("grpo_data", args.n, args.g, "--unfused-adamw")
        elif args.suite == "games":
            arms = {"grpo_data": lsp("grpo_data", args.n, args.g), "lsp_zero": lsp("lsp_zero", args.n, args.g),
                    "lsp": lsp("lsp", args.n, args.g)}
        else:
            arms = {}
            for n, g in ((1, 4), (2, 4), (4, 4), (8, 4), (16, 4)):
                arms[f"lsp-exp NxG={n * g}"] = lsp("grpo_data", n, g)
                arms[f"trl NxG={n * g}"] = trl(n, g)
        results = {k: [] for k in arms}
        for rep in range(args.repeats):
            order = list(arms) if rep % 2 == 0 else list(reversed(arms))
            for name in order:
                script, wargs = arms[name]
                log = work / f"{model}-{name.replace(' ', '_')}-{rep}.log"
                print(f"[{model}] {name} (repeat {rep + 1}/{args.repeats}) ...", flush=True)
                results[name].append(run_worker(args.python, script, wargs, log))
        out[model] = {k: pooled(v, args.warmup) for k, v in results.items()}
        rows.append((model, out[model]))

    print(f"\nsteps {args.steps} (first {args.warmup} not counted), repeats {args.repeats}, threads {args.threads}, "
          f"max tokens {args.max_tokens} (forced), N {args.n}, G {args.g}; logs in {work}\n")
    for model, arms in rows:
        print(f"## model {model}\n")
        if args.suite == "trl":
            ours, theirs = arms["lsp-exp grpo_data"], arms["trl GRPOTrainer"]
            body = [[name, *row(r)] for name, r in arms.items()]
            body.append(["ratio this/TRL", *ratio(ours, theirs)])
            if args.before:
                body.append(["ratio after/before", *ratio(ours, arms["lsp-exp grpo_data (before)"])])
            if args.unfused_adamw:
                body.append(["ratio (unfused AdamW)/TRL", *ratio(arms["lsp-exp grpo_data, unfused AdamW"], theirs)])
            print(table(body, ["framework", *COLUMNS]))
            for name, r in arms.items():
                if name.startswith("lsp-exp"):
                    print(f"\n{name} split (mean s/step): " + ", ".join(
                        f"{k[5:-2]} {v:.4f}" for k, v in r["perf"].items() if k.startswith("perf/") and k.endswith("_s")
                        and "tokens" not in k))
        elif args.suite == "games":
            keys = ["gen", "judge", "reward", "ref", "update"]
            base, zero, full = arms["grpo_data"], arms["lsp_zero"], arms["lsp"]
            body = [[name, r["step_s"], r["cpu_s"], r["cpu_s"] / base["cpu_s"],
                     *[r["perf"].get(f"perf/{k}_s", 0.0) for k in keys], r["peak_rss_mb"]] for name, r in arms.items()]
            print(table(body, ["game", "step s (wall)", "CPU s/step", "CPU / grpo_data",
                               *[f"{k} s (wall)" for k in keys], "peak RSS MiB"]))
            # lsp_zero is lsp without the judge (same Challenger and Solver work): the differences in CPU
            # time per step are the Challenger's cost and the judge's.
            challenger, judge = zero["cpu_s"] - base["cpu_s"], full["cpu_s"] - zero["cpu_s"]
            print(f"\nChallenger (lsp_zero - grpo_data): {challenger:.4f} CPU s/step; judge (lsp - lsp_zero): "
                  f"{judge:.4f} CPU s/step ({full['perf'].get('perf/judge_s', 0.0):.4f} s wall in perf/judge_s)")
            print(f"LSP step excluding the judge / grpo_data step (CPU): {(full['cpu_s'] - judge) / base['cpu_s']:.3f} "
                  f"(= lsp_zero / grpo_data); with the judge: {full['cpu_s'] / base['cpu_s']:.3f}")
        else:
            body = []
            for n, g in ((1, 4), (2, 4), (4, 4), (8, 4), (16, 4)):
                a, b = arms[f"lsp-exp NxG={n * g}"], arms[f"trl NxG={n * g}"]
                body.append([n * g, a["step_s"], b["step_s"], a["cpu_s"], b["cpu_s"], b["cpu_s"] / a["cpu_s"],
                             a["tokens_per_cpu_s"], b["tokens_per_cpu_s"], a["peak_rss_mb"], b["peak_rss_mb"]])
            print(table(body, ["N x G", "lsp-exp step s", "TRL step s", "lsp-exp CPU s", "TRL CPU s", "TRL/lsp-exp CPU",
                               "lsp-exp tok/CPU-s", "TRL tok/CPU-s", "lsp-exp peak MiB", "TRL peak MiB"]))
        print()
    if args.json:
        Path(args.json).write_text(json.dumps({m: a for m, a in rows}, indent=1))


if __name__ == "__main__":
    main()
