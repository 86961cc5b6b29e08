import numpy as np
import pytest

from morl.controllers import CAGrad
from morl.controllers.cagrad import cagrad_inner, cagrad_weights, project_to_simplex


def _simplex_grid(m, steps):
    if m == 1:
        return np.ones((1, 1))
    points = [np.array([a / steps, 1 - a / steps]) for a in range(steps + 1)] if m == 2 else []
    if m == 3:
        points = [np.array([a, b, steps - a - b]) / steps for a in range(steps + 1) for b in range(steps + 1 - a)]
    return np.array(points)


def test_golden_values():
    # orthonormal pair: x* = (1/2, 1/2), ‖g_0‖ = 1/√2, φ = c‖g_0‖, ‖g_x‖ = 1/√2, λ = c; w = (1/2 + c/2)/(1 + c²)
    np.testing.assert_allclose(cagrad_weights(np.eye(2), c=0.5), [0.6, 0.6], atol=1e-6)
    np.testing.assert_allclose(cagrad_weights(np.eye(2), c=0.5, rescale=0), [0.75, 0.75], atol=1e-6)
    np.testing.assert_allclose(cagrad_weights(np.eye(2), c=0.5, rescale=2), [0.5, 0.5], atol=1e-6)
    # c = 0: the average gradient
    np.testing.assert_allclose(cagrad_weights(np.array([[4.0, -1.0], [-1.0, 1.0]]), c=0.0), [0.5, 0.5], atol=1e-6)


@pytest.mark.parametrize("m", [2, 3])
def test_inner_problem_against_a_grid(m):
    rng = np.random.default_rng(m)
    grid = _simplex_grid(m, 400 if m == 3 else 20000)
    for _ in range(10):
        a = rng.normal(size=(m, 4))
        gram = a @ a.T
        phi = rng.uniform(0.1, 2.0)
        values = grid @ gram @ np.full(m, 1 / m) + phi * np.sqrt(np.einsum("ij,jk,ik->i", grid, gram, grid) + 1e-8)
        x = cagrad_inner(gram, phi)
        found = x @ gram @ np.full(m, 1 / m) + phi * np.sqrt(x @ gram @ x + 1e-8)
        assert found <= values.min() + 1e-9 and (x >= 0).all() and x.sum() == pytest.approx(1.0)


@pytest.mark.parametrize("m", [2, 3, 4])
def test_direction_solves_the_conflict_averse_problem(m):
    """With rescale 0, d = Σ w g maximises min_i <g_i, d> over the ball ‖d - g_0‖ ≤ c‖g_0‖ (Liu et al., eq. 2)."""
    rng = np.random.default_rng(10 + m)
    c = 0.5
    for _ in range(5):
        grads = rng.normal(size=(m, 6))
        w = cagrad_weights(grads @ grads.T, c=c, rescale=0)
        assert (w >= 0).all()
        d, g0 = w @ grads, grads.mean(axis=0)
        radius = c * np.linalg.norm(g0)
        assert np.linalg.norm(d - g0) == pytest.approx(radius, rel=1e-6)
        best = (grads @ d).min()
        others = rng.normal(size=(4000, 6))
        others = g0 + radius * others / np.linalg.norm(others, axis=1, keepdims=True)
        assert (others @ grads.T).min(axis=1).max() <= best + 1e-6


def test_scale_free_and_degenerate_grams(normalized):
    rng = np.random.default_rng(0)
    a = rng.normal(size=(3, 5))
    gram = a @ a.T
    np.testing.assert_allclose(cagrad_weights(gram * 1e-10), cagrad_weights(gram), rtol=1e-5)
    np.testing.assert_allclose(cagrad_weights(np.zeros((3, 3))), np.full(3, 1 / 3) / 1.25)
    c = CAGrad()
    c.start(list("abc"))
    c.weights_from_gram(gram, np.zeros(3), None)
    normalized(c)
    assert (c.weights_ >= 0).all()


def test_simplex_projection():
    np.testing.assert_allclose(project_to_simplex(np.array([0.2, 0.3, 0.5])), [0.2, 0.3, 0.5])
    np.testing.assert_allclose(project_to_simplex(np.array([2.0, 0.0])), [1.0, 0.0])
    np.testing.assert_allclose(project_to_simplex(np.array([1.0, 1.0, -5.0])), [0.5, 0.5, 0.0])
