#!/usr/bin/env bash
# morl against TRL's GRPOTrainer on one GPU, on a model of the size users train: a random-init model with
# Qwen2.5-0.5B's architecture (built here, nothing to download), bfloat16, 8 prompts x 8 completions, 256 new tokens,
# transformers generation on TRL's side, the quickstart's rewards, loss and optimiser on both; full fine-tuning, then
# LoRA r 16 on both sides. Tokens per second and peak GPU memory, from benchmarks/vs_trl.py, one line per setting.
#
#   scripts/gpu_vs_trl.sh [--wheels DIR] [--out DIR] [--dry-run]
#
# --wheels DIR installs what the GPU machine lacks (TRL and its datasets, morl's pure-Python dependencies) from a
# folder of wheels into a private target; fill it on a machine with internet for the GPU machine's Python, e.g.
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux2014_x86_64 -d wheels trl==1.16.0 datasets dill multiprocess \
#       pydantic pydantic-core annotated-types typing-inspection math-verify latex2sympy2_extended \
#       antlr4-python3-runtime==4.13.2
# (and pyarrow if the machine's is older than datasets needs). --dry-run runs the same path on the CPU with a narrow
# model of the same vocabulary in float32, K 2 and 8 new tokens. Each setting's table goes to OUT (default: the
# temporary directory's morl-gpu-vs-trl), as vs_trl-<setting>.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
wheels=""
out="${TMPDIR:-/tmp}/morl-gpu-vs-trl"
dry=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --wheels) wheels="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --dry-run) dry=1; shift ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
site=morl-gpu-vs-trl-site
source scripts/offline_site.sh
mkdir -p "$out"
if [[ $dry == 1 ]]; then
  job=(--device cpu --dtype float32 --arch qwen2.5-vocab-tiny --k 2 --new-tokens 8 --reps 1 --steps 1 --warmup 1 --memory-steps 1)
else
  "$python" -c "import torch; print('device:', torch.cuda.get_device_name(0))" | tee "$out/device.txt"
  job=(--device cuda --dtype bfloat16 --arch qwen2.5-0.5b --new-tokens 256 --reps 1 --steps 3 --warmup 1 --memory-steps 2)
fi
for lora in 0 16; do
  setting=$([[ $lora == 0 ]] && echo full || echo lora16)
  "$python" benchmarks/vs_trl.py "${job[@]}" --lora "$lora" 2>&1 | tee "$out/vs_trl-$setting.txt"
done
echo "tables: $out"
