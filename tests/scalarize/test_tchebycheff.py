import math

import numpy as np
import pytest
import torch

from morl.components import RecipeError
from morl.scalarize import SmoothTchebycheff, Tchebycheff


def test_golden_values_fixed_ideal():
    r = torch.tensor([[1.0, 0.0], [0.5, 0.5], [1.0, 1.0]])
    w = torch.tensor([0.5, 0.25])
    tch = Tchebycheff(reference="fixed", ideal=[1.0, 1.0])
    # gaps w ⊙ (z - r): (0, 0.25), (0.25, 0.125), (0, 0) -> s = -max
    torch.testing.assert_close(tch(r, w), torch.tensor([-0.25, -0.25, 0.0]))
    smooth = SmoothTchebycheff(reference="fixed", ideal=[1.0, 1.0], mu=0.5)
    expected = [
        -0.5 * math.log(math.exp(0.0) + math.exp(0.5)),
        -0.5 * math.log(math.exp(0.5) + math.exp(0.25)),
        -0.5 * math.log(2),
    ]
    torch.testing.assert_close(smooth(r, w), torch.tensor(expected))


def test_running_ideal_point_is_the_monotone_elementwise_max():
    rng = np.random.default_rng(0)
    tch = Tchebycheff()
    assert tch.state_dict() == {}
    seen = np.full(3, -np.inf)
    for _ in range(20):
        r = torch.tensor(rng.normal(size=(6, 3)), dtype=torch.float32)
        previous = None if getattr(tch, "ideal_", None) is None else tch.ideal_.copy()
        tch.observe(r)
        seen = np.maximum(seen, r.double().numpy().max(axis=0))
        np.testing.assert_allclose(tch.ideal_, seen)
        if previous is not None:
            assert (tch.ideal_ >= previous).all()
        # scored after observing: every gap is non-negative, so every score is ≤ 0
        assert (tch(r, torch.ones(3)) <= 0).all()
    resumed = Tchebycheff()
    resumed.load_state_dict(tch.state_dict())
    np.testing.assert_allclose(resumed.ideal_, tch.ideal_)


def test_reference_modes_and_not_applicable_rewards():
    r = torch.tensor([[0.0, 1.0], [0.5, 0.0]])
    w = torch.ones(2)
    batch = Tchebycheff(reference="batch")
    batch.observe(r)
    assert batch.state_dict() == {}  # no state: z is each batch's max
    torch.testing.assert_close(batch(r, w), torch.tensor([-0.5, -1.0]))
    running = Tchebycheff()
    torch.testing.assert_close(running(r, w), batch(r, w))  # before any observe: the batch max
    running.observe(torch.tensor([[2.0, float("nan")]]))
    np.testing.assert_allclose(running.ideal_, [2.0, -np.inf])
    running.observe(r)
    np.testing.assert_allclose(running.ideal_, [2.0, 1.0])
    with pytest.raises(RecipeError, match="ideal"):
        Tchebycheff(reference="fixed")
    with pytest.raises(RecipeError, match="ideal"):
        Tchebycheff(ideal=[1.0, 1.0])
    with pytest.raises(ValueError, match="2 objectives but 3 weights"):
        Tchebycheff()(r, torch.ones(3))
    with pytest.raises(ValueError, match="ideal point has 3 values"):
        Tchebycheff(reference="fixed", ideal=[1.0, 1.0, 1.0])(r, w)


def test_smooth_is_bounded_by_tchebycheff_and_converges():
    rng = np.random.default_rng(1)
    r = torch.tensor(rng.uniform(size=(50, 4)))
    w = torch.tensor(rng.uniform(0.1, 1.0, size=4))
    tch = Tchebycheff(reference="fixed", ideal=[1.0] * 4)(r, w)
    for mu in (1.0, 0.1, 0.01):
        smooth = SmoothTchebycheff(reference="fixed", ideal=[1.0] * 4, mu=mu)(r, w)
        assert (smooth <= tch + 1e-12).all() and (smooth >= tch - mu * math.log(4) - 1e-12).all()
    torch.testing.assert_close(
        SmoothTchebycheff(reference="fixed", ideal=[1.0] * 4, mu=1e-4)(r, w), tch, atol=2e-4, rtol=0
    )


def test_zero_one_rewards_score_the_worst_objective():
    # with ideal 1 and equal weights, a completion is only as good as its worst objective
    r = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    scores = Tchebycheff(reference="fixed", ideal=[1.0, 1.0, 1.0])(r, torch.full((3,), 1 / 3))
    torch.testing.assert_close(scores, torch.tensor([0.0, -1 / 3, -1 / 3]))
