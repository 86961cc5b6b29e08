import itertools
from fractions import Fraction

import numpy as np
import pytest
import torch

from morl.algos import GRPO
from morl.components import RecipeError
from morl.controllers import MGDA
from morl.controllers.gradients import reward_gaps
from morl.controllers.mgda import min_norm_weights
from tests.batches import reward_batch


def _random_gram(rng, m, rank):
    a = rng.normal(size=(m, rank)) * rng.uniform(0.1, 10, size=(m, 1))
    return a @ a.T


def _active_set_min_norm(gram):
    """Independent solver: on every face of the simplex, solve the equality-constrained QP, keep the best
    feasible point (exact for small M)."""
    m = len(gram)
    best, best_w = np.inf, None
    for k in range(1, m + 1):
        for face in itertools.combinations(range(m), k):
            face = list(face)
            kkt = np.zeros((k + 1, k + 1))
            kkt[:k, :k], kkt[:k, k], kkt[k, :k] = gram[np.ix_(face, face)], 1.0, 1.0
            rhs = np.zeros(k + 1)
            rhs[k] = 1.0
            sol = np.linalg.lstsq(kkt, rhs, rcond=None)[0][:k]
            if (sol >= -1e-12).all():
                w = np.zeros(m)
                w[face] = np.maximum(sol, 0.0)
                w /= w.sum()
                if w @ gram @ w < best:
                    best, best_w = w @ gram @ w, w
    return best_w


@pytest.mark.parametrize(
    ("gram", "expected"),
    [
        ([[1.0, -1.0], [-1.0, 4.0]], [5 / 7, 2 / 7]),  # g1 = e1, g2 = -e1 + √3 e2
        ([[1.0, 2.0], [2.0, 4.0]], [1.0, 0.0]),  # g2 = 2 g1: the shorter one is the min-norm point
        ([[1.0, 1.0], [1.0, 1.0]], [0.5, 0.5]),  # identical gradients: any weights, the symmetric ones
        (np.eye(3), [1 / 3, 1 / 3, 1 / 3]),  # orthonormal: the centroid
        (np.diag([1.0, 4.0, 4.0]), [2 / 3, 1 / 6, 1 / 6]),  # orthogonal: w ∝ 1/‖g‖²
        ([[1.0, -1.0, 0.0], [-1.0, 1.0, 0.0], [0.0, 0.0, 1.0]], None),  # g2 = -g1: the zero vector is reachable
    ],
)
def test_golden_values(gram, expected):
    w = min_norm_weights(np.array(gram))
    if expected is None:
        assert w @ np.array(gram) @ w == pytest.approx(0.0, abs=1e-10) and w[2] == pytest.approx(0.0, abs=1e-6)
    else:
        np.testing.assert_allclose(w, expected, atol=1e-7)


@pytest.mark.parametrize("m", [2, 3, 4, 5, 6])
def test_kkt_and_independent_solver_on_random_grams(m):
    rng = np.random.default_rng(m)
    for _ in range(30):
        gram = _random_gram(rng, m, rank=int(rng.integers(1, m + 3)))
        w = min_norm_weights(gram)
        assert (w >= 0).all() and w.sum() == pytest.approx(1.0)
        gw, value, scale = gram @ w, w @ gram @ w, np.trace(gram)
        # KKT of min wᵀGw on the simplex: (Gw)_i ≥ wᵀGw for all i, with equality wherever w_i > 0
        assert gw.min() >= value - 1e-8 * scale
        assert np.max(w * (gw - value)) <= 1e-8 * scale
        reference = _active_set_min_norm(gram)
        assert value == pytest.approx(reference @ gram @ reference, abs=1e-8 * scale)
        if np.linalg.matrix_rank(gram) == m:  # strictly convex: the minimiser is unique
            np.testing.assert_allclose(w, reference, atol=1e-5)


def test_invariant_to_scale_and_equivariant_to_permutation():
    rng = np.random.default_rng(0)
    gram = _random_gram(rng, 4, 6)
    w = min_norm_weights(gram)
    np.testing.assert_allclose(min_norm_weights(gram * 1e-9), w, atol=1e-7)
    perm = rng.permutation(4)
    np.testing.assert_allclose(min_norm_weights(gram[np.ix_(perm, perm)]), w[perm], atol=1e-7)
    np.testing.assert_allclose(min_norm_weights(np.zeros((3, 3))), np.full(3, 1 / 3))


def test_gradient_normalisations():
    gram = np.diag([4.0, 1.0])  # orthogonal gradients of norms 2 and 1
    gaps = reward_gaps(reward_batch([[0.0, 1.0], [1.0, 0.5]]), 1.0)  # reward gaps 1 - mean r: 0.5 and 0.25
    np.testing.assert_allclose(gaps, [0.5, 0.25])
    for normalize, expected in [
        ("none", [0.2, 0.8]),  # orthogonal: w ∝ 1/‖g‖²
        ("l2", [0.5, 0.5]),  # unit gradients
        ("loss", [0.5, 0.5]),  # G / (L Lᵀ) = diag(16, 16)
        ("loss+", [0.8, 0.2]),  # scales L‖g‖ = (1, 0.25): diag(4, 16)
    ]:
        c = MGDA(normalize=normalize)
        c.start(["a", "b"])
        np.testing.assert_allclose(c.weights_from_gram(gram, np.zeros(2), gaps), expected, atol=1e-9)


def test_controller_on_a_real_batch_cheap_and_exact(policy_batch, normalized):
    policy, batch = policy_batch
    for params in ("all", "last_layers:1"):
        c = MGDA(params=params)
        c.start(["accuracy", "conciseness", "clarity"])
        loss, _ = c.combine_losses(policy, batch, GRPO())
        assert torch.isfinite(loss)
        normalized(c)
    assert repr(MGDA()).startswith("MGDA(params='all', batched=False, normalize='none'")


def _exact_rational_min_norm(gram):
    """Independent reference in exact rational arithmetic: the float Gram matrix converted exactly to fractions;
    on each face S of the simplex, Gaussian elimination solves ``G_SS w + ν 1 = 0, Σ w = 1`` exactly; the face
    whose solution meets the KKT conditions exactly (``w_S > 0``, ``(Gw)_i ≥ wᵀGw`` off S) is the optimum."""
    m = len(gram)
    g = [[Fraction(float(x)) for x in row] for row in gram]
    for k in range(1, m + 1):
        for face in itertools.combinations(range(m), k):
            rows = [[g[i][j] for j in face] + [Fraction(1), Fraction(0)] for i in face]
            rows.append([Fraction(1)] * k + [Fraction(0), Fraction(1)])
            n = k + 1
            singular = False
            for col in range(n):
                pivot = next((r for r in range(col, n) if rows[r][col] != 0), None)
                if pivot is None:
                    singular = True
                    break
                rows[col], rows[pivot] = rows[pivot], rows[col]
                for r in range(n):
                    if r != col and rows[r][col] != 0:
                        f = rows[r][col] / rows[col][col]
                        rows[r] = [a - f * b for a, b in zip(rows[r], rows[col], strict=True)]
            if singular:
                continue
            sol = [rows[i][n] / rows[i][i] for i in range(k)]
            if min(sol) <= 0:
                continue
            w = [Fraction(0)] * m
            for i, wi in zip(face, sol, strict=True):
                w[i] = wi
            gw = [sum(g[i][j] * w[j] for j in range(m)) for i in range(m)]
            value = sum(w[i] * gw[i] for i in range(m))
            if all(gw[i] >= value for i in range(m)):
                return np.array([float(x) for x in w])
    raise AssertionError("no face satisfies the KKT conditions")


def _near_stationary_gram(seed, coefficients, noise):
    rng = np.random.default_rng(seed)
    b = rng.standard_normal(20)
    j = np.outer(coefficients, b) + noise * rng.standard_normal((len(coefficients), 20))
    return j @ j.T


def test_exact_near_pareto_stationarity_reproducer():
    """Gradients nearly collinear and opposed (cond ≈ 1e7): Frank-Wolfe stalled at (0.364, 0.273, 0.363)."""
    gram = _near_stationary_gram(0, [1.0, -2.0, 0.5], 1e-3)
    assert np.linalg.cond(gram) > 1e6
    reference = _exact_rational_min_norm(gram)
    np.testing.assert_allclose(reference, [0.492, 0.298, 0.210], atol=1e-3)
    np.testing.assert_allclose(min_norm_weights(gram), reference, atol=1e-6)


@pytest.mark.parametrize(
    "coefficients",
    [
        [1.0, -2.0, 0.5],  # opposed
        [1.0, -1.0, 3.0, -0.5],  # opposed, M = 4
        [1.0, 1.001, 0.999],  # nearly parallel, same direction: the solution sits near a vertex or an edge
        [1.0, 2.0, 3.0, 4.0],  # parallel with different lengths: the shortest dominates
        [1.0, -1e-3, 1.0],  # one nearly zero gradient
    ],
)
@pytest.mark.parametrize("noise", [1e-1, 1e-2, 1e-3, 1e-4])
def test_exact_against_rational_kkt_on_ill_conditioned_grams(coefficients, noise):
    for seed in range(5):
        gram = _near_stationary_gram(seed, coefficients, noise)
        np.testing.assert_allclose(min_norm_weights(gram), _exact_rational_min_norm(gram), atol=1e-6)


@pytest.mark.parametrize("m", [3, 4])
@pytest.mark.parametrize("eps", [1e-1, 1e-2, 1e-3, 1e-4])
def test_exact_on_nearly_parallel_gradients(m, eps):
    """``g_i = b + ε s_i`` with every ``s_i ⊥ b``: the hull is a small copy of that of the ``s_i`` shifted by
    ``b``, so the min-norm weights are those of the ``s_i`` alone, whatever ε (cond(G) ≈ 1/ε²)."""
    rng = np.random.default_rng(m)
    b = rng.standard_normal(20)
    s = rng.standard_normal((m, 20))
    s -= np.outer(s @ b / (b @ b), b)
    j = b + eps * s
    gram = j @ j.T
    w = min_norm_weights(gram)
    assert (w > 0.05).all()  # an interior solution, the hard case for iterative solvers
    np.testing.assert_allclose(w, min_norm_weights(s @ s.T), atol=1e-6)
    np.testing.assert_allclose(w, _exact_rational_min_norm(gram), atol=1e-6)


def test_refuses_more_objectives_than_the_exact_solver_enumerates():
    with pytest.raises(RecipeError, match="at most 16 objectives, found 17"):
        MGDA().start([f"r{i}" for i in range(17)])
