import numpy as np
import pytest
import torch

from morl.algos import GroupNorm
from morl.controllers import GDPO, AdvantageLevel
from tests.batches import scored_record


def _batch(rewards, k):
    return scored_record(rewards, k)


def _numpy_gdpo(rewards, weights, k):
    """Direct computation: per-group, per-objective z-score (sample std; 0 where constant), weighted sum,
    batch z-score (sample std)."""
    n = len(rewards)
    per_objective = np.zeros_like(rewards)
    for g in range(0, n, k):
        block = rewards[g : g + k]
        std = block.std(axis=0, ddof=1)
        z = (block - block.mean(axis=0)) / np.where(std > 1e-6, std, 1.0)
        per_objective[g : g + k] = np.where(std > 1e-6, z, 0.0)
    summed = per_objective @ weights
    return (summed - summed.mean()) / summed.std(ddof=1)


def _numpy_sum_then_normalize(rewards, weights, k):
    s = (rewards @ weights).reshape(-1, k)
    std = s.std(axis=1, ddof=1, keepdims=True)
    return np.where(std > 1e-6, (s - s.mean(axis=1, keepdims=True)) / np.where(std > 1e-6, std, 1.0), 0.0).ravel()


def _objective_advantages(rewards, k):
    r = torch.tensor(rewards, dtype=torch.float32)
    return torch.stack([GroupNorm()(r[:, m], k) for m in range(r.shape[1])], dim=1)


def test_matches_direct_numpy_computation():
    rng = np.random.default_rng(0)
    k = 4
    for _ in range(10):
        rewards = rng.integers(0, 2, size=(16, 3)).astype(float)
        rewards[:4, 1] = 1.0  # a group where one objective does not vary
        weights = rng.uniform(0.1, 2.0, size=3)
        for mode, reference in (("normalize_then_sum", _numpy_gdpo), ("sum_then_normalize", _numpy_sum_then_normalize)):
            c = GDPO(weights=weights.tolist(), multi_objective_aggregation=mode)
            c.start(["a", "b", "c"])
            got = c.combine_advantages(_objective_advantages(rewards, k), _batch(rewards, k))
            np.testing.assert_allclose(got.numpy(), reference(rewards, weights, k), atol=1e-5)


def test_hand_worked_decoupling():
    # one group of two: (1, 0) and (0, 1). Summing first gives both completions the same score: no signal.
    # Normalising first keeps each objective's preference: with weights (2, 1) the first completion wins.
    rewards = [[1.0, 0.0], [0.0, 1.0]]
    adv = _objective_advantages(rewards, 2)
    summed = GDPO(multi_objective_aggregation="sum_then_normalize")
    summed.start(["a", "b"])
    torch.testing.assert_close(summed.combine_advantages(adv, _batch(rewards, 2)), torch.zeros(2))
    decoupled = GDPO(weights={"a": 2.0, "b": 1.0})
    decoupled.start(["a", "b"])
    torch.testing.assert_close(
        decoupled.combine_advantages(adv, _batch(rewards, 2)), torch.tensor([1.0, -1.0]) / np.sqrt(2)
    )


def test_constant_objective_contributes_nothing_and_weights_scale_free():
    rng = np.random.default_rng(1)
    rewards = rng.integers(0, 2, size=(12, 2)).astype(float)
    with_constant = np.column_stack([rewards, np.ones(12)])
    c2, c3 = GDPO(weights=[1.0, 2.0]), GDPO(weights=[1.0, 2.0, 5.0])
    c2.start(["a", "b"])
    c3.start(["a", "b", "c"])
    torch.testing.assert_close(
        c3.combine_advantages(_objective_advantages(with_constant, 4), _batch(with_constant, 4)),
        c2.combine_advantages(_objective_advantages(rewards, 4), _batch(rewards, 4)),
    )
    scaled = GDPO(weights=[10.0, 20.0])
    scaled.start(["a", "b"])
    torch.testing.assert_close(
        scaled.combine_advantages(_objective_advantages(rewards, 4), _batch(rewards, 4)),
        c2.combine_advantages(_objective_advantages(rewards, 4), _batch(rewards, 4)),
    )


def test_contract_and_trl_name():
    c = GDPO()
    assert isinstance(c, AdvantageLevel) and c.normalization == "free"
    assert c.config.multi_objective_aggregation == "normalize_then_sum"
    c.start(["a", "b"])
    assert c.weights().tolist() == [1.0, 1.0]  # TRL's reward_weights default
    with pytest.raises(Exception, match="multi_objective_aggregation"):
        GDPO(multi_objective_aggregation="normalize_first")
