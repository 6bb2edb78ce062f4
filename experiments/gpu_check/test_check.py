"""The GPU check (experiments/gpu_check/check.py) works before a GPU is at hand: its dry run runs
every item with tiny models on the CPU, in an environment without MLflow (as the GPU image), and
writes one line per item, a summary and its JSON."""
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_dry_run_runs_every_item_without_mlflow(tmp_path):
    blocker = tmp_path / "site"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text('import sys\nsys.modules["mlflow"] = None  # as in the GPU image\n')
    env = dict(os.environ, PYTHONPATH=str(blocker), PYTHONWARNINGS="ignore")
    command = [sys.executable, "experiments/gpu_check/check.py", "--dry-run", "--out", str(tmp_path / "out")]
    out = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    lines = [line for line in out.stdout.splitlines() if line.startswith("[")]
    names = ["gpu_tests", "conformance", "selfplay tiny lora", "selfplay tiny full", "selfplay tiny2 lora",
             "selfplay tiny2 full", "fsdp tiny full"]
    assert [line.split("] ")[1].split(" (")[0] for line in lines] == names
    assert all(line.startswith("[ok]") for line in lines), lines
    assert out.stdout.strip().splitlines()[-1].startswith("summary: 7 ok, 0 failed, 0 oom, 0 skipped")
    report = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert report["dry_run"] is True
    conformance = report["results"][1]["figures"]["rows"]   # the dry run: Llama on the CPU
    assert {r["check"] for r in conformance} == {"float32", "bf16 float32", "bf16 bfloat16", "step lora", "step full"}
    assert "paths llama fused" in lines[1]
    for result in report["results"][2:]:
        f = result["figures"]
        assert f["steps"] >= 1 and f["step_s"] > 0 and f["tokens_per_s"] > 0
        assert f["answer_len"] == 8 and f["query_len"] <= 8      # random models run to the limits
        assert f["estimate_gib"] > 0
        parts = sum(f[f"{k}_s"] for k in ("gen", "judge", "reward", "ref", "update"))
        assert parts <= f["step_s"] * 1.01                         # the split is a part of the step


def test_items_that_would_overrun_the_budget_are_skipped_and_said_so(tmp_path):
    out = subprocess.run([sys.executable, "experiments/gpu_check/check.py", "--dry-run", "--budget-s", "1",
                          "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1].startswith("summary: 0 ok, 0 failed, 0 oom, 7 skipped")
