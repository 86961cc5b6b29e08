import numpy as np
import pytest

from morl.controllers import GradNorm
from morl.controllers.gradients import reward_gaps
from morl.controllers.gradnorm import gradnorm_step
from tests.batches import reward_batch


def test_hand_worked_step():
    # G = w‖g‖ = (1, 3), Ḡ = 2; rates (2, 1)/1.5; targets 2·(4/3)^1.5 = 3.079, 2·(2/3)^1.5 = 1.089
    # signs (-1, +1): w = (1 + 0.1·1, 1 - 0.1·3) = (1.1, 0.7) -> × 2/1.8
    w = gradnorm_step(np.ones(2), np.array([1.0, 3.0]), np.array([1.0, 0.5]), alpha=1.5, lr=0.1)
    np.testing.assert_allclose(w, np.array([1.1, 0.7]) * 2 / 1.8)
    # α = 0 ignores training rates: the larger gradient norm loses weight
    w = gradnorm_step(np.ones(3), np.array([2.0, 2.0, 5.0]), np.array([1.0, 9.0, 1.0]), alpha=0.0, lr=0.05)
    np.testing.assert_allclose(w, np.array([1.1, 1.1, 0.75]) * 3 / 2.95)


def test_balanced_state_is_a_fixed_point():
    # equal weighted norms G = (4/3, 4/3) and equal training rates: nothing to correct
    w = gradnorm_step(np.array([4 / 3, 2 / 3]), np.array([1.0, 2.0]), np.array([0.5, 0.5]), alpha=1.5, lr=0.1)
    np.testing.assert_allclose(w, [4 / 3, 2 / 3])


def test_weights_stay_non_negative_and_sum_to_m():
    rng = np.random.default_rng(0)
    for m in (2, 3, 5):
        w = np.ones(m)
        for _ in range(200):
            w = gradnorm_step(w, rng.uniform(0, 5, m), rng.uniform(0.01, 2, m), alpha=1.5, lr=0.5)
            assert (w >= 0).all() and w.sum() == pytest.approx(m)


def test_controller_uses_reward_gaps_and_current_weights(normalized):
    c = GradNorm(lr=0.1)
    c.start(["a", "b"])
    first = reward_gaps(reward_batch([[0.0, 0.0], [1.0, 0.0]]), 1.0)  # gaps (0.5, 1.0) = L(0)
    used = c.weights_from_gram(np.diag([1.0, 9.0]), np.zeros(2), first)
    np.testing.assert_allclose(used, [1.0, 1.0])  # this mini-batch's loss uses the weights before the update
    np.testing.assert_allclose(c.L0_, [0.5, 1.0])
    # rates equal (L/L0 = 1): targets Ḡ = 2; G = (1, 3) -> w = (1.1, 0.7) renormalised
    np.testing.assert_allclose(c.weights_, np.array([1.1, 0.7]) * 2 / 1.8)
    normalized(c)
    saturated = reward_gaps(reward_batch([[1.0, 1.0], [1.0, 1.0]]), 1.0)  # gaps floored at 1e-3, never 0
    used = c.weights_from_gram(np.diag([1.0, 9.0]), np.zeros(2), saturated)
    np.testing.assert_allclose(used, np.array([1.1, 0.7]) * 2 / 1.8)
    normalized(c)
    assert "gradnorm/L0/a" in c.metrics()
