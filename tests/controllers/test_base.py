"""The families' weighing (morl.controllers.base): at the reward level, raw rewards -> scores -> advantages, with
not-applicable rewards and the completions' token counts."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from morl.algos import RLOO, BatchWhiten, GroupNorm
from morl.components import build
from morl.controllers import FixedWeights
from morl.scalarize import Linear
from morl.scalarize.base import mark_not_comparable
from morl.stages import Scored
from tests.batches import reward_batch

NAN = float("nan")


def _reward_level(rewards, k, weights, advantage=None, lengths=None):
    """Advantages of a fixed-weights (reward-level) controller on these raw rewards, K per group."""
    rewards = torch.as_tensor(rewards, dtype=torch.float64)
    batch = reward_batch(rewards, k)
    if lengths is not None:
        width = int(max(lengths))
        mask = (torch.arange(width) < torch.as_tensor(lengths).unsqueeze(1)).long()
        batch = dataclasses.replace(batch, completion_mask=mask)
    scored = Scored(rollout=batch, rewards=rewards, objectives=tuple(f"r{m}" for m in range(rewards.shape[1])))
    controller = FixedWeights(weights=list(weights))
    controller.start(list(scored.objectives))
    weighted = controller.weigh(scored, scalarizer=Linear(), advantage=advantage or GroupNorm())
    return weighted.advantages


def test_a_not_applicable_reward_does_not_inflate_the_others_hand_worked():
    # objective 0 is (1, 0, n/a, 1), objective 1 flat: scores 1.5, 0.5, -, 1.5 over the three applicable, as the
    # group of 3 alone: mean 7/6, sample std 1/√3, A = (1/3, -2/3, 1/3) · √3. The not-applicable completion: 0.
    # Filled at the group mean (score 7/6) it would count in the std's K: A = (1, -2, 0, 1)/√2, √(3/2) too large.
    rewards = [[1.0, 0.5], [0.0, 0.5], [NAN, 0.5], [1.0, 0.5]]
    got = _reward_level(rewards, 4, [1.0, 1.0])
    torch.testing.assert_close(got, torch.tensor([1.0, -2.0, 0.0, 1.0], dtype=got.dtype) / 3**0.5)
    alone = _reward_level([rewards[i] for i in (0, 1, 3)], 3, [1.0, 1.0])
    torch.testing.assert_close(got[[0, 1, 3]], alone)


def test_two_applicable_of_eight_get_what_they_get_alone():
    """The reported case: ±1/√2 as a group of 2, not ±1.87 (= √(7/2)) from six placeholders in K."""
    rewards = [[1.0, 0.3], [0.0, 0.3]] + [[NAN, 0.3]] * 6
    got = _reward_level(rewards, 8, [1.0, 1.0])
    expected = torch.tensor([1.0, -1.0] + [0.0] * 6, dtype=got.dtype) / 2**0.5
    torch.testing.assert_close(got, expected)


def _comparable_alone(rewards, k, weights, estimator):
    """Independent: per group, drop the objectives no completion has, keep the completions that have all the
    others, scalarise and normalise those alone in numpy; every other completion gets 0."""
    n, _ = rewards.shape
    scores = np.full(n, np.nan)
    for g in range(0, n, k):
        block = rewards[g : g + k]
        present = ~np.isnan(block).all(axis=0)
        complete = ~np.isnan(block[:, present]).any(axis=1) & present.any()
        scores[g : g + k][complete] = block[complete][:, present] @ weights[present]
    out = np.zeros(n)
    if estimator == "batch_whiten":
        keep = ~np.isnan(scores)
        if keep.sum() > 1 and scores[keep].std(ddof=1) > 1e-6:
            out[keep] = (scores[keep] - scores[keep].mean()) / scores[keep].std(ddof=1)
        return out
    for g in range(0, n, k):
        block = scores[g : g + k]
        keep = ~np.isnan(block)
        values = block[keep]
        if len(values) < 2:
            continue
        if estimator == "group_norm":
            std = values.std(ddof=1)
            adv = (values - values.mean()) / std if std > 1e-6 else np.zeros(len(values))
        else:  # rloo
            adv = np.array([values[i] - np.delete(values, i).mean() for i in range(len(values))])
        out[np.arange(g, g + k)[keep]] = adv
    return out


@pytest.mark.parametrize("name", ["group_norm", "rloo", "batch_whiten"])
def test_reward_level_advantages_are_those_of_the_comparable_completions_alone(name):
    estimator = {"group_norm": GroupNorm(), "rloo": RLOO(), "batch_whiten": BatchWhiten(group_baseline=False)}[name]
    rng = np.random.default_rng(8)
    k, groups = 6, 5
    for _ in range(10):
        rewards = rng.integers(0, 3, size=(groups * k, 3)).astype(float) / 2
        rewards[rng.random(rewards.shape) < 0.15] = np.nan
        rewards[:k, 0] = np.nan  # an objective no completion of the group has: the group trains on the others
        rewards[k + 1] = np.nan  # a completion no objective applies to
        weights = rng.uniform(0.5, 2.0, size=3).astype(np.float32).astype(float)  # the controller keeps float32
        got = _reward_level(rewards, k, weights, estimator).numpy()
        np.testing.assert_allclose(got, _comparable_alone(rewards, k, weights, name), atol=1e-9)
        assert np.abs(got[:k]).max() > 0 or np.isnan(rewards[:k, 1:]).any()


def test_without_not_applicable_rewards_the_scores_pass_through_untouched():
    scores, rewards = torch.rand(8), torch.rand(8, 3)
    assert mark_not_comparable(scores, rewards, 4) is scores  # runs without None stay bit-identical


def test_the_reward_level_whitens_over_the_rollouts_tokens():
    # one group, lengths 1 and 3, scores 1 and 0 (weights 1, 0): mean 1/4 and std 1/2 over the 4 tokens
    rewards, lengths = [[1.0, 0.0], [0.0, 1.0]], [1, 3]
    est = build("advantage", {"name": "batch_whiten", "group_baseline": False, "whiten_over": "tokens"})
    got = _reward_level(rewards, 2, [1.0, 0.0], est, lengths)
    torch.testing.assert_close(got, torch.tensor([1.5, -0.5], dtype=got.dtype))
    completions = _reward_level(rewards, 2, [1.0, 0.0], BatchWhiten(group_baseline=False), lengths)
    torch.testing.assert_close(completions, torch.tensor([1.0, -1.0], dtype=got.dtype) / 2**0.5)
