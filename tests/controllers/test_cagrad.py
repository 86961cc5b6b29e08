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


def _unguarded_weights(gram, c=0.5, rescale=1):
    """The formula as LibMTL writes it, w = (b + φ/(‖g_x‖ + 1e-8) · x*) / divisor, with no care for zero gradients."""
    m = gram.shape[0]
    b = np.full(m, 1.0 / m)
    gram = gram / (np.trace(gram) / m)
    phi = c * np.sqrt(b @ gram @ b + 1e-8) + 1e-8
    x = cagrad_inner(gram, phi)
    return (b + phi / (np.sqrt(max(x @ gram @ x, 0.0)) + 1e-8) * x) / {0: 1.0, 1: 1.0 + c**2, 2: 1.0 + c}[rescale]


def test_zero_gradient_hand_worked():
    # g_1 = (1, 0), g_2 = 0: x* = e_2 (value 0 beats <g_1, g_0> > 0), so d = g_0 / (1 + c²) = g_1 / 2.5: any weight
    # on g_2 gives that d; the formula's λ x*_2 would be ≈ 0.5/1e-8: it gets its averaging weight b_2 / 1.25 instead
    assert _unguarded_weights(np.diag([1.0, 0.0]))[1] > 1e6
    np.testing.assert_allclose(cagrad_weights(np.diag([1.0, 0.0])), [0.4, 0.4], atol=1e-12)
    # a batch where the zero gradient's objective is the second of three
    np.testing.assert_allclose(cagrad_weights(np.diag([1.0, 0.0, 1.0])), np.full(3, 1 / 3) / 1.25, atol=1e-12)


@pytest.mark.parametrize("m", [2, 3, 4])
@pytest.mark.parametrize("rescale", [0, 1])
def test_zero_gradient_weights_are_bounded_and_the_direction_unchanged(m, rescale):
    """A zero row and column in G: the weights used and logged stay bounded and d = Σ w g is the formula's d (to
    1e-9). Against an independent solution, by sampling the ball ‖d - g_0‖ ≤ c‖g_0‖: where the non-zero
    objectives conflict (no d in the ball improves them all), d is CAGrad's answer on them,
    argmax min_{g_i ≠ 0} <g_i, d>; elsewhere the zero gradient's <0, d> = 0 is the binding term, the primal
    optimum is not unique and d only has to stay in the ball (test_zero_gradient_hand_worked pins a clean case)."""
    rng = np.random.default_rng(20 + m)
    c = 0.5
    divisor = {0: 1.0, 1: 1.0 + c**2}[rescale]
    blew_up = conflicts = 0
    for trial in range(6):
        grads = rng.normal(size=(m, 6))
        zero = rng.integers(m)
        if trial % 2 and m > 2:  # a strong conflict between two of the others
            first, second = [i for i in range(m) if i != zero][:2]
            grads[second] = -1.5 * grads[first] + 0.1 * rng.normal(size=6)
        grads[zero] = 0.0
        gram = grads @ grads.T
        old, new = _unguarded_weights(gram, c, rescale), cagrad_weights(gram, c, rescale)
        blew_up += int(np.abs(old).max() > 1e6)
        assert np.isfinite(new).all() and (new >= 0).all() and new.max() <= 10
        assert new[zero] == pytest.approx(1 / m / divisor)
        scale = np.sqrt(np.trace(gram) / m)
        np.testing.assert_allclose(new @ grads, old @ grads, rtol=0, atol=1e-9 * scale)

        d, g0 = new @ grads * divisor, grads.mean(axis=0)  # the direction before rescaling
        radius = c * np.linalg.norm(g0)
        samples = rng.normal(size=(20000, 6))
        samples = g0 + radius * rng.uniform(size=(20000, 1)) ** (1 / 6) * samples / np.linalg.norm(
            samples, axis=1, keepdims=True
        )
        others = np.delete(grads, zero, axis=0)
        best = (samples @ others.T).min(axis=1).max()
        if best < 0:  # the non-zero objectives conflict: CAGrad on them
            conflicts += 1
            assert np.linalg.norm(d - g0) <= radius * (1 + 1e-6)
            assert (others @ d).min() >= best - 1e-6
        else:
            assert np.linalg.norm(d - g0) <= radius * (1 + 1e-6)
    assert blew_up  # the formula's weights did explode on these batches
    assert conflicts or m == 2


def test_controller_logs_bounded_weights_for_a_zero_gradient():
    c = CAGrad()
    c.start(list("abc"))
    gram = np.array([[1.0, 0.2, 0.0], [0.2, 2.0, 0.0], [0.0, 0.0, 0.0]])
    used = c.weights_from_gram(gram, np.zeros(3), None)
    logged = c.metrics()
    assert np.array_equal(used, c.weights_) and max(logged[f"weights/{o}"] for o in "abc") <= 10
    assert logged["weights/c"] == pytest.approx(1 / 3 / 1.25)


def test_a_gram_matrix_non_psd_by_rounding_gives_finite_weights():
    """A float32 Gram matrix of opposed gradients and a zero one can have a tiny negative quadratic form: the
    square roots must not see it (it crashed a TinySort sweep with an empty simplex projection)."""
    gram = np.array([[1.0, -1.0, 0.0], [-1.0, 1.0, 0.0], [0.0, 0.0, -1e-7]])
    weights = cagrad_weights(gram)
    assert np.isfinite(weights).all() and (weights >= 0).all() and weights.max() <= 10
    # b·G·b = -1e-7/9 < 0 here; with opposed unit gradients any step of the simplex averages them to 0
    assert abs(weights[0] - weights[1]) < 1e-6
