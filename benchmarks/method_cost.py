"""What CTWA, the interference forecast and the diagnostics cost together on top of a fixed-weights step without
diagnostics, on the same training run, the variants' steps interleaved in one process.

Fits a minute apart differ by ±5–10% on a shared 2-core machine, more than the 5% this has to resolve, so the variants
here advance together, block by block, in one process: each has its own copy of the model and its own state of
torch's, NumPy's and Python's generators, and runs ``--block`` real steps (its own rollout, scoring, update and
bookkeeping) before the next variant runs the same steps. Every variant trains on the same batches: ``ctwa`` (the
quickstart's CTWA recipe with the default diagnostics and forecast, its after-update pass in the helper process
beside the next rollout) leads each block, and the others replay the weights it used, step by step:

- ``fixed-nodiag``: fixed weights replaying CTWA's, no diagnostics (and so no forecast): the reference;
- ``fixed``: the same with the default diagnostics and forecast: what the diagnostics and forecast cost;
- ``ctwa-inline`` (``--inline``): CTWA with its pass at the end of each step, in this process.

The helper's last pass of a block is waited for (the controller learns from it) before the next variant starts, and
that wait is counted in CTWA's block: the first step of every block then finds no pass left beside its rollout, and
the last pays its pass whole, so the overlapped CTWA is charged *more* than in an uninterrupted fit, by up to one
pass (0.03–0.045 s here) per block. The ratio of each block's time to the reference's on the same steps is the
measurement; reported are the median and the mean of those ratios and the ratio of the summed times.

    python benchmarks/method_cost.py [--steps 200] [--block 10] [--inline]
"""

from __future__ import annotations

import argparse
import copy
import random
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch

from morl.controllers.base import RewardLevel
from morl.pipeline import Pipeline
from morl.policy import Policy
from morl.recipe import build_components, load_data, load_recipe
from morl.stages import Updated
from morl.trainer import seed_everything

PHASES = ("rollout", "reward", "forecast", "controller", "update", "diagnostics", "step_time")


class FollowWeights(RewardLevel):
    """Fixed weights that follow the leading variant's, step by step, as it records them."""

    name = "follow_weights_benchmark"
    recorded: ClassVar[list[list[float]]] = []  # grows as the leading variant steps

    def initial_state(self, objectives: list[str]) -> None:
        self.step_ = 0

    def weights(self) -> torch.Tensor:
        return torch.tensor(self.recorded[min(self.step_, len(self.recorded) - 1)], dtype=torch.float32)

    def after_update(self, updated: Updated) -> None:
        self.step_ += 1


@dataclass
class Variant:
    name: str
    pipe: Pipeline
    rng: tuple[Any, Any, Any]
    blocks: list[float] = field(default_factory=list)
    rewards: list[float] = field(default_factory=list)
    phases: dict[str, list[float]] = field(default_factory=lambda: {p: [] for p in PHASES})

    def run_block(self, train_data: list[dict], steps: int, objectives: list[str]) -> list[list[float]]:
        """``steps`` steps on this variant's own generators; the block's time (with any pending pass settled)."""
        torch.random.set_rng_state(self.rng[0])
        np.random.set_state(self.rng[1])
        random.setstate(self.rng[2])
        weights = []
        start = time.perf_counter()
        for _ in range(steps):
            _, metrics = self.pipe.step(self.pipe.next_examples(train_data))
            weights.append([metrics[f"weights/{o}"] for o in objectives])
            self.rewards.append(metrics[f"rewards/{objectives[0]}/mean"])
            for phase, values in self.phases.items():
                values.append(metrics.get(phase if phase == "step_time" else f"timing/{phase}", 0.0))
        self.pipe.trainer_.settle()  # the block's last after-update pass belongs to the block
        self.blocks.append(time.perf_counter() - start)
        self.rng = (torch.random.get_rng_state(), np.random.get_state(), random.getstate())
        return weights


def build(recipe, base: Policy, name: str) -> Pipeline:
    components = build_components(recipe)
    if name.startswith("fixed"):
        components["controller"] = FollowWeights()
    overlap = {"ctwa": True, "ctwa-inline": False}.get(name, "auto")
    config = recipe.train.model_copy(update={"progress": False, "overlap_after_update": overlap})
    policy = Policy(copy.deepcopy(base.model), base.tokenizer, base.config)
    return Pipeline(policy=policy, config=config, diagnostics=name != "fixed-nodiag", **components)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="cookbook/recipes/quickstart.yaml")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--block", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=1, help="blocks left out of the figures")
    parser.add_argument("--inline", action="store_true", help="also CTWA with its pass inline")
    args = parser.parse_args()

    torch.set_num_threads(1)
    recipe = load_recipe(args.recipe, [f"train.steps={args.steps}"])
    objectives = [r if isinstance(r, str) else r["name"] for r in recipe.rewards]
    train_data, _ = load_data(recipe)
    base = Policy.from_pretrained(**recipe.policy.model_dump())
    names = ["ctwa", "fixed-nodiag", "fixed", *(["ctwa-inline"] if args.inline else [])]
    recorded = FollowWeights.recorded
    seed_everything(recipe.train.seed)
    rng = (torch.random.get_rng_state(), np.random.get_state(), random.getstate())
    variants = {name: Variant(name, build(recipe, base, name), rng) for name in names}
    lead, followers = variants["ctwa"], [variants[n] for n in names[1:]]
    with lead.pipe.trainer_.overlapped_after_update() as overlap:
        assert overlap is not None and overlap.process.ready(wait_s=120), "the helper process did not start"
        blocks = args.steps // args.block
        for b in range(blocks):
            recorded += lead.run_block(train_data, args.block, objectives)
            for v in followers[b % len(followers) :] + followers[: b % len(followers)]:
                v.run_block(train_data, args.block, objectives)
            print(f"block {b}: " + ", ".join(f"{v.name} {v.blocks[-1]:.3f} s" for v in variants.values()), flush=True)
        served = overlap.process.served

    same = all(v.rewards == lead.rewards for v in followers)
    ref = variants["fixed-nodiag"].blocks[args.warmup :]
    steps = (blocks - args.warmup) * args.block
    print(
        f"\n{args.recipe}: {blocks} blocks of {args.block} steps interleaved in one process, 1 thread, the first "
        f"{args.warmup} left out; same training in every variant: {same}; passes the helper computed: {served}"
    )
    print(f"{'variant':<14}{'s/step':>9}{'/ ref: median':>15}{'mean':>8}{'sums':>8}{'min':>8}{'max':>8}")
    for v in variants.values():
        mine = v.blocks[args.warmup :]
        ratios = [a / r for a, r in zip(mine, ref)]
        cells = [statistics.median(ratios), statistics.mean(ratios), sum(mine) / sum(ref), min(ratios), max(ratios)]
        row = f"{v.name:<14}{sum(mine) / steps:>9.4f}{cells[0]:>15.3f}"
        print(row + "".join(f"{c:>8.3f}" for c in cells[1:]))
    print("mean seconds per step and phase over the same steps: " + ", ".join(PHASES))
    for v in variants.values():
        means = [statistics.mean(v.phases[p][args.warmup * args.block :]) for p in PHASES]
        print(f"  {v.name:<14}" + "".join(f"{m:>9.4f}" for m in means))


if __name__ == "__main__":
    main()
