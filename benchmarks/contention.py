"""How much a second busy process slows this one's rollout: the ceiling on what a helper process can hide here.

The after-update pass beside the next rollout (``train.overlap_after_update``) is free only if the second core is
really free. This times the quickstart's rollout alone and with another process busy on the other core, in rounds
that alternate the three on the same prompts and draws: a pure-Python loop (no memory traffic: what remains is the
cores sharing their execution units, or the host taking time from a virtual machine), and a loop of 256×256 matrix
products (what the helper's forward pass does).

    python benchmarks/contention.py [--rounds 12]
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import time

import torch

from morl.evaluation import split_examples
from morl.pipeline import Pipeline
from morl.policy import Policy
from morl.recipe import build_components, load_data, load_recipe


def python_loop(stop) -> None:
    total = 0
    while not stop.is_set():
        for i in range(10_000):
            total += i


def matrix_products(stop) -> None:
    torch.set_num_threads(1)
    a = torch.randn(256, 256)
    while not stop.is_set():
        a = torch.tanh(a @ a)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="cookbook/recipes/quickstart.yaml")
    parser.add_argument("--rounds", type=int, default=12)
    args = parser.parse_args()

    torch.set_num_threads(1)
    recipe = load_recipe(args.recipe)
    train_data, _ = load_data(recipe)
    policy = Policy.from_pretrained(**recipe.policy.model_dump())
    config = recipe.train.model_copy(update={"progress": False, "overlap_after_update": False})
    pipe = Pipeline(policy=policy, config=config, **build_components(recipe))
    for _ in range(3):  # a few updates: completions of a trained policy's length
        pipe.step(pipe.next_examples(train_data))
    rollout, k = pipe.parts_.rollout, recipe.train.group_size
    context = multiprocessing.get_context("fork")
    busy = {"alone": None, "a Python loop beside it": python_loop, "matrix products beside it": matrix_products}
    times: dict[str, list[float]] = {name: [] for name in busy}
    for _ in range(args.rounds):
        prompts, columns = split_examples(pipe.next_examples(train_data))
        state = torch.random.get_rng_state()
        for name, target in busy.items():
            stop, other = context.Event(), None
            if target is not None:
                other = context.Process(target=target, args=(stop,), daemon=True)
                other.start()
                time.sleep(0.2)  # running before the rollout starts
            torch.random.set_rng_state(state)  # the same draws each time
            start = time.perf_counter()
            rollout.generate(policy, prompts, columns, k)
            times[name].append(time.perf_counter() - start)
            if other is not None:
                stop.set()
                other.join()
    alone = statistics.median(times["alone"])
    print(f"{args.recipe}: the rollout, {args.rounds} rounds, 1 thread; medians")
    for name, values in times.items():
        print(f"  {name:<28}{statistics.median(values):.4f} s  {statistics.median(values) / alone:.3f}")


if __name__ == "__main__":
    main()
