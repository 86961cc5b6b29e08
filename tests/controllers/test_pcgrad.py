import numpy as np
import pytest

from morl.controllers import PCGrad
from morl.controllers.pcgrad import pcgrad_weights


def _pcgrad_vectors(grads, orders):
    """Direct PCGrad on gradient vectors (Yu et al. 2020, Algorithm 1)."""
    out = np.zeros(grads.shape[1])
    for i, g in enumerate(grads):
        projected = g.copy()
        for j in orders[i]:
            if j == i:
                continue
            dot = projected @ grads[j]
            if dot < 0:
                projected -= dot / (grads[j] @ grads[j]) * grads[j]
        out += projected
    return out


def test_hand_worked_two_objectives():
    # g1 = (1, 0), g2 = (-1, 1): g1^PC = (1/2, 1/2) = g1 + g2/2, g2^PC = (0, 1) = g1 + g2; sum: 2 g1 + 1.5 g2
    grads = np.array([[1.0, 0.0], [-1.0, 1.0]])
    w = pcgrad_weights(grads @ grads.T, [[1], [0]])
    np.testing.assert_allclose(w, [2.0, 1.5])
    np.testing.assert_allclose(w @ grads, [0.5, 1.5])


def test_no_conflict_is_plain_summation():
    grads = np.array([[1.0, 0.0, 0.0], [0.5, 1.0, 0.0], [0.0, 0.2, 1.0]])
    np.testing.assert_allclose(pcgrad_weights(grads @ grads.T, [[0, 1, 2]] * 3), np.ones(3))


@pytest.mark.parametrize("m", [2, 3, 4, 5])
def test_matches_vector_pcgrad_on_random_gradients(m):
    rng = np.random.default_rng(m)
    for _ in range(20):
        grads = rng.normal(size=(m, 7))
        orders = [rng.permutation(m).tolist() for _ in range(m)]
        w = pcgrad_weights(grads @ grads.T, orders)
        np.testing.assert_allclose(w @ grads, _pcgrad_vectors(grads, orders), atol=1e-10)
        assert (w >= 1 - 1e-12).all()  # a projection only adds non-negative multiples of other gradients


def test_controller_orders_are_seeded_and_resumable(normalized):
    rng = np.random.default_rng(0)
    grads = rng.normal(size=(4, 3))
    gram = grads @ grads.T
    first, second = PCGrad(seed=3), PCGrad(seed=3)
    for c in (first, second):
        c.start(list("abcd"))
    runs = [[c.weights_from_gram(gram, np.zeros(4), None).copy() for _ in range(3)] for c in (first, second)]
    np.testing.assert_allclose(runs[0], runs[1])
    resumed = PCGrad(seed=3)
    resumed.load_state_dict({k: v for k, v in first.state_dict().items()})
    resumed.start(list("abcd"))
    np.testing.assert_allclose(
        resumed.weights_from_gram(gram, np.zeros(4), None), first.weights_from_gram(gram, np.zeros(4), None)
    )
    normalized(first)
