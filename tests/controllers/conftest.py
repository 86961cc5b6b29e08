"""Shared fixtures for the controller tests: a real rollout batch on the tiny model, and the weights' contract."""

from __future__ import annotations

import numpy as np
import pytest
import torch

OBJECTIVES = ["accuracy", "conciseness", "clarity"]


@pytest.fixture
def policy_batch(tiny_policy):
    """The tiny policy and 3 prompts × 4 completions of its own, with random 0/1 rewards and per-objective
    advantages; old and reference log-probs are perturbed so that ratios and the KL are not trivial."""
    from morl.evaluation import split_examples
    from morl.rollout import TransformersRollout
    from morl.tinymath.task import make_split

    torch.manual_seed(0)
    prompts, columns = split_examples(make_split("train", 3, 0))
    batch = TransformersRollout(max_new_tokens=6).generate(tiny_policy, prompts, columns, 4)
    gen = torch.Generator().manual_seed(1)
    batch.objectives = list(OBJECTIVES)
    batch.rewards = torch.randint(0, 2, (batch.size, 3), generator=gen).float()
    batch.objective_advantages = torch.randn(batch.size, 3, generator=gen)
    batch.advantages = batch.objective_advantages.mean(dim=1)
    batch.old_logprobs = batch.old_logprobs + 0.3 * torch.randn(batch.old_logprobs.shape, generator=gen)
    batch.ref_logprobs = batch.old_logprobs + 0.2 * torch.randn(batch.old_logprobs.shape, generator=gen)
    return tiny_policy, batch


def check_normalization(controller, weights: np.ndarray | None = None) -> None:
    """The weights obey the normalisation the controller declares."""
    w = np.asarray(controller.weights() if weights is None else weights, dtype=float)
    m = len(w)
    if controller.normalization == "simplex":
        assert (w >= -1e-12).all() and w.sum() == pytest.approx(1.0, abs=1e-6), w
    elif controller.normalization == "sum_to_m":
        assert (w >= -1e-12).all() and w.sum() == pytest.approx(m, abs=1e-6), w
    else:
        assert controller.normalization == "free" and np.isfinite(w).all(), w


@pytest.fixture
def normalized():
    return check_normalization
