"""The two-mode example: closed forms against direct simulation."""

import numpy as np
import pytest

from morl.theory import TwoMode

CASES = [
    # (r_good, r_bad, weights): accuracy favours good; s favours bad.
    ([1.0, 0.0, 0.2], [0.0, 1.0, 1.0], [0.34, 0.33, 0.33]),
    ([0.9, 0.1], [0.2, 0.8], [0.3, 0.7]),
    ([1.0, 1.0], [0.0, 0.5], [0.5, 0.5]),  # s favours good: the log-odds fall instead
]


@pytest.mark.parametrize(("r_good", "r_bad", "weights"), CASES)
@pytest.mark.parametrize("p_good", [0.5, 0.95])
def test_closed_forms_equal_the_simulation(r_good, r_bad, weights, p_good):
    tm, eta, steps = TwoMode(r_good, r_bad, weights), 0.7, 40
    sim, closed = tm.simulate(p_good, eta, steps), tm.closed_form(p_good, eta, steps)
    np.testing.assert_allclose(np.diff(sim.log_odds), tm.log_odds_increment(eta), atol=1e-12)
    for name in ("p_good", "log_odds", "values", "covariance"):
        np.testing.assert_allclose(getattr(sim, name), getattr(closed, name), atol=1e-12, err_msg=name)
    np.testing.assert_allclose(tm.covariance(sim.p_good), sim.covariance, atol=1e-14)


def test_objective_falls_monotonically_when_s_favours_the_bad_mode():
    tm = TwoMode(r_good=[1.0, 0.0, 0.2], r_bad=[0.0, 1.0, 1.0], weights=[0.34, 0.33, 0.33])
    assert tm.s_bad > tm.s_good
    traj = tm.simulate(p_good=0.9, eta=0.5, steps=60)
    accuracy, score = traj.values[:, 0], traj.values @ tm.weights
    assert np.all(np.diff(accuracy) < 0) and np.all(np.diff(score) > 0)
    assert np.all(traj.covariance[:, 0] < 0)
    # The covariance's sign predicts each step's direction, for every objective.
    moved = np.diff(traj.values, axis=0)
    assert np.all(np.sign(moved) == np.sign(traj.covariance[:-1]))


def test_covariance_closed_form_matches_the_bandit():
    tm = TwoMode(r_good=[0.8, 0.3], r_bad=[0.1, 0.9], weights=[1.0, 2.0])
    for p in np.linspace(0.01, 0.99, 7):
        bandit = tm.bandit(p)
        np.testing.assert_allclose(tm.covariance(p), bandit.covariance(bandit.scalarize(tm.weights)), atol=1e-14)


def test_shapes_are_validated():
    with pytest.raises(ValueError, match="same length"):
        TwoMode([1.0, 0.0], [0.0], [0.5, 0.5])
