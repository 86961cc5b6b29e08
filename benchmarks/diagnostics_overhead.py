"""What the always-on diagnostics cost on the quickstart step (fixed weights, so nothing else pays for them).

Three pipelines train their own copy of the same model on the *same* batches (rollout and rewards computed once
per step and shared): ``off`` (no diagnostics), ``default`` (score covariances + alarm; the clipped-weight
covariances only when a component already computes the weights) and ``clipped`` (``clipped_weights: true``:
one forward pass of the updated policy per step, plus the clipped-mass diagnostics). Order rotates per step.

    python benchmarks/diagnostics_overhead.py [--steps 30] [--recipe cookbook/recipes/quickstart_linear.yaml]
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

VARIANTS = {"off": False, "default": {}, "clipped": {"clipped_weights": True}}


def train_on(pipe: Pipeline, batch) -> tuple[float, float]:
    """Everything in ``Pipeline.step`` after the rewards, including the callbacks; returns seconds (all, callbacks)."""
    t0 = time.perf_counter()
    pipe.controller.before_update(batch)
    pipe._advantages(batch)
    combine = pipe.controller.combine_losses if pipe.controller.applies_to == WeightTarget.GRADIENT else None
    update = pipe.algo.update(pipe.policy, pipe.optimizer, batch, combine=combine)
    if "clipped_weights" in pipe.needs:
        with torch.no_grad():
            new_logp, _ = pipe.policy.token_logprobs(batch.input_ids, batch.attention_mask, batch.prompt_width)
        batch.clipped_weights = pipe.algo.clipped_advantage_weight(new_logp, batch)
        batch.new_logprobs = new_logp
    pipe.controller.after_update(batch)
    pipe.step_count += 1
    metrics = pipe._step_metrics(batch, update, {})
    t1 = time.perf_counter()
    for cb in pipe.callbacks:
        cb.on_step_end(pipe.step_count, batch, metrics)
    t2 = time.perf_counter()
    return t2 - t0, t2 - t1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="cookbook/recipes/quickstart_linear.yaml")
    parser.add_argument("--model", default=None, help="override policy.model (e.g. a random model directory)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()

    torch.set_num_threads(1)
    overrides = [f"policy.model={args.model}"] if args.model else []
    recipe = load_recipe(args.recipe, overrides)
    train, _ = load_data(recipe)
    seed_everything(0)
    base = Policy.from_pretrained(**recipe.policy.model_dump())
    pipes = {}
    for label, diagnostics in VARIANTS.items():
        components = build_components(recipe)
        policy = Policy(copy.deepcopy(base.model), base.tokenizer, base.config)
        config = recipe.train.model_copy(update={"progress": False})
        pipes[label] = Pipeline(policy=policy, config=config, diagnostics=diagnostics, **components)

    times: dict[str, list[float]] = {k: [] for k in pipes}
    callback_times: dict[str, list[float]] = {k: [] for k in pipes}
    shared: list[float] = []
    lengths: list[float] = []
    gen = pipes["off"]
    for step in range(args.warmup + args.steps):
        examples = gen._next_examples(train)
        t0 = time.perf_counter()
        batch = gen.rollout.generate(gen.policy, *split_examples(examples), gen.config.group_size)
        batch.objectives = gen.objectives
        batch.rewards, _ = score_rewards(
            gen.rewards,
            batch.prompts,
            batch.completions,
            batch.columns,
            training=True,
            completion_lengths=batch.completion_lengths.tolist(),
        )
        elapsed = time.perf_counter() - t0
        labels = list(pipes)
        order = labels[step % 3 :] + labels[: step % 3]
        for label in order:
            seconds, in_callbacks = train_on(pipes[label], copy.copy(batch))
            if step >= args.warmup:
                times[label].append(seconds)
                callback_times[label].append(in_callbacks)
        if step >= args.warmup:
            shared.append(elapsed)
            lengths.append(float(batch.completion_lengths.float().mean()))

    med = statistics.median
    print(
        f"{recipe.policy.model}: {recipe.train.prompts_per_step} prompts x {recipe.train.group_size} completions, "
        f"mean completion length {statistics.mean(lengths):.1f} tokens, {args.steps} steps, 1 thread, median s"
    )
    base_step = med(shared) + med(times["off"])
    print(f"rollout+reward {med(shared):.4f}")
    for label in pipes:
        step_time = med(shared) + med(times[label])
        overhead = 100 * (step_time / base_step - 1)
        print(
            f"{label:<8} update+rest {med(times[label]):.4f}  step {step_time:.4f}  overhead {overhead:+.1f}%  "
            f"(diagnostics callback alone {med(callback_times[label]):.4f})"
        )


if __name__ == "__main__":
    main()
