"""Claiming a run directory: a new run never lands on an old one, and two processes never share one.

A run directory is an append-only record of one experiment. ``check_new_run`` refuses a folder that already
holds a run (unless told to discard it), ``fresh_run_dir`` picks a folder nobody uses, and ``RunLock``
keeps a second process (or a second fit in the same process) out while a run writes.

Only a run's manifest says which files are morl's: discarding a run removes the names its ``manifest.json`` lists,
and a folder with names a run would write but no manifest claiming them (a folder of the user's, a run of an older
morl, a damaged manifest) is refused, never cleared.

Example:
    >>> import tempfile
    >>> parent = Path(tempfile.mkdtemp())
    >>> run_dir = fresh_run_dir(parent, stem="demo")
    >>> check_new_run(run_dir)  # empty: fine, nothing removed
    []
    >>> with RunLock(run_dir):
    ...     (run_dir / "metrics.jsonl").write_text("{}\\n")
    3
    >>> holds_run(run_dir)
    True
    >>> fresh_run_dir(parent, stem="demo").name
    'demo-2'
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import shutil
import socket
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from morl.run._plain import now_iso
from morl.run.jsonl import METRICS_FILE, read_jsonl
from morl.run.manifest import MANIFEST_FILE, RUN_OUTPUTS, Manifest, RunDirError, RunExistsError

LOCK_FILE = ".lock"
#: Entries whose presence means "a morl run wrote here".
RUN_MARKERS = ("manifest.json", "metrics.jsonl", "recipe.yaml", "checkpoints", "model")
_MANIFEST_TMP = ".manifest.json."  # prefix of a manifest write that a killed process left behind
_STEP_ZERO = re.compile(r"step-0+")  # a checkpoint of the initial weights (a run that failed on its first step)

# Locks held by this process, by resolved folder: lets this process's own checks tell "mine" from "someone else's".
_held: dict[Path, RunLock] = {}


class RunLockedError(RunDirError):
    """Another run (another process, or another fit in this one) is writing to the folder."""

    def __init__(self, run_dir: Path, holder: dict[str, Any] | None) -> None:
        self.run_dir = run_dir
        self.holder = holder or {}
        if holder:
            pid, host, started = (holder.get(k, "?") for k in ("pid", "host", "started"))
            who = f"pid {pid} on {host}, running since {started}"
            if holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
                who += " (this process)"
        else:
            who = "another process"
        super().__init__(
            f"run directory {run_dir} is in use by {who}. Wait for that run to finish, or write to another "
            "output directory (--output-dir / train.output_dir)."
        )


def holds_run(path: str | Path) -> bool:
    """Whether ``path`` is a folder that holds morl run output."""
    path = Path(path)
    return path.is_dir() and any((path / name).exists() for name in RUN_MARKERS)


def check_new_run(path: Path, overwrite: bool = False) -> list[str]:
    """Make sure a new run may write to ``path``, removing an earlier run's files where that is allowed; returns the
    names it removed.

    A folder that is missing, empty, or holds only names a run never writes is fine as it is. A folder whose
    ``manifest.json`` records a run gives that run's files (the names the manifest lists) up when ``overwrite`` is
    set, or without it when the run stopped before its first step (nothing learned: every segment ended at step 0,
    no checkpoint past step 0); otherwise ``RunExistsError`` says how to go on. Files morl did not write (notes, a
    user's data) are never removed: names a run writes that no readable manifest claims make ``RunExistsError`` or
    ``RunDirError``, even with ``overwrite``, and nothing is removed. ``RunLockedError`` when a live run holds the
    folder's lock, ``RunDirError`` when the folder cannot be created or written.
    """
    path = Path(path)
    _check_usable(path)
    if not path.exists():
        return []
    _check_unlocked(path)
    taken = [name for name in RUN_OUTPUTS if _present(path / name)]
    if not taken:
        return []
    if MANIFEST_FILE not in taken:
        raise RunExistsError(_unclaimed_message(path, taken, overwrite))
    try:
        manifest = Manifest.load(path)
    except RunDirError as err:
        raise RunDirError(
            f"{err}\nWithout a readable manifest morl cannot tell its files in {path} from yours, so it removes "
            "nothing there (--overwrite, overwrite=True included). Start the new run in another output directory, "
            "or restore or delete that manifest.json and its run's files yourself."
        ) from None
    if manifest is None:  # deleted since it was seen
        raise RunExistsError(_unclaimed_message(path, taken, overwrite))
    if not overwrite and not _stopped_before_first_step(path, manifest):
        raise RunExistsError(_existing_run_message(path, taken))
    ours = manifest.run_outputs(path)
    foreign = [name for name in taken if name not in ours]
    if foreign:
        raise RunExistsError(
            f"{path} holds {_names(path, foreign)}, which its run's manifest does not list as morl's; a new run would "
            "write into them, and morl removes only what a manifest lists. Nothing was removed. Move them away, or "
            "start the new run in another output directory (--output-dir DIR, train.output_dir in a recipe or "
            "TrainConfig)."
        )
    return _remove_outputs(path, ours)


def check_writable(path: str | Path) -> None:
    """``RunDirError`` when ``path`` is a file, lies under a file, or cannot be created or written.

    What a run needs of its folder, or of the parent of the fresh ``runs/<time>`` folder it will get, checked before
    a model loads: ``check_new_run`` covers a named output directory, this the default parent and a resumed run.
    """
    _check_usable(Path(path))


def fresh_run_dir(parent: Path = Path("runs"), stem: str | None = None) -> Path:
    """Create and return ``parent/<stem or YYYYmmdd-HHMMSS>``, suffixed ``-2``, ``-3``, ... if that name is taken.

    The folder is created here (atomically), so two runs started in the same second never get the same one.
    """
    parent = Path(parent)
    stem = stem or time.strftime("%Y%m%d-%H%M%S")
    _check_usable(parent)
    parent.mkdir(parents=True, exist_ok=True)
    for n in range(1, 10_000):
        candidate = parent / (stem if n == 1 else f"{stem}-{n}")
        try:
            candidate.mkdir()
        except FileExistsError:
            continue
        return candidate
    raise RunDirError(f"no free run directory name for {stem!r} under {parent}")


class RunLock:
    """Exclusive, non-blocking lock on ``run_dir/.lock``, held while a run writes there.

    ``fcntl.flock`` belongs to the open file, so the OS releases it when the holder dies (no stale locks to
    clean up), and a second ``RunLock`` fails at once even inside the same process. The lock file records
    the holder's pid, host and start time so the error can say who holds it; the file itself is never deleted
    (deleting it would let two processes lock two different files of the same name).
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> RunLock:
        """Take the lock (creating the folder if needed); ``RunLockedError`` if anyone holds it."""
        if self._fd is not None:
            raise RunLockedError(self.run_dir, _read_holder(self.run_dir / LOCK_FILE))
        _check_usable(self.run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        lock_path = self.run_dir / LOCK_FILE
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise RunLockedError(self.run_dir, _read_holder(lock_path)) from None
            raise
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "started": now_iso()}
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
        except OSError as err:  # a full disk: give the lock back, and name the file
            os.close(fd)
            raise OSError(err.errno, err.strerror, str(lock_path)) from None
        self._fd = fd
        _held[self.run_dir.resolve()] = self
        return self

    def release(self) -> None:
        """Give the lock up; a no-op when not held."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        _held.pop(self.run_dir.resolve(), None)
        try:
            os.ftruncate(fd, 0)  # nobody holds it now; leave no holder that looks alive
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()

    def __del__(self) -> None:
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)  # the OS drops the flock with the last descriptor

    def __repr__(self) -> str:
        return f"RunLock({str(self.run_dir)!r}, held={self.held})"


# ---- helpers -----------------------------------------------------------------------------------------------------


def _check_usable(path: Path) -> None:
    """``RunDirError`` when ``path`` is a file, lies under a file, or cannot be created or written."""
    if path.exists() and not path.is_dir():
        raise RunDirError(f"{path} is a file, not a folder; choose another output directory")
    existing = path
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        raise RunDirError(f"cannot create run directory {path}: {existing} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        what = "write to" if existing == path else f"create {path} in"
        raise RunDirError(f"cannot {what} {existing}: permission denied; choose another output directory")


def _check_unlocked(path: Path) -> None:
    """``RunLockedError`` when a process other than this process's own ``RunLock`` holds ``path``'s lock."""
    if path.resolve() in _held:
        return
    lock_path = path / LOCK_FILE
    try:
        fd = os.open(lock_path, os.O_RDONLY)
    except FileNotFoundError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise RunLockedError(path, _read_holder(lock_path)) from None
        raise
    finally:
        os.close(fd)  # closing drops the probe's lock, if it got one


def _read_holder(lock_path: Path) -> dict[str, Any] | None:
    try:
        holder = json.loads(lock_path.read_text())
    except (OSError, ValueError):
        return None  # the holder may be writing it this very moment
    return holder if isinstance(holder, dict) else None


def _present(path: Path) -> bool:
    return path.exists() or path.is_symlink()


def _names(path: Path, names: list[str]) -> str:
    return ", ".join(name + "/" if (path / name).is_dir() else name for name in names)


def _stopped_before_first_step(path: Path, manifest: Manifest) -> bool:
    """The run learned nothing: each segment started at step 0 and ended there (failed or interrupted), or died
    without ending (still ``running``, its lock free) before logging a training step; no checkpoint past step 0 (a
    reward that fails on the first step leaves one of the initial weights) and no final model."""
    for segment in manifest.segments:
        if segment.from_step != 0 or segment.status == "finished":
            return False
        if segment.to_step is None and (segment.status != "running" or _logged_a_step(path)):
            return False
        if segment.to_step not in (None, 0):
            return False
    checkpoints = path / "checkpoints"
    if _present(checkpoints) and (
        not checkpoints.is_dir() or any(not _STEP_ZERO.fullmatch(c.name) for c in checkpoints.iterdir())
    ):
        return False
    return not _present(path / "model")


def _logged_a_step(path: Path) -> bool:
    metrics = path / METRICS_FILE
    if not metrics.is_file():  # a named pipe is never read
        return _present(metrics)
    return any(row.get("kind", "train") == "train" and row.get("step") != 0 for row in read_jsonl(metrics))


def _existing_run_message(path: Path, taken: list[str]) -> str:
    return (
        f"{path} already holds a run ({_names(path, taken)}); a new run would destroy or mix with it. Either\n"
        f"  - continue it: --resume {path} (resume_from={str(path)!r} in Python)\n"
        "  - start the new run in another output directory: --output-dir DIR (train.output_dir in a recipe, "
        "TrainConfig(output_dir=...) in Python)\n"
        "  - discard it: --overwrite (overwrite=True in Python; removes the files its manifest lists as morl's, keeps "
        "any other file)"
    )


def _unclaimed_message(path: Path, taken: list[str], overwrite: bool) -> str:
    discard = " --overwrite (overwrite=True) discards only a run whose manifest lists its files." if overwrite else ""
    return (
        f"{path} holds {_names(path, taken)} but no {MANIFEST_FILE}: it is not a morl run (your own files, or a run of "
        f"a morl that did not record manifests), and a new run would write into them.{discard} Nothing was removed. "
        "Start the new run in another output directory (--output-dir DIR, train.output_dir in a recipe or "
        "TrainConfig), or move those away yourself."
    )


def _remove_outputs(path: Path, names: list[str]) -> list[str]:
    removed = []
    for name in names:
        target = path / name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif _present(target):
            target.unlink()
        else:
            continue
        removed.append(name)
    for leftover in path.glob(_MANIFEST_TMP + "*"):
        leftover.unlink()
    return removed
