"""Saving and resuming a run: checkpoints of the trainer's state, the final model, and the run's identity.

A run is one experiment: its identity (:meth:`Checkpointing.identity`) is the resolved recipe, the class behind every
part and a hash of its data; a resume compares it with the checkpoint's and refuses a difference that was not
accepted. A checkpoint holds the :class:`morl.state.TrainingState` (step, data position, counters, every stateful
part's learned state), the tensors (weights, optimizer moments, parts' tensor state) and the random streams
(:mod:`morl.checkpoint` writes and reads the files).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from morl import distributed
from morl.callbacks import TensorStateful
from morl.checkpoint.errors import CheckpointError
from morl.checkpoint.find import run_dir_of
from morl.checkpoint.load import load_rng, load_state_tensors, load_tensors, prepare_resume, read_checkpoint
from morl.checkpoint.reference import check_reference, reference_pointer, weights_fingerprint
from morl.checkpoint.write import checkpoint_bytes, save_checkpoint, write_failed
from morl.integrity import os_error_of
from morl.rewards import is_moving_target
from morl.run import check_resume
from morl.state import StateMismatch, capture_parts, class_path, restore_parts

if TYPE_CHECKING:
    from morl.trainer import Trainer


class Checkpointing:
    """What a run directory keeps of a :class:`~morl.trainer.Trainer`, and how a resumed run gets it back."""

    def __init__(self, trainer: Trainer, recipe: dict[str, Any]) -> None:
        self.trainer = trainer
        self.recipe = recipe
        self._reference_fingerprint: str | None = None

    def recipe_for(
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

    def identity(
        self, recipe: dict[str, Any], train_data: list[dict[str, Any]], eval_data: list[dict[str, Any]] | None
    ) -> dict[str, Any]:
        """What makes a run this experiment: the resolved recipe, the class behind every part and a hash of the
        prompts it trains and evaluates on. A resume compares it with the checkpoint's."""

        parts = self.trainer.parts
        classes = {role: class_path(p) for role, p in self.trainer.stateful_parts().items() if "callback/" not in role}
        classes.update({f"reward/{n}": class_path(r) for n, r in zip(parts.objectives, parts.rewards)})
        return {
            **recipe,
            "classes": classes,
            "data_hash": {"train": _rows_hash(train_data), "eval": _rows_hash(eval_data or [])},
        }

    def objectives_manifest(self) -> list[dict[str, Any]]:
        """The manifest's objectives: name, direction, whether the reward is a moving target, and its class."""
        return [
            {"name": n, "direction": "maximize", "moving_target": is_moving_target(r), "reward": class_path(r)}
            for n, r in zip(self.trainer.parts.objectives, self.trainer.parts.rewards)
        ]

    def save_checkpoint(self, run_dir: Path) -> Path:
        self.trainer.state.parts = capture_parts(self.trainer.stateful_parts())
        pointer = None
        if self.trainer.reference is not None:
            pointer = reference_pointer(self.trainer.reference, self._fingerprint(), run_dir)
        return save_checkpoint(
            run_dir,
            self.trainer.state,
            self.trainer.parts.policy,
            self.trainer.optimizer,
            pointer,
            keep=self.trainer.config.keep_checkpoints,
            tensors=self._state_tensors(),
        )

    def _state_tensors(self) -> dict[str, torch.Tensor]:
        """``role/name -> tensor`` of the parts whose state holds tensors (:class:`TensorStateful`)."""
        out: dict[str, torch.Tensor] = {}
        for role, part in self.trainer.stateful_parts().items():
            if isinstance(part, TensorStateful):
                out.update({f"{role}/{name}": t for name, t in part.tensor_state_dict().items()})
        return out

    def _load_state_tensors(self, saved: dict[str, torch.Tensor]) -> None:
        for role, part in self.trainer.stateful_parts().items():
            if isinstance(part, TensorStateful):
                prefix = f"{role}/"
                part.load_tensor_state_dict({k[len(prefix) :]: v for k, v in saved.items() if k.startswith(prefix)})

    def _fingerprint(self) -> str:
        if self._reference_fingerprint is None:  # the reference never changes
            self._reference_fingerprint = weights_fingerprint(self.trainer.reference.model)  # type: ignore[union-attr]
        return self._reference_fingerprint

    def resume(self, checkpoint: Path, identity: dict[str, Any], accept: Sequence[str]) -> list[Any]:
        """Restore the run at ``checkpoint`` if it is the same experiment (or the differences are accepted);
        random-number streams last, so nothing done while loading draws from them."""
        loaded = read_checkpoint(checkpoint)
        accepted = check_resume(loaded.state.identity, identity, accept)
        if distributed.is_main():
            prepare_resume(checkpoint)
        if self.trainer.reference is not None:
            check_reference(self.trainer.reference, self._fingerprint(), loaded.reference, run_dir_of(checkpoint))
        try:
            restore_parts(self.trainer.stateful_parts(), loaded.state.parts)
        except StateMismatch as err:
            raise CheckpointError(f"{checkpoint}: {err}") from None
        load_tensors(checkpoint, self.trainer.parts.policy, self.trainer.optimizer)
        self._load_state_tensors(load_state_tensors(checkpoint, self.trainer.parts.policy.device))
        self._apply_accepted_optimizer_settings({d.path for d in accepted})
        self.trainer.parts.rollout.weights_changed(self.trainer.parts.policy)
        saved = loaded.state
        self.trainer.state = dataclasses.replace(saved, parts={})
        load_rng(checkpoint)
        return accepted

    def _apply_accepted_optimizer_settings(self, accepted: set[str]) -> None:
        """The optimizer's saved state carries the old lr and weight decay; an accepted change to them takes effect
        from the next optimizer step (the schedule keeps its position, scaled to the new base lr)."""
        scheduler = self.trainer.lr_scheduler
        for i, group in enumerate(self.trainer.optimizer.param_groups):
            if "train.lr" in accepted:
                scheduler.base_lrs[i] = group["initial_lr"] = self.trainer.config.lr
                group["lr"] = self.trainer.config.lr * scheduler.lr_lambdas[i](scheduler.last_epoch)
            if "train.weight_decay" in accepted:
                group["weight_decay"] = self.trainer.config.weight_decay

    def save_final(self, run_dir: Path) -> None:
        """The final model in Hugging Face format and the final training state (process 0 writes), the state last:
        a run whose final ``training_state.json`` holds its last step has its final outputs.

        A write that fails (a full disk) raises :class:`~morl.checkpoint.errors.CheckpointWriteError` saying so; the
        run's checkpoints are untouched, and resuming the run writes the final model again."""
        p = self.trainer.parts
        try:
            if self.trainer.config.save_model and (p.policy.sharded or distributed.is_main()):
                p.policy.save(run_dir / "model")  # sharded: every process takes part in gathering the weights
            if distributed.is_main():
                state = dataclasses.replace(self.trainer.state, parts=capture_parts(self.trainer.stateful_parts()))
                (run_dir / "training_state.json").write_text(json.dumps(state.to_json(), indent=1) + "\n")
        except Exception as err:
            failure = os_error_of(err)
            if failure is None:
                raise
            needed = checkpoint_bytes(p.policy)
            torn = "what it holds is incomplete; a resume writes it again"
            raise write_failed("the final model", run_dir / "model", run_dir, failure, needed, torn) from None


def _write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(row, default=str) + "\n" for row in rows))


def _rows_hash(rows: list[dict[str, Any]]) -> str:
    digest = hashlib.blake2b(digest_size=16)
    for row in rows:
        digest.update(json.dumps(row, sort_keys=True, default=str).encode())
    return digest.hexdigest()
