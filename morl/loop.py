"""The fit loop: a :class:`~morl.trainer.Trainer`'s steps inside a run directory.

The loop owns the run directory (:mod:`morl.run`): it refuses a folder that already holds a run, holds a lock while
it writes, appends to ``metrics.jsonl`` (rows tagged with their manifest segment), writes the manifest at the start
and one segment per start or resume, and checkpoints through :class:`morl.resume.Checkpointing`. Around the steps it
keeps the evaluation schedule, logs completions, handles SIGINT/SIGTERM (finish the step, checkpoint, say where to
resume), stops on non-finite or failing steps with the last good checkpoint kept, and uploads to the hub.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from morl import distributed
from morl import metrics as M
from morl.checkpoint.errors import CheckpointError
from morl.checkpoint.find import find_checkpoint, resume_intact, run_dir_of
from morl.checkpoint.load import read_checkpoint
from morl.components import RecipeError, unimportable
from morl.hub import push_run
from morl.logging import TrainingProgress, console, open_loggers, print_eval_table
from morl.resume import Checkpointing
from morl.rewards import check_columns, is_moving_target
from morl.run import JsonlWriter, Manifest, RunLock, check_new_run, fresh_run_dir, read_metrics
from morl.signals import GracefulStop, Interrupted
from morl.stages import Updated
from morl.step_metrics import completion_rows
from morl.trainer import RewardFailure, Trainer, seed_everything

COMPLETIONS_FILE = "completions.jsonl"


class NonFiniteError(RuntimeError):
    """Too many steps in a row had a non-finite loss or gradient."""


@dataclass
class FitResult:
    """What :meth:`FitLoop.fit` leaves: the run directory, its metric rows and, after an upload, the hub address."""

    run_dir: Path
    history: list[dict[str, Any]] = field(default_factory=list)
    hub_url: str | None = None  # where train.push_to_hub uploaded the model; None when it did not (or failed)

    def evals(self) -> list[dict[str, Any]]:
        return [row for row in self.history if row.get("kind") == "eval"]


@dataclass
class _Run:
    """One fit's open run directory: where rows go, and which checkpoint holds the last complete step."""

    run_dir: Path
    segment: int
    writer: Any
    completions: JsonlWriter | None
    manifest: Manifest | None
    history: list[dict[str, Any]]
    stop: GracefulStop
    saved: Path | None = None  # the newest checkpoint this fit wrote or resumed from
    saved_step: int | None = None  # the step it holds

    def record(self, row: dict[str, Any]) -> dict[str, Any]:
        row = {**row, "segment": self.segment}
        self.writer.write(row)
        self.history.append(row)
        return row

    def evals(self) -> list[dict[str, Any]]:
        return [row for row in self.history if row.get("kind") == "eval"]


class FitLoop:
    """Runs ``config.steps`` steps of a trainer in a run directory; see :meth:`morl.pipeline.Pipeline.fit`."""

    def __init__(self, trainer: Trainer, recipe: dict[str, Any], manifest_method: dict[str, Any]) -> None:
        self.trainer = trainer
        self.checkpointing = Checkpointing(trainer, recipe)
        self.manifest_method = manifest_method
        self._warned: set[str] = set()  # objectives already said to apply to no sample
        self._decoder_noted = False

    def fit(
        self,
        train_data: list[dict[str, Any]],
        eval_data: list[dict[str, Any]] | None = None,
        resume_from: str | Path | None = None,
        overwrite: bool = False,
        accept_changes: Sequence[str] = (),
    ) -> FitResult:
        from morl.data import as_rows  # a datasets.Dataset, IterableDataset or DataFrame becomes a list of rows
        from morl.threads import policy_threads

        trainer, cfg = self.trainer, self.trainer.config
        train_data, eval_data = as_rows(train_data, "train_data"), as_rows(eval_data, "eval_data")
        trainer.validation_data = as_rows(trainer.validation_data, "validation_data")
        if not distributed.is_main():  # process 0 writes the files and speaks for the run
            console.quiet = True
        self._check_inputs(train_data, eval_data)
        trainer.train_data = train_data
        threads = policy_threads(cfg.threads, trainer.parts.policy)
        if threads is not None:
            torch.set_num_threads(threads)
        if trainer.validation_data is None:  # a fixed sample of the training prompts; never the reported eval split
            trainer.validation_data = random.Random(cfg.seed).sample(train_data, len(train_data))
        checkpoint = find_checkpoint(resume_from) if resume_from is not None else None
        if checkpoint is not None and (reached := read_checkpoint(checkpoint).state.step) > cfg.steps:
            raise CheckpointError(
                f"{checkpoint}: the run already reached step {reached}, beyond train.steps={cfg.steps}; resume with "
                f"train.steps >= {reached} (or start a new run from its model)"
            )
        run_dir = run_dir_of(checkpoint) if checkpoint is not None else self._new_run_dir(overwrite)
        with RunLock(run_dir) if distributed.is_main() else _no_lock():
            run = self._open(run_dir, checkpoint, train_data, eval_data, accept_changes)
            status = "failed"
            try:
                self._train(run, train_data, eval_data)
                status = "finished"
            except KeyboardInterrupt:
                status = "interrupted"
                raise
            finally:
                self._close(run, status)
            return self._finish(run)

    def _new_run_dir(self, overwrite: bool) -> Path:
        out = self.trainer.config.output_dir
        if distributed.is_main():
            run_dir = Path(out) if out else fresh_run_dir()
            check_new_run(run_dir, overwrite=overwrite)
            run_dir.mkdir(parents=True, exist_ok=True)
        else:
            run_dir = None
        return Path(distributed.broadcast_object(str(run_dir)))

    def _open(
        self,
        run_dir: Path,
        checkpoint: Path | None,
        train_data: list[dict[str, Any]],
        eval_data: list[dict[str, Any]] | None,
        accept_changes: Sequence[str],
    ) -> _Run:
        """Start the run (manifest, recipe) or resume it from ``checkpoint`` (a new manifest segment)."""
        trainer, cfg, keeper = self.trainer, self.trainer.config, self.checkpointing
        main = distributed.is_main()
        recipe = keeper.recipe_for(run_dir, train_data, eval_data, write_data=main and checkpoint is None)
        identity = keeper.identity(recipe, train_data, eval_data)
        history: list[dict[str, Any]] = []
        manifest: Manifest | None = None
        if checkpoint is None:
            if trainer.state.step == 0:
                seed_everything(cfg.seed + 1_000_003 * distributed.rank())  # processes sample different completions
            if main:
                import yaml

                (run_dir / "recipe.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
                _warn_unimportable(recipe, run_dir)
                manifest = Manifest.create(run_dir, recipe, keeper.objectives_manifest(), self.manifest_method)
        else:
            checkpoint, accepted = resume_intact(checkpoint, lambda c: keeper.resume(c, identity, accept_changes))
            if main:
                manifest = Manifest.load(run_dir)
                if manifest is None:
                    raise CheckpointError(f"{run_dir} has checkpoints but no manifest.json: it was not written by fit")
                manifest.begin_segment(run_dir, "resume", trainer.state.step, recipe, [str(d) for d in accepted])
                history = [row for row in read_metrics(run_dir) if row.get("step", 0) <= trainer.state.step]
                console.print(f"resuming [bold]{run_dir}[/] at step {trainer.state.step} from {checkpoint.name}")
            if distributed.is_distributed():
                history = distributed.broadcast_object(history)
                seed_everything(cfg.seed + 1_000_003 * distributed.rank() + 7_919 * trainer.state.step)
        segment = int(distributed.broadcast_object(manifest.current_segment.index if manifest is not None else 0))
        trainer.state.segment = segment
        trainer.state.identity = identity
        run = _Run(
            run_dir=run_dir,
            segment=segment,
            writer=open_loggers(run_dir, cfg.loggers, config=recipe) if main else _NoWriter(),
            completions=JsonlWriter(run_dir / COMPLETIONS_FILE) if main and cfg.log_completions else None,
            manifest=manifest,
            history=history,
            stop=GracefulStop(cfg.stop_grace_s),
            saved=checkpoint,
            saved_step=trainer.state.step if checkpoint is not None else None,
        )
        trainer.fit_context = trainer.make_fit_context(run_dir, segment)
        for cb in trainer.callbacks:
            cb.on_fit_start(trainer.fit_context)
        if trainer.parts.policy.sharded and main:
            console.print(
                "[yellow]sharded parameters (FSDP/ZeRO-3): no checkpoints are written[/] (train.checkpoint_every is "
                "ignored); the final model is saved. Use DDP (cookbook/accelerate/ddp.yaml) to resume runs."
            )
        return run

    def _train(self, run: _Run, train_data: list[dict[str, Any]], eval_data: list[dict[str, Any]] | None) -> None:
        """The steps, the evaluation schedule and the checkpoints; every way out keeps the last complete step. CTWA's
        after-update pass may run in a helper process meanwhile (``train.overlap_after_update``)."""
        with self.trainer.overlapped_after_update():
            self._train_steps(run, train_data, eval_data)

    def _train_steps(self, run: _Run, train_data: list[dict[str, Any]], eval_data: list[dict[str, Any]] | None) -> None:
        """The steps, each way out keeping the last complete step."""
        trainer, cfg = self.trainer, self.trainer.config
        try:
            if eval_data and trainer.state.step == 0 and not run.evals():
                run.record({"kind": "eval", "step": 0, **trainer.evaluate(eval_data)})
            progress = TrainingProgress(
                cfg.steps,
                list(trainer.parts.objectives),
                enabled=cfg.progress and distributed.is_main(),
                start=trainer.state.step,
            )
            with run.stop, progress:
                trainer.stop = run.stop
                while trainer.state.step < cfg.steps:
                    self._stop_if_signalled(run)
                    updated, metrics = trainer.step(trainer.next_examples(train_data))
                    run.record({"kind": "train", **metrics})
                    self._record_completions(run, updated)
                    progress.update(metrics)
                    self._after_step(run, metrics, eval_data)
            last = run.evals()[-1] if run.evals() else None
            if eval_data and (last is None or last["step"] != trainer.state.step):
                run.record({"kind": "eval", "step": trainer.state.step, **trainer.evaluate(eval_data)})
            self._write_checkpoint(run)
        except RewardFailure as err:
            trainer.undo_unfinished_step()  # it stopped before its update: the last good step is the one before
            where = self._write_checkpoint(run)
            where_text = f"last good checkpoint: {where}" if where is not None else "no checkpoint could be written"
            raise RewardFailure(
                f"stopping at step {trainer.state.step}: {err}; {where_text}. Fix or speed up the reward (or raise its "
                "time limit), then resume with `morl fit RECIPE --resume RUN_DIR`."
            ) from None
        except KeyboardInterrupt as err:
            if isinstance(err, Interrupted) or run.stop.signum is None:
                raise
            # stopped at once: between steps, or inside a step before its update (the update holds the stop)
            trainer.undo_unfinished_step()
            raise Interrupted(run.stop.signum, trainer.state.step, self._write_checkpoint(run)) from None
        finally:
            trainer.stop = None

    def _stop_if_signalled(self, run: _Run) -> None:
        signum = run.stop.signum
        if distributed.is_distributed():  # stop together, or the others wait forever
            signum = int(distributed.all_reduce_max(torch.tensor([signum or 0]))[0]) or None
        if signum is not None:
            raise Interrupted(signum, self.trainer.state.step, self._write_checkpoint(run))

    def _after_step(self, run: _Run, metrics: dict[str, float], eval_data: list[dict[str, Any]] | None) -> None:
        """Warn about a skipped update, evaluate and checkpoint on schedule, stop on too many non-finite steps."""
        trainer, cfg = self.trainer, self.trainer.config
        step, streak = trainer.state.step, trainer.state.nonfinite_streak
        self._warn_inapplicable(metrics)
        self._note_slow_decoder()
        if streak:
            console.print(
                f"[yellow]step {step}: non-finite loss or gradient, update skipped[/] "
                f"({streak} in a row; stopping at {cfg.max_nonfinite_steps})"
            )
        if eval_data and cfg.eval_every and step % cfg.eval_every == 0:
            run.record({"kind": "eval", "step": step, **trainer.evaluate(eval_data)})
        if streak >= cfg.max_nonfinite_steps:
            finite = all(bool(torch.isfinite(q).all()) for q in trainer.parts.policy.model.parameters())
            where = self._write_checkpoint(run) if finite else run.saved
            where_text = f"last good checkpoint: {where}" if where is not None else "no good checkpoint was written"
            raise NonFiniteError(
                f"stopping at step {step}: {streak} steps in a row had a non-finite loss or gradient (loss "
                f"{metrics.get('loss')}, grad_norm {metrics.get('grad_norm')}), so their updates were skipped "
                f"(train.max_nonfinite_steps={cfg.max_nonfinite_steps}); {where_text}. Check the rewards, the "
                "controller's weights and train.lr, then resume with `morl fit RECIPE --resume RUN_DIR`."
            )
        if cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
            self._write_checkpoint(run)

    def _note_slow_decoder(self) -> None:
        """Say once why the rollout samples with transformers' ``generate`` when morl's faster loop was asked for
        (``rollout.decoder: auto``) but cannot run this model: a run that is slower than it could be says why."""
        rollout = self.trainer.parts.rollout
        reason = getattr(rollout, "decoder_reason", None)
        if self._decoder_noted or getattr(rollout.config, "decoder", None) != "auto" or reason is None:
            return
        self._decoder_noted = True
        if distributed.is_main():
            console.print(
                f"[dim]rollout: sampling with transformers' generate: {reason}; morl's faster decoding loop runs "
                "Llama, Qwen2 and Mistral models (docs/components/rollouts.md)[/]"
            )

    def _warn_inapplicable(self, metrics: dict[str, float]) -> None:
        """Say once per objective when its reward applied to no sample of a step (it returned None for all): that
        objective gets no signal, which is rarely what the user meant (a missing dataset column, a wrong regex)."""
        for name in self.trainer.parts.objectives:
            mean = metrics.get(M.reward_mean(name))
            if mean is not None and math.isnan(mean) and name not in self._warned:
                self._warned.add(name)
                console.print(
                    f"[yellow]step {self.trainer.state.step}: reward {name!r} applied to no sample (it returned None "
                    "for every completion)[/]: this objective gets no training signal; check the columns it reads"
                )

    def _write_checkpoint(self, run: _Run) -> Path | None:
        """A checkpoint of the current step, unless one holds it already (a half-written one is none: a stop at
        once waits for it)."""
        trainer = self.trainer
        if run.saved_step != trainer.state.step and not trainer.parts.policy.sharded:
            run.stop.hold()
            trainer.settle()  # the last update's after-update pass is part of the step's state
            if distributed.is_main():  # every process holds the same state under DDP
                run.saved = self.checkpointing.save_checkpoint(run.run_dir)
            run.saved_step = trainer.state.step
            distributed.barrier()
            run.stop.release()
        return run.saved

    def _record_completions(self, run: _Run, updated: Updated) -> None:
        cfg, step = self.trainer.config, self.trainer.state.step
        if run.completions is None or step % cfg.log_completions_every:
            return
        rows = completion_rows(updated, cfg.num_completions_to_print)
        for row in rows:
            run.completions.write({"step": step, "segment": run.segment, **row})
        run.writer.write_completions(step, rows)

    def _close(self, run: _Run, status: str) -> None:
        """Whatever ended the fit: free the rollout engine, close the files, end the manifest segment."""
        self.trainer.parts.rollout.close()  # vLLM's GPU memory
        run.writer.close()
        if run.completions is not None:
            run.completions.close()
        if run.manifest is not None:
            run.manifest.end_segment(run.run_dir, self.trainer.state.step, status)

    def _finish(self, run: _Run) -> FitResult:
        """The final model and state, the callbacks' end, the summary table and the upload."""
        trainer, cfg, p = self.trainer, self.trainer.config, self.trainer.parts
        self.checkpointing.save_final(run.run_dir)
        for cb in trainer.callbacks:
            cb.on_fit_end(trainer.fit_context, run.history)
        evals = run.evals()
        first, last = (evals[0], evals[-1]) if evals else (None, None)
        if cfg.progress and first and last:
            moving = frozenset(n for n, r in zip(p.objectives, p.rewards) if is_moving_target(r))
            print_eval_table(first, last, list(p.objectives), moving)
        distributed.barrier()
        hub_url = None
        if cfg.push_to_hub and distributed.is_main():  # after the barrier: no other process waits on an upload
            hub_url = push_run(run.run_dir, cfg.hub_model_id, cfg.hub_private_repo, first, last)
        return FitResult(run_dir=run.run_dir, history=run.history, hub_url=hub_url)

    def _check_inputs(self, train_data: list[dict[str, Any]], eval_data: list[dict[str, Any]] | None) -> None:
        p, cfg = self.trainer.parts, self.trainer.config
        if not train_data:
            raise ValueError("train_data is empty")
        if cfg.prompts_per_step % distributed.world_size():
            n = distributed.world_size()
            raise RecipeError(
                f"train.prompts_per_step={cfg.prompts_per_step} cannot be split evenly across {n} processes; "
                f"use a multiple of {n}"
            )
        if cfg.dynamic_sampling and distributed.is_distributed():
            raise RecipeError("train.dynamic_sampling runs in one process for now; set it to false under --launch")
        for split, rows in (("train", train_data), ("eval", eval_data or [])):  # bad data fails now, not at step 900
            check_columns(p.rewards, rows, split)
            messages = [ex.get("messages") for ex in rows] if any("messages" in ex for ex in rows) else None
            p.rollout.check_prompts(p.policy, [ex["prompt"] for ex in rows], split, messages=messages)


def _warn_unimportable(recipe: dict[str, Any], run_dir: Path) -> None:
    """Say when the saved recipe cannot be re-run by ``morl fit``: it names a function it cannot import."""
    nodes = [(f"rewards[{i}]", spec) for i, spec in enumerate(recipe.get("rewards") or [])]
    nodes += [(role, recipe.get(role)) for role in ("scalarizer", "advantage", "algo", "controller", "rollout")]
    for where, spec in nodes:
        reason = unimportable(spec) if isinstance(spec, str | dict) else None
        if reason is not None:
            console.print(
                f"[yellow]{run_dir / 'recipe.yaml'}: {where}: {reason}, which `morl fit` cannot import[/]: the run "
                "trains, but to re-run it from the command line move that function into a module"
            )


class _NoWriter:
    """The metrics writer of processes other than 0: they log nothing."""

    def write(self, row: dict[str, Any]) -> None: ...

    def write_completions(self, step: int, rows: list[dict[str, Any]]) -> None: ...

    def close(self) -> None: ...


class _no_lock:
    """Processes other than 0 write nothing, so they take no lock."""

    def __enter__(self) -> None: ...

    def __exit__(self, *exc: object) -> None: ...
