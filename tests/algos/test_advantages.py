import numpy as np
import pytest
import torch

from morl.algos import RLOO, BatchWhiten, GroupNorm, group_normalize
from morl.algos.advantages import per_objective_advantages
from morl.scalarize import fill_not_applicable


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


# ---- not-applicable (NaN) scores ------------------------------------------------------------------------------

NAN = float("nan")


def test_not_applicable_scores_are_left_out_hand_worked():
    # group (1, NaN, 0, NaN): the statistics of (1, 0): mean 1/2, sample std 1/√2, population std 1/2
    scores = torch.tensor([1.0, NAN, 0.0, NAN])
    torch.testing.assert_close(GroupNorm()(scores, 4), torch.tensor([1.0, 0.0, -1.0, 0.0]) / np.sqrt(2.0))
    torch.testing.assert_close(GroupNorm(unbiased=False)(scores, 4), torch.tensor([1.0, 0.0, -1.0, 0.0]))
    torch.testing.assert_close(GroupNorm(scale=False)(scores, 4), torch.tensor([0.5, 0.0, -0.5, 0.0]))
    # RLOO over the 2 applicable: 1 - 0 and 0 - 1
    torch.testing.assert_close(RLOO()(scores, 4), torch.tensor([1.0, 0.0, -1.0, 0.0]))
    # one applicable, or none: no comparison, 0 everywhere
    for est in (GroupNorm(), GroupNorm(unbiased=False), GroupNorm(scale=False), RLOO(), BatchWhiten()):
        assert torch.equal(est(torch.tensor([NAN, 2.0, NAN, NAN, NAN, NAN]), 3), torch.zeros(6)), est


def _compact_reference(scores, k, estimator):
    """Independent: each group's applicable scores alone, through numpy; NaN positions get 0."""
    out = np.zeros_like(scores)
    for g in range(0, len(scores), k):
        block = scores[g : g + k]
        keep = ~np.isnan(block)
        values = block[keep]
        n = len(values)
        if n < 2:
            continue
        if estimator == "group_norm":
            std = values.std(ddof=1)
            adv = (values - values.mean()) / std if std > 1e-6 else np.zeros(n)
        elif estimator == "population":
            std = values.std()
            adv = (values - values.mean()) / std if std > 1e-6 else np.zeros(n)
        elif estimator == "dr_grpo":
            adv = values - values.mean()
        else:  # rloo: leave one out among the applicable
            adv = np.array([values[i] - np.delete(values, i).mean() for i in range(n)])
        out[np.arange(g, g + k)[keep]] = adv
    return out


def test_applicable_advantages_equal_those_of_the_applicable_alone():
    rng = np.random.default_rng(3)
    k = 8
    estimators = {
        "group_norm": GroupNorm(),
        "population": GroupNorm(unbiased=False),
        "dr_grpo": GroupNorm(scale=False),
        "rloo": RLOO(),
    }
    for _ in range(20):
        scores = rng.normal(size=6 * k)
        scores[rng.random(6 * k) < 0.4] = np.nan
        scores[:k] = np.nan  # a group nothing applies to
        scores[k : 2 * k - 1] = np.nan  # a group with one applicable completion
        for name, est in estimators.items():
            got = est(torch.tensor(scores), k).numpy()
            np.testing.assert_allclose(got, _compact_reference(scores, k, name), atol=1e-12, err_msg=name)


def test_batch_whiten_leaves_not_applicable_out_of_the_batch_statistics():
    rng = np.random.default_rng(4)
    k = 4
    scores = rng.normal(size=5 * k)
    scores[[1, 2, 9, 16, 17, 18, 19]] = np.nan
    keep = ~np.isnan(scores)
    centered = _compact_reference(scores, k, "dr_grpo")[keep]  # group baseline over the applicable
    expected = np.zeros_like(scores)
    expected[keep] = (centered - centered.mean()) / centered.std(ddof=1)
    np.testing.assert_allclose(BatchWhiten()(torch.tensor(scores), k).numpy(), expected, atol=1e-12)
    raw = scores[keep]
    expected[keep] = (raw - raw.mean()) / raw.std(ddof=1)
    got = BatchWhiten(group_baseline=False)(torch.tensor(scores), k).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-12)
    expected[keep] = raw / raw.std(ddof=1)
    got = BatchWhiten(group_baseline=False, center="none")(torch.tensor(scores), k).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-12)


def test_sparse_objective_matches_trl_and_is_not_inflated():
    """K = 16 with 2 applicable per group: TRL's nan-aware group statistics (nanmean, trl's nanstd), and not the
    sqrt(15) ≈ 3.9x of normalising a group-mean fill over all 16."""
    nanstd = pytest.importorskip("trl.trainer.utils").nanstd
    rng = np.random.default_rng(5)
    k, groups = 16, 6
    rewards = np.full((groups * k, 2), np.nan)
    for g in range(groups):
        rows = g * k + rng.choice(k, size=2, replace=False)
        rewards[rows, 0] = [1.0, 0.0]
    rewards[:, 1] = rng.integers(0, 2, size=groups * k)  # a dense objective alongside
    rewards[k : k + 3, 1] = np.nan
    r = torch.tensor(rewards)
    got = per_objective_advantages(GroupNorm(), r, k)

    grouped = r.view(-1, k, 2)  # TRL's formula (normalize_then_sum's per-objective step), std + 1e-4 as there
    trl = (grouped - torch.nanmean(grouped, dim=1, keepdim=True)) / (nanstd(grouped, dim=1, keepdim=True) + 1e-4)
    trl = trl.view(-1, 2).nan_to_num(0.0)  # nansum: a not-applicable reward adds 0
    torch.testing.assert_close(got, trl, rtol=1e-3, atol=1e-12)

    applicable = ~torch.isnan(r[:, 0])
    torch.testing.assert_close(got[applicable, 0].abs(), torch.full((2 * groups,), 1 / np.sqrt(2.0), dtype=r.dtype))
    assert (got[~applicable, 0] == 0).all()
    filled = group_normalize(fill_not_applicable(r, k)[:, 0], k)  # the old path: filled, then normalised over 16
    torch.testing.assert_close(
        filled[applicable] / got[applicable, 0], torch.full((2 * groups,), np.sqrt(15.0)).double()
    )


def test_without_not_applicable_scores_the_advantages_are_torchs_own_bit_for_bit():
    """NaN support must not change a run without NaN by one rounding: trajectories (and the README's seeds)
    reproduce exactly. The reference is torch's own mean and std, as the estimators computed them before."""
    from morl.algos.advantages import batch_whiten
    from morl.controllers.gdpo import batch_zscore

    gen = torch.Generator().manual_seed(0)
    for _ in range(50):
        s = (torch.rand(64, generator=gen) * 3).round() / 3 + torch.rand(64, generator=gen)
        g = s.view(-1, 8)
        centred = g - g.mean(dim=1, keepdim=True)
        std = g.std(dim=1, keepdim=True)
        expected = torch.where(std > 1e-6, centred / std.clamp_min(1e-6), torch.zeros_like(centred)).reshape(-1)
        assert torch.equal(group_normalize(s, 8), expected)
        v = s - s.mean()
        assert torch.equal(batch_whiten(s), v / v.std())
        assert torch.equal(batch_zscore(s), (s - s.mean()) / s.std())


# ---- batch whitening over tokens (REINFORCE++ as its authors' verl code) ----------------------------------------


def test_batch_whiten_over_tokens_hand_worked():
    # one group, lengths 1 and 3, scores 1 and 0, no group baseline: the tokens are (1 | 0 0 0):
    # mean 1/4, sample var (9/16 + 3 · 1/16) / 3 = 1/4, std 1/2 -> (1 - 1/4) / (1/2) = 3/2 and -1/2
    scores, lengths = torch.tensor([1.0, 0.0]), torch.tensor([1, 3])
    tokens = BatchWhiten(group_baseline=False, whiten_over="tokens")
    torch.testing.assert_close(tokens(scores, 2, lengths), torch.tensor([1.5, -0.5]))
    no_center = BatchWhiten(group_baseline=False, center="none", whiten_over="tokens")
    torch.testing.assert_close(no_center(scores, 2, lengths), torch.tensor([2.0, 0.0]))
    # over completions (the default) the lengths do not count: ±1/√2
    torch.testing.assert_close(
        BatchWhiten(group_baseline=False)(scores, 2, lengths), torch.tensor([1.0, -1.0]) / 2**0.5
    )
    # with the group baseline, two groups (1, 0 | 1, 1) of lengths (1, 3 | 2, 2): baselined (1/2, -1/2 | 0, 0);
    # over 8 tokens the mean is (1/2 - 3/2) / 8 = -1/8 and the sample var (25/64 + 3 · 9/64 + 4 · 1/64) / 7 = 1/8
    got = BatchWhiten(whiten_over="tokens")(torch.tensor([1.0, 0.0, 1.0, 1.0]), 2, torch.tensor([1, 3, 2, 2]))
    torch.testing.assert_close(got, torch.tensor([5 / 8, -3 / 8, 1 / 8, 1 / 8]) * 8**0.5)


def test_batch_whiten_over_tokens_equals_whitening_every_token_of_a_ragged_batch():
    """Independent: repeat each completion's value on each of its tokens and whiten the flat token array."""
    rng = np.random.default_rng(6)
    k = 4
    for group_baseline in (False, True):
        for _ in range(10):
            scores = rng.normal(size=6 * k)
            scores[rng.random(6 * k) < 0.2] = np.nan
            lengths = rng.integers(0, 40, size=6 * k)  # 0: a completion with no token weighs nothing
            values = scores.copy()
            if group_baseline:
                values -= np.repeat(np.nanmean(scores.reshape(-1, k), axis=1), k)
            keep = ~np.isnan(values)
            tokens = np.repeat(values[keep], lengths[keep])
            expected = np.zeros_like(values)
            expected[keep] = (values[keep] - tokens.mean()) / tokens.std(ddof=1)
            est = BatchWhiten(group_baseline=group_baseline, whiten_over="tokens")
            got = est(torch.tensor(scores), k, torch.tensor(lengths)).numpy()
            np.testing.assert_allclose(got, expected, atol=1e-12)


def test_batch_whiten_over_tokens_needs_the_lengths_and_passes_them_per_objective():
    est = BatchWhiten(whiten_over="tokens")
    assert est.needs_lengths and not BatchWhiten().needs_lengths and not GroupNorm().needs_lengths
    with pytest.raises(ValueError, match="whiten_over: tokens needs the completions' token counts"):
        est(torch.tensor([1.0, 0.0]), 2)
    # objective 0 as in the hand-worked example; objective 1 (0 | 1 1 1): mean 3/4, std 1/2 -> -3/2 and 1/2
    rewards = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    est = BatchWhiten(group_baseline=False, whiten_over="tokens")
    got = per_objective_advantages(est, rewards, 2, torch.tensor([1, 3]))
    torch.testing.assert_close(got, torch.tensor([[1.5, -1.5], [-0.5, 0.5]]))
