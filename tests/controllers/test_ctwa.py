import numpy as np
import pytest

from morl.components import RecipeError
from morl.controllers import CTWA, group_covariances
from tests.batches import updated_record

OBJ = ["accuracy", "conciseness", "clarity"]


def _batch(rewards, weights, k):
    return updated_record(rewards, k, clipped_weights=weights)


def _reference_cov(r, w, k):
    """Independent loop: population covariance per group via np.cov(bias=True), averaged."""
    groups = [np.cov(r[g : g + k], w[g : g + k], bias=True)[0, 1] for g in range(0, len(w), k)]
    return float(np.mean(groups))


def test_hand_worked_covariance():
    # one group of 2: r = [1, 0], w = [2, -2]: Cov = mean((±0.5)(±2)) = 1
    cov = group_covariances(np.array([[1.0], [0.0]]), np.array([2.0, -2.0]), 2)
    assert cov[0] == pytest.approx(1.0)


def test_covariances_match_numpy_on_random_batch():
    rng = np.random.default_rng(0)
    r = rng.integers(0, 2, size=(24, 3)).astype(float)
    w = rng.normal(size=24)
    got = group_covariances(r, w, 6)
    for m in range(3):
        assert got[m] == pytest.approx(_reference_cov(r[:, m], w, 6))


def test_correlation_signal():
    rng = np.random.default_rng(1)
    r = rng.normal(size=(8, 1))
    w = rng.normal(size=8)
    got = group_covariances(r, w, 4, signal="correlation")
    expected = np.mean([np.corrcoef(r[g : g + 4, 0], w[g : g + 4])[0, 1] for g in (0, 4)])
    assert got[0] == pytest.approx(expected)


def test_correlation_skips_flat_groups_hand_worked():
    # group A: reward constant (no correlation defined); group B: r = (0, 0, 1), w = (0, 1, 2):
    #   r - mean = (-1/3, -1/3, 2/3), w - mean = (-1, 0, 1): Cov = (1/3 + 2/3) / 3 = 1/3,
    #   Var r = 2/9, Var w = 2/3, Corr = (1/3) / sqrt(4/27) = sqrt(3)/2;
    # group C: weight constant. The mean is group B's value, not a third (or half) of it.
    r = np.array([[1.0], [1.0], [1.0], [0.0], [0.0], [1.0], [0.0], [1.0], [0.0]])
    w = np.array([0.0, 1.0, 2.0, 0.0, 1.0, 2.0, 5.0, 5.0, 5.0])
    assert group_covariances(r, w, 3, signal="correlation")[0] == pytest.approx(np.sqrt(3) / 2)
    assert group_covariances(r[:6], w[:6], 3, signal="correlation")[0] == pytest.approx(np.sqrt(3) / 2)
    # covariance mode is unchanged: a flat group's covariance is exactly 0 and counts, (0 + 1/3 + 0) / 3
    assert group_covariances(r, w, 3)[0] == pytest.approx(1 / 9)


def test_correlation_of_an_all_flat_batch_is_zero_not_nan():
    # objective 0: reward constant in every group; objective 1: the weight is constant in every group;
    # objective 2: never applicable, no usable group at all (NaN, as in covariance mode)
    r = np.array([[1.0, 0.0, np.nan], [1.0, 1.0, np.nan], [0.0, 1.0, np.nan], [0.0, 0.0, np.nan]])
    w = np.array([3.0, 3.0, -1.0, -1.0])
    corr = group_covariances(r, w, 2, signal="correlation")
    assert corr[0] == 0.0 and corr[1] == 0.0 and np.isnan(corr[2])
    np.testing.assert_array_equal(group_covariances(r, w, 2)[:2], [0.0, 0.0])


def test_correlation_ctwa_deficit_on_a_flat_batch_is_the_target():
    ctwa = CTWA(targets=[0.3], lambda0=[1.0], lr=1.0, signal="correlation")
    ctwa.start(["a"])
    ctwa.after_update(_batch([[1.0], [1.0], [0.0], [0.0]], [0.5, -0.5, 0.5, -0.5], 2))
    assert ctwa.last_cov_[0] == 0.0 and ctwa.deficit_[0] == pytest.approx(0.3)
    assert ctwa.u_[0] == pytest.approx(0.3)


def test_outliers_nonfinite_and_small_groups_are_dropped():
    r = np.array([[1.0], [0.0], [1.0], [0.0], [1.0], [np.nan]])
    w = np.array([1.0, -1.0, 1000.0, 1.0, np.inf, 2.0])
    # group 1 (rows 0-2): row 2 is > 100× median |w| (median 1) -> kept rows 0,1: cov = 0.5
    # group 2 (rows 3-5): row 4 non-finite, row 5 not applicable -> one row left -> skipped
    assert group_covariances(r, w, 3)[0] == pytest.approx(0.5)


def test_zero_median_does_not_drop_every_weight():
    # median |w| is 0: a naive 100×median filter would drop the only informative group
    r = np.array([[1.0], [0.0], [1.0], [1.0], [0.0], [0.0]])
    w = np.array([1.0, -1.0, 0.0, 0.0, 0.0, 0.0])
    assert group_covariances(r, w, 2)[0] == pytest.approx(0.5 / 3)


def test_update_rule_against_direct_computation():
    rng = np.random.default_rng(2)
    ctwa = CTWA()  # paper defaults
    ctwa.start(OBJ)
    u = np.log([0.333, 0.333, 0.334])
    ema = None
    for _ in range(4):
        r = rng.integers(0, 2, size=(16, 3)).astype(float)
        w = rng.normal(size=16).astype(np.float32).astype(float)
        ctwa.after_update(_batch(r, w, 4))
        c = np.array([_reference_cov(r[:, m], w, 4) for m in range(3)])
        ema = c if ema is None else 0.9 * ema + 0.1 * c
        u = u + 0.05 * np.maximum(0.0, np.array([0.15, 0.08, 0.08]) - ema)
        np.testing.assert_allclose(ctwa.cov_ema_, ema, rtol=1e-10)
        np.testing.assert_allclose(ctwa.u_, u, rtol=1e-10)
    np.testing.assert_allclose(ctwa.weights().numpy(), np.exp(u), rtol=1e-6)


def test_deficit_only_raises_weights():
    ctwa = CTWA(targets=[0.0, 1.0], lambda0=[1.0, 1.0], lr=1.0)
    ctwa.start(["a", "b"])
    r = np.array([[1.0, 1.0], [0.0, 0.0]])
    ctwa.after_update(_batch(r, [1.0, -1.0], 2))  # both covariances 0.5
    np.testing.assert_allclose(ctwa.u_, [0.0, 0.5])


def test_gate_stops_raising_reached_objective():
    ctwa = CTWA(targets=[1.0, 1.0], lambda0=[1.0, 1.0], lr=1.0, gate={"a": 0.5})
    ctwa.start(["a", "b"])
    r = np.array([[1.0, 1.0], [0.0, 0.0]])  # batch mean of a = 0.5 reaches the gate
    ctwa.after_update(_batch(r, [1.0, -1.0], 2))
    np.testing.assert_allclose(ctwa.u_, [0.0, 0.5])


def test_u_max_bounds_log_weights():
    ctwa = CTWA(targets=[10.0], lambda0=[1.0], lr=1.0, u_max=0.3)
    ctwa.start(["a"])
    ctwa.after_update(_batch([[1.0], [0.0]], [1.0, -1.0], 2))
    assert ctwa.u_[0] == pytest.approx(0.3)


def test_targets_validated_against_objectives():
    with pytest.raises(RecipeError, match="2 values for 3 objectives"):
        CTWA(targets=[0.1, 0.2]).start(OBJ)
    with pytest.raises(RecipeError, match="unknown objective"):
        CTWA(targets={"accuracy": 0.1, "conciseness": 0.1, "clarty": 0.1}).start(OBJ)


def test_state_round_trip_and_metrics():
    ctwa = CTWA()
    ctwa.start(OBJ)
    ctwa.after_update(_batch(np.eye(4, 3), [1.0, 0.0, -1.0, 0.5], 2))
    other = CTWA()
    other.load_state_dict(ctwa.state_dict())
    other.start(OBJ)
    np.testing.assert_array_equal(other.u_, ctwa.u_)
    assert set(ctwa.metrics()) >= {"weights/accuracy", "ctwa/u/clarity", "ctwa/cov/conciseness"}
