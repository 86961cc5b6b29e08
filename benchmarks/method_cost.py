"""What CTWA, the interference forecast and the diagnostics cost together on top of a fixed-weights step without
diagnostics, on the same training run, the variants' steps interleaved in one process.

Fits a minute apart differ by ±5–10% on a shared 2-core machine, more than the 5% this has to resolve, so the variants
here advance together, block by block, in one process: each has its own copy of the model and its own state of
torch's, NumPy's and Python's generators, and runs ``--block`` real steps (its own rollout, scoring, update and
bookkeeping) before the next variant runs the same steps. Every variant trains on the same batches: an untimed CTWA
run without diagnostics leads each block, and the timed variants follow in an order that rotates from block to block
(so none always runs first after the leader), the fixed-weights ones replaying the weights CTWA used, step by step:

- ``ctwa``: the quickstart's CTWA recipe with the default diagnostics and forecast, its after-update pass in the
  helper process beside the next rollout (the default on a CPU with a spare core);
- ``fixed-nodiag``: fixed weights replaying CTWA's, no diagnostics (and so no forecast): the reference;
- ``fixed``: the same with the default diagnostics and forecast: what the diagnostics and forecast cost;
- ``ctwa-inline``: CTWA with its pass at the end of each step, in this process;
- ``fixed-nodiag-again``: a second reference, to see what the method's spread is with nothing to find (an A/A test).

The helper's last pass of a block is waited for (the controller learns from it) before the next variant starts, so it
never runs beside another variant's steps. The first step of a block then finds no pass beside its rollout (the
overlap's remainder missing: a little low) and the block ends with a whole pass instead of that remainder (high), so
each block is measured both ways, its steps alone and with the wait: an uninterrupted fit lies between. The ratio of
each block's time to the reference's on the same steps is the measurement: reported are the mean of those ratios with
a bootstrap interval, and their median.

    python benchmarks/method_cost.py [--steps 200] [--block 10] [--variants ctwa,fixed-nodiag,fixed,ctwa-inline]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import random
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from replay import ReplayWeights, load_job

from morl.pipeline import Pipeline
from morl.policy import Policy
from morl.recipe import build_components
from morl.trainer import seed_everything

PHASES = ("rollout", "reward", "forecast", "controller", "update", "diagnostics", "step_time")


@dataclass
class Variant:
    name: str
    pipe: Pipeline
    rng: tuple[Any, Any, Any]
    blocks: list[float] = field(default_factory=list)  # each block's time, its last pass waited for
    stepped: list[float] = field(default_factory=list)  # each block's steps alone (``step_time``)
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
        self.stepped.append(sum(self.phases["step_time"][-steps:]))
        self.rng = (torch.random.get_rng_state(), np.random.get_state(), random.getstate())
        return weights


def build(recipe, base: Policy, name: str) -> Pipeline:
    components = build_components(recipe)
    if name.startswith("fixed"):
        components["controller"] = ReplayWeights()
    overlap = {"ctwa": True, "ctwa-inline": False, "record": False}.get(name, "auto")
    config = recipe.train.model_copy(update={"progress": False, "overlap_after_update": overlap})
    policy = Policy(copy.deepcopy(base.model), base.tokenizer, base.config)
    diagnostics = not name.startswith("fixed-nodiag") and name != "record"
    return Pipeline(policy=policy, config=config, diagnostics=diagnostics, **components)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="cookbook/recipes/quickstart.yaml")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--block", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=1, help="blocks left out of the figures")
    parser.add_argument(
        "--variants", default="ctwa,fixed-nodiag,fixed,ctwa-inline", help="comma-separated, from the list above"
    )
    args = parser.parse_args()

    torch.set_num_threads(1)
    recipe, objectives, train_data, base = load_job(args.recipe, args.steps)
    names = ["fixed-nodiag", *[n for n in args.variants.split(",") if n != "fixed-nodiag"]]
    recorded = ReplayWeights.recorded
    seed_everything(recipe.train.seed)
    rng = (torch.random.get_rng_state(), np.random.get_state(), random.getstate())
    lead = Variant("record", build(recipe, base, "record"), rng)
    variants = {name: Variant(name, build(recipe, base, name), rng) for name in names}
    timed = list(variants.values())
    with contextlib.ExitStack() as stack:
        helpers = [stack.enter_context(v.pipe.trainer_.overlapped_after_update()) for v in timed]
        for helper in filter(None, helpers):
            assert helper.process.ready(wait_s=120), "the helper process did not start"
        blocks = args.steps // args.block
        for b in range(blocks):
            recorded += lead.run_block(train_data, args.block, objectives)
            for v in timed[b % len(timed) :] + timed[: b % len(timed)]:
                v.run_block(train_data, args.block, objectives)
            print(f"block {b}: " + ", ".join(f"{v.name} {v.blocks[-1]:.3f} s" for v in timed), flush=True)
        served = sum(helper.process.served for helper in filter(None, helpers))

    same = all(v.rewards == lead.rewards for v in timed)
    report(args, variants, blocks, same, served)


def report(args, variants: dict[str, Variant], blocks: int, same: bool, served: int) -> None:
    """Per variant, the ratio of its blocks to the reference's on the same steps, two ways: its steps alone (CTWA's
    first step of a block finds no pass beside its rollout: a little low) and with the block's last pass waited for
    (that pass whole instead of its remainder: high). The truth for an uninterrupted fit lies between."""
    skip = args.warmup
    ref = variants["fixed-nodiag"]
    steps = (blocks - skip) * args.block
    print(
        f"\n{args.recipe}: {blocks} blocks of {args.block} steps interleaved in one process, 1 thread, the first "
        f"{skip} left out; same training in every variant: {same}; passes the helper computed: {served}"
    )
    print("ratio of each block to the reference's (fixed-nodiag) on the same steps; mean [bootstrap 95%], median")
    print(f"{'variant':<14}{'s/step':>9}{'steps alone':>28}{'last pass waited for':>28}")
    rng = np.random.default_rng(0)
    for v in variants.values():
        cells = []
        for mine, theirs in ((v.stepped, ref.stepped), (v.blocks, ref.blocks)):
            ratios = np.array(mine[skip:]) / np.array(theirs[skip:])
            means = rng.choice(ratios, size=(2000, len(ratios))).mean(axis=1)
            low, high = np.percentile(means, [2.5, 97.5])
            cells.append(f"{ratios.mean():.3f} [{low:.3f}, {high:.3f}] {np.median(ratios):.3f}")
        print(f"{v.name:<14}{sum(v.blocks[skip:]) / steps:>9.4f}" + "".join(f"{c:>28}" for c in cells))
    print("mean seconds per step and phase over the same steps: " + ", ".join(PHASES))
    for v in variants.values():
        means = [statistics.mean(v.phases[p][skip * args.block :]) for p in PHASES]
        print(f"  {v.name:<14}" + "".join(f"{m:>9.4f}" for m in means))


if __name__ == "__main__":
    main()
