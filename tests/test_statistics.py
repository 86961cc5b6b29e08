"""Within-group covariances: the batched computation against one group at a time, on awkward batches."""

from __future__ import annotations

import numpy as np
import pytest

from morl.statistics import group_covariances


def one_group_at_a_time(rewards: np.ndarray, weights: np.ndarray, k: int, signal: str) -> np.ndarray:
    """The definition, group by group, on each group's applicable completions (outliers: > 100 × the median |w|)."""
    usable = np.isfinite(weights)
    median = np.median(np.abs(weights[usable])) if usable.any() else 0.0
    if median > 0:
        usable &= np.abs(np.where(usable, weights, 0.0)) <= 100 * median
    out = []
    for j in range(rewards.shape[1]):
        values, seen = [], False
        for g in range(rewards.shape[0] // k):
            rows = slice(g * k, (g + 1) * k)
            keep = usable[rows] & np.isfinite(rewards[rows, j])
            if keep.sum() < 2:
                continue
            seen = True
            r, w = rewards[rows, j][keep], weights[rows][keep]
            cov = np.mean((r - r.mean()) * (w - w.mean()))
            if signal == "correlation":
                if r.std() <= 1e-12 * np.abs(r).max() or w.std() <= 1e-12 * np.abs(w).max():
                    continue
                cov = cov / (r.std() * w.std())
            values.append(cov)
        out.append(np.mean(values) if values else (0.0 if seen else np.nan))
    return np.array(out)


@pytest.mark.parametrize("signal", ["covariance", "correlation"])
def test_all_groups_at_once_give_the_same_numbers_as_one_group_at_a_time(signal):
    rng = np.random.default_rng(0)
    for trial in range(400):
        k, groups, m = int(rng.integers(1, 17)), int(rng.integers(1, 9)), int(rng.integers(1, 4))
        n = k * groups + int(rng.integers(0, 2))  # a trailing partial group is ignored
        rewards = rng.normal(size=(n, m)) if trial % 3 else rng.integers(0, 2, size=(n, m)).astype(float)
        weights = rng.normal(size=n) * 10 ** rng.uniform(-3, 3)
        if trial % 4 == 0:
            rewards[rng.random((n, m)) < 0.2] = np.nan  # not applicable
        if trial % 5 == 0:
            weights[rng.random(n) < 0.1] = np.nan
        if trial % 7 == 0:
            weights[rng.integers(0, n)] = 1e9  # an outlier, left out
        if trial % 11 == 0:
            rewards[:k] = 1.0  # a flat group
        expected = one_group_at_a_time(rewards, weights, k, signal)
        # equal to the last bit: the same sums in the same order, so a run's trajectory does not depend on the batching
        np.testing.assert_array_equal(group_covariances(rewards, weights, k, signal), expected)
