"""The training forward and backward of a quickstart batch, three ways, on the same batches in one process.

- ``whole rows``: one pass over every row, prompt and completion (``group_size=1``);
- ``shared prompts``: each prompt once, its KV cache serving its K completions, one pass over every completion column;
- ``+ skip padding`` (what morl runs): the completions in passes over column ranges for the rows still running
  (:mod:`morl.shared_forward`).

Batches come from the quickstart's rollouts (equal weights, so they train as a run would). Each round times the three
variants in rotating order on the same batch (log-probs of the completion tokens, entropies, a masked loss, backward);
prints median seconds, the median of per-batch ratios against whole rows, and the largest log-prob difference.

    python benchmarks/training_forward.py [--batches 6] [--rounds 5]
"""

from __future__ import annotations

import argparse
import inspect
import math
import statistics
import time
from collections.abc import Callable

import torch

from morl.batch import Batch
from morl.policy import Policy
from morl.recipe import load_data, load_recipe, pipeline_from_recipe
from morl.shared_forward import shared_prompt_logprobs
from morl.trainer import seed_everything

Forward = Callable[[Policy, Batch], tuple[torch.Tensor, torch.Tensor]]


def whole_rows(policy: Policy, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    return policy.token_logprobs(batch.input_ids, batch.attention_mask, batch.prompt_width, with_entropy=True)


def shared(pass_cost: float) -> Forward:
    def forward(policy: Policy, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        positions = (batch.attention_mask.cumsum(dim=1) - 1).clamp_min(0)
        cache = "cache" if "cache" in inspect.signature(policy.model.forward).parameters else "past_key_values"
        return shared_prompt_logprobs(
            policy.model,
            cache,
            batch.input_ids,
            batch.attention_mask,
            positions,
            batch.prompt_width,
            batch.group_size,
            with_entropy=True,
            pass_cost=pass_cost,
        )

    return forward


VARIANTS: dict[str, Forward] = {
    "whole rows": whole_rows,
    "shared prompts": shared(math.inf),
    "+ skip padding": shared(1 / 16),
}


def timed(policy: Policy, batch: Batch, forward: Forward) -> tuple[float, torch.Tensor]:
    policy.model.zero_grad(set_to_none=True)
    start = time.perf_counter()
    logp, entropy = forward(policy, batch)
    mask = batch.completion_mask
    ((logp + 0.01 * entropy) * mask).sum().backward()
    return time.perf_counter() - start, (logp * mask).detach()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="cookbook/recipes/quickstart_linear.yaml")
    parser.add_argument("--batches", type=int, default=6, help="rollouts to time on (after 2 training steps)")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    torch.set_num_threads(1)
    recipe = load_recipe(args.recipe, ["train.progress=false"])
    train, _ = load_data(recipe)
    pipe = pipeline_from_recipe(recipe)
    seed_everything(recipe.train.seed)
    batches = [pipe.step(pipe.next_examples(train))[0].rollout for _ in range(2 + args.batches)][2:]
    policy = pipe.policy
    policy.model.train()
    names = list(VARIANTS)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    ratios: dict[str, list[float]] = {name: [] for name in names}
    differences: dict[str, float] = {name: 0.0 for name in names}
    for round_ in range(args.rounds):
        for i, batch in enumerate(batches):
            shift = (round_ + i) % len(names)
            times, logps = {}, {}
            for name in names[shift:] + names[:shift]:
                times[name], logps[name] = timed(policy, batch, VARIANTS[name])
            for name in names:
                seconds[name].append(times[name])
                ratios[name].append(times[name] / times["whole rows"])
                difference = float((logps[name] - logps["whole rows"]).abs().max())
                differences[name] = max(differences[name], difference)

    lengths = torch.cat([b.completion_mask.sum(dim=1) for b in batches]).float()
    print(
        f"{args.recipe}: {len(batches)} batches of {batches[0].size} rows ({batches[0].group_size} per prompt), "
        f"completion lengths {int(lengths.min())}-{int(lengths.max())} (mean {lengths.mean():.1f}), "
        f"{args.rounds} rounds, 1 thread; forward + backward"
    )
    print(f"{'variant':<16}{'median s':>10}{'/ whole rows':>14}{'max |Δ log-prob|':>18}")
    for name in names:
        median = statistics.median(seconds[name])
        ratio = statistics.median(ratios[name])
        print(f"{name:<16}{median:>10.4f}{ratio:>14.3f}{differences[name]:>18.1e}")


if __name__ == "__main__":
    main()
