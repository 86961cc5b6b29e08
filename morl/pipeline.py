"""The pipeline: one multi-objective RL step, repeated, with evaluation and a run directory.

One step: rollout -> rewards ``[N, M]`` -> controller.before_update -> weights applied where the
controller says (rewards, advantages or gradients) -> advantages -> policy update -> (only if someone
needs it) clipped advantage weights under the updated policy -> controller.after_update -> metrics.

Example:
    >>> pipe = Pipeline(policy=Policy.from_pretrained("tinymath"), rewards=["accuracy", "conciseness", "clarity"],
    ...                 controller="ctwa", config=TrainConfig(steps=2))  # doctest: +SKIP
    >>> pipe.fit(make_split("train", 512, 0), make_split("eval", 64, 0))  # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from morl import distributed
from morl.algos import AdvantageEstimator, PolicyAlgo
from morl.algos.importance import importance_metrics
from morl.batch import Batch
from morl.components import Component, RecipeError, build
from morl.controllers import WeightController, WeightTarget
from morl.policy import Policy
from morl.rewards import RewardFn, check_columns, objective_name, score_rewards
from morl.rollout import RolloutBackend
from morl.scalarize import Scalarizer, fill_not_applicable

if TYPE_CHECKING:
    from morl.diagnostics import Diagnostics, DiagnosticsConfig


class TrainConfig(BaseModel):
    """Loop settings: how many steps, how big a step, when to evaluate, where to write."""

    model_config = ConfigDict(extra="forbid")

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
    output_dir: str | None = Field(None, description="run directory; None: runs/<date-time>")
    on_reward_error: Literal["raise", "skip"] = Field(
        "raise", description="a reward that fails: stop, or mark the sample not applicable and count it"
    )
    checkpoint_every: int = Field(50, ge=0, description="write a checkpoint every N steps (0: only at the end)")
    keep_checkpoints: int = Field(2, ge=1, description="how many of the newest checkpoints to keep")
    max_nonfinite_steps: int = Field(
        3, ge=1, description="stop after this many steps in a row whose loss or gradient was not finite"
    )
    save_model: bool = Field(True, description="write the final model (Hugging Face format) to the run directory")
    threads: int | None = Field(None, ge=1, description="torch CPU threads; None: torch's default")
    progress: bool = Field(True, description="show a progress bar and summary in the console (process 0)")
    loggers: list[Literal["jsonl", "tensorboard", "wandb", "trackio"]] = Field(
        default_factory=lambda: ["jsonl"], description="where metrics go besides metrics.jsonl, which is always written"
    )


class Callback:
    """Hooks for diagnostics and checkpointing; every method is optional."""

    needs: frozenset[str] = frozenset()

    def on_fit_start(self, pipeline: Pipeline, run_dir: Path) -> None: ...

    def on_step_end(self, step: int, batch: Batch, metrics: dict[str, float]) -> None: ...

    def on_fit_end(self, pipeline: Pipeline, history: list[dict[str, Any]]) -> None: ...

    def state_dict(self) -> dict[str, Any]:
        """State to checkpoint (JSON-able); a stateful callback overrides this and :meth:`load_state_dict`."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class NonFiniteError(RuntimeError):
    """Too many steps in a row had a non-finite loss or gradient; the last good checkpoint is kept."""


@dataclass
class FitResult:
    run_dir: Path
    history: list[dict[str, Any]] = field(default_factory=list)

    def evals(self) -> list[dict[str, Any]]:
        return [row for row in self.history if row.get("kind") == "eval"]


RewardSpec = str | dict[str, Any] | RewardFn | Callable[..., Sequence[float | None]]


class Pipeline:
    """Compose the components, then :meth:`fit`. Components may be objects, short names or dict specs."""

    def __init__(
        self,
        policy: Policy | str,
        rewards: Sequence[RewardSpec],
        scalarizer: Scalarizer | str | dict = "linear",
        advantage: AdvantageEstimator | str | dict = "group_norm",
        algo: PolicyAlgo | str | dict = "grpo",
        controller: WeightController | str | dict = "fixed",
        rollout: RolloutBackend | str | dict = "transformers",
        config: TrainConfig | None = None,
        callbacks: Sequence[Callback] = (),
        recipe: dict[str, Any] | None = None,
        diagnostics: Diagnostics | DiagnosticsConfig | dict[str, Any] | bool = True,
    ) -> None:
        self.policy = Policy.from_pretrained(policy) if isinstance(policy, str) else policy
        self.rewards = [build("reward", r) for r in rewards]
        self.objectives = [objective_name(r) for r in self.rewards]
        if len(set(self.objectives)) != len(self.objectives):
            raise ValueError(f"objective names must be unique, got {self.objectives}")
        self.scalarizer = build("scalarizer", scalarizer)
        self.advantage = build("advantage", advantage)
        self.algo = build("algo", algo)
        self.controller = build("controller", controller)
        self.rollout = build("rollout", rollout)
        self.config = config or TrainConfig()
        check_temperatures(self.rollout, self.algo)
        from morl.diagnostics import make_diagnostics

        # on by default (``diagnostics=False`` or ``{"enabled": False}`` to opt out); first, so that user
        # callbacks see its metrics
        self.diagnostics = make_diagnostics(diagnostics)
        if self.diagnostics is not None:
            self.diagnostics.attach(self)
        self.callbacks = [self.diagnostics, *callbacks] if self.diagnostics is not None else list(callbacks)
        self.recipe = recipe
        self.controller.start(self.objectives)
        self.optimizer = torch.optim.AdamW(
            [p for p in self.policy.model.parameters() if p.requires_grad],
            lr=self.config.lr,
            weight_decay=self.config.weight_decay,
        )
        self.reference: Policy | None = self.policy.frozen_copy() if self.algo.needs_reference else None
        self.accelerator = None
        if distributed.launched():  # accelerate launch / torchrun: data parallel, sharded or mixed precision
            self._prepare_distributed()
        self.step_count = 0
        self.data_position = 0
        self._order: list[int] = []
        self.skipped_steps = 0  # steps whose update was skipped for a non-finite loss or gradient
        self.nonfinite_streak = 0
        self.validation_data: list[dict[str, Any]] | None = None  # for controllers that need "validation"

    def _prepare_distributed(self) -> None:
        """Wrap the policy with accelerate (the launcher's config decides DDP, FSDP or DeepSpeed); see
        :mod:`morl.distributed` for what is shared between processes."""
        self.accelerator = distributed.make_accelerator(cpu=self.policy.device.type == "cpu")
        self.optimizer = self.policy.prepare(self.accelerator, self.optimizer)
        if self.reference is not None:
            self.reference.model.to(self.accelerator.device)
        grad_cosines = self.diagnostics is not None and self.diagnostics.config.grad_cosine_every
        if self.policy.sharded and ("objective_gradients" in self.controller.needs or grad_cosines):
            what = "gradient-cosine diagnostics need" if grad_cosines else f"controller {self.controller.name!r} needs"
            raise RecipeError(
                f"{what} whole per-objective gradients, which FSDP and DeepSpeed ZeRO-3 shard across processes; "
                "launch with DDP (cookbook/accelerate/ddp.yaml) or ZeRO-2 (zero2.yaml)"
            )
        if getattr(self.accelerator.state, "deepspeed_plugin", None) is not None and self.algo.config.micro_batch_size:
            raise RecipeError(
                "DeepSpeed steps the optimizer inside every backward pass, so a mini-batch cannot be split into "
                "micro-batches: set algo.micro_batch_size: null, or launch with DDP or FSDP"
            )

    @property
    def needs(self) -> frozenset[str]:
        needs = set(self.controller.needs)
        for cb in self.callbacks:
            needs |= cb.needs
        if self.controller.applies_to != WeightTarget.REWARD:
            needs.add("objective_advantages")
        return frozenset(needs)

    def components(self) -> dict[str, Component | Any]:
        return {
            "scalarizer": self.scalarizer,
            "advantage": self.advantage,
            "algo": self.algo,
            "controller": self.controller,
            "rollout": self.rollout,
        }

    # ---- one step -------------------------------------------------------------------------------

    def step(self, examples: list[dict[str, Any]]) -> tuple[Batch, dict[str, float]]:
        """One training step on these prompts; returns the batch record and the step's metrics."""
        k = self.config.group_size
        timings: dict[str, float] = {}

        if "validation" in self.controller.needs and self.step_count == 0:
            t0 = time.perf_counter()
            self.controller.observe_validation(self.validate())  # the initial model's point
            timings["timing/validation"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        shard = distributed.shard_slice(len(examples), "prompts per step")  # all of them in one process
        prompts, columns = split_examples(examples[shard])
        self.policy.model.eval()
        batch = self.rollout.generate(self.policy, prompts, columns, k)
        timings["timing/rollout"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        with torch.no_grad():
            if batch.old_logprobs is None:  # vLLM, or rollout.logprobs: trainer: the trainer's own log-probs
                batch.old_logprobs = self._logprobs(self.policy, batch)
            if self.reference is not None:
                batch.ref_logprobs = self._logprobs(self.reference, batch)
        reference_time = time.perf_counter() - t0
        if distributed.is_distributed():  # every process gets the whole batch and trains on its own rows
            batch = distributed.gather_batch(batch, self.policy.tokenizer.pad_token_id)
            batch.local_rows = slice(shard.start * k, shard.stop * k)
        batch.objectives = self.objectives

        t0 = time.perf_counter()
        batch.rewards, skipped = score_rewards(
            self.rewards,
            batch.prompts,
            batch.completions,
            batch.columns,
            training=True,
            completion_lengths=batch.completion_lengths.tolist(),
            on_error=self.config.on_reward_error,
        )
        if distributed.is_distributed():  # every process scored the same batch; process 0's scores rule, in case
            batch.rewards, skipped = distributed.broadcast_object((batch.rewards, skipped))  # a reward is random
        timings["timing/reward"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        self.controller.before_update(batch)
        self._advantages(batch)
        timings["timing/controller"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        combine = self.controller.combine_losses if self.controller.applies_to == WeightTarget.GRADIENT else None
        update_metrics = self.algo.update(self.policy, self.optimizer, batch, combine=combine)
        self.rollout.weights_changed(self.policy)
        timings["timing/update"] = time.perf_counter() - t0 + reference_time
        nonfinite = update_metrics.get("skipped_nonfinite", 0.0) > 0  # the algorithm skipped the optimizer step
        self.skipped_steps += int(nonfinite)
        self.nonfinite_streak = self.nonfinite_streak + 1 if nonfinite else 0

        t0 = time.perf_counter()
        if "clipped_weights" in self.needs:  # on this process's rows, then gathered
            mine = batch.select(batch.local_rows) if batch.local_rows is not None else batch
            with torch.no_grad():
                new_logp = self._logprobs(self.policy, mine)
            batch.clipped_weights = distributed.gather_rows(self.algo.clipped_advantage_weight(new_logp, mine))
            batch.new_logprobs = distributed.gather_rows(new_logp)
        self.controller.after_update(batch)
        timings["timing/controller"] += time.perf_counter() - t0
        if "validation" in self.controller.needs:
            t0 = time.perf_counter()
            self.controller.observe_validation(self.validate())
            timings["timing/validation"] = timings.get("timing/validation", 0.0) + time.perf_counter() - t0

        self.step_count += 1
        metrics = self._step_metrics(batch, update_metrics, skipped)
        if batch.sampling_logprobs is not None:
            cfg = self.algo.config
            metrics.update(
                importance_metrics(
                    batch.old_logprobs,
                    batch.sampling_logprobs,
                    batch.completion_mask,
                    cfg.importance_correction,
                    cfg.importance_cap,
                )
            )
        metrics["train/skipped_steps"] = self.skipped_steps
        metrics.update(timings)
        for cb in self.callbacks:
            cb.on_step_end(self.step_count, batch, metrics)
        return batch, metrics

    def _logprobs(self, policy: Policy, batch: Batch) -> torch.Tensor:
        """Completion log-probs ``[N, L]`` (0 on padding) under ``policy``, in chunks of the algorithm's
        ``micro_batch_size`` rows (memory); no gradient."""
        size = self.algo.config.micro_batch_size or batch.size
        parts = []
        for start in range(0, batch.size, size):
            rows = slice(start, start + size)
            logp, _ = policy.token_logprobs(
                batch.input_ids[rows],
                batch.attention_mask[rows],
                batch.prompt_width,
                self.algo.config.temperature,
                group_size=batch.group_size if start % batch.group_size == 0 and size % batch.group_size == 0 else 1,
            )
            parts.append(logp * batch.completion_mask[rows])
        return torch.cat(parts)

    def _advantages(self, batch: Batch) -> None:
        k = batch.group_size
        filled = fill_not_applicable(batch.rewards, k)
        if "objective_advantages" in self.needs:
            batch.objective_advantages = torch.stack(
                [self.advantage(filled[:, m], k) for m in range(filled.shape[1])], dim=1
            )
        target = self.controller.applies_to
        if target == WeightTarget.REWARD:
            self.scalarizer.observe(filled)
            batch.scores = self.scalarizer(filled, self.controller.weights())
            batch.advantages = self.advantage(batch.scores, k)
        elif target == WeightTarget.ADVANTAGE:
            batch.advantages = self.controller.combine_advantages(batch.objective_advantages, batch)
            batch.scores = filled @ self.controller.weights()
        else:  # gradient-level: the algorithm combines per-objective losses; scores are for logging
            batch.scores = filled @ self.controller.weights()
            batch.advantages = batch.objective_advantages @ self.controller.weights()

    def _step_metrics(self, batch: Batch, update: dict[str, float], skipped: dict[str, int]) -> dict[str, float]:
        metrics: dict[str, float] = {"step": self.step_count}
        for m, name in enumerate(self.objectives):
            column = batch.rewards[:, m]
            valid = column[~torch.isnan(column)]
            metrics[f"rewards/{name}/mean"] = float(valid.mean()) if valid.numel() else math.nan
            metrics[f"rewards/{name}/std"] = float(valid.std()) if valid.numel() > 1 else math.nan
            if skipped.get(name):
                metrics[f"rewards/{name}/skipped"] = skipped[name]
        metrics["reward"] = float(batch.scores.mean())
        metrics["reward_std"] = float(batch.scores.std())
        lengths = batch.completion_lengths.float()
        metrics["completions/mean_length"] = float(lengths.mean())
        metrics["completions/max_length"] = float(lengths.max())
        metrics["advantages/zero_fraction"] = float((batch.advantages.abs() < 1e-8).float().mean())
        metrics.update(update)
        metrics.update(self.controller.metrics())
        for name, value in _reward_counters(self.rewards).items():
            metrics[name] = value
        return metrics

    # ---- evaluation -------------------------------------------------------------------------------

    @torch.no_grad()
    def evaluate(self, examples: list[dict[str, Any]], modes: Sequence[str] | None = None) -> dict[str, float]:
        """Per-objective means on held-out prompts, greedy and sampled; stateful rewards do not learn.

        Under data parallelism every process evaluates its share of the prompts and the sums are reduced."""
        out: dict[str, float] = {}
        if modes is None:
            modes = [m for m, on in (("greedy", self.config.eval_greedy), ("sampled", self.config.eval_sampled)) if on]
        mine, real = distributed.shard_padded(examples)
        for mode in modes:
            totals = np.zeros(len(self.objectives))
            counts = np.zeros(len(self.objectives))
            length_sum, n = 0.0, 0
            for start in range(0, len(mine), self.config.eval_batch_size):
                chunk = mine[start : start + self.config.eval_batch_size]
                keep = max(0, min(len(chunk), real - start))  # the rest pads this process's share
                prompts, columns = split_examples(chunk)
                batch = self.rollout.generate(self.policy, prompts, columns, 1, greedy=mode == "greedy")
                lengths = batch.completion_lengths
                rewards, _ = score_rewards(
                    self.rewards,
                    batch.prompts,
                    batch.completions,
                    batch.columns,
                    training=False,
                    completion_lengths=lengths.tolist(),
                    on_error=self.config.on_reward_error,
                )
                rewards, lengths = rewards[:keep], lengths[:keep]
                valid = ~torch.isnan(rewards)
                totals += torch.where(valid, rewards, 0.0).sum(0).double().numpy()
                counts += valid.sum(0).double().numpy()
                length_sum += float(lengths.sum())
                n += keep
            summed = distributed.all_reduce_sum(torch.tensor([*totals, *counts, length_sum, n], dtype=torch.float64))
            m = len(self.objectives)
            totals, counts, length_sum, n = summed[:m].numpy(), summed[m : 2 * m].numpy(), float(summed[-2]), summed[-1]
            for name, total, count in zip(self.objectives, totals, counts):
                out[f"eval/{mode}/{name}"] = float(total / count) if count else math.nan
            out[f"eval/{mode}/mean_length"] = length_sum / max(float(n), 1.0)
        return out

    def validate(self) -> dict[str, float]:
        """Per-objective means and ``mean_length`` on the first ``controller.config.validation_size`` examples of
        ``validation_data`` (default: the eval data given to :meth:`fit`), decoded as ``validation_mode`` says."""
        if not self.validation_data:
            raise ValueError(
                f"{type(self.controller).__name__} needs validation prompts: pass eval data to fit() "
                "or set pipeline.validation_data"
            )
        size = getattr(self.controller.config, "validation_size", 32)
        mode = getattr(self.controller.config, "validation_mode", "greedy")
        scores = self.evaluate(self.validation_data[:size], modes=[mode])
        means = {name: scores[f"eval/{mode}/{name}"] for name in self.objectives}
        means["mean_length"] = scores[f"eval/{mode}/mean_length"]
        return means

    # ---- the loop ------------------------------------------------------------------------------------

    def fit(
        self,
        train_data: list[dict[str, Any]],
        eval_data: list[dict[str, Any]] | None = None,
        resume_from: str | Path | None = None,
    ) -> FitResult:
        """Train for ``config.steps`` steps; evaluate at start, every ``eval_every`` steps and at the end.

        Writes a checkpoint every ``checkpoint_every`` steps and at the end; on SIGINT/SIGTERM it finishes the
        step, writes one and raises :class:`morl.checkpoint.Interrupted`. ``resume_from`` (a run directory or
        one of its checkpoints) continues that run, in its directory, from its newest complete checkpoint.
        """
        from morl.checkpoint import GracefulStop, Interrupted, resume, save_checkpoint
        from morl.logging import TrainingProgress, console, open_loggers, print_eval_table

        cfg = self.config
        main = distributed.is_main()  # process 0 writes the files and speaks for the run
        if not main:
            console.quiet = True
        if not train_data:
            raise ValueError("train_data is empty")
        if cfg.prompts_per_step % distributed.world_size():
            raise RecipeError(
                f"train.prompts_per_step={cfg.prompts_per_step} cannot be split evenly across "
                f"{distributed.world_size()} processes; use a multiple of {distributed.world_size()}"
            )
        for split, rows in (("train", train_data), ("eval", eval_data or [])):  # bad data fails now, not at step 900
            check_columns(self.rewards, rows, split)
            messages = [ex.get("messages") for ex in rows] if any("messages" in ex for ex in rows) else None
            self.rollout.check_prompts(self.policy, [ex["prompt"] for ex in rows], split, messages=messages)
        if cfg.threads is not None:
            torch.set_num_threads(cfg.threads)
        if self.step_count == 0:
            seed_everything(cfg.seed + 1_000_003 * distributed.rank())  # processes sample different completions
        if self.validation_data is None:
            self.validation_data = eval_data or train_data
        history: list[dict[str, Any]] = []
        saved: Path | None = None  # the newest checkpoint, and the step it holds
        if resume_from is not None:
            if main:
                run_dir, saved, history = resume(self, resume_from)  # restores RNG states last
                console.print(f"resuming [bold]{run_dir}[/] at step {self.step_count} from {saved.name}")
            distributed.barrier()
            if not main:  # the same state, without touching the run's files
                from morl.checkpoint import find_checkpoint, load_checkpoint, run_dir_of

                saved = find_checkpoint(resume_from, report=False)
                load_checkpoint(self, saved)
                run_dir = run_dir_of(saved)
            if distributed.is_distributed():
                history = distributed.broadcast_object(history)
                seed_everything(cfg.seed + 1_000_003 * distributed.rank() + 7_919 * self.step_count)
        else:
            run_dir = Path(distributed.broadcast_object(str(self.run_dir())))
        saved_step = self.step_count if saved is not None else None
        if main:
            run_dir.mkdir(parents=True, exist_ok=True)
            self._write_recipe(run_dir)
        writer = (
            open_loggers(run_dir, cfg.loggers, config=self.recipe, append=resume_from is not None)
            if main
            else _NoWriter()
        )
        for cb in self.callbacks:
            cb.on_fit_start(self, run_dir)
        if self.policy.sharded and main:
            console.print(
                "[yellow]sharded parameters (FSDP/ZeRO-3): no checkpoints are written[/] (train.checkpoint_every is "
                "ignored); the final model is saved. Use DDP (cookbook/accelerate/ddp.yaml) to resume runs."
            )

        def record(row: dict[str, Any]) -> None:
            writer.write(row)
            history.append(row)

        def checkpoint() -> Path:
            nonlocal saved, saved_step
            if saved_step != self.step_count and not self.policy.sharded:
                if main:  # every process holds the same state under DDP
                    saved = save_checkpoint(self, run_dir, keep=cfg.keep_checkpoints)
                saved_step = self.step_count
                distributed.barrier()
            return saved  # type: ignore[return-value]

        evals = [row for row in history if row.get("kind") == "eval"]
        first_eval = evals[0] if evals else None
        last_eval = evals[-1] if evals else None
        try:
            if eval_data and self.step_count == 0 and first_eval is None:
                first_eval = {"kind": "eval", "step": 0, **self.evaluate(eval_data)}
                record(first_eval)
                last_eval = first_eval
            with (
                GracefulStop() as stop,
                TrainingProgress(
                    cfg.steps, self.objectives, enabled=cfg.progress and main, start=self.step_count
                ) as progress,
            ):
                while self.step_count < cfg.steps:
                    signum = stop.signum
                    if distributed.is_distributed():  # stop together, or the others wait forever
                        signum = int(distributed.all_reduce_max(torch.tensor([signum or 0]))[0]) or None
                    if signum is not None:
                        raise Interrupted(signum, self.step_count, checkpoint())
                    _, metrics = self.step(self._next_examples(train_data))
                    record({"kind": "train", **metrics})
                    progress.update(metrics)
                    if self.nonfinite_streak:
                        console.print(
                            f"[yellow]step {self.step_count}: non-finite loss or gradient, update skipped[/] "
                            f"({self.nonfinite_streak} in a row; stopping at {cfg.max_nonfinite_steps})"
                        )
                    if eval_data and cfg.eval_every and self.step_count % cfg.eval_every == 0:
                        last_eval = {"kind": "eval", "step": self.step_count, **self.evaluate(eval_data)}
                        record(last_eval)
                    if self.nonfinite_streak >= cfg.max_nonfinite_steps:
                        raise self._nonfinite_error(metrics, checkpoint if self._parameters_finite() else None, saved)
                    if cfg.checkpoint_every and self.step_count % cfg.checkpoint_every == 0:
                        checkpoint()
            if eval_data and (last_eval is None or last_eval["step"] != self.step_count):
                last_eval = {"kind": "eval", "step": self.step_count, **self.evaluate(eval_data)}
                record(last_eval)
            checkpoint()
        finally:
            writer.close()
        self.save(run_dir)
        for cb in self.callbacks:
            cb.on_fit_end(self, history)
        if cfg.progress and first_eval and last_eval:
            moving = frozenset(n for n, r in zip(self.objectives, self.rewards) if getattr(r, "moving_target", False))
            print_eval_table(first_eval, last_eval, self.objectives, moving)
        distributed.barrier()
        return FitResult(run_dir=run_dir, history=history)

    def _parameters_finite(self) -> bool:
        return all(bool(torch.isfinite(p).all()) for p in self.policy.model.parameters())

    def _nonfinite_error(
        self, metrics: dict[str, float], checkpoint: Callable[[], Path] | None, saved: Path | None
    ) -> NonFiniteError:
        """Keep the last good state (a checkpoint now, if the parameters are still finite) and explain the stop."""
        if checkpoint is not None:
            saved = checkpoint()
        where = f"last good checkpoint: {saved}" if saved is not None else "no good checkpoint was written"
        return NonFiniteError(
            f"stopping at step {self.step_count}: {self.nonfinite_streak} steps in a row had a non-finite loss or "
            f"gradient (loss {metrics.get('loss')}, grad_norm {metrics.get('grad_norm')}), so their updates were "
            f"skipped (train.max_nonfinite_steps={self.config.max_nonfinite_steps}); {where}. Check the rewards, "
            "the controller's weights and train.lr, then resume with `morl fit RECIPE --resume RUN_DIR`."
        )

    def _next_examples(self, data: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Prompts for the next step: a seeded shuffle per epoch, position kept for resuming."""
        picked = []
        for _ in range(self.config.prompts_per_step):
            epoch, offset = divmod(self.data_position, len(data))
            if offset == 0 or not self._order:
                self._order = random.Random(self.config.seed * 100_003 + epoch).sample(range(len(data)), len(data))
            picked.append(data[self._order[offset]])
            self.data_position += 1
        return picked

    def run_dir(self) -> Path:
        if self.config.output_dir:
            return Path(self.config.output_dir)
        return Path("runs") / datetime.now().strftime("%Y%m%d-%H%M%S")

    def _write_recipe(self, run_dir: Path) -> None:
        import yaml

        recipe = self.recipe or {
            "components": {name: repr(c) for name, c in self.components().items()},
            "rewards": self.objectives,
            "train": self.config.model_dump(),
        }
        (run_dir / "recipe.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))

    def save(self, run_dir: Path) -> None:
        """Final model in Hugging Face format, controller and reward state as JSON (process 0 writes)."""
        if self.config.save_model and (self.policy.sharded or distributed.is_main()):
            self.policy.save(run_dir / "model")  # sharded: every process takes part in gathering the weights
        if not distributed.is_main():
            return
        state = {
            "step": self.step_count,
            "controller": self.controller.state_dict(),
            "scalarizer": self.scalarizer.state_dict(),
            "rewards": {n: r.state_dict() for n, r in zip(self.objectives, self.rewards) if isinstance(r, Component)},
        }
        (run_dir / "controller_state.json").write_text(json.dumps(state, indent=2))


class _NoWriter:
    """The metrics writer of processes other than 0: they log nothing."""

    def write(self, row: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


def _reward_counters(rewards: list[Any]) -> dict[str, float]:
    """Counters that rewards expose (e.g. answer-checker timeouts) as metrics."""
    out = {}
    for reward in rewards:
        timeouts = getattr(reward, "timeouts_", None)
        if timeouts is not None:
            out[f"rewards/{objective_name(reward)}/timeouts"] = float(timeouts)
    return out


def check_temperatures(rollout: RolloutBackend, algo: PolicyAlgo) -> None:
    """The trainer's log-probs must be taken at the sampling temperature, or every ratio is off from step one."""
    sampled = getattr(rollout.config, "temperature", None)
    if sampled is not None and sampled != algo.config.temperature:
        raise RecipeError(
            f"rollout.temperature is {sampled} but algo.temperature is {algo.config.temperature}: "
            "set both to the same value"
        )


def split_examples(examples: list[dict[str, Any]]) -> tuple[list[str], dict[str, list[Any]]]:
    """Rows -> prompts and column lists (every field but the prompt goes to the rewards)."""
    prompts = [ex["prompt"] for ex in examples]
    return prompts, {key: [ex.get(key) for ex in examples] for key in examples[0] if key != "prompt"}


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
