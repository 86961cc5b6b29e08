"""Categorical bandit laboratory: the paper's local results, computed exactly.

A policy over a finite set of completions per prompt: logits ``θ`` of shape ``[X, Y]`` (X prompts, Y completions),
``π(y|x) = softmax_y θ(x, ·)``; a reward matrix ``R`` of shape ``[X, Y, M]``; prompts weighted by ``ρ(x)``
(uniform unless given). The value of objective m is ``J_m(π) = Σ_x ρ(x) Σ_y π(y|x) R(x, y, m)``. Everything is
float64 and deterministic: no sampling, so a formula either holds or it does not.

What it checks ("Uncovering Cross-Objective Interference in Multi-Objective Alignment", 2026):

- Lemma 4.1 (KL-regularised improvement). ``argmax_π' E_x[E_{π'} s − (1/η) KL(π'‖π)]`` is the exponential tilt
  ``π'(y|x) ∝ π(y|x) exp(η s(x, y))``, i.e. logits ``θ + η s`` (:meth:`Bandit.tilt`).
- Theorem 4.2 (local covariance law). ``J_m(π') − J_m(π) = η E_x[Cov_{y~π}(r_m, s)] + O(η²)``. The O(η²) term is
  explicit: ``d²J_m/dη² = E_x E_π[(r_m − E r_m)(s − E s)²]``, so ``(exact − prediction)/η² → ½ E_x κ(r_m, s, s)``
  (:meth:`Bandit.third_comoment`); :func:`covariance_law_sweep` measures it.
- Corollary 4.6 (natural gradient). For a softmax policy the Fisher in logit space is ``ρ(x)(diag π − π πᵀ)`` and
  the gradient of ``E_x E_π[w]`` is ``ρ(x) π ⊙ (w − E_π w)``, so the natural gradient is ``w − const`` per prompt:
  a natural-gradient step of size η on the training weight w *is* the tilt by w, and objective m changes by
  ``η E_x Cov_π(r_m, w) + O(η²)`` (:meth:`Bandit.natural_gradient_step` computes it with the Fisher pseudo-inverse).
- Corollary 4.7 (clipping only deletes terms). See :meth:`Bandit.clipped_step`.

Example:
    >>> b = random_bandit(seed=0, prompts=3, completions=5, objectives=2)
    >>> s = b.scalarize([0.5, 0.5])
    >>> eta = 1e-3
    >>> bool(np.allclose(b.change(b.tilt(s, eta)), eta * b.covariance(s), atol=1e-5))
    True
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

Scalarization = Sequence[float] | np.ndarray | Callable[[np.ndarray], np.ndarray]
"""A weight vector ``λ`` (linear: ``s = R @ λ``) or any callable ``R [X, Y, M] -> s [X, Y]``."""


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise ``log softmax`` over the last axis, float64."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax over the last axis, float64."""
    return np.exp(log_softmax(logits))


def scalarize(rewards: np.ndarray, scalarization: Scalarization) -> np.ndarray:
    """Scalar score ``s [X, Y]`` from rewards ``[X, Y, M]``: ``R @ λ`` for a weight vector, else ``f(R)``."""
    rewards = np.asarray(rewards, dtype=np.float64)
    if callable(scalarization):
        s = np.asarray(scalarization(rewards), dtype=np.float64)
    else:
        weights = np.asarray(scalarization, dtype=np.float64)
        if weights.shape != rewards.shape[-1:]:
            raise ValueError(
                f"Parameter `scalarization` should have one weight per objective ({rewards.shape[-1]}). "
                f"Found shape {weights.shape}."
            )
        s = rewards @ weights
    if s.shape != rewards.shape[:-1]:
        raise ValueError(f"A scalarisation should return shape {rewards.shape[:-1]}. Found {s.shape}.")
    return s


@dataclass(frozen=True, eq=False)
class ClippedStep:
    """One natural-gradient step on the PPO clipped surrogate, with its first-order bookkeeping (Corollary 4.7).

    Arrays are ``[X, Y]`` (per completion) or ``[M]`` (per objective).

    Attributes:
        bandit: the policy after the step.
        ratio: ``ρ = π_θ / π_old``.
        margin: signed distance of ρ to the clip boundary that binds for the sign of A: ``(1 + ε) − ρ`` if A > 0,
            ``ρ − (1 − ε)`` if A < 0, ``+inf`` if A = 0. A completion is clipped iff its margin is negative.
        clipped: ``margin < 0``.
        weight: the clipped advantage weight ``w_clip = A · ρ · 1[not clipped]`` (an expectation under π_old).
        clip_fraction: ``E_x E_{π_old}[1[clipped]]``, the fraction PPO/GRPO logs.
        prediction: ``η E_x Cov_{π_θ}(r_m, A·1[not clipped])``, the first-order change under the clipped step.
        unclipped_prediction: ``η E_x Cov_{π_θ}(r_m, A)``, what the same step would predict without clipping.
        bound: ``η E_x Σ_{y clipped} π_θ(y|x) |r_m − E_{π_θ} r_m| |A|`` ≥ ``|prediction − unclipped_prediction|``.
    """

    bandit: Bandit
    ratio: np.ndarray
    margin: np.ndarray
    clipped: np.ndarray
    weight: np.ndarray
    clip_fraction: float
    prediction: np.ndarray
    unclipped_prediction: np.ndarray
    bound: np.ndarray


@dataclass(frozen=True, eq=False)
class Bandit:
    """A softmax policy on a finite completion set, with its reward matrix. Immutable: steps return a new one.

    Args:
        logits: ``θ [X, Y]``.
        rewards: ``R [X, Y, M]``.
        prompt_probs: ``ρ [X]``, non-negative, summing to 1; uniform if omitted.
    """

    logits: np.ndarray
    rewards: np.ndarray
    prompt_probs: np.ndarray | None = None

    def __post_init__(self) -> None:
        logits = np.asarray(self.logits, dtype=np.float64)
        rewards = np.asarray(self.rewards, dtype=np.float64)
        if logits.ndim != 2 or rewards.ndim != 3 or rewards.shape[:2] != logits.shape:
            raise ValueError(
                f"Parameters `logits` [X, Y] and `rewards` [X, Y, M] should agree. Found {logits.shape} and "
                f"{rewards.shape}."
            )
        rho = np.full(logits.shape[0], 1.0 / logits.shape[0]) if self.prompt_probs is None else self.prompt_probs
        rho = np.asarray(rho, dtype=np.float64)
        if rho.shape != logits.shape[:1] or (rho < 0).any() or not np.isclose(rho.sum(), 1.0):
            raise ValueError(f"Parameter `prompt_probs` should be a distribution over {logits.shape[0]} prompts.")
        object.__setattr__(self, "logits", logits)
        object.__setattr__(self, "rewards", rewards)
        object.__setattr__(self, "prompt_probs", rho)

    @property
    def probs(self) -> np.ndarray:
        """``π(y|x)``, ``[X, Y]``."""
        return softmax(self.logits)

    def with_logits(self, logits: np.ndarray) -> Bandit:
        """The same rewards and prompts under new logits."""
        return Bandit(logits, self.rewards, self.prompt_probs)

    def scalarize(self, scalarization: Scalarization) -> np.ndarray:
        """``s [X, Y]`` for this bandit's rewards (see :func:`scalarize`)."""
        return scalarize(self.rewards, scalarization)

    def values(self) -> np.ndarray:
        """``J_m = E_x E_{y~π}[r_m]``, ``[M]``."""
        return np.einsum("x,xy,xym->m", self.prompt_probs, self.probs, self.rewards)

    def _centred(self, w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        w = np.asarray(w, dtype=np.float64)
        if w.shape != self.logits.shape:
            raise ValueError(f"A per-completion weight should have shape {self.logits.shape}. Found {w.shape}.")
        p = self.probs
        dr = self.rewards - np.einsum("xy,xym->xm", p, self.rewards)[:, None, :]
        dw = w - (p * w).sum(axis=1, keepdims=True)
        return p, dr, dw

    def covariance(self, w: np.ndarray) -> np.ndarray:
        """``E_x Cov_{y~π}(r_m, w)``, ``[M]`` — the first-order coefficient of Theorem 4.2 / Corollary 4.6."""
        p, dr, dw = self._centred(w)
        return np.einsum("x,xy,xym,xy->m", self.prompt_probs, p, dr, dw)

    def third_comoment(self, w: np.ndarray) -> np.ndarray:
        """``E_x E_π[(r_m − E r_m)(w − E w)²]``, ``[M]``: the second derivative ``d²J_m/dη²`` of the tilt at η = 0."""
        p, dr, dw = self._centred(w)
        return np.einsum("x,xy,xym,xy->m", self.prompt_probs, p, dr, dw**2)

    def change(self, new: Bandit) -> np.ndarray:
        """Exact ``J_m(π') − J_m(π)``, ``[M]``, for another bandit with the same rewards (see :meth:`change_by`)."""
        return self.change_by(new.logits - self.logits)

    def change_by(self, delta: np.ndarray) -> np.ndarray:
        """Exact ``J_m(softmax(θ + Δ)) − J_m(π)``, ``[M]``, for a logit change ``Δ [X, Y]``.

        Computed as ``π' − π = π ⊙ expm1(Δ − log E_π e^Δ)`` with ``log1p``/``expm1``, so a change of size 1e-6 keeps
        ~15 significant digits. Pass Δ itself (``η s``) rather than ``θ' − θ`` when η is tiny: forming ``θ + η s``
        and subtracting θ again rounds Δ to the precision of θ.
        """
        p = self.probs
        delta = np.asarray(delta, dtype=np.float64)
        delta = delta - (p * delta).sum(axis=1, keepdims=True)
        log_z = np.log1p((p * np.expm1(delta)).sum(axis=1, keepdims=True))
        dp = p * np.expm1(delta - log_z)
        return np.einsum("x,xy,xym->m", self.prompt_probs, dp, self.rewards)

    def tilt(self, s: np.ndarray, eta: float) -> Bandit:
        """Lemma 4.1: ``π'(y|x) ∝ π(y|x) exp(η s(x, y))`` — logits ``θ + η s``.

        It maximises :meth:`kl_regularised_objective`: the objective is strictly concave in π' on the simplex and
        its stationarity condition ``s − (1/η)(log π' − log π) = const`` has this unique solution.
        """
        return self.with_logits(self.logits + eta * np.asarray(s, dtype=np.float64))

    def kl_regularised_objective(self, new_logits: np.ndarray, s: np.ndarray, eta: float) -> float:
        """``E_x[E_{y~π'} s − (1/η) KL(π'‖π)]`` for ``π' = softmax(new_logits)``."""
        log_q, log_p = log_softmax(new_logits), log_softmax(self.logits)
        q = np.exp(log_q)
        per_prompt = (q * (np.asarray(s) - (log_q - log_p) / eta)).sum(axis=1)
        return float(self.prompt_probs @ per_prompt)

    def natural_gradient_direction(self, w: np.ndarray) -> np.ndarray:
        """Corollary 4.6: ``F⁺ ∇_θ E_x E_π[w]``, ``[X, Y]``, with the categorical Fisher in logit space.

        Per prompt, ``∇ = ρ(x) π ⊙ (w − E_π w)`` and ``F = ρ(x)(diag π − π πᵀ)``. ``F (w − E_π w) = ∇``, and ``F``'s
        null space is the constant vector, so the min-norm solution ``F⁺∇`` is ``w`` minus its plain mean: the
        natural-gradient step equals :meth:`tilt` by w, and objective m changes by ``η E_x Cov_π(r_m, w) + O(η²)``.
        Computed here with an explicit pseudo-inverse so that the identity is checked, not assumed (cost O(X·Y³));
        completions with probability below ~1e-12 of the largest fall in the pseudo-inverse's cut-off — use
        :meth:`tilt` for such near-deterministic policies.
        """
        w = np.asarray(w, dtype=np.float64)
        p = self.probs
        direction = np.zeros_like(self.logits)
        for x in np.flatnonzero(self.prompt_probs):
            grad = self.prompt_probs[x] * p[x] * (w[x] - p[x] @ w[x])
            fisher = self.prompt_probs[x] * (np.diag(p[x]) - np.outer(p[x], p[x]))
            direction[x] = np.linalg.pinv(fisher, rcond=1e-12, hermitian=True) @ grad
        return direction

    def natural_gradient_step(self, w: np.ndarray, eta: float) -> Bandit:
        """Corollary 4.6: ``θ' = θ + η F⁺ ∇_θ E_x E_π[w]`` (see :meth:`natural_gradient_direction`)."""
        return self.with_logits(self.logits + eta * self.natural_gradient_direction(w))

    def clipped_step(
        self, old_logits: np.ndarray, advantages: np.ndarray, eta: float, clip_eps: float = 0.2
    ) -> ClippedStep:
        """Corollary 4.7: a natural-gradient step on the PPO/GRPO clipped surrogate at the current logits θ.

        The surrogate is ``L(θ) = E_x E_{y~π_old}[min(ρ A, clip(ρ, 1−ε, 1+ε) A)]`` with ``ρ = π_θ/π_old``. Where a
        completion is clipped (A > 0 and ρ > 1+ε, or A < 0 and ρ < 1−ε) its term is constant in θ, so
        ``∇L = ∇_θ E_x E_{π_θ}[ã]`` with ``ã = A·1[not clipped]`` held fixed: the step is
        :meth:`natural_gradient_step` on ``ã``, and its exact first-order change is::

            η E_x Cov_{π_θ}(r_m, ã) = η E_x E_{π_old}[(r_m − E_{π_θ} r_m) · w_clip],   w_clip = A · ρ · 1[not clipped]

        Clipping only deletes terms: the unclipped step would give ``η E_x Cov_{π_θ}(r_m, A)``, and the two differ by
        ``η E_x Σ_{y clipped} π_θ(y|x)(r_m − E_{π_θ} r_m) A``, so (triangle inequality)::

            |prediction − unclipped_prediction| ≤ bound = η E_x Σ_{y clipped} π_θ(y|x) |r_m − E_{π_θ} r_m| |A|
                                                        = η E_x E_{π_old}[1[clipped] |r_m − E_{π_θ} r_m| |A| ρ]
                                                        ≤ η · P_θ(clipped) · max|r_m − E_{π_θ} r_m| · max|A|,

        where ``P_θ(clipped) = E_x Σ_{y clipped} π_θ(y|x)`` (the reported ``clip_fraction`` is under π_old).

        At θ = θ_old nothing is clipped (ρ = 1) and all three coincide. A group estimate ``Cov_k(r_m, w_clip)`` over
        samples from π_old (as CTWA computes) centres r_m at its π_old mean instead; it is exact when θ = θ_old.

        Args:
            old_logits: ``θ_old [X, Y]``, the policy that generated the data.
            advantages: ``A [X, Y]``.
            eta: step size.
            clip_eps: ``ε``.
        """
        if clip_eps <= 0:
            raise ValueError(f"Parameter `clip_eps` should be a positive float. Found `clip_eps = {clip_eps}`.")
        a = np.asarray(advantages, dtype=np.float64)
        ratio = np.exp(log_softmax(self.logits) - log_softmax(old_logits))
        margin = np.where(a > 0, (1 + clip_eps) - ratio, np.where(a < 0, ratio - (1 - clip_eps), np.inf))
        clipped = margin < 0
        kept = np.where(clipped, 0.0, a)
        p, dr, _ = self._centred(a)
        rho_x = self.prompt_probs
        return ClippedStep(
            bandit=self.natural_gradient_step(kept, eta),
            ratio=ratio,
            margin=margin,
            clipped=clipped,
            weight=a * ratio * ~clipped,
            clip_fraction=float(rho_x @ (softmax(old_logits) * clipped).sum(axis=1)),
            prediction=eta * self.covariance(kept),
            unclipped_prediction=eta * self.covariance(a),
            bound=eta * np.einsum("x,xy,xym,xy->m", rho_x, p * clipped, np.abs(dr), np.abs(a)),
        )


@dataclass(frozen=True, eq=False)
class SweepRow:
    """One step size of :func:`covariance_law_sweep`; arrays are ``[M]``."""

    eta: float
    exact: np.ndarray
    predicted: np.ndarray

    @property
    def ratio(self) -> np.ndarray:
        """``(exact − predicted) / η²`` — bounded and converging to ``½ E_x κ(r_m, s, s)`` if the law holds."""
        return (self.exact - self.predicted) / self.eta**2


def covariance_law_sweep(bandit: Bandit, s: np.ndarray, etas: Sequence[float]) -> list[SweepRow]:
    """For each η: the exact change of every objective after one tilt by s, and Theorem 4.2's ``η E_x Cov(r_m, s)``.

    Example:
        >>> b = random_bandit(seed=1, prompts=2, completions=4, objectives=3)
        >>> s = b.scalarize([1.0, 0.0, -1.0])
        >>> rows = covariance_law_sweep(b, s, [1e-2, 1e-4])
        >>> bool(np.allclose(rows[-1].ratio, 0.5 * b.third_comoment(s), rtol=1e-3))
        True
    """
    cov = bandit.covariance(s)
    return [SweepRow(float(eta), bandit.change_by(eta * np.asarray(s)), eta * cov) for eta in etas]


def random_bandit(
    seed: int, prompts: int = 4, completions: int = 6, objectives: int = 3, logit_scale: float = 1.0
) -> Bandit:
    """A seeded bandit: logits ``N(0, logit_scale²)``, rewards uniform on [0, 1], uniform prompts."""
    rng = np.random.default_rng(seed)
    logits = logit_scale * rng.standard_normal((prompts, completions))
    return Bandit(logits, rng.uniform(size=(prompts, completions, objectives)))
