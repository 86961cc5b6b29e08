"""The trainer: the training step as typed stages, and the loop that owns a run directory.

One step::

    rollout (Batch) -> Scored -> controller.before_update -> Weighted -> updater -> Updated -> controller.after_update

Each record is made by one stage (:mod:`morl.stages`) and every tensor in it lives on the policy's device. What is
computed beyond the default path follows the components' ``needs`` (:class:`morl.stages.Need`).

The loop owns its run directory (:mod:`morl.run`): it refuses a folder that already holds a run, holds a lock while
it writes, appends to ``metrics.jsonl`` (rows tagged with their manifest segment), writes the manifest at the start
and one segment per start or resume, and checkpoints the :class:`morl.state.TrainingState`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from morl import distributed
from morl import metrics as M
from morl.algos import AdvantageEstimator, PolicyAlgo
from morl.algos.advantages import per_objective_advantages
from morl.algos.dynamic_sampling import informative_groups
from morl.algos.importance import importance_metrics
from morl.batch import Batch, concat_batches
from morl.callbacks import Callback, FitContext, ScoredContext, StepContext, TensorStateful
from morl.checkpoint import (
    CheckpointError,
    GracefulStop,
    Interrupted,
    check_reference,
    find_checkpoint,
    load_rng,
    load_state_tensors,
    load_tensors,
    prepare_resume,
    read_checkpoint,
    reference_pointer,
    resume_intact,
    run_dir_of,
    save_checkpoint,
    weights_fingerprint,
)
from morl.components import RecipeError
from morl.controllers.base import AdvantageLevel, GradientLevel, RewardLevel, UsesValidation, WeightController
from morl.controllers.gradients import select_parameters
from morl.evaluation import Evaluator, split_examples
from morl.forecast import ForecastWindow, UsesForecast
from morl.hub import push_run
from morl.logging import TrainingProgress, console, open_loggers, print_eval_table
from morl.policy import Policy
from morl.rewards import (
    RewardError,
    RewardFn,
    StepInfo,
    check_columns,
    completion_token_ids,
    is_moving_target,
    score_rewards,
)
from morl.rollout import RolloutBackend
from morl.run import (
    JsonlWriter,
    Manifest,
    RunLock,
    check_new_run,
    check_resume,
    fresh_run_dir,
    read_metrics,
)
from morl.scalarize import Scalarizer, fill_not_applicable
from morl.scalarize.base import mark_unscorable
from morl.stages import Need, Scored, Updated, Weighted
from morl.state import StateMismatch, TrainingState, capture_parts, restore_parts

COMPLETIONS_FILE = "completions.jsonl"


class TrainConfig(BaseModel):
    """Loop settings: how many steps, how big a step, when to evaluate, where to write."""

    # every float finite: a NaN or infinite lr or weight decay passes `gt=0` / `ge=0` and only shows up as NaN weights
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    steps: int = Field(100, ge=0, description="training steps (one rollout batch and its policy update each)")
    prompts_per_step: int = Field(
        8, ge=1, description="P prompts per step (P × K completions); must divide evenly across processes"
    )
    group_size: int = Field(8, ge=2, description="K completions per prompt; group methods need K >= 2")
    lr: float = Field(1e-4, gt=0, description="AdamW learning rate of the policy")
    weight_decay: float = Field(0.0, ge=0, description="AdamW decoupled weight decay")
    seed: int = Field(0, description="seed of prompt order and sampling (offset per process and per step)")
    eval_every: int = Field(25, ge=0, description="evaluate every N steps (0: only at start and end)")
    eval_greedy: bool = Field(True, description="evaluate with greedy decoding")
    eval_sampled: bool = Field(True, description="evaluate with the rollout's sampling (one completion per prompt)")
    eval_batch_size: int = Field(64, ge=1, description="eval prompts generated at once; lower it to save memory")
    output_dir: str | None = Field(
        None,
        description="run directory; must not hold a run already (resume it, or overwrite explicitly); "
        "None: a fresh runs/<date-time>",
    )
    on_reward_error: Literal["raise", "skip"] = Field(
        "raise", description="a reward that fails: stop, or mark the sample not applicable and count it"
    )
    checkpoint_every: int = Field(50, ge=0, description="write a checkpoint every N steps (0: only at the end)")
    keep_checkpoints: int = Field(2, ge=1, description="how many of the newest checkpoints to keep")
    max_nonfinite_steps: int = Field(
        3, ge=1, description="stop after this many steps in a row whose loss or gradient was not finite"
    )
    reward_timeout_s: float | None = Field(
        60.0,
        gt=0,
        description="seconds one reward call (a batch) may take; past it its samples are not applicable (NaN) and "
        "counted as rewards/<name>/timeouts. A reward's own call_timeout_s wins; None: no limit",
    )
    reward_isolation: Literal["thread", "process"] = Field(
        "thread",
        description="where rewards without an isolate attribute run. thread: in this process under a watchdog (state "
        "and closures work; a call past its limit is abandoned, not killed); process: in a forked worker killed at "
        "the limit (stops anything; closure state stays in the worker). RewardFn subclasses run in this process",
    )
    max_failed_reward_steps: int = Field(
        3,
        ge=1,
        description="stop (after a checkpoint of the last good step) when a reward timed out or failed on every "
        "sample for this many steps in a row",
    )
    stop_grace_s: float | None = Field(
        30.0,
        gt=0,
        description="after a first SIGINT/SIGTERM the step may finish for this many seconds, then the run stops at "
        "once keeping the last complete step's checkpoint (as a second signal does); None: wait for the step",
    )
    save_model: bool = Field(True, description="write the final model (Hugging Face format) to the run directory")
    threads: Annotated[int, Field(ge=1)] | Literal["auto"] | None = Field(
        "auto",
        description="torch CPU threads. auto: 1 for a policy on the CPU with fewer than 5M parameters (tiny operators: "
        "more threads only wait on each other, and far longer on a busy machine; benchmarks/RESULTS.md), else "
        "torch's setting; a number: that many; None: leave torch's setting alone (its default: one per core)",
    )
    progress: bool = Field(True, description="show a progress bar and summary in the console (process 0)")
    loggers: list[Literal["jsonl", "tensorboard", "wandb", "trackio"]] = Field(
        default_factory=lambda: ["jsonl"], description="where metrics go besides metrics.jsonl, which is always written"
    )
    dynamic_sampling: bool = Field(
        False,
        description="DAPO's dynamic sampling: drop prompt groups whose rewards are all equal (no signal) and sample "
        "more prompts to refill the step",
    )
    dynamic_sampling_rounds: int = Field(
        3,
        ge=1,
        description="with dynamic_sampling: at most this many refill rounds per step, then train on what is kept",
    )
    lr_scheduler_type: Literal["constant", "constant_with_warmup", "linear", "cosine"] = Field(
        "constant",
        description="learning-rate schedule (TRL's name; transformers' get_scheduler) over optimizer steps, as TRL "
        "counts them: each training step takes algo.epochs × algo.minibatches, so the schedule spans train.steps × "
        "epochs × minibatches (a resume that extends train.steps stretches what is left of it); constant: train.lr",
    )
    warmup_steps: int | float = Field(
        0,
        ge=0,
        description="optimizer steps of linear warmup from 0 to train.lr; a number below 1 is a ratio of all "
        "optimizer steps (transformers 5); when above 0 it wins over warmup_ratio",
    )
    warmup_ratio: float = Field(
        0.0, ge=0, le=1, description="warmup as a share of all optimizer steps (rounded up), if warmup_steps is 0"
    )
    log_completions: bool = Field(
        False,
        description="log sampled completions with their per-objective rewards, score and advantage to "
        "RUN_DIR/completions.jsonl (and as a table to TensorBoard or W&B when among loggers)",
    )
    num_completions_to_print: int | None = Field(
        None,
        ge=1,
        description="with log_completions: how many of a step's completions, taken in batch order so that a "
        "prompt's group sits together; None: all",
    )
    log_completions_every: int = Field(1, ge=1, description="with log_completions: log them every N training steps")
    push_to_hub: bool = Field(
        False,
        description="at the end of a finished fit, write a model card (RUN_DIR/model/README.md) and upload "
        "RUN_DIR/model to the Hugging Face Hub (process 0); a failed upload is reported and the run kept",
    )
    hub_model_id: str | None = Field(
        None, description="Hub repository, 'user/name' or 'name' (your namespace); None: the run directory's name"
    )
    hub_private_repo: bool | None = Field(
        None, description="create the Hub repository private; None: the namespace's default (TRL's name)"
    )

    @field_validator("warmup_steps")
    @classmethod
    def _whole_steps_or_ratio(cls, value: int | float) -> int | float:
        if value >= 1 and value != int(value):
            raise ValueError(f"a whole number of steps, or a ratio below 1 of all optimizer steps. Found {value}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        if self.lr_scheduler_type == "constant" and (self.warmup_steps or self.warmup_ratio):
            raise ValueError(
                "lr_scheduler_type: constant has no warmup; use constant_with_warmup (or linear, cosine) to warm up"
            )
        if self.push_to_hub and not self.save_model:
            raise ValueError("push_to_hub uploads the final model: it needs save_model: true")
        return self

    def warmup_for(self, total: int) -> int:
        """Warmup optimizer steps out of ``total``, by transformers' rule: whole steps win over a ratio."""
        if self.warmup_steps >= 1:
            return int(self.warmup_steps)
        return math.ceil(total * (self.warmup_steps or self.warmup_ratio))


class RewardFailure(RewardError):
    """A reward timed out or failed on every sample for ``train.max_failed_reward_steps`` steps in a row."""


class NonFiniteError(RuntimeError):
    """Too many steps in a row had a non-finite loss or gradient; the last good checkpoint is kept."""


@dataclass
class FitResult:
    run_dir: Path
    history: list[dict[str, Any]] = field(default_factory=list)
    hub_url: str | None = None  # where train.push_to_hub uploaded the model; None when it did not (or failed)

    def evals(self) -> list[dict[str, Any]]:
        return [row for row in self.history if row.get("kind") == "eval"]


@dataclass(frozen=True)
class Parts:
    """The composed components a trainer runs; built and checked against each other by the Pipeline."""

    policy: Policy
    rewards: list[Any]
    objectives: tuple[str, ...]
    scalarizer: Scalarizer
    advantage: AdvantageEstimator
    algo: PolicyAlgo
    controller: WeightController
    rollout: RolloutBackend


class Trainer:
    """Runs steps and the fit loop over :class:`Parts`; its mutable state is one :class:`TrainingState`."""

    def __init__(
        self,
        parts: Parts,
        config: TrainConfig,
        callbacks: list[Callback],
        optimizer: torch.optim.Optimizer,
        reference: Policy | None,
        evaluator: Evaluator,
        recipe: dict[str, Any],
        manifest_method: dict[str, Any],
    ) -> None:
        self.parts = parts
        self.config = config
        parts.rollout.set_training_seed(config.seed)  # an engine's own seed (vLLM) follows train.seed
        self.callbacks = callbacks  # the pipeline's list: a callback appended there is seen here
        self.optimizer = optimizer
        self.lr_scheduler = _lr_scheduler(optimizer, config, parts.algo)
        self.reference = reference
        self.evaluator = evaluator
        self.recipe = recipe
        self.manifest_method = manifest_method
        self.state = TrainingState()
        self.validation_data: list[dict[str, Any]] | None = None
        self._order: list[int] = []  # this epoch's prompt order, recomputed from the seed after a resume
        self._train_data: list[dict[str, Any]] | None = None  # what dynamic sampling refills from, during fit
        self._reference_fingerprint: str | None = None
        self._fit: FitContext | None = None
        self._stop: GracefulStop | None = None  # during fit: holds an immediate stop while the update runs
        self._before_step: tuple[int, dict[str, Any]] | None = None  # what a stop before the update puts back
        self._reward_failed: dict[str, bool] = {}  # this step: did the reward fail on every sample it was given
        self._reward_timeouts: dict[str, int] = {}  # this step: samples whose reward call ran past its limit
        self._reward_streaks: dict[str, int] = {}  # steps in a row on which the reward failed on every sample
        # a controller that learns from the interference forecast: the step measures it (morl.forecast)
        forecasting = isinstance(parts.controller, UsesForecast) and parts.controller.forecast_every > 0
        self.forecast_window = ForecastWindow(parts.controller.forecast_every) if forecasting else None

    # ---- what is computed -------------------------------------------------------------------------------------

    @property
    def needs(self) -> frozenset[Need]:
        needs = set(self.parts.controller.needs)
        for cb in self.callbacks:
            needs |= set(cb.needs)
        return frozenset(needs)

    def stateful_parts(self) -> dict[str, Any]:
        """Every part whose state a checkpoint carries, by role: the learned state of the components, and where the
        learning-rate schedule stands."""
        p = self.parts
        out: dict[str, Any] = {
            "scalarizer": p.scalarizer,
            "advantage": p.advantage,
            "algo": p.algo,
            "controller": p.controller,
            "rollout": p.rollout,
            "lr_scheduler": self.lr_scheduler,
        }
        if self.forecast_window is not None:
            out["forecast"] = self.forecast_window
        out.update({f"reward/{name}": reward for name, reward in zip(p.objectives, p.rewards)})
        out.update({f"callback/{i}/{type(cb).__name__}": cb for i, cb in enumerate(self.callbacks)})
        return out

    # ---- one step -----------------------------------------------------------------------------------------------

    def step(self, examples: list[dict[str, Any]]) -> tuple[Updated, dict[str, float]]:
        """One training step on these prompts; returns the step's last record and its metrics."""
        p = self.parts
        if self._fit is None:  # a step outside fit(): callbacks watch it as a fit without a run directory
            self._fit = self._fit_context(None, segment=0)
            for cb in self.callbacks:
                cb.on_fit_start(self._fit)
        timings: dict[str, float] = {}
        # until the update starts, a stop at once puts these back, so the checkpoint of the last complete step is exact
        self._before_step = (self.state.data_position, capture_parts(self.stateful_parts()))
        self._reward_failed, self._reward_timeouts = {}, {}
        validation = isinstance(p.controller, UsesValidation) and Need.VALIDATION in self.needs
        if validation and self.state.step == 0:
            t0 = time.perf_counter()
            p.controller.observe_validation(self._validation_means())  # the initial model's point
            timings[M.timing("validation")] = time.perf_counter() - t0

        t0 = time.perf_counter()
        rollout = self._rollout(examples, timings)
        timings[M.timing("rollout")] = time.perf_counter() - t0 - timings.get(M.timing("reference"), 0.0)

        t0 = time.perf_counter()
        scored = self._score(rollout)
        timings[M.timing("reward")] = time.perf_counter() - t0
        filtered: dict[str, float] = {}
        if self.config.dynamic_sampling:
            scored, filtered = self._filter_groups(scored, timings)
        self._count_reward_failures()

        if self._stop is not None:  # a stop at once waits for the end of the step from here on
            self._stop.hold()
        self._before_step = None
        forecast = None
        if self.forecast_window is not None:
            t0 = time.perf_counter()
            forecast = self._forecast_for_controller(scored)
            timings[M.timing("forecast_controller")] = time.perf_counter() - t0
        if self.callbacks:  # a fresh batch no update has trained on, under the parameters that sampled it
            fresh = ScoredContext(
                fit=self._fit,
                step=self.state.step + 1,
                scored=scored,
                forecasting=self.forecast_window is not None,
                forecast=forecast,
            )
            for cb in self.callbacks:
                cb.on_batch_scored(fresh)
        t0 = time.perf_counter()
        p.controller.before_update(scored)
        weighted = self._weigh(scored)
        timings[M.timing("controller")] = time.perf_counter() - t0

        t0 = time.perf_counter()
        combine = p.controller.combine_losses if isinstance(p.controller, GradientLevel) else None
        learning_rate = float(self.optimizer.param_groups[0]["lr"])  # what the step's first optimizer step uses
        stats = p.algo.update(p.policy, self.optimizer, weighted.train, combine=combine)
        p.rollout.weights_changed(p.policy)
        timings[M.timing("update")] = time.perf_counter() - t0 + timings.pop(M.timing("reference"), 0.0)
        nonfinite = stats.get("skipped_nonfinite", 0.0) > 0  # the updater skipped the optimizer step
        self.state.skipped_steps += int(nonfinite)
        self.state.nonfinite_streak = self.state.nonfinite_streak + 1 if nonfinite else 0

        t0 = time.perf_counter()
        updated = self._updated(weighted, stats)
        p.controller.after_update(updated)
        timings[M.timing("controller")] += time.perf_counter() - t0
        if validation:
            t0 = time.perf_counter()
            p.controller.observe_validation(self._validation_means())
            timings[M.timing("validation")] = timings.get(M.timing("validation"), 0.0) + time.perf_counter() - t0

        self.state.step += 1
        metrics = self._step_metrics(updated)
        metrics[M.LEARNING_RATE] = learning_rate
        metrics.update(filtered)
        metrics.update(timings)
        ctx = StepContext(fit=self._fit, step=self.state.step, record=updated, metrics=metrics)
        for cb in self.callbacks:
            cb.on_step_end(ctx)
        if self._stop is not None:
            self._stop.release()  # raises KeyboardInterrupt if a stop at once came during the update
        return updated, metrics

    def _forecast_for_controller(self, scored: Scored) -> tuple[np.ndarray, np.ndarray] | None:
        """Measure the forecast on the fresh batch when its window closes, and hand it to the controller (and
        return it, for the callbacks: the diagnostics log it rather than measure it again)."""
        p = self.parts
        window = self.forecast_window
        assert window is not None and isinstance(p.controller, UsesForecast)
        if not window.due(self.state.step + 1):
            return None
        if p.policy.sharded:
            raise ValueError(f"{type(p.controller).__name__} needs the forecast, which a sharded policy cannot measure")
        result = window.observe(
            self.state.step + 1,
            p.policy,
            select_parameters(p.policy.model, "all"),
            scored.rollout,
            scored.rewards,
            p.algo.config.temperature,
            p.algo.config.micro_batch_size,
        )
        if result is not None:
            p.controller.observe_forecast(*result)
        return result

    def _count_reward_failures(self) -> None:
        """Stop before the update when a reward timed out or failed on every sample for too many steps in a row:
        its objective has had no signal for that long, which a user must hear about, not find in a plot later."""
        limit = self.config.max_failed_reward_steps
        for name, failed in self._reward_failed.items():
            self._reward_streaks[name] = self._reward_streaks.get(name, 0) + 1 if failed else 0
        worst = max(self._reward_streaks, key=self._reward_streaks.__getitem__, default=None)
        if worst is not None and self._reward_streaks[worst] >= limit:
            raise RewardFailure(
                f"reward {worst!r} timed out or failed on every sample for {self._reward_streaks[worst]} steps in a "
                f"row (train.max_failed_reward_steps={limit}; {self._reward_timeouts.get(worst, 0)} timed-out "
                f"samples this step; time limit: its call_timeout_s, else train.reward_timeout_s="
                f"{self.config.reward_timeout_s})"
            )

    def _rollout(self, examples: list[dict[str, Any]], timings: dict[str, float]) -> Batch:
        """Sample K completions per prompt on this process's share, add the trainer's (and the reference's)
        log-probs, and gather every process's rows."""
        p = self.parts
        k = self.config.group_size
        shard = distributed.shard_slice(len(examples), "prompts per step")  # all of them in one process
        prompts, columns = split_examples(examples[shard])
        p.policy.model.eval()
        batch = p.rollout.generate(p.policy, prompts, columns, k)
        t0 = time.perf_counter()
        with torch.no_grad():
            old = batch.old_logprobs
            if old is None:  # vLLM, or rollout.logprobs: trainer: the trainer's own log-probs
                old = self.logprobs(p.policy, batch)
            ref = self.logprobs(self.reference, batch) if self.reference is not None else None
        batch = dataclasses.replace(batch, old_logprobs=old, ref_logprobs=ref)
        timings[M.timing("reference")] = time.perf_counter() - t0
        if distributed.is_distributed():  # every process gets the whole batch and trains on its own rows
            batch = distributed.gather_batch(batch, p.policy.tokenizer.pad_token_id)
            batch = dataclasses.replace(batch, local_rows=slice(shard.start * k, shard.stop * k))
        return batch

    def _score(self, rollout: Batch) -> Scored:
        p = self.parts
        timeouts: dict[str, int] = {}
        rewards, skipped = score_rewards(
            p.rewards,
            rollout.prompts,
            rollout.completions,
            rollout.columns,
            training=True,
            completion_lengths=rollout.completion_lengths.tolist(),
            completion_ids=completion_token_ids(rollout.completion_ids, rollout.completion_mask),
            trainer_state=self.step_info(),
            on_error=self.config.on_reward_error,
            timeout_s=self.config.reward_timeout_s,
            isolation=self.config.reward_isolation,
            timeouts=timeouts,
        )
        if distributed.is_distributed():  # every process scored the same batch; process 0's scores rule, in case
            rewards, skipped, timeouts = distributed.broadcast_object((rewards, skipped, timeouts))  # (a random reward)
        n = len(rollout.completions)
        for name in p.objectives:  # several scorings in one step (dynamic sampling): failed only if all did
            lost = skipped.get(name, 0) + timeouts.get(name, 0)
            self._reward_failed[name] = self._reward_failed.get(name, True) and n > 0 and lost >= n
            self._reward_timeouts[name] = self._reward_timeouts.get(name, 0) + timeouts.get(name, 0)
        device = rollout.completion_mask.device
        return Scored(rollout=rollout, rewards=rewards.to(device), objectives=p.objectives, skipped=skipped)

    def _filter_groups(self, scored: Scored, timings: dict[str, float]) -> tuple[Scored, dict[str, float]]:
        """DAPO's batch filter: keep the groups whose rewards vary (:func:`morl.algos.informative_groups`); while
        fewer than ``prompts_per_step`` are kept, sample more prompts (at most ``dynamic_sampling_rounds`` times);
        train on the first ``prompts_per_step`` kept, or on what there is. A step without any informative group
        keeps its batch (its advantages are all zero: the update changes nothing but the moments)."""
        wanted = self.config.prompts_per_step
        k = scored.group_size
        kept: list[Scored] = []
        dropped, rounds = 0, 0
        current = scored
        while True:
            informative = informative_groups(current.rewards, k).tolist()
            kept += [_group(current, g) for g, keep in enumerate(informative) if keep]
            dropped += informative.count(False)
            if len(kept) >= wanted or rounds >= self.config.dynamic_sampling_rounds or self._train_data is None:
                break
            rounds += 1
            t0 = time.perf_counter()
            more = self._rollout(self._next_examples(self._train_data, wanted - len(kept)), timings)
            timings[M.timing("rollout")] = timings.get(M.timing("rollout"), 0.0) + time.perf_counter() - t0
            current = self._score(more)
        metrics = {
            M.method_key(M.DYNAMIC_SAMPLING, "kept_groups"): float(min(len(kept), wanted)),
            M.method_key(M.DYNAMIC_SAMPLING, "dropped_groups"): float(dropped),
            M.method_key(M.DYNAMIC_SAMPLING, "rounds"): float(rounds),
        }
        if not kept:
            return scored, metrics
        kept = kept[:wanted]
        pad = self.parts.policy.tokenizer.pad_token_id
        rollout = concat_batches([part.rollout for part in kept], pad)
        rewards = torch.cat([part.rewards for part in kept])
        skipped = {name: sum(part.skipped.get(name, 0) for part in kept) for name in scored.objectives}
        return Scored(rollout=rollout, rewards=rewards, objectives=scored.objectives, skipped=skipped), metrics

    def _weigh(self, scored: Scored) -> Weighted:
        """Apply the weights where the controller's family says; every tensor on the rewards' device."""
        p = self.parts
        k = scored.group_size
        filled = fill_not_applicable(scored.rewards, k)
        weights = p.controller.weights().to(filled)
        objective_advantages = None
        if Need.OBJECTIVE_ADVANTAGES in self.needs:
            # raw rewards: a NaN (not applicable) is left out of its objective's group statistics and gets 0
            objective_advantages = per_objective_advantages(p.advantage, scored.rewards, k)
        if isinstance(p.controller, RewardLevel):
            p.scalarizer.observe(filled)
            scores = p.scalarizer(filled, weights)
            penalty = p.algo.kl_reward_penalty(scored.rollout)  # algo.kl_in: reward
            if penalty is not None:
                scores = scores - penalty
            advantages = p.advantage(mark_unscorable(scores, scored.rewards), k)  # nothing applies: left out, 0
        elif isinstance(p.controller, AdvantageLevel):
            advantages = p.controller.combine_advantages(objective_advantages, scored)
            scores = filled @ weights
        else:  # gradient level: the controller combines per-objective losses; these are for logging
            scores = filled @ weights
            advantages = objective_advantages @ weights
        train = dataclasses.replace(
            scored.rollout, rewards=scored.rewards, advantages=advantages, objective_advantages=objective_advantages
        )
        return Weighted(
            scored=scored,
            weights=weights,
            scores=scores,
            advantages=advantages,
            objective_advantages=objective_advantages,
            train=train,
        )

    def _updated(self, weighted: Weighted, stats: dict[str, float]) -> Updated:
        """The update's record; the clipped advantage weights under the updated policy when someone needs them
        (computed on this process's rows, then gathered)."""
        if Need.CLIPPED_WEIGHTS not in self.needs:
            return Updated(weighted=weighted, stats=stats)
        p = self.parts
        train = weighted.train
        mine = train.select(train.local_rows) if train.local_rows is not None else train
        with torch.no_grad():
            new_logp = self.logprobs(p.policy, mine)
        clip = p.algo.loss(new_logp, mine)  # the loss's own ratio and clip mask under the updated policy
        return Updated(
            weighted=weighted,
            stats=stats,
            clipped_weights=distributed.gather_rows(p.algo.clipped_advantage_weight(new_logp, mine, clip)),
            new_ratio=distributed.gather_rows(clip.ratio),
            new_unclipped=distributed.gather_rows(clip.unclipped.to(clip.ratio.dtype)).bool(),
        )

    def logprobs(self, policy: Policy, batch: Batch) -> torch.Tensor:
        """Completion log-probs ``[N, L]`` (0 on padding) under ``policy``, in chunks of the algorithm's
        ``micro_batch_size`` rows (memory); no gradient."""
        algo = self.parts.algo
        size = algo.config.micro_batch_size or batch.size
        parts = []
        for start in range(0, batch.size, size):
            rows = slice(start, start + size)
            logp, _ = policy.token_logprobs(
                batch.input_ids[rows],
                batch.attention_mask[rows],
                batch.prompt_width,
                algo.config.temperature,
                group_size=batch.group_size if start % batch.group_size == 0 and size % batch.group_size == 0 else 1,
            )
            parts.append(logp * batch.completion_mask[rows])
        return torch.cat(parts)

    def _step_metrics(self, updated: Updated) -> dict[str, float]:
        p = self.parts
        metrics: dict[str, float] = {"step": self.state.step}
        rewards = updated.rewards.detach().cpu()
        for m, name in enumerate(p.objectives):
            column = rewards[:, m]
            valid = column[~torch.isnan(column)]
            metrics[M.reward_mean(name)] = float(valid.mean()) if valid.numel() else math.nan
            metrics[M.reward_std(name)] = float(valid.std()) if valid.numel() > 1 else math.nan
            if updated.scored.skipped.get(name):
                metrics[M.reward_stat(name, "skipped")] = updated.scored.skipped[name]
            if self._reward_timeouts.get(name):  # samples whose reward call ran past its time limit this step
                metrics[M.reward_stat(name, "timeouts")] = float(self._reward_timeouts[name])
        scores = updated.scores.detach().cpu()
        metrics[M.SCORE] = float(scores.mean())
        metrics[M.SCORE_STD] = float(scores.std())
        lengths = updated.rollout.completion_lengths.float().cpu()
        metrics[M.COMPLETIONS_MEAN_LENGTH] = float(lengths.mean())
        metrics[M.COMPLETIONS_MAX_LENGTH] = float(lengths.max())
        metrics[M.ADVANTAGES_ZERO_FRACTION] = float((updated.advantages.abs() < 1e-8).float().mean())
        metrics.update(updated.stats)
        metrics.update(p.controller.metrics())
        if not isinstance(p.controller, GradientLevel):
            # after_update has already moved the controller on to the next step's weights: log those this step used.
            # A gradient-level controller picks its weights per mini-batch inside the update: its own are logged.
            used = updated.weighted.weights.detach().cpu().tolist()
            metrics.update({M.weight(name): float(w) for name, w in zip(p.objectives, used)})
        for name, reward in zip(p.objectives, p.rewards):
            if isinstance(reward, RewardFn):
                for counter, value in reward.counters().items():  # accuracy's timeouts add to the call timeouts
                    key = M.reward_stat(name, counter)
                    metrics[key] = float(value) + metrics.get(key, 0.0)
        rollout = updated.rollout
        if rollout.sampling_logprobs is not None:
            cfg = p.algo.config
            metrics.update(
                importance_metrics(
                    rollout.old_logprobs,
                    rollout.sampling_logprobs,
                    rollout.completion_mask,
                    cfg.importance_correction,
                    cfg.importance_cap,
                )
            )
        metrics[M.SKIPPED_STEPS] = self.state.skipped_steps
        return metrics

    def _completion_rows(self, updated: Updated, count: int | None) -> list[dict[str, Any]]:
        """The step's first ``count`` completions (None: all) with their prompt, raw per-objective rewards (NaN: not
        applicable), score and advantage. Batch order keeps a prompt's K completions side by side, so the rows show
        what the advantage compared; no random draw, so logging them leaves the run's random streams alone."""
        rollout = updated.rollout
        n = rollout.size if count is None else min(count, rollout.size)
        rewards = updated.rewards[:n].detach().cpu().tolist()
        scores = updated.scores[:n].detach().cpu().tolist()
        advantages = updated.advantages[:n].detach().cpu().tolist()
        return [
            {
                "prompt": rollout.prompts[i],
                "completion": rollout.completions[i],
                "rewards": dict(zip(self.parts.objectives, rewards[i])),
                "score": scores[i],
                "advantage": advantages[i],
            }
            for i in range(n)
        ]

    def _validation_means(self) -> dict[str, float]:
        controller = self.parts.controller
        assert isinstance(controller, UsesValidation)
        if not self.validation_data:
            raise ValueError(
                f"{type(controller).__name__} learns from validation prompts: pass training data to fit() "
                "or set pipeline.validation_data"
            )
        examples = self.validation_data[: controller.validation_size]
        mode = controller.validation_mode
        return self.evaluator.means(self.parts.policy, examples, mode, self.step_info())  # type: ignore[arg-type]

    def evaluate(self, examples: list[dict[str, Any]]) -> dict[str, float]:
        modes = [m for m, on in (("greedy", self.config.eval_greedy), ("sampled", self.config.eval_sampled)) if on]
        return self.evaluator.evaluate(self.parts.policy, examples, modes, self.step_info())  # type: ignore[arg-type]

    def step_info(self) -> StepInfo:
        """Where training stands, for rewards that follow a schedule (what TRL passes as ``trainer_state``)."""
        epoch = self.state.data_position / len(self._train_data) if self._train_data else 0.0
        return StepInfo(global_step=self.state.step, max_steps=self.config.steps, epoch=epoch)

    # ---- the loop -----------------------------------------------------------------------------------------------

    def fit(
        self,
        train_data: list[dict[str, Any]],
        eval_data: list[dict[str, Any]] | None = None,
        resume_from: str | Path | None = None,
        overwrite: bool = False,
        accept_changes: Sequence[str] = (),
    ) -> FitResult:
        """See :meth:`morl.pipeline.Pipeline.fit`."""
        from morl.data import as_rows  # a datasets.Dataset, IterableDataset or DataFrame becomes a list of rows

        train_data, eval_data = as_rows(train_data, "train_data"), as_rows(eval_data, "eval_data")
        self.validation_data = as_rows(self.validation_data, "validation_data")
        cfg = self.config
        main = distributed.is_main()  # process 0 writes the files and speaks for the run
        if not main:
            console.quiet = True
        self._check_inputs(train_data, eval_data)
        self._train_data = train_data
        from morl.threads import policy_threads

        threads = policy_threads(cfg.threads, self.parts.policy)
        if threads is not None:
            torch.set_num_threads(threads)
        if self.validation_data is None:  # a fixed sample of the training prompts; never the reported eval split
            self.validation_data = random.Random(cfg.seed).sample(train_data, len(train_data))
        checkpoint = find_checkpoint(resume_from) if resume_from is not None else None
        run_dir = run_dir_of(checkpoint) if checkpoint is not None else self._new_run_dir(overwrite)
        with RunLock(run_dir) if main else _no_lock():
            return self._fit_locked(run_dir, checkpoint, train_data, eval_data, accept_changes)

    def _new_run_dir(self, overwrite: bool) -> Path:
        out = self.config.output_dir
        if distributed.is_main():
            run_dir = Path(out) if out else fresh_run_dir()
            check_new_run(run_dir, overwrite=overwrite)
            run_dir.mkdir(parents=True, exist_ok=True)
        else:
            run_dir = None
        return Path(distributed.broadcast_object(str(run_dir)))

    def _fit_locked(
        self,
        run_dir: Path,
        checkpoint: Path | None,
        train_data: list[dict[str, Any]],
        eval_data: list[dict[str, Any]] | None,
        accept_changes: Sequence[str],
    ) -> FitResult:
        cfg = self.config
        p = self.parts
        main = distributed.is_main()
        recipe = self._recipe_for(run_dir, train_data, eval_data, write_data=main and checkpoint is None)
        identity = self._identity(recipe, train_data, eval_data)
        history: list[dict[str, Any]] = []
        manifest: Manifest | None = None
        if checkpoint is None:
            if self.state.step == 0:
                seed_everything(cfg.seed + 1_000_003 * distributed.rank())  # processes sample different completions
            if main:
                import yaml

                (run_dir / "recipe.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
                manifest = Manifest.create(run_dir, recipe, self._objectives_manifest(), self.manifest_method)
        else:
            checkpoint, accepted = resume_intact(checkpoint, lambda c: self._resume(c, identity, accept_changes))
            if main:
                manifest = Manifest.load(run_dir)
                if manifest is None:
                    raise CheckpointError(f"{run_dir} has checkpoints but no manifest.json: it was not written by fit")
                manifest.begin_segment(run_dir, "resume", self.state.step, recipe, [str(d) for d in accepted])
                history = [row for row in read_metrics(run_dir) if row.get("step", 0) <= self.state.step]
                console.print(f"resuming [bold]{run_dir}[/] at step {self.state.step} from {checkpoint.name}")
            if distributed.is_distributed():
                history = distributed.broadcast_object(history)
                seed_everything(cfg.seed + 1_000_003 * distributed.rank() + 7_919 * self.state.step)
        segment = manifest.current_segment.index if manifest is not None else 0
        segment = int(distributed.broadcast_object(segment))
        self.state.segment = segment
        self.state.identity = identity
        writer = open_loggers(run_dir, cfg.loggers, config=recipe) if main else _NoWriter()
        completions = JsonlWriter(run_dir / COMPLETIONS_FILE) if main and cfg.log_completions else None
        self._fit = self._fit_context(run_dir, segment)
        for cb in self.callbacks:
            cb.on_fit_start(self._fit)
        if p.policy.sharded and main:
            console.print(
                "[yellow]sharded parameters (FSDP/ZeRO-3): no checkpoints are written[/] (train.checkpoint_every is "
                "ignored); the final model is saved. Use DDP (cookbook/accelerate/ddp.yaml) to resume runs."
            )
        saved = checkpoint
        saved_step = self.state.step if checkpoint is not None else None

        def record(row: dict[str, Any]) -> None:
            row = {**row, "segment": segment}
            writer.write(row)
            history.append(row)

        def record_completions(updated: Updated) -> None:
            if completions is None or self.state.step % cfg.log_completions_every:
                return
            rows = self._completion_rows(updated, cfg.num_completions_to_print)
            for row in rows:
                completions.write({"step": self.state.step, "segment": segment, **row})
            writer.write_completions(self.state.step, rows)

        stop = GracefulStop(cfg.stop_grace_s)

        def write_checkpoint() -> Path | None:
            nonlocal saved, saved_step
            if saved_step != self.state.step and not p.policy.sharded:
                stop.hold()  # a checkpoint half written is no checkpoint: a stop at once waits for it
                if main:  # every process holds the same state under DDP
                    saved = self._save_checkpoint(run_dir)
                saved_step = self.state.step
                distributed.barrier()
                stop.release()
            return saved

        evals = [row for row in history if row.get("kind") == "eval"]
        first_eval = evals[0] if evals else None
        last_eval = evals[-1] if evals else None
        status = "failed"
        try:
            if eval_data and self.state.step == 0 and first_eval is None:
                first_eval = {"kind": "eval", "step": 0, **self.evaluate(eval_data)}
                record(first_eval)
                last_eval = first_eval
            with (
                stop,
                TrainingProgress(
                    cfg.steps, list(p.objectives), enabled=cfg.progress and main, start=self.state.step
                ) as progress,
            ):
                self._stop = stop
                while self.state.step < cfg.steps:
                    signum = stop.signum
                    if distributed.is_distributed():  # stop together, or the others wait forever
                        signum = int(distributed.all_reduce_max(torch.tensor([signum or 0]))[0]) or None
                    if signum is not None:
                        status = "interrupted"
                        raise Interrupted(signum, self.state.step, write_checkpoint())
                    updated, metrics = self.step(self._next_examples(train_data))
                    record({"kind": "train", **metrics})
                    record_completions(updated)
                    progress.update(metrics)
                    streak = self.state.nonfinite_streak
                    if streak:
                        console.print(
                            f"[yellow]step {self.state.step}: non-finite loss or gradient, update skipped[/] "
                            f"({streak} in a row; stopping at {cfg.max_nonfinite_steps})"
                        )
                    if eval_data and cfg.eval_every and self.state.step % cfg.eval_every == 0:
                        last_eval = {"kind": "eval", "step": self.state.step, **self.evaluate(eval_data)}
                        record(last_eval)
                    if streak >= cfg.max_nonfinite_steps:
                        keep = write_checkpoint if self._parameters_finite() else None
                        raise self._nonfinite_error(metrics, keep, saved)
                    if cfg.checkpoint_every and self.state.step % cfg.checkpoint_every == 0:
                        write_checkpoint()
            if eval_data and (last_eval is None or last_eval["step"] != self.state.step):
                last_eval = {"kind": "eval", "step": self.state.step, **self.evaluate(eval_data)}
                record(last_eval)
            write_checkpoint()
            status = "finished"
        except RewardFailure as err:
            self._undo_unfinished_step()  # it stopped before its update: the last good step is the one before
            where = write_checkpoint()
            where_text = f"last good checkpoint: {where}" if where is not None else "no checkpoint could be written"
            raise RewardFailure(
                f"stopping at step {self.state.step}: {err}; {where_text}. Fix or speed up the reward (or raise its "
                "time limit), then resume with `morl fit RECIPE --resume RUN_DIR`."
            ) from None
        except KeyboardInterrupt as err:
            if isinstance(err, Interrupted) or stop.signum is None:
                raise
            # stopped at once: between steps, or inside a step before its update (the update holds the stop)
            self._undo_unfinished_step()
            status = "interrupted"
            raise Interrupted(stop.signum, self.state.step, write_checkpoint()) from None
        finally:
            self._stop = None
            p.rollout.close()  # free the rollout engine (vLLM) and its GPU memory, whatever ended the fit
            writer.close()
            if completions is not None:
                completions.close()
            if manifest is not None:
                manifest.end_segment(run_dir, self.state.step, status)
        self._save_final(run_dir)
        for cb in self.callbacks:
            cb.on_fit_end(self._fit, history)
        if cfg.progress and first_eval and last_eval:
            moving = frozenset(n for n, r in zip(p.objectives, p.rewards) if is_moving_target(r))
            print_eval_table(first_eval, last_eval, list(p.objectives), moving)
        distributed.barrier()
        hub_url = None
        if cfg.push_to_hub and main:  # after the barrier: no other process waits on an upload
            hub_url = push_run(run_dir, cfg.hub_model_id, cfg.hub_private_repo, first_eval, last_eval)
        return FitResult(run_dir=run_dir, history=history, hub_url=hub_url)

    def _fit_context(self, run_dir: Path | None, segment: int) -> FitContext:
        p = self.parts
        return FitContext(
            run_dir=run_dir,
            objectives=tuple(p.objectives),
            policy=p.policy,
            algo=p.algo,
            start_step=self.state.step,
            is_main=distributed.is_main() and run_dir is not None,
            segment=segment,
        )

    def _check_inputs(self, train_data: list[dict[str, Any]], eval_data: list[dict[str, Any]] | None) -> None:
        p = self.parts
        if not train_data:
            raise ValueError("train_data is empty")
        if self.config.prompts_per_step % distributed.world_size():
            n = distributed.world_size()
            raise RecipeError(
                f"train.prompts_per_step={self.config.prompts_per_step} cannot be split evenly across {n} processes; "
                f"use a multiple of {n}"
            )
        if self.config.dynamic_sampling and distributed.is_distributed():
            raise RecipeError("train.dynamic_sampling runs in one process for now; set it to false under --launch")
        for split, rows in (("train", train_data), ("eval", eval_data or [])):  # bad data fails now, not at step 900
            check_columns(p.rewards, rows, split)
            messages = [ex.get("messages") for ex in rows] if any("messages" in ex for ex in rows) else None
            p.rollout.check_prompts(p.policy, [ex["prompt"] for ex in rows], split, messages=messages)

    # ---- run identity and manifest ----------------------------------------------------------------------------------

    def _recipe_for(
        self,
        run_dir: Path,
        train_data: list[dict[str, Any]],
        eval_data: list[dict[str, Any]] | None,
        write_data: bool,
    ) -> dict[str, Any]:
        """The recipe that re-runs this fit from the CLI: the given one, or for a pipeline built in Python one made
        from its components, with the data it was handed saved in the run (``data/*.jsonl``)."""
        recipe = json.loads(json.dumps(self.recipe))  # a copy
        if recipe.get("data") is not None:
            return recipe
        data_dir = run_dir / "data"
        files = {"train": data_dir / "train.jsonl", "eval": data_dir / "eval.jsonl"}
        if write_data:
            data_dir.mkdir(parents=True, exist_ok=True)
            _write_rows(files["train"], train_data)
            if eval_data:
                _write_rows(files["eval"], eval_data)
        recipe["data"] = {
            "train": str(files["train"]),
            "eval": str(files["eval"]) if eval_data else None,
            "train_split": None,
            "eval_split": None,
            "train_size": None,
            "eval_size": None,
        }
        return recipe

    def _identity(
        self, recipe: dict[str, Any], train_data: list[dict[str, Any]], eval_data: list[dict[str, Any]] | None
    ) -> dict[str, Any]:
        """What makes a run this experiment: the resolved recipe, the class behind every part and a hash of the
        prompts it trains and evaluates on. A resume compares it with the checkpoint's."""
        from morl.state import class_path

        classes = {role: class_path(part) for role, part in self.stateful_parts().items() if "callback/" not in role}
        classes.update({f"reward/{n}": class_path(r) for n, r in zip(self.parts.objectives, self.parts.rewards)})
        return {
            **recipe,
            "classes": classes,
            "data_hash": {"train": _rows_hash(train_data), "eval": _rows_hash(eval_data or [])},
        }

    def _objectives_manifest(self) -> list[dict[str, Any]]:
        from morl.state import class_path

        return [
            {"name": n, "direction": "maximize", "moving_target": is_moving_target(r), "reward": class_path(r)}
            for n, r in zip(self.parts.objectives, self.parts.rewards)
        ]

    # ---- checkpoints ----------------------------------------------------------------------------------------------

    def _save_checkpoint(self, run_dir: Path) -> Path:
        self.state.parts = capture_parts(self.stateful_parts())
        pointer = None
        if self.reference is not None:
            pointer = reference_pointer(self.reference, self._fingerprint(), run_dir)
        return save_checkpoint(
            run_dir,
            self.state,
            self.parts.policy,
            self.optimizer,
            pointer,
            keep=self.config.keep_checkpoints,
            tensors=self._state_tensors(),
        )

    def _state_tensors(self) -> dict[str, torch.Tensor]:
        """``role/name -> tensor`` of the parts whose state holds tensors (:class:`TensorStateful`)."""
        out: dict[str, torch.Tensor] = {}
        for role, part in self.stateful_parts().items():
            if isinstance(part, TensorStateful):
                out.update({f"{role}/{name}": t for name, t in part.tensor_state_dict().items()})
        return out

    def _load_state_tensors(self, saved: dict[str, torch.Tensor]) -> None:
        for role, part in self.stateful_parts().items():
            if isinstance(part, TensorStateful):
                prefix = f"{role}/"
                part.load_tensor_state_dict({k[len(prefix) :]: v for k, v in saved.items() if k.startswith(prefix)})

    def _fingerprint(self) -> str:
        if self._reference_fingerprint is None:  # the reference never changes
            self._reference_fingerprint = weights_fingerprint(self.reference.model)  # type: ignore[union-attr]
        return self._reference_fingerprint

    def _resume(self, checkpoint: Path, identity: dict[str, Any], accept: Sequence[str]) -> list[Any]:
        """Restore the run at ``checkpoint`` if it is the same experiment (or the differences are accepted);
        random-number streams last, so nothing done while loading draws from them."""
        loaded = read_checkpoint(checkpoint)
        accepted = check_resume(loaded.state.identity, identity, accept)
        if distributed.is_main():
            prepare_resume(checkpoint)
        if self.reference is not None:
            check_reference(self.reference, self._fingerprint(), loaded.reference, run_dir_of(checkpoint))
        try:
            restore_parts(self.stateful_parts(), loaded.state.parts)
        except StateMismatch as err:
            raise CheckpointError(f"{checkpoint}: {err}") from None
        load_tensors(checkpoint, self.parts.policy, self.optimizer)
        self._load_state_tensors(load_state_tensors(checkpoint, self.parts.policy.device))
        self._apply_accepted_optimizer_settings({d.path for d in accepted})
        self.parts.rollout.weights_changed(self.parts.policy)
        saved = loaded.state
        self.state = dataclasses.replace(saved, parts={})
        self._order = []  # recomputed from the seed and the epoch on the next draw
        load_rng(checkpoint)
        return accepted

    def _apply_accepted_optimizer_settings(self, accepted: set[str]) -> None:
        """The optimizer's saved state carries the old lr and weight decay; an accepted change to them takes effect
        from the next optimizer step (the schedule keeps its position, scaled to the new base lr)."""
        scheduler = self.lr_scheduler
        for i, group in enumerate(self.optimizer.param_groups):
            if "train.lr" in accepted:
                scheduler.base_lrs[i] = group["initial_lr"] = self.config.lr
                group["lr"] = self.config.lr * scheduler.lr_lambdas[i](scheduler.last_epoch)
            if "train.weight_decay" in accepted:
                group["weight_decay"] = self.config.weight_decay

    def _save_final(self, run_dir: Path) -> None:
        """The final model in Hugging Face format and the final training state (process 0 writes)."""
        p = self.parts
        if self.config.save_model and (p.policy.sharded or distributed.is_main()):
            p.policy.save(run_dir / "model")  # sharded: every process takes part in gathering the weights
        if distributed.is_main():
            state = dataclasses.replace(self.state, parts=capture_parts(self.stateful_parts()))
            (run_dir / "training_state.json").write_text(json.dumps(state.to_json(), indent=1) + "\n")

    # ---- small helpers --------------------------------------------------------------------------------------------

    def _undo_unfinished_step(self) -> None:
        """A step stopped before its update: put back what it changed (prompt position, learned state), so that a
        checkpoint written now is exactly the last complete step's. Random streams stay where the step left them."""
        if self._before_step is None:
            return
        position, parts = self._before_step
        self._before_step = None
        self.state.data_position = position
        self._order = []  # recomputed from the seed for the restored position
        restore_parts(self.stateful_parts(), parts)

    def _parameters_finite(self) -> bool:
        return all(bool(torch.isfinite(q).all()) for q in self.parts.policy.model.parameters())

    def _nonfinite_error(
        self, metrics: dict[str, float], checkpoint: Callable[[], Path | None] | None, saved: Path | None
    ) -> NonFiniteError:
        """Keep the last good state (a checkpoint now, if the parameters are still finite) and explain the stop."""
        if checkpoint is not None:
            saved = checkpoint()
        where = f"last good checkpoint: {saved}" if saved is not None else "no good checkpoint was written"
        return NonFiniteError(
            f"stopping at step {self.state.step}: {self.state.nonfinite_streak} steps in a row had a non-finite loss "
            f"or gradient (loss {metrics.get('loss')}, grad_norm {metrics.get('grad_norm')}), so their updates were "
            f"skipped (train.max_nonfinite_steps={self.config.max_nonfinite_steps}); {where}. Check the rewards, "
            "the controller's weights and train.lr, then resume with `morl fit RECIPE --resume RUN_DIR`."
        )

    def _next_examples(self, data: list[dict[str, Any]], count: int | None = None) -> list[dict[str, Any]]:
        """Prompts for the next step: a seeded shuffle per epoch, position kept for resuming."""
        picked = []
        for _ in range(count or self.config.prompts_per_step):
            epoch, offset = divmod(self.state.data_position, len(data))
            if offset == 0 or not self._order:
                self._order = random.Random(self.config.seed * 100_003 + epoch).sample(range(len(data)), len(data))
            picked.append(data[self._order[offset]])
            self.state.data_position += 1
        return picked


def _lr_scheduler(
    optimizer: torch.optim.Optimizer, config: TrainConfig, algo: PolicyAlgo
) -> torch.optim.lr_scheduler.LRScheduler:
    """``train.lr_scheduler_type`` over the run's optimizer steps, advanced by every optimizer step that is taken.

    The updater owns the epochs × mini-batches of optimizer steps, so the schedule rides on the optimizer itself (a
    step post-hook) rather than on the loop: the learning rate changes between the mini-batches of one training step,
    as in TRL, and a step skipped for a non-finite gradient does not advance it (as in transformers). ``constant``
    multiplies ``train.lr`` by exactly 1, so it trains as a run without a schedule does.
    """
    from accelerate.optimizer import AcceleratedOptimizer
    from transformers import get_scheduler

    # accelerate's wrapper subclasses Optimizer without its hooks, and steps the optimizer it wraps
    stepping = optimizer.optimizer if isinstance(optimizer, AcceleratedOptimizer) else optimizer
    updater = algo.updater
    total = max(config.steps * updater.epochs * updater.minibatches, 1)
    scheduler = get_scheduler(
        config.lr_scheduler_type, stepping, num_warmup_steps=config.warmup_for(total), num_training_steps=total
    )
    stepping.register_step_post_hook(lambda *_: scheduler.step())
    return scheduler


def _group(scored: Scored, g: int) -> Scored:
    """Prompt group ``g`` of a scored batch (its ``group_size`` consecutive rows), as a scored batch of its own."""
    k = scored.group_size
    rows = slice(g * k, (g + 1) * k)
    return Scored(rollout=scored.rollout.select(rows), rewards=scored.rewards[rows], objectives=scored.objectives)


class _NoWriter:
    """The metrics writer of processes other than 0: they log nothing."""

    def write(self, row: dict[str, Any]) -> None: ...

    def write_completions(self, step: int, rows: list[dict[str, Any]]) -> None: ...

    def close(self) -> None: ...


class _no_lock:
    """Processes other than 0 write nothing, so they take no lock."""

    def __enter__(self) -> None: ...

    def __exit__(self, *exc: object) -> None: ...


def _write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(row, default=str) + "\n" for row in rows))


def _rows_hash(rows: list[dict[str, Any]]) -> str:
    digest = hashlib.blake2b(digest_size=16)
    for row in rows:
        digest.update(json.dumps(row, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
