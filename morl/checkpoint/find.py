"""Finding the checkpoint to resume from: a run's complete and torn checkpoints, the newest intact one, the
fallback on an older one when loading fails, and the latest run."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from morl.checkpoint.errors import CheckpointError, CorruptCheckpoint
from morl.checkpoint.layout import _STEP_DIR, _TMP_PREFIX, CHECKPOINTS, MARKER
from morl.checkpoint.verify import verify_checkpoint

_T = TypeVar("_T")


def list_checkpoints(run_dir: str | Path) -> tuple[list[Path], list[Path]]:
    """``(complete, torn)`` checkpoint directories of a run, each sorted by step (oldest first)."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return [], []
    complete, torn = [], []
    for path in root.iterdir():
        if not path.is_dir():
            continue
        if path.name.startswith(_TMP_PREFIX):
            torn.append(path)
        elif _STEP_DIR.fullmatch(path.name):
            (complete if (path / MARKER).is_file() else torn).append(path)
    return sorted(complete, key=checkpoint_step), sorted(torn, key=lambda p: p.name)


def checkpoint_step(path: Path) -> int:
    match = re.search(r"step-(\d+)", path.name)
    return int(match.group(1)) if match else -1


def find_checkpoint(path: str | Path, report: bool = True) -> Path:
    """The newest complete checkpoint of a run directory (or ``path`` itself if it is a complete checkpoint).

    Torn checkpoints (no ``complete`` marker, or a leftover temporary directory from a run killed while writing)
    are skipped, with a message when ``report``.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"cannot resume: {path} does not exist")
    if not path.is_dir():
        raise CheckpointError(f"cannot resume: {path} is a file; give a run directory or one of its checkpoints")
    if _STEP_DIR.fullmatch(path.name) and path.parent.name == CHECKPOINTS:
        if not (path / MARKER).is_file():
            raise CheckpointError(f"cannot resume from {path}: it has no {MARKER!r} marker (torn while writing)")
        try:
            verify_checkpoint(path)
        except CorruptCheckpoint as err:
            raise CorruptCheckpoint(
                f"cannot resume from {err}; give the run directory ({run_dir_of(path)}) to resume from its newest "
                "intact checkpoint"
            ) from None
        return path
    complete, torn = list_checkpoints(path)
    if report:
        from morl.logging import console

        for t in torn:
            why = "a temporary directory" if t.name.startswith(_TMP_PREFIX) else f"no {MARKER!r} marker"
            console.print(f"[yellow]skipping torn checkpoint[/] {t} ({why}: killed while writing)", soft_wrap=True)
    if not complete:
        torn_note = f" ({len(torn)} torn ones skipped)" if torn else ""
        raise CheckpointError(
            f"cannot resume: no complete checkpoint under {path / CHECKPOINTS}{torn_note}; "
            "start the run again without --resume"
        )
    return _newest_intact(complete, report)


def _newest_intact(complete: list[Path], report: bool) -> Path:
    """The newest of ``complete`` whose files pass :func:`verify_checkpoint`; damaged ones are named and skipped
    (left in place: resuming moves them aside with the rest of the abandoned timeline, never deletes them)."""
    damaged: list[str] = []
    for candidate in reversed(complete):
        try:
            verify_checkpoint(candidate)
        except CorruptCheckpoint as err:
            damaged.append(str(err))
            if report:
                from morl.logging import console

                console.print(f"[yellow]skipping damaged checkpoint[/] {err}", soft_wrap=True)
            continue
        if damaged and report:
            from morl.logging import console

            console.print(f"[yellow]resuming from the previous intact checkpoint[/] {candidate}", soft_wrap=True)
        return candidate
    raise CorruptCheckpoint(
        "cannot resume: every complete checkpoint is damaged:\n  " + "\n  ".join(damaged) + "\n"
        "start the run again without --resume (in another output directory, to keep this one)"
    )


def resume_intact(checkpoint: Path, load: Callable[[Path], _T]) -> tuple[Path, _T]:
    """``load(checkpoint)``; if it fails with :class:`CorruptCheckpoint` (damage the cheap check missed), name the
    checkpoint and load the next older complete one of the same run instead, saying so.

    Returns the checkpoint actually loaded and what ``load`` returned. ``load`` must restore everything it touches
    on each call (the trainer's resume does: parts, tensors and random-number streams are all overwritten), so a
    failed attempt leaves nothing behind. The damaged checkpoints stay on disk; resuming from an older one moves
    them to ``checkpoints/abandoned/``.
    """
    from morl.logging import console

    complete, _ = list_checkpoints(run_dir_of(checkpoint))
    older = [c for c in reversed(complete) if checkpoint_step(c) < checkpoint_step(checkpoint)]
    damaged: list[str] = []
    for candidate in [checkpoint, *older]:
        if candidate != checkpoint:
            try:
                verify_checkpoint(candidate)
            except CorruptCheckpoint as err:
                damaged.append(str(err))
                console.print(f"[yellow]skipping damaged checkpoint[/] {err}", soft_wrap=True)
                continue
            console.print(f"[yellow]resuming from the previous intact checkpoint[/] {candidate}", soft_wrap=True)
        try:
            return candidate, load(candidate)
        except CorruptCheckpoint as err:
            damaged.append(str(err))
            console.print(f"[yellow]damaged checkpoint[/] {err}", soft_wrap=True)
    raise CorruptCheckpoint(
        "cannot resume: no intact checkpoint left to load:\n  " + "\n  ".join(damaged) + "\n"
        "start the run again without --resume (in another output directory, to keep this one)"
    )


def latest_run(parent: str | Path = "runs") -> Path:
    """The most recently active run directory under ``parent`` (by its newest metrics or checkpoint)."""
    parent = Path(parent)
    runs = [p for p in parent.iterdir() if p.is_dir() and (p / "recipe.yaml").exists()] if parent.is_dir() else []
    if not runs:
        raise CheckpointError(f"cannot resume 'latest': no run directories (with a recipe.yaml) under {parent}")

    def activity(run: Path) -> float:
        candidates = [run / "recipe.yaml", run / "metrics.jsonl", run / CHECKPOINTS]
        return max(p.stat().st_mtime for p in candidates if p.exists())

    return max(runs, key=activity)


def run_dir_of(checkpoint: Path) -> Path:
    return checkpoint.parent.parent
