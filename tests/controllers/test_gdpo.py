import numpy as np
import pytest
import torch

from morl.algos import GroupNorm
from morl.algos.advantages import per_objective_advantages
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


def _trl(rewards, weights, k, mode):
    """TRL's GRPOTrainer advantage formula (trl 1.x, ``_generate_and_score_completions``), with trl's own nanstd:
    nan-aware group and batch statistics, ``nansum`` over objectives, rows NaN in every objective left out and 0."""
    nanstd = pytest.importorskip("trl.trainer.utils").nanstd
    r, w = torch.tensor(rewards), torch.tensor(weights)
    unscorable = torch.isnan(r).all(dim=1)
    if mode == "normalize_then_sum":
        grouped = r.view(-1, k, r.shape[1])
        z = (grouped - torch.nanmean(grouped, dim=1, keepdim=True)) / (nanstd(grouped, dim=1, keepdim=True) + 1e-4)
        summed = (z.view(-1, r.shape[1]) * w).nansum(dim=1)
        summed[unscorable] = torch.nan
        advantages = (summed - torch.nanmean(summed)) / (nanstd(summed) + 1e-4)
    else:
        summed = (r * w).nansum(dim=1)
        summed[unscorable] = torch.nan
        grouped = summed.view(-1, k)
        mean = torch.nanmean(grouped, dim=1, keepdim=True)
        advantages = ((grouped - mean) / (nanstd(grouped, dim=1, keepdim=True) + 1e-4)).view(-1)
    return advantages.nan_to_num(0.0).numpy()


def test_not_applicable_rewards_as_trl():
    rng = np.random.default_rng(7)
    k = 6
    for _ in range(5):
        rewards = rng.integers(0, 2, size=(4 * k, 3)).astype(float)
        rewards[rng.random((4 * k, 3)) < 0.3] = np.nan
        rewards[k : 2 * k - 1, 2] = np.nan  # one applicable completion in the group: no comparison, 0
        rewards[[3, 14]] = np.nan  # completions no objective applies to
        weights = rng.uniform(0.5, 2.0, size=3)
        r = torch.tensor(rewards)
        c = GDPO(weights=weights.tolist())
        c.start(["a", "b", "c"])
        got = c.combine_advantages(per_objective_advantages(GroupNorm(), r, k), scored_record(r, k))
        np.testing.assert_allclose(got.numpy(), _trl(rewards, weights, k, "normalize_then_sum"), rtol=1e-3, atol=1e-9)
        assert got[3] == 0 and got[14] == 0

        # sum_then_normalize: where a completion's objectives are all applicable or all not, as TRL; elsewhere morl
        # leaves out a completion that lacks a reward its group has, where TRL's nansum counts it as 0
        whole = np.where(np.isnan(rewards).any(axis=1, keepdims=True), np.nan, rewards)
        c = GDPO(weights=weights.tolist(), multi_objective_aggregation="sum_then_normalize")
        c.start(["a", "b", "c"])
        w = torch.tensor(whole)
        got = c.combine_advantages(per_objective_advantages(GroupNorm(), w, k), scored_record(w, k))
        np.testing.assert_allclose(got.numpy(), _trl(whole, weights, k, "sum_then_normalize"), rtol=1e-3, atol=1e-9)


def test_sum_then_normalize_leaves_out_a_completion_missing_a_reward_hand_worked():
    # group (a, b): (1, NaN), (0, 1), (1, 0), (1, 1); the first lacks b, which the others have: left out, 0.
    # The others' sums 1, 1, 2 (weights 1, 1): mean 4/3, sample std sqrt((1/9 + 1/9 + 4/9) / 2) = 1/√3,
    # A = (-1/3, -1/3, 2/3) · √3 = (-1, -1, 2)/√3 — those of the group of 3 alone. Filled at b's group mean (2/3)
    # instead, the first would count in the std and shrink it.
    rewards = torch.tensor([[1.0, float("nan")], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
    c = GDPO(multi_objective_aggregation="sum_then_normalize")
    c.start(["a", "b"])
    got = c.combine_advantages(per_objective_advantages(GroupNorm(), rewards, 4), scored_record(rewards, 4))
    torch.testing.assert_close(got, torch.tensor([0.0, -1.0, -1.0, 2.0]) / np.sqrt(3.0))
