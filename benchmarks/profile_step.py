"""Where one quickstart step's time goes: the pipeline's own phase timings, then the top operators.

Runs the recipe's pipeline for ``--warmup`` steps, then ``--steps`` steps, and prints the median seconds of each
phase (rollout, reference log-probs, reward, forecast, controller, update, diagnostics) with its share of the step,
the rollout's cost per decoding step, and the torch profiler's top operators over ``--profile`` more steps.

    python benchmarks/profile_step.py [--recipe cookbook/recipes/quickstart.yaml] [--steps 10]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.profiler import ProfilerActivity, profile

from morl.recipe import load_data, load_recipe, pipeline_from_recipe
from morl.trainer import seed_everything

PHASES = ("rollout", "reference", "reward", "forecast", "controller", "update", "diagnostics")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="cookbook/recipes/quickstart.yaml")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--profile", type=int, default=3, help="steps under the torch profiler")
    parser.add_argument("--top", type=int, default=12)
    args = parser.parse_args()

    torch.set_num_threads(1)
    recipe = load_recipe(args.recipe, ["train.progress=false"])
    train, _ = load_data(recipe)
    pipe = pipeline_from_recipe(recipe)
    seed_everything(recipe.train.seed)
    times: dict[str, list[float]] = {phase: [] for phase in (*PHASES, "step")}
    decode_steps, tokens = [], []
    for step in range(args.warmup + args.steps):
        start = time.perf_counter()
        record, metrics = pipe.step(pipe.next_examples(train))
        batch = record.rollout
        if step >= args.warmup:
            times["step"].append(time.perf_counter() - start)
            for phase in PHASES:
                times[phase].append(metrics.get(f"timing/{phase}", 0.0))
            decode_steps.append(batch.completion_mask.shape[1])
            tokens.append(int(batch.completion_mask.sum()))

    med = statistics.median
    step = med(times["step"])
    print(f"{args.recipe}: {args.steps} steps, 1 thread, median seconds")
    for phase in (*PHASES, "step"):
        print(f"{phase:<12}{med(times[phase]):>9.4f}{100 * med(times[phase]) / step:>7.1f}%")
    per_decode = med(r / d for r, d in zip(times["rollout"], decode_steps))
    print(
        f"rollout: {med(decode_steps):.0f} decoding steps for {med(tokens):.0f} tokens over "
        f"{batch.size} rows; {1000 * per_decode:.2f} ms per decoding step"
    )

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.profile):
            pipe.step(pipe.next_examples(train))
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.top))


if __name__ == "__main__":
    main()
