"""Side-by-side benchmark: this project's step against TRL's GRPOTrainer, LSP against grpo_data, scaling.

    .venv-bench/bin/python experiments/bench/bench.py --model toy,25m --steps 20            # vs TRL
    .venv-bench/bin/python experiments/bench/bench.py --suite games --model toy --steps 20  # lsp vs grpo_data
    .venv-bench/bin/python experiments/bench/bench.py --suite scaling --model toy,25m --steps 8

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
import statistics
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULT_TAG, ROOT, build_25m, toy_paths  # noqa: E402

HERE = Path(__file__).resolve().parent


def default_python() -> str:
    bench = ROOT / ".venv-bench" / "bin" / "python"
    return str(bench) if bench.exists() else sys.executable


def run_worker(python: str, script: str, args: list[str], log: Path) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "MLFLOW_DISABLE_TELEMETRY": "true",
           "TOKENIZERS_PARALLELISM": "false", "PYTHONWARNINGS": "ignore"}
    with open(log, "w") as out:
        proc = subprocess.Popen([python, str(HERE / script), *args], stdout=out, stderr=subprocess.STDOUT,
                                cwd=HERE, env=env)
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
    return [r["step_s"], r["cpu_s"], r["tokens_per_s"], r["tokens_per_cpu_s"], r["peak_rss_mb"], r["rss_before_train_mb"]]


def ratio(a: dict, b: dict) -> list[float]:
    return [x / y for x, y in zip(row(a), row(b))]


def table(rows: list[list], header: list[str]) -> str:
    cells = [header] + [[f"{c:.3f}" if isinstance(c, float) and abs(c) < 10 else
                         (f"{c:.0f}" if isinstance(c, float) else str(c)) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def environment(python: str) -> str:
    code = ("import importlib.metadata as m, torch; "
            "names = sorted(d.metadata['Name'] for d in m.distributions()); "
            "bad = [n for n in names if n and n.lower().startswith(('nvidia', 'torchvision', 'torchaudio', 'triton'))]; "
            "v = lambda n: m.version(n) if n in names else '-'; "
            "print(f'torch {torch.__version__}, transformers {v(\"transformers\")}, trl {v(\"trl\")}, '"
            "f'lightning {v(\"lightning\")}; CUDA/vision/audio packages: {bad or \"none\"}')")
    out = subprocess.run([python, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; {python}: {out}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--suite", default="trl", choices=["trl", "games", "scaling"])
    p.add_argument("--model", default="toy", help="comma-separated: toy, 25m")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--n", type=int, default=8, help="prompts (queries) per step")
    p.add_argument("--g", type=int, default=8, help="answers per prompt")
    p.add_argument("--max-tokens", type=int, default=8, help="completion length (forced)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--python", default=default_python(), help="interpreter of both workers")
    p.add_argument("--outputs", default=str(ROOT / "outputs"), help="where the toy world is found / copied")
    p.add_argument("--before", action="store_true",
                   help="suite trl: also run this project's step as it was before the speed-ups (generation.py switches)")
    p.add_argument("--unfused-adamw", action="store_true",
                   help="suite trl: also run this project's step with the earlier unfused AdamW (optim.fused=false)")
    p.add_argument("--json", help="also write the rows to this file")
    args = p.parse_args()

    print(environment(args.python), flush=True)
    work = Path(tempfile.mkdtemp(prefix="lsp-bench-"))
    toy_dir, prompts = toy_paths(args.outputs)
    dirs = {"toy": toy_dir}
    if "25m" in args.model:
        dirs["25m"] = build_25m(toy_dir, work / "llama25m")
    common = ["--steps", str(args.steps), "--warmup", str(args.warmup), "--threads", str(args.threads)]
    rows, out = [], {}
    for model in args.model.split(","):
        def lsp(game: str, n: int, g: int, *extra: str):
            return ("run_lsp.py", ["--model-dir", dirs[model], "--outputs", args.outputs, "--game", game, "--n", str(n),
                                   "--g", str(g), "--max-tokens", str(args.max_tokens), *common, *extra])

        def trl(n: int, g: int):
            return ("run_trl.py", ["--model-dir", dirs[model], "--prompts", prompts, "--n", str(n), "--g", str(g),
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
