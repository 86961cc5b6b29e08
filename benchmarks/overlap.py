"""What CTWA costs on top of fixed weights on the same training run, with its after-update pass inline or beside the
next rollout in a helper process (``train.overlap_after_update``).

Each repetition runs four fits of the quickstart's CTWA recipe one after the other (order rotating per repetition),
every one the same training run step for step (after one untimed inline run that records CTWA's weights):

- ``ctwa inline``: CTWA, its after-update pass at the end of each step (``overlap_after_update: false``);
- ``ctwa overlap``: CTWA, the pass in the helper process beside the next rollout (``true``);
- ``fixed``: fixed weights that replay, step by step, the weights ``ctwa inline`` trained with (no controller work),
  with the default diagnostics and forecast;
- ``fixed-nodiag``: the same without diagnostics (and so without the forecast): the reference of the goal "CTWA, the
  forecast and the diagnostics together within 5% of a fixed-weights step".

The fits train the same batches (checked: every variant's per-step rewards equal the first one's), so their step
times compare on identical work. Reported: the mean step time over the steps after ``--skip`` (warm-up) and over
the whole fit, ratios to ``fixed-nodiag``, and each phase's median.

Then, in one process, ``--rounds`` paired rounds of the rollout alone, the pass inline, and the rollout with the
helper computing the pass beside it: what of the pass the overlap leaves on the step (the two cores contend).

    python benchmarks/overlap.py [--steps 100] [--reps 3] [--skip 10] [--rounds 20]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time

import numpy as np
import torch
from replay import ReplayWeights, load_job

from morl.pipeline import Pipeline
from morl.policy import Policy
from morl.recipe import build_components
from morl.run import read_metrics

PHASES = ("rollout", "reward", "forecast", "controller", "update", "diagnostics")


def fit(recipe, base: Policy, train_data, controller, diagnostics: bool, overlap: bool, out: str) -> list[dict]:
    components = build_components(recipe)
    if controller is not None:
        components["controller"] = controller
    config = recipe.train.model_copy(
        update={
            "progress": False,
            "eval_every": 0,
            "save_model": False,
            "overlap_after_update": overlap,
            "output_dir": out,
        }
    )
    policy = Policy(copy.deepcopy(base.model), base.tokenizer, base.config)
    pipe = Pipeline(policy=policy, config=config, diagnostics=diagnostics, **components)
    pipe.fit(train_data)
    return [row for row in read_metrics(pipe.run_dir_) if row.get("kind") == "train"]


def paired_rounds(recipe, base: Policy, train_data, rounds: int) -> dict[str, list[float]]:
    """The residual cost of the overlap, step for step in one process: the rollout alone, the after-update pass
    inline, and the rollout while the helper computes the pass (the sampler's generator put back between them, so the
    three see the same batch and the rollout draws the same completions)."""
    from morl.evaluation import split_examples
    from morl.policy import batch_logprobs
    from morl.side_process import LogprobProcess

    components = build_components(recipe)
    config = recipe.train.model_copy(update={"progress": False, "overlap_after_update": False})
    policy = Policy(copy.deepcopy(base.model), base.tokenizer, base.config)
    pipe = Pipeline(policy=policy, config=config, **components)
    for _ in range(3):  # a few updates: completions of a trained policy's length
        pipe.step(pipe.next_examples(train_data))
    rollout, k = pipe.parts_.rollout, recipe.train.group_size
    temperature = pipe.parts_.algo.temperature
    helper = LogprobProcess(policy)
    assert helper.ready(wait_s=120), helper.failure
    times: dict[str, list[float]] = {"rollout": [], "pass": [], "both": []}
    batch = rollout.generate(policy, *split_examples(pipe.next_examples(train_data)), k)
    try:
        for _ in range(rounds):
            prompts, columns = split_examples(pipe.next_examples(train_data))
            start = time.perf_counter()
            inline = batch_logprobs(policy, batch, temperature)
            times["pass"].append(time.perf_counter() - start)
            state = torch.random.get_rng_state()
            start = time.perf_counter()
            alone = rollout.generate(policy, prompts, columns, k)
            times["rollout"].append(time.perf_counter() - start)
            torch.random.set_rng_state(state)
            start = time.perf_counter()
            helper.submit(batch, temperature, None)
            beside = rollout.generate(policy, prompts, columns, k)
            logp = helper.result()
            times["both"].append(time.perf_counter() - start)
            assert torch.equal(logp, inline) and torch.equal(alone.completion_ids, beside.completion_ids)
            batch = alone
    finally:
        helper.close()
    return times


def report_fits(args, steady, whole, phases, same, helper_start) -> None:
    med, variants = statistics.median, list(steady)
    ref = med(steady["fixed-nodiag"])
    print(
        f"\n{args.recipe}: {args.steps} steps, {args.reps} repetitions, 1 thread; same training in every variant: "
        f"{same}; the helper took over the pass at step {helper_start}"
    )
    print(f"{'variant':<14}{'step (steady)':>14}{'/ fixed-nodiag':>16}{'steps (whole fit)':>19}{'/ fixed-nodiag':>16}")
    for name in variants:
        ratio_whole = med(whole[name]) / med(whole["fixed-nodiag"])
        print(
            f"{name:<14}{med(steady[name]):>14.4f}{med(steady[name]) / ref:>16.3f}"
            f"{med(whole[name]):>19.2f}{ratio_whole:>16.3f}"
        )
    print("median seconds per phase over the same steps: " + ", ".join(PHASES))
    for name in variants:
        print(f"  {name:<14}" + "".join(f"{med(phases[name][phase]):>9.4f}" for phase in PHASES))
    paired = [o / i for o, i in zip(steady["ctwa overlap"], steady["ctwa inline"])]
    print(f"ctwa overlap / ctwa inline, per repetition: {[round(p, 3) for p in paired]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="cookbook/recipes/quickstart.yaml")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--skip", type=int, default=10, help="steps left out of the steady-state mean")
    parser.add_argument("--rounds", type=int, default=20, help="rounds of the paired measurement (0: none)")
    args = parser.parse_args()

    torch.set_num_threads(1)
    recipe, objectives, train_data, base = load_job(args.recipe, args.steps)
    variants = ["ctwa inline", "ctwa overlap", "fixed", "fixed-nodiag"]
    steady: dict[str, list[float]] = {v: [] for v in variants}
    phases: dict[str, dict[str, list[float]]] = {v: {p: [] for p in PHASES} for v in variants}
    whole: dict[str, list[float]] = {v: [] for v in variants}
    helper_start: list[int] = []
    same = True
    with tempfile.TemporaryDirectory() as tmp:
        # a first inline run, not timed: the weights to replay, the rewards every run must reproduce, and the warm-up
        recorded = fit(recipe, base, train_data, None, True, False, f"{tmp}/record") if args.reps else []
        ReplayWeights.recorded[:] = [[row[f"weights/{o}"] for o in objectives] for row in recorded]
        reference = [row[f"rewards/{objectives[0]}/mean"] for row in recorded]
        inline_control = statistics.median([row["timing/controller"] for row in recorded] or [0.0])
        for rep in range(args.reps):
            order = variants[rep % 4 :] + variants[: rep % 4]
            for name in order:
                start = time.perf_counter()
                controller = None
                if name.startswith("fixed"):
                    controller = ReplayWeights()
                rows = fit(
                    recipe,
                    base,
                    train_data,
                    controller,
                    diagnostics=name != "fixed-nodiag",
                    overlap=name == "ctwa overlap",
                    out=f"{tmp}/{rep}-{name.replace(' ', '-')}",
                )
                wall = time.perf_counter() - start
                times = [row["step_time"] for row in rows]
                for phase in PHASES:
                    phases[name][phase] += [row.get(f"timing/{phase}", 0.0) for row in rows[args.skip :]]
                steady[name].append(statistics.mean(times[args.skip :]))
                whole[name].append(sum(times))
                same &= [row[f"rewards/{objectives[0]}/mean"] for row in rows] == reference
                if name == "ctwa overlap":  # the first step whose controller phase no longer holds the pass
                    control = np.array([row["timing/controller"] for row in rows])
                    helper_start.append(int(np.argmax(control < 0.5 * inline_control)))
                print(f"rep {rep} {name:<13} {wall:6.1f} s, mean step {steady[name][-1]:.4f} s", flush=True)

    med = statistics.median
    if args.reps:
        report_fits(args, steady, whole, phases, same, helper_start)
    if args.rounds:
        times = paired_rounds(recipe, base, train_data, args.rounds)
        rollout, inline = med(times["rollout"]), med(times["pass"])
        residual = med(b - r for b, r in zip(times["both"], times["rollout"]))
        print(
            f"paired, {args.rounds} rounds in one process (medians): rollout alone {rollout:.4f} s, the pass inline "
            f"{inline:.4f} s, the rollout with the pass beside it {med(times['both']):.4f} s: the overlap leaves "
            f"{residual:.4f} s of the pass's {inline:.4f} s ({residual / inline:.0%}); same draws and log-probs: True"
        )


if __name__ == "__main__":
    main()
