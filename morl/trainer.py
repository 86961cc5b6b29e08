"""The trainer: one training step, read as the algorithm.

    rollout -> score -> weigh -> update -> observe

Each phase makes one record (:mod:`morl.stages`) and every tensor in it lives on the policy's device. The
components it calls are the same ones any trainer can call (:mod:`morl.controllers`, :mod:`morl.algos`,
:mod:`morl.statistics`): a controller's family decides where its weights act (``controller.weigh``), and what is
computed beyond the default path follows the components' ``needs`` (:class:`morl.stages.Need`), each with one
producer here. The loop around the steps (run directory, signals, evaluation schedule, completions, hub) lives in
:mod:`morl.loop`; saving and resuming a run in :mod:`morl.resume`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from morl import distributed
from morl import metrics as M
from morl.algos import AdvantageEstimator, PolicyAlgo
from morl.algos.advantages import per_objective_advantages
from morl.algos.dynamic_sampling import informative_groups
from morl.batch import Batch, concat_batches
from morl.callbacks import Callback, FitContext, ScoredContext, StepContext
from morl.config import TrainConfig
from morl.controllers.base import WeightController
from morl.evaluation import Evaluator, split_examples
from morl.forecast import ForecastWindow, current_logprobs
from morl.overlap import AfterUpdateOverlap, overlap_reason
from morl.policy import Policy, batch_logprobs
from morl.prompt_order import PromptOrder
from morl.rewards import RewardError, StepInfo, completion_token_ids, score_rewards
from morl.rollout import RolloutBackend
from morl.scalarize import Scalarizer
from morl.signals import GracefulStop
from morl.stages import Need, Scored, Updated, Weighted
from morl.state import TrainingState, capture_parts, restore_parts
from morl.step_metrics import step_metrics
from morl.timing import phase

__all__ = ["Components", "Parts", "RewardFailure", "TrainConfig", "Trainer", "seed_everything"]


class RewardFailure(RewardError):
    """A reward timed out or failed on every sample for ``train.max_failed_reward_steps`` steps in a row."""


@dataclass
class Components:
    """Every component of a run but the policy, built and checked against each other once
    (:func:`morl.pipeline.build_parts`)."""

    rewards: list[Any]
    objectives: tuple[str, ...]
    scalarizer: Scalarizer
    advantage: AdvantageEstimator
    algo: PolicyAlgo
    controller: WeightController
    rollout: RolloutBackend


@dataclass
class Parts(Components):
    """The components of one run and the policy they train."""

    policy: Policy


class Trainer:
    """Runs training steps over :class:`Parts`; its mutable state is one :class:`TrainingState` (what a checkpoint
    carries) besides the components' own learned state."""

    def __init__(
        self,
        parts: Parts,
        config: TrainConfig,
        callbacks: list[Callback],
        optimizer: torch.optim.Optimizer,
        reference: Policy | None,
        evaluator: Evaluator,
    ) -> None:
        self.parts = parts
        self.config = config
        parts.rollout.set_training_seed(config.seed)  # an engine's own seed (vLLM) follows train.seed
        self.callbacks = callbacks  # the pipeline's list: a callback appended there is seen here
        self.optimizer = optimizer
        self.lr_scheduler = lr_scheduler(optimizer, config, parts.algo)
        self.reference = reference
        self.evaluator = evaluator
        self.state = TrainingState()
        self.prompt_order = PromptOrder(config.seed)
        self.validation_data: list[dict[str, Any]] | None = None
        self.train_data: list[dict[str, Any]] | None = None  # set by the loop: what dynamic sampling refills from
        self.fit_context: FitContext | None = None  # set by the loop; a step outside fit() makes a silent one
        self.stop: GracefulStop | None = None  # set by the loop: holds an immediate stop while the update runs
        self._before_step: tuple[int, dict[str, Any]] | None = None  # what a stop before the update puts back
        self._reward_failed: dict[str, bool] = {}  # this step: did the reward fail on every sample it was given
        self._reward_timeouts: dict[str, int] = {}  # this step: samples whose reward call ran past its time limit
        self.forecast_owner, self.forecast_window = self._forecast_owner()
        self.overlap: AfterUpdateOverlap | None = None  # set by overlapped_after_update() for a fit

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
        p, timings, start = self.parts, {}, time.perf_counter()
        self._begin_step()
        validation = Need.VALIDATION in self.needs
        with phase(timings, "validation", when=validation and self.state.step == 0):
            self._observe_validation(when=validation and self.state.step == 0)  # the initial model's point
        rollout = self._rollout(examples, timings)
        with phase(timings, "reward"):
            scored = self._score(rollout)
        scored, filtered = self._filter_groups(scored, timings) if self.config.dynamic_sampling else (scored, {})
        self._check_reward_failures()
        with phase(timings, "controller", when=self.overlap is not None and self.overlap.pending):
            settled = self.settle()  # the last update's pass ran beside this rollout: the controller learns from it
        self._commit_step()  # from here a stop at once waits for the end of the step
        with phase(timings, "forecast", when=self.forecast_window is not None):
            forecast = self._forecast(scored)
        self._notify_scored(scored, forecast)
        with phase(timings, "controller"):
            p.controller.before_update(scored)
            weighted = self._weigh(scored)
        learning_rate = float(self.optimizer.param_groups[0]["lr"])  # what the step's first optimizer step uses
        with phase(timings, "update"):
            stats = p.algo.update(p.policy, self.optimizer, weighted.train, combine=p.controller.loss_combiner())
            p.rollout.weights_changed(p.policy)
        self._count_nonfinite(stats)
        with phase(timings, "controller"):
            updated = dataclasses.replace(self._updated(weighted, stats), settled=settled)
            if self.overlap is None:  # else after the next rollout (settle)
                p.controller.after_update(updated)
        with phase(timings, "validation", when=validation):
            self._observe_validation(when=validation)
        self.state.step += 1
        self.state.num_tokens += int(updated.rollout.attention_mask.sum())
        metrics = step_metrics(
            updated, self.state.step, p.rewards, p.controller, p.algo, self._reward_timeouts, self._eos_token_id()
        )
        metrics |= {M.SKIPPED_STEPS: self.state.skipped_steps, M.LEARNING_RATE: learning_rate, **filtered, **timings}
        metrics |= {M.NUM_TOKENS: self.state.num_tokens, M.STEP_TIME: time.perf_counter() - start}
        return updated, self._end_step(updated, metrics)

    def _eos_token_id(self) -> int | None:
        eos = self.parts.policy.tokenizer.eos_token_id
        return eos if isinstance(eos, int) else None

    def _begin_step(self) -> None:
        if self.fit_context is None:  # a step outside fit(): callbacks watch it as a fit without a run directory
            self.fit_context = self.make_fit_context(None, segment=0)
            for cb in self.callbacks:
                cb.on_fit_start(self.fit_context)
        # until the update starts, a stop at once puts these back, so the checkpoint of the last complete step is exact
        self._before_step = (self.state.data_position, capture_parts(self.stateful_parts()))
        self._reward_failed, self._reward_timeouts = {}, {}

    def _commit_step(self) -> None:
        if self.stop is not None:
            self.stop.hold()
        self._before_step = None

    def _end_step(self, updated: Updated, metrics: dict[str, float]) -> dict[str, float]:
        ctx = StepContext(fit=self.fit_context, step=self.state.step, record=updated, metrics=metrics)
        for cb in self.callbacks:
            cb.on_step_end(ctx)
        if self.stop is not None:
            self.stop.release()  # raises KeyboardInterrupt if a stop at once came during the update
        return metrics

    def _rollout(self, examples: list[dict[str, Any]], timings: dict[str, float]) -> Batch:
        """Sample K completions per prompt on this process's share, add the trainer's (and the reference's)
        log-probs, and gather every process's rows."""
        p = self.parts
        k = self.config.group_size
        shard = distributed.shard_slice(len(examples), "prompts per step")  # all of them in one process
        prompts, columns = split_examples(examples[shard])
        with phase(timings, "rollout"):
            p.policy.model.eval()
            batch = p.rollout.generate(p.policy, prompts, columns, k)
        with phase(timings, "reference"), torch.no_grad():
            old = batch.old_logprobs
            if old is None:  # vLLM, or rollout.logprobs: trainer: the trainer's own log-probs
                old = self.logprobs(p.policy, batch)
            ref = self.logprobs(self.reference, batch) if self.reference is not None else None
        batch = dataclasses.replace(batch, old_logprobs=old, ref_logprobs=ref)
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

    def _check_reward_failures(self) -> None:
        """Stop before the update when a reward timed out or failed on every sample for too many steps in a row:
        its objective has had no signal for that long, which a user must hear about, not find in a plot later."""
        limit = self.config.max_failed_reward_steps
        streaks = self.state.reward_failure_streaks
        for name, failed in self._reward_failed.items():
            streaks[name] = streaks.get(name, 0) + 1 if failed else 0
        worst = max(streaks, key=streaks.__getitem__, default=None)
        if worst is not None and streaks[worst] >= limit:
            raise RewardFailure(
                f"reward {worst!r} timed out or failed on every sample for {streaks[worst]} steps in a "
                f"row (train.max_failed_reward_steps={limit}; {self._reward_timeouts.get(worst, 0)} timed-out "
                f"samples this step; time limit: its call_timeout_s, else train.reward_timeout_s="
                f"{self.config.reward_timeout_s})"
            )

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
            if len(kept) >= wanted or rounds >= self.config.dynamic_sampling_rounds or self.train_data is None:
                break
            rounds += 1
            more = self._rollout(self.next_examples(self.train_data, wanted - len(kept)), timings)
            with phase(timings, "reward"):
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

    def _forecast_owner(self) -> tuple[Any, ForecastWindow | None]:
        """Who sets the forecast's cadence (the controller first, then a callback that declares ``Need.FORECAST``)
        and the one window that measures it for everyone."""
        p = self.parts
        owners = [c for c in (p.controller, *self.callbacks) if Need.FORECAST in c.needs and c.forecast_every > 0]
        if not owners:
            return None, None
        if p.policy.sharded:
            if owners[0] is p.controller:
                name = type(p.controller).__name__
                raise ValueError(f"{name} needs the forecast, which a sharded policy cannot measure")
            return None, None  # the diagnostics' forecast is off under sharded parameters
        return owners[0], ForecastWindow(owners[0].forecast_every)

    def _forecast(self, scored: Scored) -> tuple[np.ndarray, np.ndarray] | None:
        """The forecast on the fresh batch when its window closes; the controller that needs it gets it now."""
        window, p = self.forecast_window, self.parts
        if window is None:
            return None
        step, params = self.state.step + 1, self.forecast_owner.forecast_params
        # the batch was sampled by the parameters the step starts from: its log-probs are log π_θ
        current = current_logprobs(p.policy, scored.rollout) if window.due(step) else None
        result = window.measure(step, p.policy, params, scored, p.algo, current)
        if result is not None and Need.FORECAST in p.controller.needs:
            p.controller.observe_forecast(*result)
        return result

    def _notify_scored(self, scored: Scored, forecast: tuple[np.ndarray, np.ndarray] | None) -> None:
        """A fresh batch no update has trained on, under the parameters that sampled it."""
        if not self.callbacks:
            return
        ctx = ScoredContext(fit=self.fit_context, step=self.state.step + 1, scored=scored, forecast=forecast)
        for cb in self.callbacks:
            cb.on_batch_scored(ctx)

    def _weigh(self, scored: Scored) -> Weighted:
        """The controller's family applies the weights; per-objective advantages are made here, once, for whoever
        declared ``Need.OBJECTIVE_ADVANTAGES`` (from the raw rewards: a NaN is left out and gets 0)."""
        p = self.parts
        objective_advantages = None
        if Need.OBJECTIVE_ADVANTAGES in self.needs:
            lengths = scored.rollout.completion_mask.sum(dim=1)  # for estimators that weigh tokens (REINFORCE++)
            objective_advantages = per_objective_advantages(p.advantage, scored.rewards, scored.group_size, lengths)
        return p.controller.weigh(
            scored,
            scalarizer=p.scalarizer,
            advantage=p.advantage,
            objective_advantages=objective_advantages,
            kl_penalty=p.algo.kl_reward_penalty(scored.rollout),  # algo.kl_in: reward; None otherwise
        )

    def _count_nonfinite(self, stats: dict[str, float]) -> None:
        nonfinite = stats.get("skipped_nonfinite", 0.0) > 0  # the updater skipped the optimizer step
        self.state.skipped_steps += int(nonfinite)
        self.state.nonfinite_streak = self.state.nonfinite_streak + 1 if nonfinite else 0

    def _updated(self, weighted: Weighted, stats: dict[str, float]) -> Updated:
        """The update's record; the clipped advantage weights under the updated policy when someone needs them
        (computed on this process's rows, then gathered), or, with the after-update overlap, the record without them
        while they are computed beside the next rollout (:meth:`settle`)."""
        if Need.CLIPPED_WEIGHTS not in self.needs:
            return Updated(weighted=weighted, stats=stats)
        train, algo = weighted.train, self.parts.algo
        mine = train.select(train.local_rows) if train.local_rows is not None else train
        if self.overlap is not None:
            self.overlap.start(weighted, stats, mine, algo.temperature, algo.config.micro_batch_size)
            return Updated(weighted=weighted, stats=stats)
        return self.record_after_update(weighted, stats, mine)

    def record_after_update(
        self, weighted: Weighted, stats: dict[str, float], mine: Batch, new_logp: torch.Tensor | None = None
    ) -> Updated:
        """The update's record with the clipped weights under the updated policy, from ``new_logp`` (this process's
        rows) or from a pass now."""
        p = self.parts
        if new_logp is None:
            new_logp = self.logprobs(p.policy, mine)
        clip = p.algo.loss(new_logp, mine)  # the loss's own ratio and clip mask under the updated policy
        return Updated(
            weighted=weighted,
            stats=stats,
            clipped_weights=distributed.gather_rows(p.algo.clipped_advantage_weight(new_logp, mine, clip)),
            new_ratio=distributed.gather_rows(clip.ratio),
            new_unclipped=distributed.gather_rows(clip.unclipped.to(clip.ratio.dtype)).bool(),
        )

    @contextlib.contextmanager
    def overlapped_after_update(self) -> Iterator[AfterUpdateOverlap | None]:
        """While inside, the after-update pass runs beside the next rollout where ``train.overlap_after_update`` asks
        for it (:mod:`morl.overlap`); a clean way out settles the last pass; the helper ends on every way out."""
        setting, p = self.config.overlap_after_update, self.parts
        reason = overlap_reason(setting, p.controller, self.callbacks, p.policy)
        if reason is not None and setting is True:
            raise ValueError(f"train.overlap_after_update=true cannot run here: {reason}; use auto or false")
        self.overlap = AfterUpdateOverlap(p.policy, self.record_after_update) if reason is None else None
        try:
            yield self.overlap
            self.settle()
        finally:
            overlap, self.overlap = self.overlap, None
            if overlap is not None:
                overlap.close()

    def settle(self) -> Updated | None:
        """With the after-update overlap: the controller learns from the last update's pass, which ran beside this
        step's rollout (:mod:`morl.overlap`); returns that update's completed record."""
        return self.overlap.settle(self.parts.controller) if self.overlap is not None else None

    def _observe_validation(self, when: bool) -> None:
        """``Need.VALIDATION``'s producer: per-objective means on validation prompts, handed to the controller."""
        if not when:
            return
        controller = self.parts.controller
        if not self.validation_data:
            raise ValueError(
                f"{type(controller).__name__} learns from validation prompts: pass training data to fit() "
                "or set pipeline.validation_data"
            )
        examples = self.validation_data[: controller.validation_size]
        mode = controller.validation_mode
        controller.observe_validation(self.evaluator.means(self.parts.policy, examples, mode, self.step_info()))

    def logprobs(self, policy: Policy, batch: Batch) -> torch.Tensor:
        """Completion log-probs ``[N, L]`` (0 on padding) under ``policy``, in chunks of the algorithm's
        ``micro_batch_size`` rows (memory); no gradient."""
        algo = self.parts.algo
        return batch_logprobs(policy, batch, algo.temperature, algo.config.micro_batch_size)

    # ---- around the step ----------------------------------------------------------------------------------------

    def evaluate(self, examples: list[dict[str, Any]]) -> dict[str, float]:
        modes = [m for m, on in (("greedy", self.config.eval_greedy), ("sampled", self.config.eval_sampled)) if on]
        return self.evaluator.evaluate(self.parts.policy, examples, modes, self.step_info())  # type: ignore[arg-type]

    def step_info(self) -> StepInfo:
        """Where training stands, for rewards that follow a schedule (what TRL passes as ``trainer_state``)."""
        epoch = self.state.data_position / len(self.train_data) if self.train_data else 0.0
        return StepInfo(global_step=self.state.step, max_steps=self.config.steps, epoch=epoch)

    def next_examples(self, data: list[dict[str, Any]], count: int | None = None) -> list[dict[str, Any]]:
        """Prompts for the next step (``prompts_per_step``, or ``count``); the position is kept for resuming."""
        picked, self.state.data_position = self.prompt_order.draw(
            data, self.state.data_position, count or self.config.prompts_per_step
        )
        return picked

    def make_fit_context(self, run_dir: Any, segment: int) -> FitContext:
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

    def undo_unfinished_step(self) -> None:
        """A step stopped before its update: put back what it changed (prompt position, learned state), so that a
        checkpoint written now is exactly the last complete step's. Random streams stay where the step left them."""
        if self._before_step is None:
            return
        position, parts = self._before_step
        self._before_step = None
        self.state.data_position = position
        restore_parts(self.stateful_parts(), parts)
        self.settle()  # the last update's pass, if still pending, belongs to the step before


def lr_scheduler(
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


def seed_everything(seed: int) -> None:
    """Python's, NumPy's and torch's generators from one seed (reduced to NumPy's 32-bit range)."""
    seed %= 2**32
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
