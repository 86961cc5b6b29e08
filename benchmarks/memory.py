"""Peak memory (RSS): the quickstart, and how large a model one training step fits in.

``quickstart`` runs ``morl fit`` on a recipe in a child process and reports its peak RSS and wall time.
``sizes`` builds random-init Llama models of growing size locally (no hub; the TinyMath character tokenizer, so
a vocabulary of 99 and parameters almost all in the blocks) and runs one training step of the quickstart's shape
(8 prompts × 8 completions, 64 new tokens, GRPO, AdamW in float32, fixed weights) in a fresh process per size.

    python benchmarks/memory.py quickstart [--recipe cookbook/recipes/quickstart.yaml]
    python benchmarks/memory.py sizes --sizes 512x8,1024x16 [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def one_step(hidden: int, layers: int, threads: int) -> dict:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from morl.pipeline import Pipeline
    from morl.policy import Policy
    from morl.recipe import build_components, load_data, load_recipe
    from morl.tinymath.tokenizer import build_tokenizer

    torch.set_num_threads(threads)
    tokenizer = build_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=64 * round(8 * hidden / 3 / 64),
        num_hidden_layers=layers,
        num_attention_heads=max(1, hidden // 64),
        num_key_value_heads=max(1, hidden // 64),
        max_position_embeddings=256,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    recipe = load_recipe(ROOT / "cookbook/recipes/quickstart_linear.yaml", ["train.progress=false"])
    train, _ = load_data(recipe)
    pipe = Pipeline(policy=Policy(model, tokenizer), config=recipe.train, **build_components(recipe))
    start = time.perf_counter()
    batch = pipe.step(pipe.next_examples(train))[0].rollout
    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        "step_s": time.perf_counter() - start,
        "tokens": int(batch.completion_mask.sum()),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def quickstart(recipe: str) -> None:
    with tempfile.TemporaryDirectory() as out:
        command = [sys.executable, "-m", "morl", "fit", recipe, "--set", f"train.output_dir={out}"]
        command += ["--set", "train.progress=false"]
        start = time.perf_counter()
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
        seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"morl fit failed:\n{done.stderr[-3000:]}")
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # the largest child: morl itself
    print(f"{recipe}: peak RSS {peak:.0f} MB, wall {seconds:.1f} s (evaluation, checkpoints and start-up included)")


def sizes(spec: str, threads: int) -> None:
    print(f"{'hidden x layers':<16}{'parameters':>14}{'peak RSS (MB)':>15}{'step (s)':>10}")
    for item in spec.split(","):
        command = [sys.executable, __file__, "worker", "--size", item, "--threads", str(threads)]
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
        lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
        if done.returncode != 0 or not lines:
            print(f"{item:<16} did not complete one step (exit {done.returncode}): {done.stderr[-300:]!r}")
            break
        r = json.loads(lines[-1][len("RESULT ") :])
        print(f"{item:<16}{r['parameters']:>14,}{r['peak_rss_mb']:>15.0f}{r['step_s']:>10.1f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["quickstart", "sizes", "worker"])
    parser.add_argument("--recipe", default="cookbook/recipes/quickstart.yaml")
    parser.add_argument("--sizes", default="256x4,512x8,1024x12", help="comma-separated HIDDENxLAYERS")
    parser.add_argument("--size", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if args.what == "quickstart":
        quickstart(args.recipe)
    elif args.what == "sizes":
        sizes(args.sizes, args.threads)
    else:
        hidden, layers = (int(x) for x in args.size.split("x"))
        print("RESULT " + json.dumps(one_step(hidden, layers, args.threads)))


if __name__ == "__main__":
    main()
