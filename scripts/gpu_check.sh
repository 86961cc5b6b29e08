#!/usr/bin/env bash
# morl's GPU check, for a CUDA machine that has torch, transformers and accelerate but maybe no internet.
#
#   scripts/gpu_check.sh [--wheels DIR] [--out DIR] [--dry-run] [--skip-scale]
#
# --wheels DIR installs morl's other pure-Python dependencies (pydantic, math-verify, ...) from a folder of wheels
# into a private target (nothing outside it changes). Fill the folder on a machine with internet, for the GPU
# machine's Python (here 3.12 on x86-64):
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux2014_x86_64 -d wheels \
#       pydantic pydantic-core annotated-types typing-inspection math-verify latex2sympy2_extended \
#       antlr4-python3-runtime==4.13.2 peft
# (add typer, rich, pyyaml, safetensors or matplotlib if the machine lacks them). Each run writes into a new folder
# OUT/run-<date-time>-<suffix>/ (OUT defaults to the temporary directory's morl-gpu-check), so it can run again and
# again on one machine; it prints "summary: PATH" and "N passed, N failed". --dry-run runs the same path on the CPU
# (the test suite does, in CI, twice in a row).
set -euo pipefail
cd "$(dirname "$0")/.."
wheels=""
args=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --wheels) wheels="$2"; shift 2 ;;
    *) args+=("$1"); shift ;;
  esac
done
site=morl-gpu-check-site
source scripts/offline_site.sh
exec "$python" scripts/gpu_check.py "${args[@]}"
