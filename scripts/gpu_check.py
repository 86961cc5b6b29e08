"""morl's GPU check: the device-sensitive paths on a real CUDA GPU, with a JSON summary.

Run it through ``scripts/gpu_check.sh`` (which installs missing pure-Python dependencies from a wheel folder on
machines without internet). Cases:

- ``device_tests``: ``tests/test_device_placement.py`` on CUDA (every weighting family, real steps);
- ``family/<controller>/<dtype>``: 20 TinyMath GRPO + KL steps of CTWA, GDPO and MGDA in float32 and bfloat16, with
  clipped-weight and gradient diagnostics and a checkpoint: step time and peak GPU memory;
- ``lora``: CTWA with a LoRA adapter (the KL reference is the base with the adapter disabled);
- ``loss/<axis>``: GSPO, Dr. GRPO, DAPO with dynamic sampling, the KL in the reward;
- ``resume``: 2 steps, then a new pipeline continues to 4 from the checkpoint;
- ``ddp``: ``morl fit --launch 2`` when the machine has 2 GPUs or more;
- ``vllm``: the vLLM rollout backend when ``vllm`` imports;
- ``scale/<size>``: one training step of random-init Llama models of growing size until one does not fit: parameters,
  step time, peak memory.

``--dry-run`` runs the same script path on the CPU with 2 steps a case and a tiny scale sweep (the test suite does).
Exit code 1 if any case failed; cases that cannot run here (no second GPU, no vLLM) are "skipped", with the reason.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from morl import Pipeline, TrainConfig  # noqa: E402
from morl.policy import Policy, PolicyConfig  # noqa: E402
from morl.run import Manifest, read_metrics  # noqa: E402
from morl.tinymath import make_split  # noqa: E402

REWARDS = ["accuracy", "conciseness", "clarity"]
CTWA = {"name": "ctwa", "targets": {"accuracy": 0.45, "conciseness": 0.0, "clarity": 0.0}, "lr": 0.5, "u_max": 1.0}
FAMILIES = {"ctwa": CTWA, "gdpo": "gdpo", "mgda": "mgda"}
ALGO = {"name": "grpo", "kl_coef": 0.01, "minibatches": 2}
LOSS_AXES = {
    "gspo": ({"name": "grpo", "importance_sampling_level": "sequence", "clip_low": 3e-4, "clip_high": 4e-4}, {}),
    "dr_grpo": ({"name": "grpo", "loss_type": "dr_grpo", "max_completion_length": 64}, {}),
    "dapo": ({"name": "grpo", "loss_type": "dapo", "clip_high": 0.28}, {"dynamic_sampling": True}),
    "kl_in_reward": ({"name": "grpo", "kl_coef": 0.01, "kl_in": "reward", "kl_estimator": "k1"}, {}),
}
# random-init Llama sizes (hidden, layers, heads, intermediate), trained in float32 with AdamW (16 bytes a parameter)
SCALE = {
    "0.4B": (1024, 24, 16, 4096),
    "1.2B": (2048, 24, 16, 5504),
    "2.5B": (2560, 32, 20, 6912),
    "6.5B": (4096, 32, 32, 11008),
    "13B": (5120, 40, 40, 13824),
}
DRY_SCALE = {"tiny": (64, 2, 4, 128)}


class Check:
    def __init__(self, device: str, out: Path, steps: int, only: list[str] | None = None) -> None:
        self.device, self.out, self.steps = device, out, steps
        self.only = only or []
        self.cases: list[dict] = []

    def record(self, name: str, fn, *args, **kwargs) -> None:
        """Run one case; an exception fails it (with the error) without stopping the others."""
        if self.only and not any(name.startswith(prefix) for prefix in self.only):
            return
        start = time.perf_counter()
        try:
            result = {"case": name, **fn(*args, **kwargs)}
        except Exception as err:
            traceback.print_exc()
            result = {"case": name, "ok": False, "error": f"{type(err).__name__}: {err}"[:1000]}
        result["seconds"] = round(time.perf_counter() - start, 2)
        self.cases.append(result)
        print(json.dumps(result), flush=True)

    # ---- cases ----------------------------------------------------------------------------------------------------

    def device_tests(self) -> dict:
        selection = "cuda" if self.device == "cuda" else "cpu or pretend"
        command = [sys.executable, "-m", "pytest", "tests/test_device_placement.py", "-q", "-p", "no:cacheprovider"]
        proc = subprocess.run([*command, "-k", selection], cwd=ROOT, capture_output=True, text=True)
        tail = proc.stdout.strip().splitlines()[-1:] or [proc.stderr[-500:]]
        return {"ok": proc.returncode == 0, "pytest": tail[0]}

    def train(self, name: str, controller, algo, dtype: str = "float32", policy: Policy | None = None, **train) -> dict:
        policy = policy or Policy.from_pretrained("tinymath", device=self.device, dtype=dtype)
        initial = [p.detach().clone() for p in policy.model.parameters()]
        config = {
            "steps": self.steps,
            "prompts_per_step": 8,
            "group_size": 8,
            "eval_every": 0,
            "checkpoint_every": max(self.steps // 2, 1),
            "progress": False,
            "output_dir": str(self.out / name.replace("/", "-")),
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
        with self.peak_memory() as peak:
            pipe.fit(make_split("train", 512, 0), make_split("eval", 16, 0))
        rows = [r for r in read_metrics(Path(config["output_dir"])) if r["kind"] == "train"]
        on_device = all(p.device.type == torch.device(self.device).type for p in policy.model.parameters())
        moved = any(not torch.equal(a, b) for a, b in zip(initial, policy.model.parameters()))
        finite = all(math.isfinite(r["loss"]) for r in rows)
        seconds = [sum(v for k, v in r.items() if k.startswith("timing/")) for r in rows[1:]] or [math.nan]
        return {
            "ok": on_device and moved and finite and len(rows) == config["steps"],
            "on_device": on_device,
            "parameters_changed": moved,
            "finite_loss": finite,
            "steps": len(rows),
            "step_seconds": round(sorted(seconds)[len(seconds) // 2], 4),
            "peak_memory_mb": peak.get("mb"),
            "last": {k: rows[-1].get(k) for k in ("loss", "kl", "clip/removed_mass", "rewards/accuracy/mean")},
        }

    def lora(self) -> dict:
        if "lora" not in PolicyConfig.model_fields:
            return {"ok": False, "error": "this build has no policy.lora"}
        policy = Policy.from_pretrained("tinymath", device=self.device, lora={"r": 8, "alpha": 16})
        return self.train("lora", CTWA, ALGO, policy=policy)

    def resume(self) -> dict:
        name = "resume"
        first = self.train(name, CTWA, ALGO, steps=2)
        pipe = Pipeline(
            policy=Policy.from_pretrained("tinymath", device=self.device),
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
                output_dir=str(self.out / name),
            ),
            diagnostics={"clipped_weights": True, "grad_cosine_every": 2},
        )
        pipe.fit(make_split("train", 512, 0), make_split("eval", 16, 0), resume_from=self.out / name)
        segments = [(s.kind, s.from_step, s.to_step, s.status) for s in Manifest.load(self.out / name).segments]
        steps = [r["step"] for r in read_metrics(self.out / name) if r["kind"] == "train"]
        return {
            "ok": first["ok"] and steps == [1, 2, 3, 4] and segments[-1] == ("resume", 2, 4, "finished"),
            "segments": segments,
        }

    def ddp(self) -> dict:
        if self.device != "cuda" or torch.cuda.device_count() < 2:
            return {"ok": True, "skipped": "needs 2 GPUs"}
        out = self.out / "ddp"
        command = [
            sys.executable,
            "-m",
            "morl",
            "fit",
            "cookbook/recipes/quickstart.yaml",
            "--launch",
            "2",
            "--output-dir",
            str(out),
            "--set",
            "train.steps=4",
            "--set",
            "policy.device=cuda",
            "--set",
            "train.progress=false",
            "--set",
            "data.eval_size=16",
        ]
        proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
        steps = [r["step"] for r in read_metrics(out) if r["kind"] == "train"] if out.exists() else []
        return {"ok": proc.returncode == 0 and steps == [1, 2, 3, 4], "stderr": proc.stderr[-400:]}

    def vllm(self) -> dict:
        try:
            import vllm  # noqa: F401
        except ImportError:
            return {"ok": True, "skipped": "vllm does not import"}
        if self.device != "cuda":
            return {"ok": True, "skipped": "vLLM needs a GPU"}
        policy = Policy.from_pretrained("tinymath", device="cuda")
        return self.train("vllm", "fixed", ALGO, policy=policy) | {"rollout": "vllm"}

    def scale(self, sizes: dict[str, tuple[int, int, int, int]]) -> None:
        """One GRPO step of random-init Llama models of growing size, until one does not fit."""
        from transformers import LlamaConfig, LlamaForCausalLM

        tokenizer = Policy.from_pretrained("tinymath").tokenizer
        for label, (hidden, layers, heads, intermediate) in sizes.items():
            config = LlamaConfig(
                vocab_size=len(tokenizer),
                hidden_size=hidden,
                num_hidden_layers=layers,
                num_attention_heads=heads,
                num_key_value_heads=heads,
                intermediate_size=intermediate,
                max_position_embeddings=256,
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )

            def one_step(config=config) -> dict:
                with torch.device(self.device):
                    model = LlamaForCausalLM(config)
                policy = Policy(model, tokenizer, PolicyConfig(model="random-init", device=self.device))
                params = sum(p.numel() for p in model.parameters())
                pipe = Pipeline(
                    policy=policy,
                    rewards=REWARDS,
                    controller="fixed",
                    algo="grpo",
                    rollout={"name": "transformers", "max_new_tokens": 16},
                    config=TrainConfig(steps=1, prompts_per_step=4, group_size=4, progress=False, save_model=False),
                    diagnostics=False,
                )
                with self.peak_memory() as peak:
                    start = time.perf_counter()
                    _, metrics = pipe.step(make_split("train", 4, 0))
                    seconds = time.perf_counter() - start
                ok = math.isfinite(metrics["loss"])
                del pipe, policy, model
                return {
                    "ok": ok,
                    "parameters": params,
                    "step_seconds": round(seconds, 3),
                    "peak_memory_mb": peak.get("mb"),
                }

            self.record(f"scale/{label}", one_step)
            if self.cases[-1].get("error", "").startswith("OutOfMemoryError"):
                self.cases[-1].update(ok=True, fits=False)  # the sweep's end, not a failure
                break
            if self.device == "cuda":
                torch.cuda.empty_cache()

    @contextlib.contextmanager
    def peak_memory(self):
        peak: dict = {}
        if self.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        try:
            yield peak
        finally:
            if self.device == "cuda":
                peak["mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)


def fresh_folder(parent: Path) -> Path:
    """A new folder under ``parent`` for this run, so a rerun on the same machine never meets an earlier run's."""
    parent.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path(tempfile.mkdtemp(prefix=f"run-{stamp}-", dir=parent))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(tempfile.gettempdir()) / "morl-gpu-check",
        help="parent folder: each run writes into a new subfolder of its own, named in the summary line",
    )
    parser.add_argument("--dry-run", action="store_true", help="the same script path on the CPU, 2 steps a case")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--skip-scale", action="store_true", help="leave out the random-init model sweep")
    parser.add_argument("--only", default="", help="comma-separated case names (or prefixes) to run; default: all")
    args = parser.parse_args()
    device = "cpu" if args.dry_run else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        print("no CUDA GPU here: use --dry-run for the CPU")
        return 2
    os.chdir(ROOT)
    out = fresh_folder(args.out)
    check = Check(device, out, 2 if args.dry_run else args.steps, only=[o for o in args.only.split(",") if o])
    name = torch.cuda.get_device_name(0) if device == "cuda" else "cpu (dry run)"
    print(f"morl GPU check on {name}, torch {torch.__version__}", flush=True)
    check.record("device_tests", check.device_tests)
    dtypes = ("float32", "bfloat16")
    for controller, spec in FAMILIES.items():
        for dtype in dtypes:
            check.record(f"family/{controller}/{dtype}", check.train, f"{controller}-{dtype}", spec, ALGO, dtype)
    check.record("lora", check.lora)
    for axis, (algo, train) in LOSS_AXES.items():
        check.record(f"loss/{axis}", check.train, f"loss-{axis}", CTWA if axis != "dapo" else "fixed", algo, **train)
    check.record("resume", check.resume)
    check.record("ddp", check.ddp)
    check.record("vllm", check.vllm)
    if not args.skip_scale:
        check.scale(DRY_SCALE if args.dry_run else SCALE)
    failed = [c["case"] for c in check.cases if not c["ok"]]
    summary = {
        "device": name,
        "torch": torch.__version__,
        "passed": len(check.cases) - len(failed),
        "failed": len(failed),
        "cases": check.cases,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(f"summary: {out / 'summary.json'}")
    print(f"{summary['passed']} passed, {summary['failed']} failed" + (f": {failed}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
