"""Statistics that methods and observers share: within-group covariances, per-objective losses and their Gram matrix,
and the choice of parameters to differentiate.

They take tensors, arrays and records, never a trainer: CTWA and the diagnostics both read
:func:`group_covariances`; gradient-level weightings, the diagnostics' gradient cosines and the forecast read
:func:`objective_gram` and :func:`select_parameters`. Living here, an observer depends on no particular method.

Gradient-level methods (MGDA, GradNorm, PCGrad, CAGrad, gradient-based dynamic weighting) combine the policy
gradients ``g_m`` of the M objectives and need only the M×M Gram matrix ``G_ij = <g_i, g_j>`` (and sometimes
per-objective losses), never the parameter vectors themselves (the torchjd view). One mini-batch goes:

    L_m = algo.loss(A_m).policy_loss           one forward pass, M losses (objective_losses)
    G, g = objective_gram(L, params)           M backward passes (or one batched), on the chosen parameters
    w = weights_from_gram(G, L)                pure math on an M×M matrix
    loss = Σ_m w_m L_m + regularisers          backpropagated by the algorithm

The last line is exact: the gradient is linear, so backpropagating ``Σ w_m L_m`` gives ``Σ w_m g_m`` on every
parameter — on all of them even when the Gram matrix was computed on a subset (``params``).

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
from typing import TYPE_CHECKING

import numpy as np
import torch

from morl.batch import Batch

if TYPE_CHECKING:
    from morl.algos import PolicyAlgo
    from morl.policy import Policy

_LAYER_INDEX = re.compile(r"\.(?:layers|h|blocks|block)\.(\d+)\.")


def group_covariances(
    rewards: np.ndarray, weights: np.ndarray, group_size: int, signal: str = "covariance", outlier_factor: float = 100.0
) -> np.ndarray:
    """``c_m``: mean over prompt groups of the within-group covariance (or correlation) of r_m and w.

    ``rewards`` [N, M] (NaN = not applicable), ``weights`` [N]. Objectives with no usable group (2 or more
    usable completions) get NaN. A flat group's covariance is exactly 0 and counts; its correlation is undefined,
    so in correlation mode such a group is skipped, and an objective whose usable groups are all flat gets 0.0.
    """
    n, m = rewards.shape
    usable = np.isfinite(weights)
    if usable.any():
        median = np.median(np.abs(weights[usable]))
        if median > 0:
            usable &= np.abs(np.where(usable, weights, 0.0)) <= outlier_factor * median
    groups = n // group_size
    r_all = rewards[: groups * group_size].reshape(groups, group_size, m)
    w_all = weights[: groups * group_size].reshape(groups, group_size)
    keep_all = usable[: groups * group_size].reshape(groups, group_size, 1) & np.isfinite(r_all)
    out = np.full(m, np.nan)
    for j in range(m):
        keep = keep_all[:, :, j]
        # groups whose every completion counts, all at once (the same sums in the same order as one at a time);
        # groups with some left out, one at a time
        whole = keep.all(axis=1) & (group_size >= 2)
        values, counted = np.zeros(groups), np.zeros(groups, dtype=bool)
        values[whole], counted[whole] = _covariances(r_all[whole, :, j], w_all[whole], signal)
        partial = np.flatnonzero(~whole & (keep.sum(axis=1) >= 2))
        for g in partial:
            (values[g],), (counted[g],) = _covariances(r_all[g, keep[g], j][None], w_all[g, keep[g]][None], signal)
        if counted.any():
            out[j] = float(np.mean(values[counted]))
        elif whole.any() or partial.size:  # correlation mode, every usable group flat: no correlation signal
            out[j] = 0.0
    return out


def _covariances(r: np.ndarray, w: np.ndarray, signal: str) -> tuple[np.ndarray, np.ndarray]:
    """Per row of ``r`` and ``w`` [G, K]: the covariance (or correlation) of the row's values, and whether it counts
    (a correlation with a flat side does not)."""
    cov = np.mean((r - r.mean(axis=1, keepdims=True)) * (w - w.mean(axis=1, keepdims=True)), axis=1)
    if signal != "correlation":
        return cov, np.ones(len(cov), dtype=bool)
    r_std, w_std = r.std(axis=1), w.std(axis=1)
    counts = ~(_flat(r, r_std) | _flat(w, w_std))
    return np.where(counts, cov / np.where(counts, r_std * w_std, 1.0), 0.0), counts


def _flat(values: np.ndarray, std: np.ndarray) -> np.ndarray:
    """Per row: constant up to rounding, a std at the level of float64 rounding error of the values' magnitude."""
    return std <= 1e-12 * np.abs(values).max(axis=1, initial=0.0)


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
