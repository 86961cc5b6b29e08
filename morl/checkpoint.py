"""Checkpoints: everything a run needs to continue exactly where it stopped.

A run that dies at step 900 resumes at step 900 with nothing lost: the same parameters, optimizer moments,
training state (:class:`morl.state.TrainingState`: data position, counters, every part's learned state, the run's
identity) and random-number streams, so the resumed run's metrics and final parameters are bit-identical to an
uninterrupted run's on the same CPU and thread count. The checkpointer knows nothing of the pipeline: it writes
and reads the parts it is handed.

Layout of ``RUN_DIR/checkpoints/step-000123/``::

    model/                  the policy in Hugging Face format (``morl eval --checkpoint`` and ``AutoModel`` read it);
                            a LoRA policy's adapter (``adapter_model.safetensors``, ``adapter_config.json``), which
                            ``Policy.from_pretrained`` loads onto the base it names
    training_state.json     the TrainingState, and the reference policy's source (a pointer, not a copy: the
                            reference is the initial policy, or a LoRA policy's base) with a fingerprint of its weights
    optimizer.pt            the optimizer's ``state_dict()``
    rng.pt                  python ``random``, numpy, torch CPU (and CUDA) generator states
    state_tensors.safetensors  tensors of parts' state too large for JSON (the interference forecast's parameter
                            snapshot), only when some part has them
    complete                written last: the step and the sha256 of every other file; a directory without it is
                            torn and is skipped on resume

A checkpoint is written into a temporary directory beside the others, flushed to disk, marked ``complete``
and then renamed into place, so a run killed while writing leaves either the previous checkpoints or a
``.tmp-*`` directory that resuming reports and removes. A write that fails (a full disk, a folder made read-only)
raises :class:`CheckpointWriteError`, which says what failed, where and how to go on; the torn checkpoint is moved
to ``checkpoints/abandoned/`` and the previous complete one stays the one a resume uses. Nothing a run wrote is
deleted except the checkpoints that ``train.keep_checkpoints`` retires: a run resumed from an older checkpoint moves
the later ones (an abandoned timeline, or damaged ones) to ``checkpoints/abandoned/`` instead of deleting them.

Resuming checks a checkpoint before loading it (:func:`verify_checkpoint`): every file whole and, for checkpoints
that record them, the same bytes as were written (sha256). A damaged file, or one copied in from another run or
step, makes the resume fall back on the previous intact checkpoint, saying so.

Example:
    >>> pipe.fit(train, evals)  # doctest: +SKIP
    >>> pipe2 = Pipeline(...same components...)  # doctest: +SKIP
    >>> pipe2.fit(train, evals, resume_from="runs/20260101-120000")  # newest complete checkpoint  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pickle
import random
import re
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from morl.integrity import (
    follow_umask,
    free_bytes,
    is_disk_full,
    os_error_of,
    pickled_weights,
    safetensors_problem,
    short_reason,
    size_text,
    unpickling_reason,
    zip_problem,
)
from morl.policy import (
    ADAPTER_CONFIG,
    AdapterReference,
    Policy,
    base_weights,
    is_peft_model,
    load_options,
    resolve_model_path,
)
from morl.processes import reset_on_delivery
from morl.state import TrainingState

CHECKPOINTS = "checkpoints"
ABANDONED = "abandoned"
MARKER = "complete"
STATE_FILE = "training_state.json"
STATE_TENSORS = "state_tensors.safetensors"
DIGESTS = "sha256"  # the marker's record of every file the checkpoint wrote: relative path -> sha256
_STEP_DIR = re.compile(r"step-(\d+)")
_TMP_PREFIX = ".tmp-"


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


_T = TypeVar("_T")


class Interrupted(KeyboardInterrupt):
    """Training stopped on SIGINT/SIGTERM after writing a checkpoint; ``checkpoint`` is where to resume from."""

    def __init__(self, signum: int, step: int, checkpoint: Path | None) -> None:
        name = signal.Signals(signum).name
        super().__init__(f"stopped by {name} at step {step}; checkpoint: {checkpoint}")
        self.signum = signum
        self.step = step
        self.checkpoint = checkpoint


@dataclass(frozen=True)
class Loaded:
    """A checkpoint read back: its folder, its training state and the reference pointer it recorded."""

    path: Path
    state: TrainingState
    reference: dict[str, Any] | None


# ---- writing -----------------------------------------------------------------------------------------------------


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


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(2**22):
            digest.update(chunk)
    return digest.hexdigest()


_checked: dict[tuple[str, int, int, int, int, int], str] = {}


def _checked_sha256(path: Path) -> str:
    """:func:`_sha256`, remembered while the file is unchanged (same inode, size, mtime and ctime): the checks of
    one resume, which look at the same checkpoint more than once, read each file once."""
    info = path.stat()
    key = (str(path), info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)
    if key not in _checked:
        _checked[key] = _sha256(path)
    return _checked[key]


def _temporary_dir(prefix: str, parent: Path) -> Path:
    """A fresh folder to write into before the atomic rename, with the permissions of any folder the user creates:
    ``mkdtemp`` makes it 0700, which would leave checkpoints unreadable to the user's group."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o777 & ~umask)
    return path


def rng_state() -> dict[str, Any]:
    """Every global generator the training step draws from (generation samples from torch's)."""
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": [np_name, torch.from_numpy(np_keys.astype(np.int64)), np_pos, np_has_gauss, np_gauss],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, gauss_next = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), float(gauss_next)))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)


# ---- the reference policy -------------------------------------------------------------------------------------


def reference_pointer(reference: Policy, fingerprint: str, run_dir: Path) -> dict[str, Any]:
    """Where the reference came from and a fingerprint of its weights; a copy in the run only if it cannot be
    reloaded from its source (a model built in Python, say). A LoRA policy's reference is its own frozen base, which
    a resumed run must be built on anyway (the checkpoints hold only the adapter): never a copy."""
    source = reference.config.model
    pointer: dict[str, Any] = {"model": source, "fingerprint": fingerprint}
    if isinstance(reference, AdapterReference):
        pointer["adapters_disabled"] = True
    elif not _reloadable(source):
        copy_dir = run_dir / "reference-model"
        if not (copy_dir / MARKER).exists():
            tmp = _temporary_dir(f"{_TMP_PREFIX}reference-", run_dir)
            try:
                reference.save(tmp)
                _fsync_tree(tmp)
                (tmp / MARKER).write_text("reference\n")
            except Exception as err:
                shutil.rmtree(tmp, ignore_errors=True)
                failure = os_error_of(err)
                if failure is None:
                    raise
                needed = sum(p.numel() * p.element_size() for p in reference.model.parameters())
                raise write_failed("the reference policy's copy", run_dir, run_dir, failure, needed) from None
            if copy_dir.exists():  # a copy torn while writing (no marker): ours to replace
                shutil.rmtree(copy_dir)
            os.rename(tmp, copy_dir)
        pointer["copy"] = copy_dir.name
    return pointer


def weights_fingerprint(model: torch.nn.Module) -> str:
    """A hash of every parameter and buffer (names, shapes, dtypes, bytes): equal iff the weights are equal.

    A peft model (a LoRA policy, whose reference is its base with adapters disabled) is hashed by its base weights
    under the base model's names, adapters left out: the fingerprint of the plain base model it was built on."""
    digest = hashlib.blake2b(digest_size=16)
    weights = base_weights(model, merged=False) if is_peft_model(model) else model.state_dict().items()
    for name, tensor in weights:
        tensor = tensor.detach().contiguous().cpu()
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
        digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _reloadable(source: str) -> bool:
    if Path(resolve_model_path(source)).is_dir():
        return True
    return re.fullmatch(r"[\w.-]+/[\w.-]+", source) is not None and not Path(source).exists()  # a hub name


# ---- finding and loading ------------------------------------------------------------------------------------------


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


def verify_checkpoint(checkpoint: str | Path) -> None:
    """``CorruptCheckpoint`` naming the first missing, unreadable or changed file of a complete checkpoint.

    First the cheap checks: the small files read whole (training state, random-number states, configs), only the
    headers of the large ones (safetensors' JSON header against the file size, the zip directory at the end of
    ``optimizer.pt``), which a truncated copy fails. Then, when the ``complete`` marker records the sha256 of each
    file the checkpoint wrote, every file is read and compared (about 1 s a GB): flipped bytes inside a tensor, or
    a file copied in from another run or step, fail here. :func:`resume_intact` falls back when loading itself fails
    (damage in a checkpoint written before digests were recorded).
    """
    checkpoint = Path(checkpoint)
    state = checkpoint / STATE_FILE
    try:
        data = json.loads(state.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise CorruptCheckpoint(f"{state}: unreadable ({short_reason(err)})") from None
    if not isinstance(data, dict):
        raise CorruptCheckpoint(f"{state}: expected a JSON object, got {type(data).__name__}")
    _verify_model_dir(checkpoint / "model")
    _verify_zip(checkpoint / "optimizer.pt")
    if (checkpoint / STATE_TENSORS).exists():
        verify_safetensors(checkpoint / STATE_TENSORS)
    rng = checkpoint / "rng.pt"
    try:
        torch.load(rng, weights_only=True)
    except Exception as err:  # torch raises RuntimeError, EOFError, UnpicklingError, ... on a damaged file
        raise CorruptCheckpoint(f"{rng}: unreadable ({short_reason(err)})") from None
    _verify_digests(checkpoint)


def _verify_digests(checkpoint: Path) -> None:
    """Every file the marker lists holds the bytes that were written (checkpoints written before morl recorded
    digests list none)."""
    marker = checkpoint / MARKER
    try:
        recorded = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise CorruptCheckpoint(f"{marker}: unreadable ({short_reason(err)})") from None
    if not isinstance(recorded, dict):
        raise CorruptCheckpoint(f"{marker}: expected a JSON object, got {type(recorded).__name__}")
    digests = recorded.get(DIGESTS, {})
    if not isinstance(digests, dict):
        raise CorruptCheckpoint(f"{marker}: {DIGESTS!r} is not a mapping of files to digests")
    for name, digest in sorted(digests.items()):
        path = checkpoint / name
        try:
            actual = _checked_sha256(path)
        except OSError as err:
            raise CorruptCheckpoint(f"{path}: {short_reason(err)} (the checkpoint wrote it)") from None
        if actual != digest:
            raise CorruptCheckpoint(
                f"{path}: not the file this checkpoint wrote (its sha256 differs from the one {MARKER!r} records): "
                "damaged, or copied in from another run or step"
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


def _verify_model_dir(model_dir: Path) -> None:
    """The saved policy: a whole model (``config.json`` and weights) or an adapter, every weight file whole."""
    if not model_dir.is_dir():
        raise CorruptCheckpoint(f"{model_dir}: missing (the saved policy)")
    adapter = (model_dir / ADAPTER_CONFIG).is_file()
    config = model_dir / (ADAPTER_CONFIG if adapter else "config.json")
    try:
        json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise CorruptCheckpoint(f"{config}: unreadable ({short_reason(err)})") from None
    weights = sorted(model_dir.glob("*.safetensors")) + sorted(model_dir.glob("*.bin"))
    if not weights:
        raise CorruptCheckpoint(f"{model_dir}: no weights (no *.safetensors or *.bin file)")
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
        except (OSError, ValueError, KeyError, AttributeError) as err:
            raise CorruptCheckpoint(f"{index}: unreadable ({short_reason(err)})") from None
        for shard in sorted(shards - {w.name for w in weights}):
            raise CorruptCheckpoint(f"{model_dir / shard}: missing (listed in {index.name})")
    for file in weights:
        if file.suffix == ".safetensors":
            verify_safetensors(file)
        else:
            _verify_zip(file)


def verify_safetensors(path: Path) -> None:
    """The header parses and the tensors it lists fit in the file (a truncated file does not hold them)."""
    problem = safetensors_problem(path)
    if problem is not None:
        raise CorruptCheckpoint(f"{path}: {problem}")


def _verify_zip(path: Path) -> None:
    """A ``torch.save`` file is a zip archive whose directory sits at its end: a truncated one has none."""
    problem = zip_problem(path)
    if problem is not None:
        raise CorruptCheckpoint(f"{path}: {problem}")


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


def read_checkpoint(checkpoint: str | Path) -> Loaded:
    """The training state a complete checkpoint holds (no tensors loaded yet)."""
    checkpoint = Path(checkpoint)
    try:
        data = json.loads((checkpoint / STATE_FILE).read_text())
        reference = data.pop("reference", None)
        state = TrainingState.from_json(data)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise CorruptCheckpoint(f"{checkpoint / STATE_FILE}: unreadable ({short_reason(err)})") from None
    return Loaded(path=checkpoint, state=state, reference=reference)


def load_tensors(checkpoint: Path, policy: Policy, optimizer: torch.optim.Optimizer) -> None:
    """Copy the saved parameters into the live model and restore the optimizer's moments."""
    load_weights(policy, checkpoint / "model")
    saved = _torch_load(checkpoint / "optimizer.pt")
    try:
        optimizer.load_state_dict(saved)
    except (ValueError, KeyError, RuntimeError) as err:
        raise CheckpointError(f"{checkpoint / 'optimizer.pt'}: does not fit this run's optimizer ({err})") from None


def load_state_tensors(checkpoint: Path, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """The parts' tensor state (empty when the checkpoint has none), on ``device``."""
    path = checkpoint / STATE_TENSORS
    if not path.exists():
        return {}
    try:
        return load_file(str(path), device=str(device))
    except Exception as err:  # safetensors raises its own error types on a damaged file
        raise CorruptCheckpoint(f"{path}: unreadable ({short_reason(err)})") from None


def load_rng(checkpoint: Path) -> None:
    """Restore the random-number streams; call it last, so nothing done while loading draws from them."""
    saved = _torch_load(checkpoint / "rng.pt")
    try:
        set_rng_state(saved)
    except (KeyError, ValueError, TypeError, RuntimeError) as err:
        raise CorruptCheckpoint(f"{checkpoint / 'rng.pt'}: not random-number states ({short_reason(err)})") from None


def _torch_load(path: Path) -> Any:
    """``torch.load`` of a checkpoint file, a damaged one reported as :class:`CorruptCheckpoint` naming it."""
    try:
        return torch.load(path, weights_only=True)
    except Exception as err:  # RuntimeError, EOFError, UnpicklingError, OSError, ... depending on the damage
        raise CorruptCheckpoint(f"{path}: unreadable ({short_reason(err)})") from None


def load_weights(policy: Policy, model_dir: Path) -> None:
    """Copy saved parameters into the live model (same tensors, so the optimizer keeps pointing at them); a saved
    adapter directory into the live adapters."""
    from transformers import AutoModelForCausalLM

    if (model_dir / ADAPTER_CONFIG).is_file() or policy.has_adapters:
        _load_adapter(policy, model_dir)
        return

    dtype = next(policy.model.parameters()).dtype
    try:
        with _quiet_transformers():
            saved = AutoModelForCausalLM.from_pretrained(
                model_dir,
                dtype=dtype,
                trust_remote_code=policy.config.trust_remote_code,
                **load_options(policy.config.use_kernels),
            )
    except (OSError, ValueError, RuntimeError, EOFError) as err:  # missing or damaged files
        raise CorruptCheckpoint(f"{model_dir}: cannot load the saved policy ({short_reason(err)})") from None
    except pickle.UnpicklingError as err:  # a pickled weights file: damaged, or one the safe loader refuses
        raise CorruptCheckpoint(f"{pickled_weights(model_dir)}: {unpickling_reason(err)}") from None
    except Exception as err:  # safetensors' own error type, whose module is private
        if type(err).__name__ != "SafetensorError":
            raise
        raise CorruptCheckpoint(f"{model_dir}: cannot load the saved policy ({short_reason(err)})") from None
    try:
        with torch.no_grad():
            policy.model.load_state_dict(saved.state_dict(), strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"{model_dir}: the saved policy does not fit this run's model ({err})") from None


def _load_adapter(policy: Policy, model_dir: Path) -> None:
    """Copy a saved peft adapter into the policy's adapters: every adapter tensor must be there, and nothing else."""
    if not (model_dir / ADAPTER_CONFIG).is_file():
        raise CheckpointError(
            f"{model_dir}: the saved policy is a whole model, but this run's policy trains LoRA adapters "
            "(policy.lora); resume with the recipe the run was started with"
        )
    if not policy.has_adapters:
        raise CheckpointError(
            f"{model_dir}: the saved policy is a LoRA adapter, but this run's policy has no adapters; set policy.lora "
            "as the run did"
        )
    from peft import get_peft_model_state_dict, set_peft_model_state_dict
    from peft.utils import load_peft_weights

    try:
        saved = load_peft_weights(str(model_dir), device=str(policy.device))
    except Exception as err:  # OSError, ValueError, safetensors' own error: missing or damaged files
        raise CorruptCheckpoint(f"{model_dir}: cannot load the saved adapter ({short_reason(err)})") from None
    expected = set(get_peft_model_state_dict(policy.model))
    if set(saved) != expected:
        missing, extra = sorted(expected - set(saved))[:3], sorted(set(saved) - expected)[:3]
        raise CheckpointError(
            f"{model_dir}: the saved adapter does not fit this run's adapters (missing {missing}, unexpected "
            f"{extra}); use the run's policy.lora settings"
        )
    try:
        with torch.no_grad():
            result = set_peft_model_state_dict(policy.model, saved)
    except RuntimeError as err:  # shapes: another rank r
        raise CheckpointError(f"{model_dir}: the saved adapter does not fit this run's adapters ({err})") from None
    if result.unexpected_keys:
        raise CheckpointError(f"{model_dir}: adapter tensors with no place in the model: {result.unexpected_keys[:3]}")


def check_reference(reference: Policy, fingerprint: str, pointer: dict[str, Any] | None, run_dir: Path) -> None:
    """The KL anchor must be the run's initial policy: the same weights, or the copy the run saved of them (a LoRA
    run's anchor is the base its adapters sit on, which has no copy: build the pipeline on the same base)."""
    if pointer is None or fingerprint == pointer["fingerprint"]:
        return
    copy_dir = run_dir / pointer["copy"] if pointer.get("copy") else None
    if copy_dir is not None and (copy_dir / MARKER).is_file() and not isinstance(reference, AdapterReference):
        load_weights(reference, copy_dir)
        return
    if isinstance(reference, AdapterReference) or pointer.get("adapters_disabled"):
        raise CheckpointError(
            f"the base model under this run's LoRA adapters (its KL anchor) differs from the run's, which was "
            f"{pointer['model']!r}; build the pipeline on that same base model (and policy.lora) to resume"
        )
    raise CheckpointError(
        f"the reference policy (KL anchor) differs from the run's, which was the initial policy from "
        f"{pointer['model']!r}; build the pipeline from that same initial model to resume"
    )


def prepare_resume(checkpoint: Path) -> None:
    """Before continuing from ``checkpoint``: remove leftover temporary folders, and move checkpoints later than
    it (an abandoned timeline, when resuming from an older one) to ``checkpoints/abandoned/`` — kept, not deleted,
    and never picked by a later resume."""
    run_dir = run_dir_of(checkpoint)
    complete, torn = list_checkpoints(run_dir)
    for t in torn:
        if t.name.startswith(_TMP_PREFIX):
            shutil.rmtree(t, ignore_errors=True)
    later = [c for c in complete if checkpoint_step(c) > checkpoint_step(checkpoint)]
    if later:
        from morl.logging import console

        shelf = _shelve(run_dir, later)
        names = ", ".join(c.name for c in later)
        console.print(f"[yellow]resuming from an older checkpoint[/]: {names} moved to {shelf}", soft_wrap=True)


# ---- stopping cleanly -------------------------------------------------------------------------------------------


class GracefulStop:
    """While active (main thread only): SIGINT/SIGTERM stop the loop, after the current step or at once.

    The first signal sets :attr:`signum`; the loop finishes the step, writes a checkpoint and raises
    :class:`Interrupted`. A second signal, or the first one's grace period (``grace_s``) running out while the step
    still runs (a generation or a reward that takes that long), stops **at once**: ``KeyboardInterrupt`` is raised
    wherever the main thread is, so the loop can keep the last complete step's checkpoint and say where to resume.
    Why a grace period: a scheduler's SIGTERM is followed by SIGKILL after some seconds, and the step must not be
    what loses the run. One exception: between :meth:`hold` and :meth:`release` (the policy update and what follows
    it in a step) the stop is held until :meth:`release`, because a half-done update cannot be checkpointed.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, grace_s: float | None = None) -> None:
        self.signum: int | None = None
        self.grace_s = grace_s
        self.stopped_at_once = False  # the second signal (or the grace period) came
        self._holding = False
        self._pending = False
        self._timer: threading.Timer | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> GracefulStop:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
                reset_on_delivery(sig)  # a second signal ends the process even while C code holds the GIL
        return self

    def __exit__(self, *exc: object) -> None:
        if self._timer is not None:
            self._timer.cancel()
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def hold(self) -> None:
        """From here an immediate stop waits for :meth:`release` (the update must finish or not start)."""
        self._holding = True

    def release(self) -> None:
        """End of :meth:`hold`; raises ``KeyboardInterrupt`` if an immediate stop came meanwhile."""
        self._holding = False
        if self._pending:
            self._pending = False
            raise KeyboardInterrupt

    def _handle(self, signum: int, frame: Any) -> None:
        from morl.logging import console

        reset_on_delivery(signum)  # this delivery restored the default action: keep the next signal for this handler
        if self.signum is None:
            self.signum = signum
            grace = f", or after {self.grace_s:g} s" if self.grace_s else ""
            console.print(
                f"[yellow]{signal.Signals(signum).name}[/]: stopping after this step and writing a checkpoint "
                f"(a second SIGINT/SIGTERM{grace}: stop at once, keeping the last complete step's checkpoint)"
            )
            if self.grace_s:
                self._timer = threading.Timer(self.grace_s, self._grace_over)
                self._timer.daemon = True
                self._timer.start()
            return
        self.stopped_at_once = True
        if self._holding:
            self._pending = True
            console.print("[yellow]stopping at once[/], as soon as the policy update under way is finished")
            return
        console.print(f"[yellow]{signal.Signals(signum).name}[/]: stopping at once")
        raise KeyboardInterrupt

    def _grace_over(self) -> None:
        """The step outlived the grace period: deliver the first signal again, in the main thread, as a second one."""
        if self._previous and self.signum is not None:  # a real signal, so a sleep or a wait in the main thread ends
            signal.pthread_kill(threading.main_thread().ident, self.signum)  # type: ignore[arg-type]


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
