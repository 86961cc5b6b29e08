import numpy as np
import pytest
import torch

from morl.algos import RLOO, BatchWhiten, GroupNorm, group_normalize


def test_group_norm_hand_worked():
    # group 1: [1, 0, 0, 1] mean 0.5, sample std sqrt(1/3) -> ±0.5/0.57735 = ±0.8660
    scores = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0])
    adv = GroupNorm()(scores, 4)
    expected = torch.tensor([0.8660254, -0.8660254, -0.8660254, 0.8660254, 0, 0, 0, 0])
    torch.testing.assert_close(adv, expected)


def test_group_norm_population_std_and_no_scale():
    scores = torch.tensor([3.0, 1.0])
    torch.testing.assert_close(GroupNorm(unbiased=False)(scores, 2), torch.tensor([1.0, -1.0]))
    torch.testing.assert_close(GroupNorm(scale=False)(scores, 2), torch.tensor([1.0, -1.0]))
    torch.testing.assert_close(GroupNorm()(scores, 2), torch.tensor([1.0, -1.0]) / np.sqrt(2.0))


def test_zero_variance_group_gives_zero_not_nan():
    scores = torch.tensor([0.5, 0.5, 0.5, 1.0, 0.0, 0.5])
    for est in (GroupNorm(), GroupNorm(scale=False), RLOO(), BatchWhiten()):
        adv = est(scores, 3)
        assert torch.isfinite(adv).all()
        assert torch.all(adv[:3] == 0), est


def test_rloo_matches_leave_one_out_definition():
    rng = np.random.default_rng(0)
    s = rng.normal(size=(5, 4))
    expected = np.array([[s[g, i] - np.delete(s[g], i).mean() for i in range(4)] for g in range(5)]).ravel()
    got = RLOO()(torch.tensor(s.ravel()), 4).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_rloo_needs_two():
    with pytest.raises(ValueError, match="at least 2"):
        RLOO()(torch.tensor([1.0]), 1)


def test_batch_whiten_against_numpy():
    rng = np.random.default_rng(1)
    s = rng.normal(size=(3, 4))
    centered = s - s.mean(axis=1, keepdims=True)
    expected = (centered - centered.mean()) / centered.ravel().std(ddof=1)
    got = BatchWhiten()(torch.tensor(s.ravel()), 4).numpy()
    np.testing.assert_allclose(got, expected.ravel(), rtol=1e-6)
    raw = (s - s.mean()) / s.ravel().std(ddof=1)
    np.testing.assert_allclose(BatchWhiten(group_baseline=False)(torch.tensor(s.ravel()), 4).numpy(), raw.ravel())


def test_group_normalize_is_shift_invariant_and_scale_invariant():
    s = torch.randn(12)
    torch.testing.assert_close(group_normalize(s, 4), group_normalize(3 * s + 7, 4), rtol=1e-5, atol=1e-5)
