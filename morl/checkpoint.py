"""Checkpoints: everything a run needs to continue exactly where it stopped.

A run that dies at step 900 resumes at step 900 with nothing lost: the same parameters, optimizer moments,
controller/scalarizer/reward state, data position and random-number streams, so the resumed run's metrics and
final parameters are bit-identical to an uninterrupted run's on the same CPU and thread count.

Layout of ``RUN_DIR/checkpoints/step-000123/``::

    model/                  the policy in Hugging Face format (``morl eval --checkpoint`` and ``AutoModel`` read it)
    controller_state.json   step, controller, scalarizer and reward state (as a finished run writes it)
    trainer_state.json      step, data position, every component's and callback's ``state_dict()``, counters,
                            and the reference policy's source (a pointer, not a copy: the reference is the initial
                            policy) with a fingerprint of its weights
    optimizer.pt            the optimizer's ``state_dict()``
    rng.pt                  python ``random``, numpy, torch CPU (and CUDA) generator states
    complete                written last; a directory without it is torn and is skipped on resume

A checkpoint is written into a temporary directory beside the others, flushed to disk, marked ``complete``
and then renamed into place, so a run killed while writing leaves either the previous checkpoints or a
``.tmp-*`` directory that resuming reports and removes. On resume, ``metrics.jsonl`` and ``events.jsonl``
are cut back to the rows with ``step <=`` the checkpoint's step, so no row is duplicated.

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
import random
import re
import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from morl.components import Component

if TYPE_CHECKING:
    from morl.pipeline import Pipeline

CHECKPOINTS = "checkpoints"
MARKER = "complete"
_STEP_DIR = re.compile(r"step-(\d+)")
_TMP_PREFIX = ".tmp-"
#: Files of the run directory that hold one JSON row per line with a ``step``; cut back on resume.
STEP_LOGS = ("metrics.jsonl", "events.jsonl")


class CheckpointError(RuntimeError):
    """No usable checkpoint, or one that does not fit the pipeline it is loaded into."""


class Interrupted(KeyboardInterrupt):
    """Training stopped on SIGINT/SIGTERM after writing a checkpoint; ``checkpoint`` is where to resume from."""

    def __init__(self, signum: int, step: int, checkpoint: Path | None) -> None:
        name = signal.Signals(signum).name
        super().__init__(f"stopped by {name} at step {step}; checkpoint: {checkpoint}")
        self.signum = signum
        self.step = step
        self.checkpoint = checkpoint


# ---- writing -----------------------------------------------------------------------------------------------------


def save_checkpoint(pipeline: Pipeline, run_dir: str | Path, keep: int | None = None) -> Path:
    """Write ``run_dir/checkpoints/step-NNNNNN`` atomically; keep the newest ``keep`` complete ones (None: all)."""
    root = Path(run_dir) / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    step = pipeline.step_count
    final = root / f"step-{step:06d}"
    tmp = Path(tempfile.mkdtemp(prefix=f"{_TMP_PREFIX}step-{step:06d}-", dir=root))
    try:
        with _quiet_transformers():
            pipeline.policy.save(tmp / "model")
        torch.save(pipeline.optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(rng_state(), tmp / "rng.pt")
        _write_json(tmp / "controller_state.json", component_state(pipeline))
        _write_json(tmp / "trainer_state.json", trainer_state(pipeline, Path(run_dir)))
        _fsync_tree(tmp)
        marker = tmp / MARKER
        marker.write_text(json.dumps({"step": step, "time": time.time()}) + "\n")
        _fsync_file(marker)
        _fsync_dir(tmp)
        aside = None
        if final.exists():  # the same step again: a run resumed from an older checkpoint re-reached it
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


def component_state(pipeline: Pipeline) -> dict[str, Any]:
    """Controller, scalarizer and reward state in the format of a finished run's ``controller_state.json``."""
    return {
        "step": pipeline.step_count,
        "controller": pipeline.controller.state_dict(),
        "scalarizer": pipeline.scalarizer.state_dict(),
        "rewards": _reward_states(pipeline),
    }


def trainer_state(pipeline: Pipeline, run_dir: Path) -> dict[str, Any]:
    return {
        "step": pipeline.step_count,
        "data_position": pipeline.data_position,
        "objectives": list(pipeline.objectives),
        "counters": {name: getattr(pipeline, name) for name in _COUNTERS if hasattr(pipeline, name)},
        "components": {name: c.state_dict() for name, c in pipeline.components().items() if isinstance(c, Component)},
        "rewards": _reward_states(pipeline),
        "callbacks": {key: state for key, state in _callback_states(pipeline).items() if state},
        "reference": _reference_pointer(pipeline, run_dir),
    }


#: Pipeline attributes (besides step and data position) that a resumed run must continue from.
_COUNTERS = ("skipped_steps", "nonfinite_streak")


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


def _reward_states(pipeline: Pipeline) -> dict[str, Any]:
    return {n: r.state_dict() for n, r in zip(pipeline.objectives, pipeline.rewards) if isinstance(r, Component)}


def _callback_states(pipeline: Pipeline) -> dict[str, dict[str, Any]]:
    """Callbacks keyed by position and class, so a resumed pipeline with the same callbacks gets its own back."""
    out = {}
    for i, cb in enumerate(pipeline.callbacks):
        state_dict = getattr(cb, "state_dict", None)
        out[f"{i}:{type(cb).__name__}"] = state_dict() if callable(state_dict) else {}
    return out


# ---- the reference policy -------------------------------------------------------------------------------------


def _reference_pointer(pipeline: Pipeline, run_dir: Path) -> dict[str, Any] | None:
    """Where the reference came from and a fingerprint of its weights; a copy only if it cannot be reloaded."""
    reference = pipeline.reference
    if reference is None:
        return None
    source = reference.config.model
    pointer: dict[str, Any] = {"model": source, "fingerprint": _fingerprint_cached(pipeline)}
    if not _reloadable(source):
        copy_dir = run_dir / "reference-model"
        if not (copy_dir / MARKER).exists():
            tmp = Path(tempfile.mkdtemp(prefix=f"{_TMP_PREFIX}reference-", dir=run_dir))
            reference.save(tmp)
            _fsync_tree(tmp)
            (tmp / MARKER).write_text("reference\n")
            if copy_dir.exists():
                shutil.rmtree(copy_dir)
            os.rename(tmp, copy_dir)
        pointer["copy"] = copy_dir.name
    return pointer


def _fingerprint_cached(pipeline: Pipeline) -> str:
    cached = getattr(pipeline, "_reference_fingerprint", None)
    if cached is None:
        cached = weights_fingerprint(pipeline.reference.model)  # type: ignore[union-attr]
        pipeline._reference_fingerprint = cached  # the reference never changes
    return cached


def weights_fingerprint(model: torch.nn.Module) -> str:
    """A hash of every parameter and buffer (names, shapes, dtypes, bytes): equal iff the weights are equal."""
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach().contiguous().cpu()
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
        digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _reloadable(source: str) -> bool:
    from morl.policy import resolve_model_path

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
    if _STEP_DIR.fullmatch(path.name) and path.parent.name == CHECKPOINTS:
        if not (path / MARKER).is_file():
            raise CheckpointError(f"cannot resume from {path}: it has no {MARKER!r} marker (torn while writing)")
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
    return complete[-1]


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


def load_checkpoint(pipeline: Pipeline, checkpoint: str | Path) -> dict[str, Any]:
    """Restore a pipeline (built with the same components) to a checkpoint; returns its trainer state.

    Random-number generators are restored last, so nothing done while loading draws from them.
    """
    checkpoint = Path(checkpoint)
    try:
        state = json.loads((checkpoint / "trainer_state.json").read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{checkpoint}: unreadable trainer_state.json ({err})") from None
    if state["objectives"] != list(pipeline.objectives):
        raise CheckpointError(
            f"{checkpoint}: the run's objectives are {state['objectives']}, this pipeline's are "
            f"{list(pipeline.objectives)}; resume with the same rewards"
        )
    _check_reference(pipeline, state.get("reference"), run_dir_of(checkpoint))
    _load_weights(pipeline.policy, checkpoint / "model")
    pipeline.optimizer.load_state_dict(torch.load(checkpoint / "optimizer.pt", weights_only=True))
    for name, component in pipeline.components().items():
        if isinstance(component, Component) and name in state["components"]:
            component.load_state_dict(state["components"][name])
    for name, reward in zip(pipeline.objectives, pipeline.rewards):
        if isinstance(reward, Component) and name in state["rewards"]:
            reward.load_state_dict(state["rewards"][name])
    saved_callbacks = state.get("callbacks", {})
    for key, cb in zip(_callback_states(pipeline), pipeline.callbacks):
        if key in saved_callbacks and callable(getattr(cb, "load_state_dict", None)):
            cb.load_state_dict(saved_callbacks[key])
    pipeline.step_count = int(state["step"])
    pipeline.data_position = int(state["data_position"])
    pipeline._order = []  # recomputed from the seed and the epoch on the next draw
    for name, value in state.get("counters", {}).items():
        setattr(pipeline, name, value)
    set_rng_state(torch.load(checkpoint / "rng.pt", weights_only=True))
    return state


def _load_weights(policy: Any, model_dir: Path) -> None:
    """Copy the saved parameters into the live model (same tensors, so the optimizer keeps pointing at them)."""
    from transformers import AutoModelForCausalLM

    dtype = next(policy.model.parameters()).dtype
    try:
        with _quiet_transformers():
            saved = AutoModelForCausalLM.from_pretrained(
                model_dir, dtype=dtype, trust_remote_code=policy.config.trust_remote_code
            )
    except OSError as err:
        raise CheckpointError(f"{model_dir}: cannot load the saved policy ({err})") from None
    try:
        with torch.no_grad():
            policy.model.load_state_dict(saved.state_dict(), strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"{model_dir}: the saved policy does not fit this pipeline's model ({err})") from None


def _check_reference(pipeline: Pipeline, pointer: dict[str, Any] | None, run_dir: Path) -> None:
    if pointer is None or pipeline.reference is None:
        return
    if weights_fingerprint(pipeline.reference.model) == pointer["fingerprint"]:
        pipeline._reference_fingerprint = pointer["fingerprint"]
        return
    copy_dir = run_dir / pointer["copy"] if pointer.get("copy") else None
    if copy_dir is not None and (copy_dir / MARKER).is_file():
        _load_weights(pipeline.reference, copy_dir)
        pipeline._reference_fingerprint = pointer["fingerprint"]
        return
    raise CheckpointError(
        f"the reference policy (KL anchor) differs from the run's, which was the initial policy from "
        f"{pointer['model']!r}; build the pipeline from that same initial model to resume"
    )


def resume(pipeline: Pipeline, path: str | Path) -> tuple[Path, Path, list[dict[str, Any]]]:
    """Load the newest complete checkpoint under ``path`` into ``pipeline``; cut the run's logs back to it.

    Returns ``(run_dir, checkpoint, rows)``: the rows of ``metrics.jsonl`` up to the checkpoint's step.
    """
    checkpoint = find_checkpoint(path)
    run_dir = run_dir_of(checkpoint)
    complete, torn = list_checkpoints(run_dir)
    later = [c.name for c in complete if checkpoint_step(c) > checkpoint_step(checkpoint)]
    if later:
        from morl.logging import console

        console.print(f"[yellow]resuming from an older checkpoint[/]: {', '.join(later)} will be replaced")
    for t in torn:
        if t.name.startswith(_TMP_PREFIX):
            shutil.rmtree(t, ignore_errors=True)
    state = load_checkpoint(pipeline, checkpoint)
    rows: list[dict[str, Any]] = []
    for name in STEP_LOGS:
        kept = truncate_jsonl(run_dir / name, int(state["step"]))
        if name == "metrics.jsonl":
            rows = kept
    return run_dir, checkpoint, rows


def truncate_jsonl(path: Path, step: int) -> list[dict[str, Any]]:
    """Keep the rows with ``step <= step`` (and drop a torn last line); rewrite the file atomically."""
    if not path.exists():
        return []
    kept, lines = [], []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), (int, float)) and row["step"] <= step:
            kept.append(row)
            lines.append(line)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in lines))
    os.replace(tmp, path)
    return kept


# ---- stopping cleanly -------------------------------------------------------------------------------------------


class GracefulStop:
    """While active (main thread only): SIGINT/SIGTERM ask the loop to stop after the current step.

    The first signal sets :attr:`signum`; the loop then writes a checkpoint and raises :class:`Interrupted`.
    A second Ctrl-C stops at once (``KeyboardInterrupt``), without a new checkpoint.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> GracefulStop:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: Any) -> None:
        from morl.logging import console

        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        console.print(
            f"[yellow]{signal.Signals(signum).name}[/]: stopping after this step and writing a checkpoint "
            "(Ctrl-C again to stop at once)"
        )


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
    """Drop leftover temporary directories, checkpoints past ``current`` and all but the newest ``keep``.

    Checkpoints with a later step than the one just written belong to an abandoned timeline (the run was resumed
    from an older checkpoint); left in place, a later resume would pick them.
    """
    complete, torn = list_checkpoints(root.parent)
    for t in torn:
        if t.name.startswith(_TMP_PREFIX):
            shutil.rmtree(t, ignore_errors=True)
    for stale in [c for c in complete if checkpoint_step(c) > checkpoint_step(current)]:
        shutil.rmtree(stale, ignore_errors=True)
        complete.remove(stale)
    if keep is None:
        return
    for old in complete[: max(len(complete) - keep, 0)]:
        if old != current:
            shutil.rmtree(old, ignore_errors=True)
