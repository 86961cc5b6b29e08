"""GPU check: real training runs of every weighting family with the policy on CUDA.

The suite proves device placement on a pretend accelerator (tests/test_device_placement.py); this runs the same
paths on a real GPU: each controller family (reward, advantage and gradient level) with GRPO + KL (a reference
policy), two mini-batches, clipped-weight and gradient diagnostics, a checkpoint and a resume, in float32 and
bfloat16, and the loss axes (GSPO, Dr. GRPO, DAPO with dynamic sampling). Prints one line per case and a JSON
summary; exits 1 if any case failed.

Usage (from the repository root, on a machine with a CUDA GPU):
    python scripts/gpu_device_check.py --out /tmp/gpu-check
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import traceback
from pathlib import Path

import torch

from morl import Pipeline, TrainConfig
from morl.policy import Policy
from morl.run import Manifest, read_metrics
from morl.tinymath import make_split

REWARDS = ["accuracy", "conciseness", "clarity"]
CTWA = {"name": "ctwa", "targets": {"accuracy": 0.45, "conciseness": 0.0, "clarity": 0.0}, "lr": 0.5, "u_max": 1.0}
CONTROLLERS = {
    "fixed": "fixed",
    "ctwa": CTWA,
    "lagrangian": {"name": "lagrangian", "primary": "accuracy", "targets": [0.9, 0.9]},
    "gdpo": "gdpo",
    "dynamic_hv": {"name": "dynamic_hv", "validation_size": 8},
    "mgda": "mgda",
    "gradnorm": "gradnorm",
    "pama": "pama",
}
ALGO = {"name": "grpo", "kl_coef": 0.01, "minibatches": 2}


DEVICE = "cuda"


def run_case(name: str, out: Path, controller, algo, dtype: str = "float32", steps: int = 4, **train) -> dict:
    policy = Policy.from_pretrained("tinymath", device=DEVICE, dtype=dtype)
    initial = [p.detach().clone() for p in policy.model.parameters()]
    config = {
        "steps": steps,
        "prompts_per_step": 8,
        "group_size": 8,
        "eval_every": 0,
        "checkpoint_every": 2,
        "progress": False,
        "output_dir": str(out / name),
        **train,
    }
    pipe = Pipeline(
        policy=policy,
        rewards=REWARDS,
        controller=controller,
        algo=algo,
        rollout={"name": "transformers", "max_new_tokens": 64},
        config=TrainConfig(**config),
        diagnostics={"clipped_weights": True, "grad_cosine_every": 2},
    )
    start = time.perf_counter()
    pipe.fit(make_split("train", 256, 0), make_split("eval", 32, 0))
    seconds = time.perf_counter() - start
    rows = [r for r in read_metrics(out / name) if r["kind"] == "train"]
    on_gpu = all(p.device.type == torch.device(DEVICE).type for p in policy.model.parameters())
    moved = any(not torch.equal(a, b) for a, b in zip(initial, policy.model.parameters()))
    finite = all(math.isfinite(r["loss"]) for r in rows)
    result = {
        "case": name,
        "ok": on_gpu and moved and finite and len(rows) == steps,
        "on_gpu": on_gpu,
        "parameters_changed": moved,
        "finite_loss": finite,
        "steps": len(rows),
        "seconds": round(seconds, 2),
        "last": {k: rows[-1].get(k) for k in ("loss", "kl", "clip/removed_mass", "rewards/accuracy/mean")},
    }
    return result


def resume_case(out: Path) -> dict:
    """Interrupt-free resume on the GPU: 2 steps, then a new pipeline continues to 4 from the checkpoint."""
    name = "resume_ctwa"
    first = run_case(name, out, CTWA, ALGO, steps=2)
    policy = Policy.from_pretrained("tinymath", device=DEVICE)
    pipe = Pipeline(
        policy=policy,
        rewards=REWARDS,
        controller=CTWA,
        algo=ALGO,
        rollout={"name": "transformers", "max_new_tokens": 64},
        config=TrainConfig(
            steps=4,
            prompts_per_step=8,
            group_size=8,
            eval_every=0,
            checkpoint_every=2,
            progress=False,
            output_dir=str(out / name),
        ),
        diagnostics={"clipped_weights": True, "grad_cosine_every": 2},
    )
    pipe.fit(make_split("train", 256, 0), make_split("eval", 32, 0), resume_from=out / name)
    segments = [(s.kind, s.from_step, s.to_step, s.status) for s in Manifest.load(out / name).segments]
    steps = [r["step"] for r in read_metrics(out / name) if r["kind"] == "train"]
    ok = first["ok"] and steps == [1, 2, 3, 4] and segments[-1] == ("resume", 2, 4, "finished")
    return {"case": name, "ok": ok, "steps": steps, "segments": segments}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=Path("/tmp/gpu-check"))
    parser.add_argument("--device", default="cuda", help="cpu: a dry run of the script itself")
    args = parser.parse_args()
    global DEVICE
    DEVICE = args.device
    if DEVICE == "cuda" and not torch.cuda.is_available():
        print("no CUDA device")
        return 1
    name = torch.cuda.get_device_name(0) if DEVICE == "cuda" else "cpu"
    print(f"torch {torch.__version__}, {name}", flush=True)
    cases = [(name, spec, ALGO, "float32", {}) for name, spec in CONTROLLERS.items()]
    cases += [(f"{name}_bf16", CONTROLLERS[name], ALGO, "bfloat16", {}) for name in ("ctwa", "mgda", "lagrangian")]
    gspo = {"name": "grpo", "importance_sampling_level": "sequence", "clip_low": 3e-4, "clip_high": 4e-4}
    cases += [
        ("gspo", CTWA, gspo, "float32", {}),
        ("dr_grpo", "fixed", {"name": "grpo", "loss_type": "dr_grpo", "max_completion_length": 64}, "float32", {}),
        (
            "dapo",
            "fixed",
            {"name": "grpo", "loss_type": "dapo", "clip_high": 0.28},
            "float32",
            {"dynamic_sampling": True},
        ),
        (
            "kl_in_reward",
            CTWA,
            {"name": "grpo", "kl_coef": 0.01, "kl_in": "reward", "kl_estimator": "k1"},
            "float32",
            {},
        ),
    ]
    results = []
    for name, controller, algo, dtype, train in cases:
        try:
            result = run_case(name, args.out, controller, algo, dtype, **train)
        except Exception as err:  # report every case, then fail
            result = {"case": name, "ok": False, "error": f"{type(err).__name__}: {err}"[:800]}
            traceback.print_exc()
        results.append(result)
        print(json.dumps(result), flush=True)
    try:
        results.append(resume_case(args.out))
    except Exception as err:
        results.append({"case": "resume_ctwa", "ok": False, "error": f"{type(err).__name__}: {err}"[:800]})
        traceback.print_exc()
    print(json.dumps(results[-1]), flush=True)
    failed = [r["case"] for r in results if not r["ok"]]
    print(f"{len(results) - len(failed)} passed, {len(failed)} failed" + (f": {failed}" if failed else ""))
    (args.out / "summary.json").write_text(json.dumps(results, indent=1))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
