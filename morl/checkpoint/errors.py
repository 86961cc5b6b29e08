"""The errors of checkpoints: none usable, one that does not fit the run, one damaged, one that could not be
written."""

from __future__ import annotations

from pathlib import Path


class CheckpointError(RuntimeError):
    """No usable checkpoint, or one that does not fit the run it is loaded into."""


class CorruptCheckpoint(CheckpointError):
    """A checkpoint marked complete whose files are missing or unreadable (a disk fault, a copy cut short).

    Kept apart from :class:`CheckpointError` because it is the one failure an older checkpoint of the same run can
    get around: :func:`find_checkpoint` and :func:`resume_intact` fall back on it, never on a recipe mismatch."""


class CheckpointWriteError(OSError):
    """A checkpoint, or the run's final model, could not be written: a full disk, a folder made read-only, an I/O
    error. The message says what failed, where, on a full disk the space needed and left, what became of the torn
    files and how to go on. ``run_dir`` is the run; ``resumable`` whether it holds a complete checkpoint to resume
    from. An ``OSError`` carrying the failure's ``errno``: a disk fault, not a wrong recipe or checkpoint."""

    def __init__(self, message: str, failure: OSError, run_dir: Path, resumable: bool) -> None:
        super().__init__(failure.errno, message)
        self.run_dir = run_dir
        self.resumable = resumable

    def __str__(self) -> str:
        return str(self.strerror)
