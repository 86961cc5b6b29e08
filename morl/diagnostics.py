"""Diagnostics: see interference coming, whatever the method.

The local covariance law ("Uncovering Cross-Objective Interference in Multi-Objective Alignment", 2026):
after one improvement step on the score ``s``, objective m changes by ``η · E_x[Cov_{y~π(.|x)}(r_m, s)] + O(η²)``.
An objective improves at first order iff its reward covaries positively with the training signal; under a
clipped surrogate the signal is the clipped advantage weight ``w = A · ρ · 1[not clipped]`` (clipping only
deletes terms). :class:`Diagnostics` is a pipeline callback that measures these quantities on every run:

- ``cov/score/{m}``, ``corr/score/{m}``: mean over prompts of the within-group covariance (correlation) of
  ``r_m`` and the score ``s`` (free);
- ``cov/clipped_weight/{m}``, ``corr/clipped_weight/{m}``: the same with ``w`` under the updated policy
  (one forward pass of the updated policy);
- ``clip/removed_mass``: ``Σ|A·ρ|·1[clipped] / Σ|A·ρ|`` over the completion tokens under the updated policy, a
  cheap proxy of the paper's Fisher distortion, and ``clip/token_fraction`` (same forward pass);
- ``alarm/{m}``: 1 while the EMA of the covariance has stayed below ``alarm_threshold`` for ``alarm_patience``
  steps — the law predicts that ``m`` is about to degrade (free);
- ``grad_cos/{a}/{b}``: cosine of the per-objective policy gradients every ``grad_cosine_every`` steps
  (M backward passes, opt-in);
- ``forecast/change/{m}``, ``forecast/z/{m}``: the interference forecast (:mod:`morl.forecast`) every
  ``forecast_every`` steps: m's first-order change along the last updates, measured on the next batch before it is
  trained on; ``forecast/alarm/{m}``: 1 while its smoothed z has stayed below ``forecast_threshold`` for
  ``forecast_patience`` forecasts. On a network this alarm sees the collapse the covariance alarm misses (in-batch
  covariances stay positive while accuracy falls; benchmarks/forecast.py measures both).

Cost on the quickstart step (TinyMath, 8 prompts × 8 completions, 64 new tokens, 1 thread; measured by
``benchmarks/step_time.py`` and ``benchmarks/method_cost.py``, figures in ``benchmarks/RESULTS.md``): the free
diagnostics take ≈ 1 ms of a ≈ 0.19 s step (< 1%), the forecast ≈ 7 ms per step on average (+3.5%); the forward
pass of the updated policy adds ≈ 0.03 s (+11-14%), over the 5% budget of always-on diagnostics, so it is paid only
when a component computes the clipped weights anyway (CTWA) or with ``clipped_weights: true``; the gradient
diagnostics cost one forward and M backward passes per measured step, hence opt-in.
An alarm warns once in the console, writes an event to ``events.jsonl`` in the run directory and
sets ``alarm/{m}`` to 1 until the smoothed covariance is back above the threshold.

Example:
    >>> diag = Diagnostics(alarm_patience=5, grad_cosine_every=10)  # Pipeline(..., diagnostics=diag)
    >>> sorted(need.value for need in diag.needs)  # the forecast (every 5 steps) and what the gradients need
    ['forecast', 'objective_advantages', 'objective_gradients']
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from morl import metrics as M
from morl.batch import Batch
from morl.callbacks import Callback, FitContext, ScoredContext, StepContext
from morl.policy import Policy
from morl.run import JsonlWriter
from morl.stages import Need, Scored, Updated
from morl.statistics import group_covariances, objective_gram, objective_losses, select_parameters


class DiagnosticsConfig(BaseModel):
    """Recipe section ``diagnostics:``. Cheap diagnostics are on; costly ones are opt-in."""

    # every float finite: a NaN threshold or EMA rate would make the alarm silently never (or always) fire
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    enabled: bool = Field(True, description="run the diagnostics callback at all")
    clipped_weights: bool | Literal["auto"] = Field(
        "auto",
        description="covariances with the clipped advantage weight and the clipped mass: 'auto' when a component "
        "computes the weights anyway (CTWA), true to pay one forward pass of the updated policy per step",
    )
    alarm: bool = Field(True, description="warn when an objective's smoothed covariance stays below the threshold")
    alarm_signal: Literal["auto", "clipped_weight", "score", "gradient"] = Field(
        "auto",
        description="what the alarm watches: the covariance with the clipped weight (when computed, 'auto') or the "
        "score, or 'gradient': the alignment cos(∇J_m, Δθ) of each objective's gradient with the update",
    )
    alarm_ema: float = Field(0.1, gt=0, le=1, description="EMA rate τ of the smoothed covariance")
    alarm_patience: int = Field(10, ge=1, description="steps the smoothed covariance must stay below the threshold")
    alarm_threshold: float = Field(
        0.0, description="covariance below which the alarm counts (0: the law's first-order degradation point)"
    )
    forecast_every: int = Field(
        5,
        ge=0,
        description="interference forecast every N steps (0: off): each objective's first-order change along the "
        "last N updates, on the next batch before it is trained on (one forward pass per measurement, two in half "
        "precision); with a controller that learns from the forecast, the controller's measurements are logged "
        "instead",
    )
    forecast_params: str = Field(
        "all", description="parameters the forecast moves: all, last_layers:N or a regex (a copy is kept in memory)"
    )
    forecast_alarm: bool = Field(True, description="warn when an objective's forecast stays below the threshold")
    forecast_threshold: float = Field(
        -0.5, description="the forecast alarm counts a smoothed z (forecast over its standard error) below this"
    )
    forecast_patience: int = Field(
        3, ge=1, description="consecutive forecasts (forecast_every steps apart) below the threshold before the alarm"
    )
    forecast_ema: float = Field(0.5, gt=0, le=1, description="EMA rate of the z the forecast alarm watches (1: none)")
    grad_cosine_every: int = Field(0, ge=0, description="per-objective gradient cosines every N steps (0: off)")
    grad_params: str = Field(
        "all", description="parameters of the gradient diagnostics: all, last_layers:N or a regex (memory M × |params|)"
    )

    @model_validator(mode="after")
    def _gradient_alarm_needs_gradients(self) -> DiagnosticsConfig:
        if self.alarm_signal == "gradient" and not self.grad_cosine_every:
            raise ValueError("alarm_signal='gradient' needs grad_cosine_every > 0 (the gradients are opt-in)")
        return self


def covariance_metrics(
    rewards: torch.Tensor, signal: torch.Tensor, group_size: int, objectives: Sequence[str], name: str
) -> dict[str, float]:
    """``cov/{name}/{m}`` and ``corr/{name}/{m}``: mean over prompt groups of Cov_k(r_m, signal) and Corr_k.

    Population (co)variances within each group, as in CTWA; a group where either side is constant counts as
    covariance 0 but is left out of the correlation's mean (0 when every group is flat); not-applicable (NaN)
    rewards are left out per objective; no outlier filter.

    Example:
        >>> covariance_metrics(torch.tensor([[1.0], [0.0]]), torch.tensor([2.0, 0.0]), 2, ["acc"], "score")
        {'cov/score/acc': 0.5, 'corr/score/acc': 1.0}
    """
    r = rewards.detach().double().cpu().numpy()
    values = signal.detach().double().cpu().numpy()
    cov = group_covariances(r, values, group_size, "covariance", outlier_factor=math.inf)
    corr = group_covariances(r, values, group_size, "correlation", outlier_factor=math.inf)
    out: dict[str, float] = {}
    for j, objective in enumerate(objectives):
        out[M.covariance(name, objective)] = float(cov[j])
        out[M.correlation(name, objective)] = float(corr[j])
    return out


def clipped_mass(
    ratio: torch.Tensor, unclipped: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor
) -> dict[str, float]:
    """Share of the advantage-weighted gradient mass ``Σ|A·ρ|`` that clipping removes under the updated policy.

    ``ratio`` and ``unclipped`` [N, L] are the policy loss's own statistics under the updated policy (the clip rule
    lives in the loss); a cheap proxy of the paper's Fisher distortion: 0 without clipping, 1 if every token is
    clipped.
    """
    mask = mask.bool()
    if not mask.any():
        return {M.CLIP_REMOVED_MASS: 0.0, M.CLIP_TOKEN_FRACTION: 0.0}
    clipped = ~unclipped.bool() & mask
    mass = (advantages.unsqueeze(1) * ratio.detach()).abs() * mask
    total = float(mass.sum())
    return {
        M.CLIP_REMOVED_MASS: float((mass * clipped).sum()) / total if total > 0 else 0.0,
        M.CLIP_TOKEN_FRACTION: float(clipped.sum()) / float(mask.sum()),
    }


def objective_gradients(policy: Policy, batch: Batch, algo: Any, params: Sequence[torch.Tensor]) -> torch.Tensor:
    """``[M, P]`` per-objective policy gradients ``∇J_m`` (ascent directions) on ``params``, flattened.

    Each objective's loss is the algorithm's policy loss with that objective's group-normalised advantages
    (``batch.objective_advantages``), regularisers left out, evaluated on-policy (``ρ = 1``, nothing clipped) at
    the current parameters: the plain policy gradient ``mean_tokens(A_m ∇log π)``.
    """
    on_policy = dataclasses.replace(batch, old_logprobs=None)
    with torch.enable_grad():
        losses = objective_losses(policy, on_policy, algo)
        _, grads = objective_gram(losses, list(params), batched=False)
    return -grads.detach()


def cosine_matrix(vectors: torch.Tensor) -> np.ndarray:
    """Pairwise cosines of the rows, from their Gram matrix; a zero row gives NaN.

    Example:
        >>> cosine_matrix(torch.tensor([[1.0, 0.0], [1.0, 1.0]])).round(3).tolist()
        [[1.0, 0.707], [0.707, 1.0]]
    """
    gram = (vectors.double() @ vectors.double().T).cpu()
    norms = gram.diagonal().clamp_min(0).sqrt()
    scale = torch.outer(norms, norms)
    cos = torch.where(scale > 0, gram / scale.clamp_min(1e-300), torch.full_like(gram, math.nan))
    return cos.clamp(-1.0, 1.0).numpy()


class InterferenceAlarm:
    """Per objective: an EMA of a covariance; fires once when it stays below a threshold for ``patience`` steps.

    Stateful but not a component: its state lives in trailing-underscore attributes created by :meth:`start`.

    Example:
        >>> alarm = InterferenceAlarm(["acc"], ema=1.0, patience=2)
        >>> [alarm.observe(step, np.array([-0.1]))[0] for step in (1, 2, 3)]
        [None, {'event': 'interference_alarm', 'step': 2, 'objective': 'acc', 'since_step': 1, \
'ema': -0.1, 'steps': [1, 2], 'values': [-0.1, -0.1]}, None]
    """

    def __init__(self, objectives: list[str], ema: float = 0.1, patience: int = 10, threshold: float = 0.0) -> None:
        self.objectives = list(objectives)
        self.ema = ema
        self.patience = patience
        self.threshold = threshold
        m = len(objectives)
        self.cov_ema_ = np.full(m, np.nan)
        self.active_ = np.zeros(m, dtype=bool)
        self.below_: list[list[tuple[int, float]]] = [[] for _ in range(m)]

    def state_dict(self) -> dict[str, Any]:
        return {
            "objectives": self.objectives,
            "ema": [None if not math.isfinite(v) else float(v) for v in self.cov_ema_],
            "active": [bool(a) for a in self.active_],
            "below": [[list(item) for item in below] for below in self.below_],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.objectives = list(state["objectives"])
        self.cov_ema_ = np.array([math.nan if v is None else v for v in state["ema"]], dtype=float)
        self.active_ = np.array(state["active"], dtype=bool)
        self.below_ = [[(int(s), float(c)) for s, c in below] for below in state["below"]]

    def observe(self, step: int, cov: np.ndarray) -> list[dict[str, Any] | None]:
        """Update with this step's covariances (NaN: not observed); returns an event per objective or None."""
        seen = np.isfinite(cov)
        first = seen & ~np.isfinite(self.cov_ema_)
        smoothed = (1 - self.ema) * self.cov_ema_ + self.ema * cov
        self.cov_ema_ = np.where(first, cov, np.where(seen, smoothed, self.cov_ema_))
        events: list[dict[str, Any] | None] = []
        for j, objective in enumerate(self.objectives):
            event = None
            if not seen[j]:
                events.append(None)
                continue
            ema = float(self.cov_ema_[j])
            if ema < self.threshold:
                self.below_[j].append((step, float(cov[j])))
                if not self.active_[j] and len(self.below_[j]) >= self.patience:
                    self.active_[j] = True
                    event = {
                        "event": "interference_alarm",
                        "step": step,
                        "objective": objective,
                        "since_step": self.below_[j][0][0],
                        "ema": ema,
                        "steps": [s for s, _ in self.below_[j]],
                        "values": [c for _, c in self.below_[j]],
                    }
            else:
                if self.active_[j]:
                    event = {
                        "event": "interference_recovered",
                        "step": step,
                        "objective": objective,
                        "since_step": self.below_[j][0][0],
                        "ema": ema,
                    }
                self.active_[j] = False
                self.below_[j] = []
            events.append(event)
        return events


class Diagnostics(Callback):
    """The pipeline's default callback: covariance diagnostics, the interference alarm, clipping, gradient cosines.

    Adds its metrics to each step's metrics dict (so they land in ``metrics.jsonl`` and every logger).
    """

    def __init__(self, config: DiagnosticsConfig | dict[str, Any] | None = None, **params: Any) -> None:
        if config is None:
            config = DiagnosticsConfig(**params)
        elif isinstance(config, dict):
            config = DiagnosticsConfig(**{**config, **params})
        elif params:
            config = config.model_copy(update=params)
        self.config = config
        self._fit: FitContext | None = None
        self._snapshot: list[torch.Tensor] | None = None
        self._events: JsonlWriter | None = None
        self.alarm_: InterferenceAlarm | None = None
        self.forecast_alarm_: InterferenceAlarm | None = None
        self._forecast: tuple[int, np.ndarray, np.ndarray] | None = None  # (step, f, z) measured before its update
        self.events_: list[dict[str, Any]] = []

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config.model_dump().items())
        return f"Diagnostics({args})"

    def state_dict(self) -> dict[str, Any]:
        """The alarms' smoothed signals and streaks, so a resumed run neither re-fires nor forgets (the forecast's
        window belongs to the training step, which checkpoints it)."""
        state: dict[str, Any] = {}
        if self.alarm_ is not None:
            state.update(self.alarm_.state_dict())  # the covariance alarm's keys at the top level, as before
        if self.forecast_alarm_ is not None:
            state["forecast_alarm"] = self.forecast_alarm_.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state:
            return
        cfg = self.config
        if "objectives" in state:
            self.alarm_ = InterferenceAlarm(state["objectives"], cfg.alarm_ema, cfg.alarm_patience, cfg.alarm_threshold)
            self.alarm_.load_state_dict(state)
        if "forecast_alarm" in state:
            saved = state["forecast_alarm"]
            self.forecast_alarm_ = forecast_alarm(saved["objectives"], cfg)
            self.forecast_alarm_.load_state_dict(saved)

    @property
    def needs(self) -> frozenset[Need]:  # type: ignore[override]
        cfg = self.config
        if not cfg.enabled:
            return frozenset()
        needs = set()
        if cfg.clipped_weights is True:
            needs.add(Need.CLIPPED_WEIGHTS)
        if cfg.grad_cosine_every:
            needs |= {Need.OBJECTIVE_ADVANTAGES, Need.OBJECTIVE_GRADIENTS}
        if cfg.forecast_every:
            needs.add(Need.FORECAST)
        return frozenset(needs)

    @property
    def forecast_every(self) -> int:
        """The forecast's cadence when no controller sets one (:class:`morl.forecast.UsesForecast`)."""
        return self.config.forecast_every

    @property
    def forecast_params(self) -> str:
        return self.config.forecast_params

    def on_fit_start(self, ctx: FitContext) -> None:
        self._fit = ctx
        # under data parallelism every process keeps the same state, and process 0 appends the events
        self._events = None  # opened on the first event, so a quiet run leaves no empty file
        if self.config.enabled and self.config.grad_cosine_every:
            self._maybe_snapshot(ctx.start_step)

    def on_batch_scored(self, ctx: ScoredContext) -> None:
        """The forecast, as the step measured it on the batch it is about to train on (logged at the step's end)."""
        if self.config.enabled and ctx.forecast is not None:
            self._forecast = (ctx.step, *ctx.forecast)

    def on_fit_end(self, ctx: FitContext, history: list[dict[str, Any]]) -> None:
        if self._events is not None:
            self._events.close()
            self._events = None

    def on_step_end(self, ctx: StepContext) -> None:
        cfg = self.config
        if not cfg.enabled:
            return
        start = time.perf_counter()
        record, metrics, step = ctx.record, ctx.metrics, ctx.step
        metrics.update(self._covariances(record)(record.scores, "score"))
        # the clipped weights of this update, or of the last one where they were computed beside this step's rollout
        clipped = record if record.clipped_weights is not None else record.settled
        have_clipped = clipped is not None and clipped.clipped_weights is not None and cfg.clipped_weights is not False
        if have_clipped:
            metrics.update(self._covariances(clipped)(clipped.clipped_weights, "clipped_weight"))
            train = clipped.weighted.train
            metrics.update(
                clipped_mass(clipped.new_ratio, clipped.new_unclipped, train.advantages, train.completion_mask)
            )
        if cfg.grad_cosine_every:
            if step % cfg.grad_cosine_every == 0 and record.objective_advantages is not None:
                metrics.update(self._gradient_metrics(record))
            self._maybe_snapshot(step)
        if cfg.alarm:
            available = "clipped_weight" if have_clipped else "score"
            self._alarm(step, record.scored, metrics, available)
        if cfg.forecast_every:
            self._forecast_metrics(step, record.objectives, metrics)
        metrics[M.timing("diagnostics")] = time.perf_counter() - start

    def _forecast_metrics(self, step: int, objectives: Sequence[str], metrics: dict[str, float]) -> None:
        """This step's forecast (when one was measured before its update) and the forecast alarm."""
        cfg = self.config
        measured = self._forecast is not None and self._forecast[0] == step
        if measured:
            _, f, z = self._forecast  # type: ignore[misc]
            for j, objective in enumerate(objectives):
                metrics[M.forecast("change", objective)] = float(f[j])
                metrics[M.forecast("z", objective)] = float(z[j])
        if not cfg.forecast_alarm:
            return
        if self.forecast_alarm_ is None or self.forecast_alarm_.objectives != list(objectives):
            self.forecast_alarm_ = forecast_alarm(list(objectives), cfg)
        if measured:
            for event in self.forecast_alarm_.observe(step, np.asarray(z, dtype=float)):
                if event is not None:
                    self._record({**event, "signal": "forecast"})
        for j, objective in enumerate(objectives):
            metrics[M.forecast("alarm", objective)] = float(self.forecast_alarm_.active_[j])

    @staticmethod
    def _covariances(record: Updated):
        def covariance(signal: torch.Tensor, name: str) -> dict[str, float]:
            return covariance_metrics(record.rewards, signal, record.group_size, record.objectives, name)

        return covariance

    def _gradient_metrics(self, record: Updated) -> dict[str, float]:
        """Pairwise gradient cosines and each gradient's alignment with the update this step made."""
        fit = self._fit
        params = self._params()
        grads = objective_gradients(fit.policy, record.weighted.train, fit.algo, params)
        cos = cosine_matrix(grads)
        names = record.objectives
        out = {}
        for a in range(len(names)):
            for b in range(a + 1, len(names)):
                out[M.grad_cos(names[a], names[b])] = float(cos[a, b])
        if self._snapshot is not None:
            delta = torch.cat([(p.detach() - old).reshape(-1) for p, old in zip(params, self._snapshot)])
            align = cosine_matrix(torch.cat([grads, delta.to(grads.dtype).unsqueeze(0)]))[-1, :-1]
            for m, name in enumerate(names):
                out[M.grad_align(name)] = float(align[m])
            self._snapshot = None
        return out

    def _params(self) -> list[torch.Tensor]:
        return select_parameters(self._fit.policy.model, self.config.grad_params)

    def _maybe_snapshot(self, step: int) -> None:
        """Keep the parameters before the next measured step, to measure the update ``Δθ`` it makes."""
        if (step + 1) % self.config.grad_cosine_every == 0:
            self._snapshot = [p.detach().clone() for p in self._params()]

    def _alarm(self, step: int, scored: Scored, metrics: dict[str, float], available: str) -> None:
        cfg = self.config
        signal = available if cfg.alarm_signal == "auto" else cfg.alarm_signal
        if signal == "clipped_weight" and available != "clipped_weight":
            signal = "score"  # asked for, but nobody computed the clipped weights this step
        objectives = list(scored.objectives)
        if self.alarm_ is None or self.alarm_.objectives != objectives:
            self.alarm_ = InterferenceAlarm(objectives, cfg.alarm_ema, cfg.alarm_patience, cfg.alarm_threshold)
        keys = [M.grad_align(o) if signal == "gradient" else M.covariance(signal, o) for o in objectives]
        cov = np.array([metrics.get(key, math.nan) for key in keys], dtype=float)
        for event in self.alarm_.observe(step, cov):
            if event is not None:
                self._record({**event, "signal": signal})
        for j, objective in enumerate(objectives):
            metrics[M.alarm(objective)] = float(self.alarm_.active_[j])

    def _record(self, event: dict[str, Any]) -> None:
        from morl.logging import console

        self.events_.append(event)
        if self._events is None and self._fit is not None and self._fit.is_main:
            self._events = JsonlWriter(Path(self._fit.run_dir) / "events.jsonl")
        if self._events is not None:
            self._events.write({**event, "segment": self._fit.segment if self._fit else 0})
        name, step, since = event["objective"], event["step"], event["since_step"]
        threshold = self.config.alarm_threshold
        if event["signal"] == "gradient":
            what = f"the alignment of ∇{name} with the update"
        elif event["signal"] == "forecast":
            what = f"the forecast change of {name} along the recent updates, on fresh completions, (z)"
            threshold = self.config.forecast_threshold
        else:
            what = f"the covariance of {name} with the {event['signal'].replace('_', ' ')}"
        if event["event"] == "interference_alarm":
            console.print(
                f"[bold yellow]interference alarm[/] step {step}: {what} has stayed below "
                f"{threshold:g} since step {since} (EMA {event['ema']:+.3g}): "
                f"[bold]{name}[/] is predicted to degrade"
            )
        else:
            console.print(f"[green]interference alarm cleared[/] step {step}: {what} is back above the threshold")


def forecast_alarm(objectives: list[str], config: DiagnosticsConfig) -> InterferenceAlarm:
    """The alarm on the forecast's z, as ``config`` sets it (benchmarks/forecast.py replays it on logged z)."""
    return InterferenceAlarm(objectives, config.forecast_ema, config.forecast_patience, config.forecast_threshold)


def make_diagnostics(spec: Diagnostics | DiagnosticsConfig | dict[str, Any] | bool | None) -> Diagnostics | None:
    """``True``/``None``: defaults; ``False``: none; a config, mapping or instance: that one."""
    if spec is False:
        return None
    if spec is True or spec is None:
        return Diagnostics()
    if isinstance(spec, Diagnostics):
        return spec
    diag = Diagnostics(spec)
    return diag if diag.config.enabled else None
