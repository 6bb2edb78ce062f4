#!/usr/bin/env bash
# The newcomer path on the README's own examples (each `# file` block written out as shown), 20 steps each, timed:
#   tools/newcomer_path.sh      (writes under /tmp/newcomer)
set -u
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 MLFLOW_DISABLE_TELEMETRY=true TOKENIZERS_PARALLELISM=false
rm -rf /tmp/newcomer && mkdir -p /tmp/newcomer
.venv/bin/python - <<'PY'
import re, pathlib
text = pathlib.Path("README.md").read_text()
root = pathlib.Path("/tmp/newcomer")
for kind, body in re.findall(r"```(python|yaml)\n(.*?)```", text, flags=re.S):
    m = re.fullmatch(r"# (my_conf/[\w/]+\.yaml|\w+\.py)(:.*)?", body.splitlines()[0].strip())
    if m:
        (root / m.group(1)).parent.mkdir(parents=True, exist_ok=True)
        (root / m.group(1)).write_text(body)
print(sorted(str(p.relative_to(root)) for p in root.rglob("*.*")))
PY
export PYTHONPATH=/tmp/newcomer
common="hydra.searchpath=[file:///tmp/newcomer/my_conf] trainer.max_steps=20 eval.samples=0 eval.max_problems=200 paths.outputs=/tmp/newcomer/out logger.tracking_uri=sqlite:////tmp/newcomer/out/mlflow.db trainer.enable_progress_bar=false"
for args in "reward=checked game=lsp_zero" "game=targeted reward=arithmetic" "algorithm=scaled game=grpo_data" \
    "algorithm=median game=lsp_zero"; do
  echo "== lsp-train $args"
  /usr/bin/time -f "wall %e s" .venv/bin/lsp-train $common $args 2>&1 | grep -v "INFO\|^\s*$" | tail -4
done

