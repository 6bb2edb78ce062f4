#!/usr/bin/env bash
# The wheels the GPU image lacks (hydra-core, omegaconf, antlr4; it has torch, transformers, lightning,
# peft, pytest and the rest), for Python 3.12, into .whl/ (git-ignored), to carry to the GPU machine.
set -euo pipefail
cd "$(dirname "$0")/../.."
mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d .whl hydra-core==1.3.2 omegaconf==2.3.0
# antlr4-python3-runtime 4.9.3 (what omegaconf 2.3 pins) is published as a source archive only: build its
# (pure-Python) wheel here.
python3 -m pip wheel -q --no-deps -w .whl antlr4-python3-runtime==4.9.3
ls -la .whl
