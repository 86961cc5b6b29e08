"""Writing a checkpoint atomically: files written into a temporary folder and flushed to disk, their sha256
recorded in the ``complete`` marker, the folder renamed into place; a write that fails shelved and explained; old
checkpoints pruned."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from morl.checkpoint.errors import CheckpointWriteError
from morl.checkpoint.find import list_checkpoints, run_dir_of
from morl.checkpoint.layout import _TMP_PREFIX, ABANDONED, CHECKPOINTS, DIGESTS, MARKER, STATE_FILE, STATE_TENSORS
from morl.checkpoint.rng import rng_state
from morl.checkpoint.verify import _sha256
from morl.integrity import follow_umask, free_bytes, is_disk_full, os_error_of, size_text
from morl.policy import Policy
from morl.state import TrainingState


def save_checkpoint(
    run_dir: str | Path,
    state: TrainingState,
    policy: Policy,
    optimizer: torch.optim.Optimizer,
    reference: dict[str, Any] | None = None,
    keep: int | None = None,
    tensors: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write ``run_dir/checkpoints/step-NNNNNN`` atomically; keep the newest ``keep`` complete ones (None: all).

    ``reference`` is the pointer from :func:`reference_pointer` (None: the run has no reference policy); ``tensors``
    the parts' tensor state by ``role/name`` (see :class:`morl.callbacks.TensorStateful`).
    """
    root = Path(run_dir) / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{state.step:06d}"
    tmp = _temporary_dir(f"{_TMP_PREFIX}step-{state.step:06d}-", root)
    try:
        with _quiet_transformers():
            policy.save(tmp / "model", merged=False)  # a LoRA policy: the adapter only (merged at the end on request)
        _torch_save(optimizer.state_dict(), tmp / "optimizer.pt")
        _torch_save(rng_state(), tmp / "rng.pt")
        if tensors:
            save_file({k: t.detach().contiguous().cpu() for k, t in tensors.items()}, str(tmp / STATE_TENSORS))
        _write_json(tmp / STATE_FILE, {**state.to_json(), "reference": reference})
        follow_umask(tmp)
        _fsync_tree(tmp)
        marker = tmp / MARKER
        marker.write_text(json.dumps({"step": state.step, "time": time.time(), DIGESTS: _digests(tmp)}) + "\n")
        _fsync_file(marker)
        _fsync_dir(tmp)
    except Exception as err:
        failure = os_error_of(err)
        if failure is None:  # not a disk fault: a bug to see whole
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        shelved = _shelve_torn(tmp, final.name)
        needed = checkpoint_bytes(policy, optimizer, tensors)
        raise write_failed(f"checkpoint {final.name}", root, Path(run_dir), failure, needed, shelved) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        aside = None
        if final.exists():  # the same step again: a retry of a step whose checkpoint was torn or abandoned
            aside = final.with_name(f"{_TMP_PREFIX}old-{final.name}")
            os.rename(final, aside)
        os.rename(tmp, final)
        _fsync_dir(root)
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _prune(root, keep, current=final)
    return final


def write_failed(
    what: str, where: Path, run_dir: Path, failure: OSError, needed: int | None, torn: str | None = None
) -> CheckpointWriteError:
    """The error for ``what`` (a checkpoint, the final model) that could not be written into ``where``: the
    failure, on a full disk the space needed and left, what became of the ``torn`` files, the run's newest complete
    checkpoint and what to do."""
    text = f"cannot write {what} into {where}: {failure.strerror or failure}"
    fix = "fix that"
    if is_disk_full(failure):
        free = free_bytes(where)
        space = [
            f"it needs about {size_text(needed)}" if needed else "",
            f"{size_text(free)} free" if free is not None else "",
        ]
        text += f" ({'; '.join(s for s in space if s)})" if any(space) else ""
        fix = "free space on that disk"
    if torn:
        text += f"; {torn}"
    complete, _ = list_checkpoints(run_dir)
    if complete:
        text += (
            f". The newest complete checkpoint, {complete[-1]}, is intact and is the one a resume uses: {fix}, then "
            f"resume the run ({run_dir})"
        )
    else:
        text += f". The run has no complete checkpoint yet: {fix}, then start it again"
    return CheckpointWriteError(text, failure, run_dir, resumable=bool(complete))


def _shelve_torn(tmp: Path, name: str) -> str:
    """Move a checkpoint whose writing failed to ``checkpoints/abandoned/`` as ``name``; what became of it, in
    words. On a disk that cannot even take the move, its files are removed instead (they hold nothing the run
    needs)."""
    size = sum(p.stat().st_size for p in tmp.rglob("*") if p.is_file())
    try:
        shelf = _shelve(run_dir_of(tmp), [tmp], [name])
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if tmp.exists():
            return f"its torn files are left in {tmp} (a resume removes them)"
        return "its torn files were removed"
    return f"the torn checkpoint was moved to {shelf / name} ({size_text(size)}; delete it to free that space)"


def _shelve(run_dir: Path, paths: list[Path], names: list[str] | None = None) -> Path:
    """Move ``paths`` (under ``names``, else their own) into a fresh ``checkpoints/abandoned/<date-time>/`` folder
    of ``run_dir``: kept, not deleted, and never picked by a resume."""
    parent = run_dir / CHECKPOINTS / ABANDONED
    parent.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    shelf, n = parent / stamp, 1
    while True:
        try:
            shelf.mkdir()
            break
        except FileExistsError:
            n += 1
            shelf = parent / f"{stamp}-{n}"
    for path, name in zip(paths, names or [p.name for p in paths]):
        os.rename(path, shelf / name)
    return shelf


def checkpoint_bytes(
    policy: Policy, optimizer: torch.optim.Optimizer | None = None, tensors: dict[str, torch.Tensor] | None = None
) -> int:
    """About how many bytes a checkpoint takes (the saved model alone without ``optimizer``): the weights (a LoRA
    policy's adapters), the optimizer's moments and the parts' tensors; the small files aside."""
    weights = [p for p in policy.model.parameters() if p.requires_grad or not policy.has_adapters]
    state = optimizer.state.values() if optimizer is not None else []
    moments = [t for s in state for t in s.values() if isinstance(t, torch.Tensor)]
    return sum(t.numel() * t.element_size() for t in [*weights, *moments, *(tensors or {}).values()])


def _torch_save(value: Any, path: Path) -> None:
    """``torch.save`` through a Python file, so a full disk surfaces as its ``OSError`` (torch's own writer only
    says "unexpected pos")."""
    with open(path, "wb") as fh:
        torch.save(value, fh)


def _digests(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder``, by path relative to it."""
    return {str(p.relative_to(folder)): _sha256(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def _temporary_dir(prefix: str, parent: Path) -> Path:
    """A fresh folder to write into before the atomic rename, with the permissions of any folder the user creates:
    ``mkdtemp`` makes it 0700, which would leave checkpoints unreadable to the user's group."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o777 & ~umask)
    return path


@contextlib.contextmanager
def _quiet_transformers() -> Any:
    """No per-shard progress bars while saving or loading a checkpoint (they would break the training bar)."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


# ---- files ------------------------------------------------------------------------------------------------------


def _write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, indent=1) + "\n")


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # not every platform can open a directory
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _fsync_tree(root: Path) -> None:
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            _fsync_file(Path(dirpath) / name)
        _fsync_dir(Path(dirpath))


def _prune(root: Path, keep: int | None, current: Path) -> None:
    """Drop leftover temporary directories and all but the newest ``keep`` complete checkpoints."""
    complete, torn = list_checkpoints(root.parent)
    for t in torn:
        if t.name.startswith(_TMP_PREFIX):
            shutil.rmtree(t, ignore_errors=True)
    if keep is None:
        return
    for old in complete[: max(len(complete) - keep, 0)]:
        if old != current:
            shutil.rmtree(old, ignore_errors=True)
