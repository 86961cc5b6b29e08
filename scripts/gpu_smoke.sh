#!/usr/bin/env bash
# GPU smoke test of the scale-out path: vLLM rollouts with three weighting methods (fixed weights, CTWA, MGDA: a
# reward-level, an adaptive and a gradient-level controller), 3 training steps each, and transformers rollouts with
# fixed weights as the reference, with the shipped TinyMath model (no hub access). For a machine with one CUDA GPU;
# it should finish in about 12 minutes once the packages are installed (installing vLLM from the package index can
# take a few minutes more).
#
#   bash scripts/gpu_smoke.sh              # creates .venv-gpu and installs morl[vllm] into it unless present
#   VENV=.venv bash scripts/gpu_smoke.sh   # use an environment that already has morl and vLLM
#
# Prints each run's seconds per step (rollout, update) and the per-objective training metrics, and, for vLLM,
# how far the engine's log-probs are from the trainer's (sampling/logp_difference) and the importance ratios.
# Exit status 0 when every run finished and logged 3 steps. Written without a GPU at hand: not yet run on one.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv-gpu}
PYTHON=${PYTHON:-python3}
STEPS=3
OUT=${OUT:-$(mktemp -d -t morl-gpu-smoke-XXXX)}
start=$(date +%s)
say() { printf '[%4ss] %s\n' "$(($(date +%s) - start))" "$*"; }

command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
if [ ! -x "$VENV/bin/python" ]; then
  say "creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
if ! "$PY" -c "import vllm, morl" 2>/dev/null; then
  say "installing morl[vllm] from the package index"
  "$PY" -m pip install -q --upgrade pip
  "$PY" -m pip install -q -e '.[vllm]'
fi
"$PY" - <<'PY'
import torch, vllm, transformers
assert torch.cuda.is_available(), "no CUDA GPU visible"
print(f"torch {torch.__version__}, vllm {vllm.__version__}, transformers {transformers.__version__}, "
      f"GPU {torch.cuda.get_device_name(0)}")
PY
# how to choose vLLM's attention backend: recent vLLM reads the engine argument attention_backend and ignores the
# VLLM_ATTENTION_BACKEND variable, which only older versions read
ATTENTION_ARG=$("$PY" -c 'import dataclasses
from vllm.engine.arg_utils import EngineArgs
print(int("attention_backend" in {f.name for f in dataclasses.fields(EngineArgs)}))' 2>/dev/null || echo 0)

# the quickstart recipes (TinyMath, 3 objectives, GRPO), shrunk to 3 steps of 8 prompts x 8 completions on the GPU
COMMON=(
  --set policy.device=cuda
  --set train.steps=$STEPS --set train.prompts_per_step=8 --set train.group_size=8
  --set train.eval_every=0 --set train.checkpoint_every=0 --set train.progress=false
  --set data.train_size=64 --set data.eval_size=16
  --set rollout.max_new_tokens=64
)
# vLLM: bf16 engine (rollout.dtype; the trainer stays fp32: the importance correction sees a real mismatch), no CUDA
# graphs (fast start), TinyMath's 256-token context, a small share of the GPU
VLLM=(
  --set rollout.name=vllm --set rollout.dtype=bfloat16 --set rollout.gpu_memory_utilization=0.25
  --set rollout.enforce_eager=true --set rollout.max_model_len=256
)
FALLBACK=()  # extra fit arguments once the default attention backend has failed
fallback_taken=0

run() {  # run NAME RECIPE ARGS...: one morl fit, its log in $OUT/NAME.log
  local name=$1 recipe=$2; shift 2
  say "fit: $name ($recipe)"
  rm -rf "${OUT:?}/$name"
  if timeout 300 "$VENV/bin/morl" fit "cookbook/recipes/$recipe" "${COMMON[@]}" \
      --output-dir "$OUT/$name" "$@" >"$OUT/$name.log" 2>&1; then
    return 0
  fi
  tail -n 30 "$OUT/$name.log"
  return 1
}

run_vllm() {  # run_vllm NAME RECIPE: with vLLM, retrying once with FlexAttention if the default backend fails
  local name=$1 recipe=$2
  run "$name" "$recipe" "${VLLM[@]}" ${FALLBACK[@]+"${FALLBACK[@]}"} && return 0
  [ "$fallback_taken" = 0 ] || return 1
  fallback_taken=1
  # TinyMath's attention heads have 16 dimensions, fewer than some vLLM attention kernels take: if the default
  # backend refuses them, FlexAttention takes any power of two
  if [ "$ATTENTION_ARG" = 1 ]; then
    FALLBACK=(--set "rollout.engine_kwargs={attention_backend: FLEX_ATTENTION}")
  else
    export VLLM_ATTENTION_BACKEND=FLEX_ATTENTION
  fi
  say "vLLM failed with its default attention backend; retrying with FlexAttention"
  run "$name" "$recipe" "${VLLM[@]}" ${FALLBACK[@]+"${FALLBACK[@]}"}
}

RUNS=(vllm_fixed vllm_ctwa vllm_mgda transformers_fixed)
status=0
run_vllm vllm_fixed quickstart_linear.yaml || status=1
run_vllm vllm_ctwa quickstart.yaml || status=1
run_vllm vllm_mgda mgda.yaml || status=1
run transformers_fixed quickstart_linear.yaml || status=1

"$PY" - "$OUT" "$STEPS" "${RUNS[@]}" <<'PY'
import json, math, sys
from pathlib import Path

out, steps, runs = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
keys = ["rewards/accuracy/mean", "rewards/conciseness/mean", "rewards/clarity/mean", "completions/mean_length",
        "loss", "kl", "grad_norm", "sampling/logp_difference/mean", "sampling/logp_difference/max",
        "sampling/importance_ratio/mean", "sampling/importance_capped"]
failed = False
for name in runs:
    path = out / name / "metrics.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    train = [r for r in rows if r.get("kind") == "train"]
    evals = [r for r in rows if r.get("kind") == "eval"]
    print(f"\n== {name}: {len(train)} training steps")
    failed |= len(train) != steps
    for r in train:
        rollout, update = r.get("timing/rollout", math.nan), r.get("timing/update", math.nan)
        total = sum(v for k, v in r.items() if k.startswith("timing/"))
        print(f"step {r['step']}: {total:6.2f} s (rollout {rollout:5.2f} s, update {update:5.2f} s)")
        print("   " + ", ".join(f"{k} {r[k]:.4g}" for k in keys if k in r))
        weights = {k: v for k, v in r.items() if k.startswith("weights/")}
        if weights:
            print("   " + ", ".join(f"{k} {v:.3f}" for k, v in weights.items()))
    if len(train) > 1:  # the first step includes the engine's start (vLLM) and warm-up
        later = [sum(v for k, v in r.items() if k.startswith("timing/")) for r in train[1:]]
        print(f"mean step time after the first: {sum(later) / len(later):.2f} s")
    for r in evals:
        print(f"eval at step {r['step']}: " + ", ".join(f"{k.removeprefix('eval/')} {v:.3f}"
                                                    for k, v in r.items() if k.startswith("eval/")))
sys.exit(1 if failed else 0)
PY
say "done; logs and runs in $OUT"
exit $status
