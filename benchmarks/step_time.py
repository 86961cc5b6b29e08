"""Where a quickstart step's time goes, and what CTWA adds on top of fixed weights.

Both controllers train their own copy of the same model on the *same* batches: each step's rollout
and rewards are computed once and fed to both, so the only difference is the controller's work
(CTWA: one forward pass of the updated policy + the covariance update). Runs alternate A/B per step.

    python benchmarks/step_time.py [--steps 30] [--recipe cookbook/recipes/quickstart.yaml]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

from morl.controllers import WeightTarget
from morl.pipeline import Pipeline, seed_everything, split_examples
from morl.policy import Policy
from morl.recipe import build_components, load_data, load_recipe
from morl.rewards import score_rewards


def update_on(pipe: Pipeline, batch) -> dict[str, float]:
    """The post-reward part of ``Pipeline.step``, timed in the same four buckets."""
    out = {}
    t0 = time.perf_counter()
    pipe.controller.before_update(batch)
    pipe._advantages(batch)
    out["controller"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    combine = pipe.controller.combine_losses if pipe.controller.applies_to == WeightTarget.GRADIENT else None
    pipe.algo.update(pipe.policy, pipe.optimizer, batch, combine=combine)
    out["update"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    if "clipped_weights" in pipe.needs:
        with torch.no_grad():
            new_logp, _ = pipe.policy.token_logprobs(batch.input_ids, batch.attention_mask, batch.prompt_width)
        batch.clipped_weights = pipe.algo.clipped_advantage_weight(new_logp, batch)
    pipe.controller.after_update(batch)
    out["controller"] += time.perf_counter() - t0
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="cookbook/recipes/quickstart.yaml")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()

    torch.set_num_threads(1)
    recipe = load_recipe(args.recipe)
    train, _ = load_data(recipe)
    seed_everything(0)
    base = Policy.from_pretrained(**recipe.policy.model_dump())
    pipes = {}
    for label, controller in (("fixed", "fixed"), ("ctwa", recipe.controller)):
        components = build_components(recipe.model_copy(update={"controller": controller}))
        policy = Policy(copy.deepcopy(base.model), base.tokenizer, base.config)
        pipes[label] = Pipeline(policy=policy, config=recipe.train.model_copy(update={"progress": False}), **components)

    times: dict[str, dict[str, list[float]]] = {k: {"controller": [], "update": []} for k in pipes}
    rollout_t, reward_t = [], []
    gen = pipes["fixed"]
    for step in range(args.warmup + args.steps):
        examples = gen._next_examples(train)
        t0 = time.perf_counter()
        batch = gen.rollout.generate(gen.policy, *split_examples(examples), gen.config.group_size)
        t1 = time.perf_counter()
        batch.rewards, _ = score_rewards(
            gen.rewards,
            batch.prompts,
            batch.completions,
            batch.columns,
            training=True,
            completion_lengths=batch.completion_lengths.tolist(),
        )
        t2 = time.perf_counter()
        order = ("fixed", "ctwa") if step % 2 == 0 else ("ctwa", "fixed")
        for label in order:
            timing = update_on(pipes[label], copy.copy(batch))
            if step >= args.warmup:
                for key, value in timing.items():
                    times[label][key].append(value)
        if step >= args.warmup:
            rollout_t.append(t1 - t0)
            reward_t.append(t2 - t1)

    med = statistics.median
    print(
        f"recipe {args.recipe}: {recipe.train.prompts_per_step} prompts x {recipe.train.group_size} completions, "
        f"{args.steps} measured steps, 1 thread, median seconds"
    )
    print(f"{'part':<12}{'fixed':>10}{'ctwa':>10}")
    print(f"{'rollout':<12}{med(rollout_t):>10.4f}{med(rollout_t):>10.4f}")
    print(f"{'reward':<12}{med(reward_t):>10.4f}{med(reward_t):>10.4f}")
    totals = {}
    for label in pipes:
        totals[label] = med(rollout_t) + med(reward_t) + med(times[label]["update"]) + med(times[label]["controller"])
    for part in ("update", "controller"):
        print(f"{part:<12}{med(times['fixed'][part]):>10.4f}{med(times['ctwa'][part]):>10.4f}")
    print(f"{'step':<12}{totals['fixed']:>10.4f}{totals['ctwa']:>10.4f}")
    print(
        f"CTWA step time / fixed step time = {totals['ctwa'] / totals['fixed']:.3f} "
        f"(overhead {100 * (totals['ctwa'] / totals['fixed'] - 1):+.1f}%)"
    )


if __name__ == "__main__":
    main()
