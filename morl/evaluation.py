"""The evaluator: a policy's per-objective means on held-out prompts — rollout and rewards, no optimizer.

One object serves the training loop's evaluations, ``morl eval`` on a saved model, and controllers that learn
from validation means (:class:`morl.controllers.UsesValidation`). Stateful rewards are called with
``training=False``, so evaluating never changes what they learned.

Example:
    >>> evaluator = Evaluator(TransformersRollout(), [Accuracy()])  # doctest: +SKIP
    >>> evaluator.evaluate(Policy.from_pretrained("tinymath"), make_split("eval", 64, 0))  # doctest: +SKIP
    {'eval/greedy/accuracy': 0.94, 'eval/greedy/mean_length': 35.2, 'eval/sampled/accuracy': 0.47, ...}
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch

from morl import distributed
from morl import metrics as M
from morl.policy import Policy
from morl.rewards.base import RewardCallable, StepInfo, completion_token_ids, objective_name, score_rewards
from morl.rollout import RolloutBackend

Mode = Literal["greedy", "sampled"]


def split_examples(examples: list[dict[str, Any]]) -> tuple[list[str], dict[str, list[Any]]]:
    """Rows -> prompts and column lists (every field but the prompt goes to the rewards)."""
    prompts = [ex["prompt"] for ex in examples]
    return prompts, {key: [ex.get(key) for ex in examples] for key in examples[0] if key != "prompt"}


class Evaluator:
    """Per-objective means of one completion per prompt, greedy and/or sampled, in batches of ``batch_size``."""

    def __init__(
        self,
        rollout: RolloutBackend,
        rewards: Sequence[RewardCallable],
        batch_size: int = 64,
        on_reward_error: str = "raise",
        reward_timeout_s: float | None = 60.0,
        reward_isolation: str = "thread",
    ) -> None:
        self.rollout = rollout
        self.rewards = list(rewards)
        self.objectives = [objective_name(r) for r in self.rewards]
        self.batch_size = batch_size
        self.on_reward_error = on_reward_error
        self.reward_timeout_s = reward_timeout_s  # the training run's limit per reward call (train.reward_timeout_s)
        self.reward_isolation = reward_isolation

    @torch.no_grad()
    def evaluate(
        self,
        policy: Policy,
        examples: list[dict[str, Any]],
        modes: Sequence[Mode],
        trainer_state: StepInfo | None = None,
    ) -> dict[str, float]:
        """``eval/{mode}/{objective}`` means (NaN when no completion was applicable) and ``eval/{mode}/mean_length``.

        Under data parallelism every process evaluates its share of the prompts and the sums are reduced.
        """
        out: dict[str, float] = {}
        mine, real = distributed.shard_padded(examples)
        m = len(self.objectives)
        for mode in modes:
            totals, counts = np.zeros(m), np.zeros(m)
            length_sum, n = 0.0, 0
            for start in range(0, len(mine), self.batch_size):
                chunk = mine[start : start + self.batch_size]
                keep = max(0, min(len(chunk), real - start))  # the rest pads this process's share
                prompts, columns = split_examples(chunk)
                batch = self.rollout.generate(policy, prompts, columns, 1, greedy=mode == "greedy")
                lengths = batch.completion_lengths.cpu()
                rewards, _ = score_rewards(
                    self.rewards,
                    batch.prompts,
                    batch.completions,
                    batch.columns,
                    training=False,
                    completion_lengths=lengths.tolist(),
                    completion_ids=completion_token_ids(batch.completion_ids, batch.completion_mask),
                    trainer_state=trainer_state,
                    timeout_s=self.reward_timeout_s,
                    isolation=self.reward_isolation,  # type: ignore[arg-type]
                    on_error=self.on_reward_error,
                )
                rewards, lengths = rewards[:keep], lengths[:keep]
                valid = ~torch.isnan(rewards)
                totals += torch.where(valid, rewards, 0.0).sum(0).double().numpy()
                counts += valid.sum(0).double().numpy()
                length_sum += float(lengths.sum())
                n += keep
            summed = distributed.all_reduce_sum(torch.tensor([*totals, *counts, length_sum, n], dtype=torch.float64))
            totals, counts, length_sum, n = summed[:m].numpy(), summed[m : 2 * m].numpy(), float(summed[-2]), summed[-1]
            for name, total, count in zip(self.objectives, totals, counts):
                out[M.eval_metric(mode, name)] = float(total / count) if count else math.nan
            out[M.eval_mean_length(mode)] = length_sum / max(float(n), 1.0)
        return out

    def means(
        self, policy: Policy, examples: list[dict[str, Any]], mode: Mode, trainer_state: StepInfo | None = None
    ) -> dict[str, float]:
        """Per-objective means and ``mean_length`` by plain name, for controllers that learn from validation."""
        scores = self.evaluate(policy, examples, [mode], trainer_state)
        means = {name: scores[M.eval_metric(mode, name)] for name in self.objectives}
        means[M.MEAN_LENGTH] = scores[M.eval_mean_length(mode)]
        return means
