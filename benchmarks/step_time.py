"""What morl's machinery costs on top of a fixed-weights step, measured on the same batches.

Every variant trains its own copy of the same model through the real ``Pipeline.step``, but the rollout is done
once per step (by the baseline's policy) and replayed to all of them, so each variant's time is its step minus
the shared rollout; a step is then ``median(rollout) + median(rest)``. Variants run in a rotating order per step,
so a loaded machine slows them alike. Ratios are to ``fixed`` (fixed equal weights, default diagnostics):

- ``fixed-nodiag``: the same without diagnostics, so ``fixed / fixed-nodiag`` is what the always-on diagnostics cost;
- ``ctwa``: CTWA (one no-grad forward pass of the updated policy + the covariance update), the pass inline: with the
  rollout replayed, nothing here can run beside it; ``benchmarks/overlap.py`` measures the pass in the helper process
  beside the next rollout (``train.overlap_after_update``);
- ``ctwa_auto``: CTWA on the interference forecast (``cookbook/recipes/ctwa_auto.yaml``: one forward pass every
  3 steps instead of one after every update);
- ``mgda`` / ``gradnorm`` with ``params: last_layers:1`` (cheap) and ``params: all`` (exact Gram matrix), with the
  M = 3 per-objective gradients from M backward passes or one batched (``is_grads_batched``) pass.

    python benchmarks/step_time.py [--steps 20] [--variants fixed,ctwa,...]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

from morl.evaluation import split_examples
from morl.pipeline import Pipeline
from morl.policy import Policy
from morl.recipe import build_components, load_data, load_recipe
from morl.trainer import seed_everything

VARIANTS: dict[str, tuple[dict | str, bool]] = {  # name -> (controller, diagnostics)
    "fixed": ("fixed", True),
    "fixed-nodiag": ("fixed", False),
    "ctwa": ("ctwa", True),
    "ctwa_auto": (  # cookbook/recipes/ctwa_auto.yaml: CTWA on the forecast (every 3 steps), no after-update pass
        {"name": "ctwa", "signal": "forecast", "targets": 0.0, "forecast_every": 3, "lr": 0.3, "ema": 1.0},
        True,
    ),
    "mgda last_layers:1": ({"name": "mgda", "params": "last_layers:1"}, True),
    "mgda last_layers:1 batched": ({"name": "mgda", "params": "last_layers:1", "batched": True}, True),
    "mgda all": ({"name": "mgda", "params": "all"}, True),
    "mgda all batched": ({"name": "mgda", "params": "all", "batched": True}, True),
    "gradnorm last_layers:1": ({"name": "gradnorm", "params": "last_layers:1"}, True),
    "gradnorm all": ({"name": "gradnorm", "params": "all"}, True),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="cookbook/recipes/quickstart_linear.yaml")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated names from the list above")
    args = parser.parse_args()

    torch.set_num_threads(1)
    recipe = load_recipe(args.recipe)
    train, _ = load_data(recipe)
    seed_everything(0)
    base = Policy.from_pretrained(**recipe.policy.model_dump())
    names = ["fixed", *[n for n in args.variants.split(",") if n != "fixed"]]
    pipes: dict[str, Pipeline] = {}
    for name in names:
        controller, diagnostics = VARIANTS[name]
        components = build_components(recipe.model_copy(update={"controller": controller}))
        policy = Policy(copy.deepcopy(base.model), base.tokenizer, base.config)
        config = recipe.train.model_copy(update={"progress": False})
        pipes[name] = Pipeline(policy=policy, config=config, diagnostics=diagnostics, **components)

    rest: dict[str, list[float]] = {name: [] for name in pipes}
    parts: dict[str, dict[str, list[float]]] = {
        name: {"update": [], "controller": [], "diagnostics": []} for name in pipes
    }
    rollouts: list[float] = []
    gen = pipes["fixed"]
    generate = gen.rollout.generate  # kept: the pipelines' own ``generate`` is replaced by a replay below
    for step in range(args.warmup + args.steps):
        examples = gen.next_examples(train)
        gen.policy.model.eval()
        start = time.perf_counter()
        batch = generate(gen.policy, *split_examples(examples), gen.config.group_size)
        rollout = time.perf_counter() - start
        order = names[step % len(names) :] + names[: step % len(names)]
        for name in order:
            pipe = pipes[name]
            pipe.rollout.generate = lambda *a, _batch=batch, **k: copy.deepcopy(_batch)  # replay the shared rollout
            start = time.perf_counter()
            _, metrics = pipe.step(examples)
            elapsed = time.perf_counter() - start - metrics["timing/rollout"]
            if step >= args.warmup:
                rest[name].append(elapsed)
                for part, values in parts[name].items():
                    values.append(metrics.get(f"timing/{part}", 0.0))
        if step >= args.warmup:
            rollouts.append(rollout)

    med = statistics.median
    steps = {name: med(rollouts) + med(times) for name, times in rest.items()}
    print(
        f"{args.recipe}: {recipe.train.prompts_per_step} prompts x {recipe.train.group_size} completions, "
        f"{args.steps} steps, 1 thread; median seconds; rollout (shared) {med(rollouts):.4f}"
    )
    print(f"{'variant':<27}{'update':>8}{'control':>8}{'diagn.':>8}{'rest':>8}{'step':>8}{'/ fixed':>8}{'paired':>8}")
    for name in names:
        # per step, on the same batch: (rollout + this variant's rest) / (rollout + fixed's rest)
        paired = med((r + a) / (r + b) for r, a, b in zip(rollouts, rest[name], rest["fixed"]))
        cells = [med(parts[name][part]) for part in ("update", "controller", "diagnostics")]
        cells += [med(rest[name]), steps[name], steps[name] / steps["fixed"], paired]
        print(f"{name:<27}" + "".join(f"{value:>8.4f}" for value in cells[:5]) + f"{cells[5]:>8.3f}{cells[6]:>8.3f}")
    if "fixed-nodiag" in steps:
        print(f"always-on diagnostics: fixed / fixed-nodiag = {steps['fixed'] / steps['fixed-nodiag']:.3f}")
        # the forecast runs every few steps, which a median leaves out: means count it
        mean = statistics.mean
        means = {name: mean(rollouts) + mean(times) for name, times in rest.items()}
        print("mean step (periodic work such as the forecast included), against fixed weights without diagnostics:")
        for name in names:
            print(f"  {name:<25}{means[name]:.4f} s  {means[name] / means['fixed-nodiag']:.3f}")


if __name__ == "__main__":
    main()
