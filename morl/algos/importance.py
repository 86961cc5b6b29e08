"""Importance-sampling correction for a rollout engine that is not the trainer (vLLM).

The engine samples from ``π_engine``, which differs slightly from the trainer's ``π_old`` with the same weights
(other kernels, precision, batching), so on-policy training is in fact off-policy. The correction multiplies each
token's policy-gradient term by ``π_old / π_engine`` (Yao et al. 2025, "Your Efficient RL Framework Secretly Brings
You Off-Policy RL Training", https://fengyao.notion.site/off-policy-rl; TRL's
``vllm_importance_sampling_correction``), kept bounded by a cap ``C``:

- ``token_truncate``: per token, ``min(ρ_t, C)`` with ``ρ_t = exp(log π_old - log π_engine)`` (truncated IS);
- ``token_mask``: per token, ``ρ_t`` where ``ρ_t ≤ C``, else 0 (the token is dropped; masked IS);
- ``sequence_truncate`` / ``sequence_mask``: the same with one ratio per completion,
  ``ρ = exp(Σ_t (log π_old - log π_engine))`` over its completion tokens, shared by all its tokens;
- ``none``: no correction.

The ratios are constants (no gradient flows through them) and multiply the policy term only, before the KL and
entropy regularisers, as in TRL. Sequence-level ratios compound the per-token mismatch over the whole completion:
over ~1000 tokens they are far more often capped or masked than token-level ones.

Example:
    >>> old, engine = torch.tensor([[-1.0, -2.0, 0.0]]), torch.tensor([[-1.5, -1.0, 0.0]])
    >>> mask = torch.tensor([[1, 1, 0]])  # the last token is padding
    >>> importance_weights(old, engine, mask, "token_truncate", cap=1.5)
    tensor([[1.5000, 0.3679, 1.0000]])
    >>> importance_weights(old, engine, mask, "sequence_mask", cap=2.0)  # exp(0.5 - 1.0) for every token
    tensor([[0.6065, 0.6065, 1.0000]])
"""

from __future__ import annotations

from typing import Literal

import torch

ImportanceCorrection = Literal["none", "token_truncate", "token_mask", "sequence_truncate", "sequence_mask"]
MODES = ("none", "token_truncate", "token_mask", "sequence_truncate", "sequence_mask")


def importance_weights(
    old_logprobs: torch.Tensor,
    sampling_logprobs: torch.Tensor,
    completion_mask: torch.Tensor,
    mode: ImportanceCorrection,
    cap: float,
) -> torch.Tensor:
    """Per-token weights ``[N, L]`` (1 on padding) for the policy term; see the module docstring."""
    if mode not in MODES:
        raise ValueError(f"importance correction {mode!r}; allowed: {', '.join(MODES)}")
    if mode == "none":
        return torch.ones_like(old_logprobs)
    mask = completion_mask.to(old_logprobs.dtype)
    log_ratio = (old_logprobs.detach() - sampling_logprobs.to(old_logprobs.dtype)) * mask
    if mode.startswith("sequence"):
        log_ratio = log_ratio.sum(dim=1, keepdim=True).expand_as(old_logprobs)
    ratio = torch.exp(log_ratio)
    if mode.endswith("truncate"):
        ratio = ratio.clamp(max=cap)
    else:
        ratio = ratio.masked_fill(ratio > cap, 0.0)
    return torch.where(mask.bool(), ratio, torch.ones_like(ratio))


def importance_metrics(
    old_logprobs: torch.Tensor,
    sampling_logprobs: torch.Tensor,
    completion_mask: torch.Tensor,
    mode: ImportanceCorrection,
    cap: float,
) -> dict[str, float]:
    """How far the engine is from the trainer: ``sampling/logp_difference/{mean,max}`` (absolute, per token) and
    the correction's ``sampling/importance_ratio/{min,mean,max}`` and ``sampling/importance_capped`` (share of
    completion tokens whose ratio was truncated or masked)."""
    valid = completion_mask.bool()
    if not valid.any():
        return {}
    diff = (old_logprobs - sampling_logprobs).abs()[valid]
    out = {"sampling/logp_difference/mean": float(diff.mean()), "sampling/logp_difference/max": float(diff.max())}
    if mode != "none":
        weights = importance_weights(old_logprobs, sampling_logprobs, completion_mask, mode, cap)[valid]
        raw = importance_weights(old_logprobs, sampling_logprobs, completion_mask, mode, float("inf"))[valid]
        out["sampling/importance_ratio/min"] = float(weights.min())
        out["sampling/importance_ratio/mean"] = float(weights.mean())
        out["sampling/importance_ratio/max"] = float(weights.max())
        out["sampling/importance_capped"] = float((weights != raw).float().mean())
    return out
