#!/usr/bin/env bash
# On the GPU machine, from the repository root, with .whl/ carried (fetch_wheels.sh): install the
# missing wheels beside the image's packages, put the repository on PYTHONPATH (not `pip install -e .`:
# the project pins another torch), run the check, keep its log and JSON in $OUT.
set -o pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false PYTHONWARNINGS=ignore
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
mkdir -p "${OUT:-gpu_check_out}"
python3 experiments/gpu_check/check.py --out "${OUT:-gpu_check_out}" "$@" 2>&1 | tee "${OUT:-gpu_check_out}/log.txt"
