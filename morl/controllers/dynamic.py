"""Dynamic reward weighting (Lu et al. 2025, "Learning to Optimize Multi-Objective Alignment Through Dynamic Reward
Weighting", https://arxiv.org/abs/2509.11452): two controllers.

**Hypervolume-guided** (``dynamic_hv``). Before training and after every update the policy is evaluated on a
small validation subset (``validation_size`` prompts, ``validation_mode`` decoding, rewards in evaluation mode).
The first point, the initial model's, is the hypervolume reference ``z_ref``. Each later point ``p`` is scored
by its hypervolume contribution against a buffer ``B`` of Pareto-optimal validation points,

    hv = HV(B ∪ {p}; z_ref) - HV(B; z_ref),         multiplier = 0.5 + 1.5 tanh(max(hv · hv_scale, 0))

and joins the buffer (dominated points leave it) only if ``hv > 0``. The multiplier applies to the next
step. Where it acts: a global factor on rewards cancels under std-normalised advantages, so it multiplies the
**advantages** (advantage level): ``A = multiplier · aggregate(r, w)``, with the base weights ``w`` (default
1/M, free) aggregated as in GDPO (``sum_then_normalize`` by default: GRPO on ``Σ w_m r_m``, the linear
baseline). A point that extends the front strengthens the next step (up to ×2); one that does not halves it.

The axes are validation means by name (``objectives``: default the rewards; ``mean_length`` is available,
the paper's conciseness), ``minimize`` names axes to negate. Hypervolume is exact (:func:`hypervolume`,
recursive slicing: O(n log n) in 2-D, O(n² log n) in 3-D, exponential beyond — fine for a small buffer).
Note that with 0/1 rewards the means move by a few hundredths per step, so hv (a product of such gaps) is
tiny and the multiplier sits near 0.5 or just above; ``hv_scale`` rescales it.

**Gradient-based** (``dynamic_gradient``). With per-objective policy gradients ``g_m`` and Gram matrix ``G``,
each objective's influence on the others is ``s = G·1`` (``s_m = <g_m, Σ_k g_k>``), and the weights follow a
mirror-ascent (exponentiated-gradient) step ``w ← softmax(log w + η s)``, used for the mini-batch's loss
``Σ w_m L_m``. Weights stay on the simplex. Gradient level; ``params`` can restrict G to a subset of layers.
Hyperparameters: ``lr`` (η; ``s`` is in squared-gradient units, so a good η depends on the model and the loss
scale), ``weights0`` (initial weights, normalised; default uniform), ``params`` and ``batched``.

Example:
    >>> import numpy as np
    >>> hypervolume(np.array([[2.0, 1.0], [1.0, 2.0]]), np.zeros(2))  # two 2×1 boxes overlapping in 1×1
    3.0
    >>> mirror_ascent_step(np.array([0.5, 0.5]), np.array([[1.0, 0.0], [0.0, 0.0]]), lr=np.log(3)).round(3)
    array([0.75, 0.25])
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
from pydantic import Field

from morl import metrics as M
from morl.components import ComponentConfig, RecipeError
from morl.controllers.base import AdvantageLevel, per_objective
from morl.controllers.gdpo import Aggregation, aggregate_advantages
from morl.controllers.gradients import GramConfig, GramWeighting
from morl.stages import Need, Scored


def hypervolume(points: np.ndarray, reference: np.ndarray) -> float:
    """Exact volume dominated by ``points`` (maximisation) and dominating ``reference``: ``[n, d]``, ``[d]``."""
    points = np.asarray(points, dtype=float).reshape(-1, len(reference))
    points = points[(points > reference).all(axis=1)]
    if len(points) == 0:
        return 0.0
    if points.shape[1] == 1:
        return float(points[:, 0].max() - reference[0])
    if points.shape[1] == 2:  # sweep by the first axis, descending
        order = points[np.argsort(-points[:, 0])]
        volume, height = 0.0, reference[1]
        for x, y in order:
            if y > height:
                volume += (x - reference[0]) * (y - height)
                height = y
        return float(volume)
    levels = np.unique(points[:, -1])[::-1]  # slice along the last axis, top down
    volume = 0.0
    for k, level in enumerate(levels):
        below = levels[k + 1] if k + 1 < len(levels) else reference[-1]
        volume += hypervolume(points[points[:, -1] >= level][:, :-1], reference[:-1]) * (level - below)
    return float(volume)


def hypervolume_contribution(point: np.ndarray, front: np.ndarray, reference: np.ndarray) -> float:
    """``HV(front ∪ {point}) - HV(front)``: 0 when ``point`` is dominated or does not dominate ``reference``."""
    front = np.asarray(front, dtype=float).reshape(-1, len(reference))
    return hypervolume(np.vstack([front, point]), reference) - hypervolume(front, reference)


def pareto_front(points: np.ndarray) -> np.ndarray:
    """The points no other point weakly dominates (maximisation; of equal points one is kept)."""
    points = np.unique(np.asarray(points, dtype=float), axis=0)
    keep = [not any((q >= p).all() and (q > p).any() for q in points) for p in points]
    return points[keep]


def mirror_ascent_step(weights: np.ndarray, gram: np.ndarray, lr: float) -> np.ndarray:
    """``softmax(log w + lr · G·1)``: exponentiated-gradient ascent on the objectives' influence ``s = G·1``."""
    logits = np.log(np.maximum(weights, 1e-300)) + lr * (np.asarray(gram) @ np.ones(len(weights)))
    logits -= logits.max()
    new = np.exp(logits)
    return new / new.sum()


class HypervolumeWeighting(AdvantageLevel):
    """Hypervolume-guided advantage multiplier on a linear (or GDPO) combination; base weights free."""

    name = "dynamic_hv"
    normalization = "free"
    needs = frozenset({Need.OBJECTIVE_ADVANTAGES, Need.VALIDATION})

    class Config(ComponentConfig):
        weights: list[float] | dict[str, float] | None = Field(
            None, description="base weights per objective (list in objective order or by name); None: 1/M each"
        )
        multi_objective_aggregation: Aggregation = Field(
            "sum_then_normalize", description="how the base weights combine objectives, as in GDPO"
        )
        validation_size: int = Field(32, ge=1, description="validation prompts evaluated after every update (costly)")
        validation_mode: Literal["greedy", "sampled"] = Field(
            "greedy", description="decoding of the validation completions"
        )
        objectives: list[str] | None = Field(
            None, description="validation means used as hypervolume axes (e.g. mean_length); None: the rewards"
        )
        minimize: list[str] = Field(default_factory=list, description="hypervolume axes to negate (lower is better)")
        hv_scale: float = Field(
            1.0, gt=0, description="factor on the hypervolume contribution before tanh; raise it for tiny 0/1 gains"
        )

    def start(self, objectives: list[str]) -> None:
        given = self.config.weights
        m = len(objectives)
        self._weights = torch.tensor(per_objective("controller.weights", given, objectives) if given else [1 / m] * m)
        self._axes = list(self.config.objectives or objectives)
        unknown = sorted(set(self.config.minimize) - set(self._axes))
        if unknown:
            raise RecipeError(f"controller.minimize: {unknown} are not hypervolume axes {self._axes}")
        super().start(objectives)

    def initial_state(self, objectives: list[str]) -> None:
        self.multiplier_ = 1.0
        self.reference_ = None
        self.front_ = np.zeros((0, len(self._axes)))

    def observe_validation(self, means: dict[str, float]) -> None:
        missing = [a for a in self._axes if a not in means]
        if missing:
            raise KeyError(f"dynamic_hv: validation has no mean for {missing}; it has {sorted(means)}")
        point = np.array([-means[a] if a in self.config.minimize else means[a] for a in self._axes], dtype=float)
        self.point_ = point
        if self.reference_ is None:
            self.reference_ = point
            return
        reference = np.asarray(self.reference_, dtype=float)
        front = np.asarray(self.front_, dtype=float).reshape(-1, len(self._axes))
        hv = hypervolume_contribution(point, front, reference)
        self.hv_ = hv
        self.multiplier_ = 0.5 + 1.5 * math.tanh(max(hv * self.config.hv_scale, 0.0))
        if hv > 0:
            self.front_ = pareto_front(np.vstack([front, point]))

    def weights(self) -> torch.Tensor:
        return self._weights

    @property
    def validation_size(self) -> int:
        return self.config.validation_size

    @property
    def validation_mode(self) -> str:
        return self.config.validation_mode

    def combine_advantages(self, objective_advantages: torch.Tensor, scored: Scored) -> torch.Tensor:
        base = aggregate_advantages(
            objective_advantages,
            scored.rewards,
            self._weights,
            scored.group_size,
            self.config.multi_objective_aggregation,
        )
        return self.multiplier_ * base

    def metrics(self) -> dict[str, float]:
        out = super().metrics()
        out[M.method_key(M.DYNAMIC, "multiplier")] = float(self.multiplier_)
        out[M.method_key(M.DYNAMIC, "front_size")] = float(len(np.asarray(self.front_).reshape(-1, len(self._axes))))
        if getattr(self, "hv_", None) is not None:
            out[M.method_key(M.DYNAMIC, "hv_contribution")] = float(self.hv_)
        if getattr(self, "point_", None) is not None:
            for axis, value in zip(self._axes, self.point_):
                out[M.method_key(M.DYNAMIC, "validation", axis)] = float(
                    -value if axis in self.config.minimize else value
                )
        return out


class GradientWeighting(GramWeighting):
    """Gradient-based dynamic weighting: mirror ascent on ``G·1``; weights on the simplex."""

    name = "dynamic_gradient"
    normalization = "simplex"

    class Config(GramConfig):
        lr: float = Field(
            1.0, ge=0, description="η of the mirror-ascent step on G·1 (squared-gradient units; tune per model)"
        )
        weights0: list[float] | dict[str, float] | None = Field(
            None, description="initial positive weights (list or by name), normalised to the simplex; None: uniform"
        )

    def initial_state(self, objectives: list[str]) -> None:
        if self.config.weights0 is None:
            super().initial_state(objectives)
            return
        w0 = np.array(per_objective("controller.weights0", self.config.weights0, objectives))
        if (w0 <= 0).any():
            raise RecipeError(f"controller.weights0 must be positive, got {w0.tolist()}")
        self.weights_ = w0 / w0.sum()

    def weights_from_gram(self, gram: np.ndarray, losses: np.ndarray, gaps: np.ndarray | None) -> np.ndarray:
        self.weights_ = mirror_ascent_step(self.weights_, gram, self.config.lr)
        return self.weights_
