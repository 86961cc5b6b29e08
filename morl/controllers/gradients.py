"""Per-objective losses, gradients and their Gram matrix: the shared machinery of gradient-level weightings.

Gradient-level methods (MGDA, GradNorm, PCGrad, CAGrad, gradient-based dynamic weighting) combine the policy
gradients ``g_m`` of the M objectives. All of them need only the M×M Gram matrix ``G_ij = <g_i, g_j>`` (and
sometimes per-objective losses), never the parameter vectors themselves (the torchjd view). So one mini-batch goes:

    L_m = algo.loss(A_m).policy_loss           one forward pass, M losses (objective_losses)
    G, g = objective_gram(L, params)           M backward passes (or one batched), on the chosen parameters
    w = weights_from_gram(G, L)                pure math on an M×M matrix
    loss = Σ_m w_m L_m + regularisers          backpropagated by the algorithm

The last line is exact: the gradient is linear, so backpropagating ``Σ w_m L_m`` gives ``Σ w_m g_m`` on every
parameter — on all of them even when the Gram matrix was computed on a subset (``params``).

Cost per mini-batch: one forward pass, M extra backward passes (or one vmapped backward with ``batched``) and
M gradient copies of the chosen parameters in memory. ``params: all`` is exact; ``last_layers:N`` or a regex
computes G on fewer parameters (cheaper, and memory ``M × |subset|``) and approximates the full Gram matrix.

Example:
    >>> import torch
    >>> w = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    >>> gram, grads = objective_gram([w[0] * 3, w.sum()], [w])
    >>> gram
    tensor([[9., 3.],
            [3., 2.]], dtype=torch.float64)
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import torch
from pydantic import Field, field_validator

from morl import distributed
from morl.batch import Batch
from morl.components import ComponentConfig
from morl.controllers.base import GradientLevel

if TYPE_CHECKING:
    from morl.algos import PolicyAlgo
    from morl.policy import Policy

_LAYER_INDEX = re.compile(r"\.(?:layers|h|blocks|block)\.(\d+)\.")


def objective_terms(
    policy: Policy, minibatch: Batch, algo: PolicyAlgo
) -> tuple[list[torch.Tensor], torch.Tensor, dict[str, torch.Tensor]]:
    """One forward pass -> (one policy loss per objective, the shared regulariser, statistics to log).

    ``L_m`` is the policy term of the algorithm's loss (:meth:`~morl.algos.PolicyAlgo.loss`) for
    ``minibatch.objective_advantages[:, m]``, aggregated by its ``loss_type``; the regularisers (KL to the
    reference, entropy bonus) are returned once, so a combination ``Σ w_m L_m + regulariser`` counts the KL once
    whatever the weights' normalisation. The statistics (clip fractions, KL, entropy) are those of the loss for the
    combined advantages ``minibatch.advantages`` (for logging only).
    """
    logp, entropy = algo.logprobs(policy, minibatch)
    combined = minibatch.advantages
    if combined is None:
        combined = torch.zeros(minibatch.size, dtype=logp.dtype, device=logp.device)
    out = algo.loss(logp, minibatch, combined.to(logp.dtype), entropy)
    stats = dict(out.stats)
    if minibatch.advantages is None:  # zero advantages clip nothing: no clip fraction to report
        stats = {k: v for k, v in stats.items() if not k.startswith("clip_ratio")}
    advantages = minibatch.objective_advantages.to(logp.dtype)
    losses = [algo.loss(logp, minibatch, advantages[:, m]).policy_loss for m in range(advantages.shape[1])]
    return losses, out.regularizer, stats


def objective_losses(policy: Policy, minibatch: Batch, algo: PolicyAlgo) -> list[torch.Tensor]:
    """One policy loss per objective from ``minibatch.objective_advantages[:, m]``, sharing one forward pass.

    Regularisers (KL, entropy) are left out: these are the objectives' own losses, whose gradients are the
    per-objective policy gradients ``g_m`` (see :func:`objective_terms` for the regulariser).
    """
    return objective_terms(policy, minibatch, algo)[0]


def objective_gram(
    losses: Sequence[torch.Tensor], params: Sequence[torch.Tensor], batched: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-objective gradients on ``params`` and their Gram matrix.

    Args:
        losses: M scalar losses sharing one graph (e.g. from :func:`objective_losses`).
        params: the parameters to differentiate (all, or a subset for a cheaper, approximate Gram matrix).
        batched: one vmapped backward pass over the M losses (``is_grads_batched``) instead of M passes; same
            result. On the TinyMath quickstart step (CPU, 138k parameters, M = 3) the M separate passes are
            faster: with ``params: all`` the step took 1.63x the fixed-weights step against 2.05x batched
            (``benchmarks/RESULTS.md``), so they are the default; measure on a GPU model.

    Returns:
        ``(G, grads)``: ``G`` [M, M] float64 with ``G_ij = <g_i, g_j>``, and ``grads`` [M, P] the flattened
        gradients (float32 or wider). The graph is retained, so the caller can still backpropagate a
        combination of the losses.
    """
    params = list(params)
    m = len(losses)
    if batched:
        eye = torch.eye(m, dtype=losses[0].dtype, device=losses[0].device)
        parts = torch.autograd.grad(
            torch.stack(list(losses)),
            params,
            grad_outputs=eye,
            is_grads_batched=True,
            retain_graph=True,
            allow_unused=True,
            materialize_grads=True,
        )
        grads = torch.cat([g.reshape(m, -1) for g in parts], dim=1)
    else:
        rows = []
        for loss in losses:
            parts = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True, materialize_grads=True)
            rows.append(torch.cat([g.reshape(-1) for g in parts]))
        grads = torch.stack(rows)
    if grads.dtype in (torch.float16, torch.bfloat16):
        grads = grads.float()
    return (grads @ grads.T).double(), grads


def select_parameters(model: torch.nn.Module, spec: str) -> list[torch.nn.Parameter]:
    """Trainable parameters named by ``spec``: ``all``, ``last_layers:N`` (the last N numbered blocks, found
    by ``.layers.<i>.`` / ``.h.<i>.`` in parameter names) or a regular expression searched in the names."""
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    if spec == "all":
        return [p for _, p in named]
    if spec.startswith("last_layers:"):
        count = int(spec.split(":", 1)[1])
        layer = {name: int(found.group(1)) for name, _ in named if (found := _LAYER_INDEX.search(name))}
        if not layer:
            raise ValueError(
                f"params={spec!r}: no numbered layers ('.layers.<i>.') in the parameter names; use a regex"
            )
        last = set(sorted(set(layer.values()))[-count:])
        chosen = [p for name, p in named if layer.get(name) in last]
    else:
        pattern = re.compile(spec)
        chosen = [p for name, p in named if pattern.search(name)]
    if not chosen:
        raise ValueError(f"params={spec!r} matches no trainable parameter; e.g. {[n for n, _ in named[:3]]}")
    return chosen


def reward_gaps(minibatch: Batch, reward_max: float) -> np.ndarray:
    """A positive loss per objective, ``reward_max - mean r_m`` (NaN rewards skipped), floored at 1e-3.

    Methods that divide by a loss (GradNorm's ``L/L0``, MGDA's loss normalisation) need it positive; the
    policy-gradient surrogate is near 0 on-policy (advantages are centred) and can be negative.
    """
    rewards = minibatch.rewards.double().cpu()
    valid = ~torch.isnan(rewards)
    # sums and counts over every process's rows of the mini-batch step (morl.distributed; local in one process)
    totals = distributed.all_reduce_sum(torch.stack([torch.where(valid, rewards, 0.0).sum(0), valid.sum(0).double()]))
    means = (totals[0] / totals[1]).nan_to_num(reward_max).numpy()
    return np.maximum(reward_max - means, 1e-3)


class GramConfig(ComponentConfig):
    params: str = Field(
        "all", description="parameters of the Gram matrix: 'all' (exact), 'last_layers:N' or a name regex (cheaper)"
    )
    # on the 138k-parameter TinyMath model (CPU) M separate passes are faster (RESULTS.md)
    batched: bool = Field(False, description="one vmapped backward pass for the M objectives instead of M passes")

    @field_validator("params")
    @classmethod
    def _check_params(cls, spec: str) -> str:
        if spec == "all":
            return spec
        if spec.startswith("last_layers:"):
            count = spec.split(":", 1)[1]
            if not count.isdigit() or int(count) < 1:
                raise ValueError(f"last_layers:N needs a positive integer N, got {spec!r}")
            return spec
        try:
            re.compile(spec)
        except re.error as err:
            raise ValueError(f"'all', 'last_layers:N' or a regular expression; {spec!r} is not one ({err})") from None
        return spec


class GramWeighting(GradientLevel):
    """Base of gradient-level controllers: losses -> Gram matrix -> ``weights_from_gram`` -> ``Σ w_m L_m``.

    Subclasses implement :meth:`weights_from_gram` (state such as ``weights_`` or ``L0_`` lives on the
    controller; the math it calls is a pure function of the Gram matrix, as torchjd shapes it). This wrapper owns
    the data: it computes the Gram matrix, the losses and the reward gaps, and does every collective across
    processes, so the weighting never sees the model, the batch or the process group. Config: ``params`` (which
    parameters the Gram matrix is computed on) and ``batched`` (one vmapped backward instead of M).
    """

    Config = GramConfig
    # methods whose weights depend on training progress (MGDA's loss normalisations, GradNorm) read the positive
    # per-objective losses ``reward_max - mean r_m`` (:func:`reward_gaps`); their config has ``reward_max``
    uses_reward_gaps: ClassVar[bool] = False

    def start(self, objectives: list[str]) -> None:
        super().start(objectives)
        if getattr(self, "weights_", None) is None:
            m = len(objectives)
            self.weights_ = np.full(m, 1.0 / m if self.normalization == "simplex" else 1.0)

    def weights(self) -> torch.Tensor:
        return torch.as_tensor(self.weights_, dtype=torch.float32)

    def weights_from_gram(self, gram: np.ndarray, losses: np.ndarray, gaps: np.ndarray | None) -> np.ndarray:
        """Weights for this mini-batch's losses from the Gram matrix [M, M], the detached losses [M] and, for
        methods with ``uses_reward_gaps``, the reward gaps [M] (else None)."""
        raise NotImplementedError

    def combine_losses(self, policy: Policy, minibatch: Batch, algo: PolicyAlgo) -> tuple[torch.Tensor, dict]:
        losses, regularizer, stats = objective_terms(policy, minibatch, algo)
        params = select_parameters(policy.model, self.config.params)
        gram, grads = objective_gram(losses, params, self.config.batched)
        detached = torch.stack([loss.detach() for loss in losses]).double().cpu()
        # under data parallelism: the Gram matrix of the gradients of the whole micro-step's loss (token_share is
        # this process's share of the loss's normaliser, set by the updater)
        if distributed.is_distributed():
            grads = distributed.all_reduce_sum(grads * minibatch.token_share)
            gram = (grads @ grads.T).double()
            detached = distributed.all_reduce_sum(detached * minibatch.token_share)
        detached = detached.numpy()
        gaps = reward_gaps(minibatch, self.config.reward_max) if self.uses_reward_gaps else None
        weights = np.asarray(self.weights_from_gram(gram.cpu().numpy(), detached, gaps), dtype=float)
        loss = sum(float(w) * term for w, term in zip(weights, losses)) + regularizer
        return loss, stats
