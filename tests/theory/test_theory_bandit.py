"""The bandit laboratory: Lemma 4.1, Theorem 4.2, Corollaries 4.6 and 4.7, checked exactly."""

import numpy as np
import pytest
import torch

from morl.theory import Bandit, covariance_law_sweep, random_bandit, scalarize, softmax

ETAS = [10.0**-k for k in range(1, 7)]


def tchebycheff(rewards: np.ndarray) -> np.ndarray:
    return -np.max(1.0 - rewards, axis=-1)


def group_advantage(bandit: Bandit, s: np.ndarray) -> np.ndarray:
    p = bandit.probs
    mean = (p * s).sum(axis=1, keepdims=True)
    return (s - mean) / np.sqrt((p * (s - mean) ** 2).sum(axis=1, keepdims=True))


def assert_second_order(rows, limit: np.ndarray) -> None:
    """(exact − pred)/η² is bounded, converges to the limit, and the error shrinks about tenfold per decade."""
    ratios = np.array([row.ratio for row in rows])
    errors = np.abs(ratios - limit)
    assert np.all(np.abs(ratios) <= 2 * np.abs(limit) + errors[0] + 1e-9)
    assert np.all(errors[1:4] <= 0.2 * errors[:3] + 1e-9)
    np.testing.assert_allclose(ratios[-1], limit, rtol=1e-3, atol=1e-7)


@pytest.mark.parametrize("objectives", [2, 3, 4])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_covariance_law_is_exact_to_second_order(seed, objectives):
    bandit = random_bandit(seed, prompts=3, completions=5, objectives=objectives, logit_scale=2.0)
    for s in (bandit.scalarize(np.random.default_rng(seed).normal(size=objectives)), bandit.scalarize(tchebycheff)):
        rows = covariance_law_sweep(bandit, s, ETAS)
        assert_second_order(rows, 0.5 * bandit.third_comoment(s))
        assert np.all(np.sign(rows[-1].exact) == np.sign(bandit.covariance(s)))


def test_exact_change_matches_naive_difference():
    bandit = random_bandit(3)
    new = bandit.tilt(bandit.scalarize([1.0, -2.0, 0.5]), 0.7)
    np.testing.assert_allclose(bandit.change(new), new.values() - bandit.values(), atol=1e-14)
    np.testing.assert_allclose(bandit.change_by(new.logits - bandit.logits), bandit.change(new))


def test_tilt_is_the_argmax_of_the_kl_regularised_objective():
    bandit = random_bandit(4, prompts=3, completions=5, objectives=2)
    s, eta = bandit.scalarize([0.3, 0.7]), 0.8
    best = bandit.tilt(s, eta)
    target = bandit.kl_regularised_objective(best.logits, s, eta)
    # Stationarity: s − (1/η) log(π'/π) is constant over completions.
    g = s - (np.log(best.probs) - np.log(bandit.probs)) / eta
    np.testing.assert_allclose(g - g.mean(axis=1, keepdims=True), 0.0, atol=1e-12)
    # No perturbation does better.
    rng = np.random.default_rng(0)
    for _ in range(200):
        other = best.logits + rng.normal(scale=rng.choice([1e-3, 1e-1, 1.0]), size=best.logits.shape)
        assert bandit.kl_regularised_objective(other, s, eta) < target
    # A numerical optimiser started elsewhere finds the same policy.
    phi = torch.zeros(bandit.logits.shape, dtype=torch.float64, requires_grad=True)
    log_p = torch.log_softmax(torch.tensor(bandit.logits), dim=1)
    s_t = torch.tensor(s)
    opt = torch.optim.LBFGS([phi], max_iter=500, tolerance_grad=1e-14, tolerance_change=1e-16)

    def closure():
        opt.zero_grad()
        log_q = torch.log_softmax(phi, dim=1)
        loss = -(log_q.exp() * (s_t - (log_q - log_p) / eta)).sum(dim=1).mean()
        loss.backward()
        return loss

    opt.step(closure)
    np.testing.assert_allclose(softmax(phi.detach().numpy()), best.probs, atol=1e-7)


def test_natural_gradient_step_is_the_tilt_by_the_training_weight():
    bandit = random_bandit(5, prompts=3, completions=4, objectives=3, logit_scale=1.5)
    w = group_advantage(bandit, bandit.scalarize([1.0, 1.0, 1.0]))
    eta = 0.3
    np.testing.assert_allclose(bandit.natural_gradient_step(w, eta).probs, bandit.tilt(w, eta).probs, atol=1e-12)

    # The Fisher and gradient it inverts, from autograd: F d = ∇ for d = natural direction.
    theta = torch.tensor(bandit.logits, requires_grad=True)
    rho = torch.tensor(bandit.prompt_probs)
    value = (rho[:, None] * torch.softmax(theta, dim=1) * torch.tensor(w)).sum()
    (grad,) = torch.autograd.grad(value, theta)
    direction = (bandit.natural_gradient_step(w, eta).logits - bandit.logits) / eta
    p = bandit.probs
    for x in range(p.shape[0]):
        scores = []
        for y in range(p.shape[1]):
            (g,) = torch.autograd.grad(torch.log_softmax(theta[x], dim=0)[y], theta)
            scores.append(g[x].numpy())
        fisher = bandit.prompt_probs[x] * sum(p[x, y] * np.outer(scores[y], scores[y]) for y in range(p.shape[1]))
        np.testing.assert_allclose(fisher @ direction[x], grad[x].numpy(), atol=1e-12)


@pytest.mark.parametrize("seed", [0, 1])
def test_natural_gradient_prediction_is_second_order(seed):
    bandit = random_bandit(seed, prompts=4, completions=6, objectives=3)
    w = group_advantage(bandit, bandit.scalarize(tchebycheff))
    direction = bandit.natural_gradient_direction(w)
    rows = [(eta, bandit.change_by(eta * direction), eta * bandit.covariance(w)) for eta in ETAS]
    ratios = np.array([(exact - pred) / eta**2 for eta, exact, pred in rows])
    limit = 0.5 * bandit.third_comoment(w)
    errors = np.abs(ratios - limit)
    assert np.all(errors[1:4] <= 0.2 * errors[:3] + 1e-9)
    np.testing.assert_allclose(ratios[-1], limit, rtol=1e-3, atol=1e-7)


def ppo_instance(seed: int, spread: float = 0.6):
    rng = np.random.default_rng(seed)
    old = random_bandit(seed, prompts=4, completions=6, objectives=3)
    current = old.with_logits(old.logits + spread * rng.standard_normal(old.logits.shape))
    return old, current, rng.standard_normal(old.logits.shape)


@pytest.mark.parametrize("seed", range(20))
def test_clipping_bound_holds_on_random_instances(seed):
    old, current, advantages = ppo_instance(seed)
    eps = 0.2
    for eta in (1e-2, 1e-4):
        step = current.clipped_step(old.logits, advantages, eta, eps)
        assert np.all(np.abs(step.prediction - step.unclipped_prediction) <= step.bound + 1e-15)
        # The bound's two forms, and its coarse version.
        p_old, p_new = old.probs, current.probs
        dr = current.rewards - np.einsum("xy,xym->xm", p_new, current.rewards)[:, None, :]
        rho_x = current.prompt_probs
        as_old = eta * np.einsum(
            "x,xy,xym,xy->m", rho_x, p_old * step.clipped, np.abs(dr), np.abs(advantages) * step.ratio
        )
        np.testing.assert_allclose(step.bound, as_old, rtol=1e-12, atol=1e-18)
        clip_fraction_new = float(rho_x @ (p_new * step.clipped).sum(axis=1))
        assert np.all(step.bound <= eta * clip_fraction_new * np.abs(dr).max() * np.abs(advantages).max() + 1e-18)
        # prediction = η E_x E_{π_old}[(r − E_θ r) · w_clip], computed from π_old samples' weights.
        from_old = eta * np.einsum("x,xy,xym,xy->m", rho_x, p_old, dr, step.weight)
        np.testing.assert_allclose(step.prediction, from_old, atol=1e-15)
        # The exact change under the clipped step is within the bound of the unclipped prediction, up to O(η²).
        exact = current.change(step.bandit)
        second = 0.5 * eta**2 * np.abs(current.third_comoment(np.where(step.clipped, 0.0, advantages)))
        assert np.all(np.abs(exact - step.unclipped_prediction) <= step.bound + 1.5 * second + 1e-15)
        assert np.all(np.abs(exact - step.prediction) <= 1.5 * second + 1e-15)


def test_clipping_happens_and_margins_are_consistent():
    eps, n_clipped = 0.2, 0
    for seed in range(20):
        old, current, advantages = ppo_instance(seed)
        step = current.clipped_step(old.logits, advantages, 1e-3, eps)
        rule = ((advantages > 0) & (step.ratio > 1 + eps)) | ((advantages < 0) & (step.ratio < 1 - eps))
        np.testing.assert_array_equal(step.clipped, rule)
        np.testing.assert_allclose(step.ratio, current.probs / old.probs)
        n_clipped += int(step.clipped.sum())
        assert 0.0 <= step.clip_fraction <= 1.0
    assert n_clipped > 20


def test_nothing_is_clipped_at_the_old_policy():
    old, _, advantages = ppo_instance(7)
    step = old.clipped_step(old.logits, advantages, 1e-2)
    assert not step.clipped.any() and step.clip_fraction == 0.0
    np.testing.assert_array_equal(step.bound, 0.0)
    np.testing.assert_allclose(step.prediction, step.unclipped_prediction)


@pytest.mark.parametrize("seed", range(5))
def test_clipped_step_is_the_natural_gradient_of_the_ppo_surrogate(seed):
    old, current, advantages = ppo_instance(seed)
    eps, eta = 0.2, 0.1
    theta = torch.tensor(current.logits, requires_grad=True)
    p_old = torch.tensor(old.probs)
    ratio = torch.softmax(theta, dim=1) / p_old
    a = torch.tensor(advantages)
    surrogate = torch.minimum(ratio * a, torch.clamp(ratio, 1 - eps, 1 + eps) * a)
    loss = (torch.tensor(current.prompt_probs)[:, None] * p_old * surrogate).sum()
    (grad,) = torch.autograd.grad(loss, theta)
    step = current.clipped_step(old.logits, advantages, eta, eps)
    direction = (step.bandit.logits - current.logits) / eta
    p = current.probs
    for x in range(p.shape[0]):
        fisher = current.prompt_probs[x] * (np.diag(p[x]) - np.outer(p[x], p[x]))
        np.testing.assert_allclose(fisher @ direction[x], grad[x].numpy(), atol=1e-12)


def test_validation_messages():
    rewards = np.zeros((2, 3, 2))
    with pytest.raises(ValueError, match="one weight per objective"):
        scalarize(rewards, [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="should return shape"):
        scalarize(rewards, lambda r: r.sum(axis=(1, 2)))
    with pytest.raises(ValueError, match="should agree"):
        Bandit(np.zeros((2, 4)), rewards)
    with pytest.raises(ValueError, match="prompt_probs"):
        Bandit(np.zeros((2, 3)), rewards, prompt_probs=[0.3, 0.3])
    with pytest.raises(ValueError, match="clip_eps"):
        Bandit(np.zeros((2, 3)), rewards).clipped_step(np.zeros((2, 3)), np.ones((2, 3)), 0.1, clip_eps=0.0)


def test_prompt_weights_are_respected():
    bandit = random_bandit(9, prompts=2)
    only_first = Bandit(bandit.logits, bandit.rewards, prompt_probs=[1.0, 0.0])
    single = Bandit(bandit.logits[:1], bandit.rewards[:1])
    s = only_first.scalarize([1.0, 0.0, 0.0])
    np.testing.assert_allclose(only_first.covariance(s), single.covariance(s[:1]))
    np.testing.assert_allclose(only_first.change(only_first.tilt(s, 0.1)), single.change(single.tilt(s[:1], 0.1)))
