"""``run_dir/manifest.json``: what a run is, written at its start and updated as it is resumed.

Readers (plots, reports, resume) learn the recipe, the objectives, the method and the library versions from
here instead of parsing reprs or metric names. Each start or resume of the run is a *segment* that records
the step it started from, the recipe it ran with and any recipe change it was allowed to make. The manifest also
lists the names the run writes in its folder (``outputs``): those, and nothing else, are morl's to remove when the
folder is reused. The file is replaced atomically, so a kill leaves the previous version or the new one, never half
of one.

Example:
    >>> import tempfile
    >>> run_dir = Path(tempfile.mkdtemp())
    >>> method = {"controller": "fixed", "weights_act_on": "reward", "normalization": "free",
    ...           "scalarizer": "linear", "advantage": "group_norm", "algo": "grpo"}
    >>> m = Manifest.create(run_dir, {"train": {"steps": 10}}, [{"name": "accuracy", "reward": "acc"}], method)
    >>> _ = m.end_segment(run_dir, to_step=4, status="interrupted")
    >>> _ = m.begin_segment(run_dir, "resume", from_step=4, recipe={"train": {"steps": 10}})
    >>> [(s.kind, s.from_step, s.status) for s in Manifest.load(run_dir).segments]
    [('start', 0, 'interrupted'), ('resume', 4, 'running')]
"""

from __future__ import annotations

import contextlib
import os
import platform
import stat
import sys
import tempfile
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from morl.integrity import follow_umask
from morl.run._plain import now_iso, to_plain

MANIFEST_FILE = "manifest.json"
FORMAT = 1
#: Everything morl may write into a run directory; a manifest lists those of its run (``data`` only when the run keeps
#: its rows there), and reusing the folder removes what it lists and nothing else (``.lock`` stays).
RUN_OUTPUTS = (
    MANIFEST_FILE,
    "recipe.yaml",
    "metrics.jsonl",
    "events.jsonl",
    "completions.jsonl",
    "checkpoints",
    "model",
    "controller_state.json",
    "training_state.json",
    "reference-model",
    "tensorboard",
    "data",
)
#: Distributions whose versions a manifest records (those not installed are left out).
VERSIONED = ("morl", "torch", "transformers", "accelerate", "pydantic", "numpy", "math-verify", "vllm", "peft")

SegmentStatus = Literal["running", "finished", "interrupted", "failed"]


class RunDirError(RuntimeError):
    """The folder cannot be used as a run directory."""


class RunExistsError(RunDirError):
    """The folder already holds a run, and a new run would overwrite or mix with it."""


class Objective(BaseModel):
    """One objective of the run: its name, which way is better, and the reward that scores it."""

    name: str
    direction: Literal["maximize", "minimize"] = "maximize"
    moving_target: bool = Field(False, description="the reward's standard moves during training (e.g. a running mean)")
    reward: str = Field(description="import path of the reward, e.g. morl.rewards.accuracy.Accuracy")


class Method(BaseModel):
    """How the objectives are combined; extra keys (a controller's own settings) are kept."""

    model_config = ConfigDict(extra="allow")

    controller: str
    weights_act_on: str = Field(description="reward, advantage or gradient")
    normalization: str = Field(description="simplex, sum_to_m or free")
    scalarizer: str | None = Field(None, description="the scalarizer, when the weights act on rewards; else None")
    advantage: str
    algo: str


class Segment(BaseModel):
    """One start or resume of the run: the steps it ran, how it ended, and the recipe it ran with."""

    index: int = Field(ge=0)
    kind: Literal["start", "resume"]
    from_step: int = Field(ge=0)
    to_step: int | None = None
    started: str
    ended: str | None = None
    status: SegmentStatus = "running"
    recipe: dict[str, Any] = Field(default_factory=dict)
    accepted_differences: list[str] = Field(default_factory=list)


class Manifest(BaseModel):
    """The record of a run directory (see the module docstring); keys added by other tools are kept."""

    model_config = ConfigDict(extra="allow")

    format: int = FORMAT
    created: str
    recipe: dict[str, Any]
    objectives: list[Objective]
    method: Method
    versions: dict[str, str] = Field(default_factory=dict)
    segments: list[Segment] = Field(min_length=1)
    outputs: list[str] | None = Field(
        None, description="the names the run writes in its folder; None in manifests written before morl recorded them"
    )

    @classmethod
    def create(
        cls,
        run_dir: str | Path,
        recipe: Mapping[str, Any] | BaseModel,
        objectives: Sequence[Objective | Mapping[str, Any]],
        method: Method | Mapping[str, Any],
    ) -> Manifest:
        """Write the manifest of a new run (first segment: ``start`` from step 0, running) and return it.

        Refuses a folder that already has a manifest: a new run must not rewrite an old run's record.
        """
        run_dir = Path(run_dir)
        if (run_dir / MANIFEST_FILE).exists():
            raise RunExistsError(f"{run_dir / MANIFEST_FILE} already exists: {run_dir} holds a run")
        plain = to_plain(recipe)
        created = now_iso()
        manifest = cls(
            created=created,
            recipe=plain,
            objectives=[Objective.model_validate(o) for o in objectives],
            method=Method.model_validate(method),
            versions=library_versions(),
            segments=[Segment(index=0, kind="start", from_step=0, started=created, recipe=plain)],
            outputs=_outputs_for(run_dir, plain),
        )
        manifest.save(run_dir)
        return manifest

    @classmethod
    def load(cls, run_dir: str | Path) -> Manifest | None:
        """The manifest of ``run_dir``; None when it has none (runs of older morl versions)."""
        path = Path(run_dir) / MANIFEST_FILE
        try:
            data = read_regular_file(path)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as err:
            raise RunDirError(f"cannot read run manifest {path}: {err}") from err
        try:
            manifest = cls.model_validate_json(data)  # bytes: pydantic refuses what is not UTF-8 JSON
        except ValidationError as err:
            problems = "; ".join(
                f"{'.'.join(map(str, e['loc'])) or 'the file'}: {e['msg']}" for e in err.errors(include_url=False)[:3]
            )
            raise RunDirError(f"unreadable run manifest {path} ({problems})") from err
        if manifest.format > FORMAT:
            raise RunDirError(
                f"run manifest {path} has format {manifest.format}; this morl reads up to {FORMAT}: upgrade morl"
            )
        return manifest

    def run_outputs(self, run_dir: str | Path) -> list[str]:
        """The names in ``run_dir`` that are this run's: those ``outputs`` lists (for a manifest without the list,
        the ones morl writes, inferred from its recipe as ``create`` does), and only names morl ever writes."""
        listed = self.outputs if self.outputs is not None else _outputs_for(Path(run_dir), self.recipe)
        return [name for name in RUN_OUTPUTS if name in listed]

    @property
    def current_segment(self) -> Segment:
        """The latest segment: the one running now, or the last one that ran."""
        return self.segments[-1]

    def begin_segment(
        self,
        run_dir: str | Path,
        kind: Literal["start", "resume"],
        from_step: int,
        recipe: Mapping[str, Any] | BaseModel,
        accepted_differences: Sequence[Any] = (),
    ) -> Segment:
        """Record a new segment (a resume) and save.

        A previous segment still marked ``running`` belongs to a process that died without ending it (the new
        one holds the run's lock), so it is marked ``interrupted``.
        """
        if self.current_segment.status == "running":
            self.current_segment.status = "interrupted"
        segment = Segment(
            index=len(self.segments),
            kind=kind,
            from_step=from_step,
            started=now_iso(),
            recipe=to_plain(recipe),
            accepted_differences=[str(d) for d in accepted_differences],
        )
        self.segments.append(segment)
        self.save(run_dir)
        return segment

    def end_segment(self, run_dir: str | Path, to_step: int, status: SegmentStatus) -> Segment:
        """Close the current segment at ``to_step`` with ``status`` and save.

        Called on every way out of a run, failures included: a save that fails (the disk that stopped the run is
        full) is said on stderr, not raised, so it never hides the error that ended the run. The segment then stays
        ``running`` on disk, which the next resume records as ``interrupted``."""
        if status == "running":
            raise ValueError("end_segment needs a final status: finished, interrupted or failed")
        segment = self.current_segment
        segment.to_step = to_step
        segment.ended = now_iso()
        segment.status = status
        try:
            self.save(run_dir)
        except OSError as err:
            where = err.filename or Path(run_dir) / MANIFEST_FILE
            print(
                f"could not record the end of segment {segment.index} ({status}) in {where}: {err.strerror or err}",
                file=sys.stderr,
            )
        return segment

    def save(self, run_dir: str | Path) -> Path:
        """Replace ``run_dir/manifest.json`` atomically: a temporary file beside it, fsync, ``os.replace``."""
        run_dir = Path(run_dir)
        path = run_dir / MANIFEST_FILE
        fd, tmp = tempfile.mkstemp(dir=run_dir, prefix=f".{MANIFEST_FILE}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(self.model_dump_json(indent=2) + "\n")
                f.flush()
                os.fsync(f.fileno())
            follow_umask(Path(tmp))  # mkstemp's 0600 would hide the manifest from the user's group
            os.replace(tmp, path)
        except OSError as err:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            if err.errno is None or err.filename is not None:
                raise
            raise OSError(err.errno, err.strerror, str(path)) from None  # a failed write names no file by itself
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        _fsync_dir(run_dir)
        return path


def read_regular_file(path: str | Path, limit: int | None = None) -> bytes:
    """The bytes of ``path``, refused before reading when it is not a regular file or is over ``limit`` bytes.

    A named pipe waits for a writer and ``/dev/zero`` never ends: both are refused, never read. Raises
    ``FileNotFoundError`` when ``path`` does not exist and ``ValueError`` naming ``path`` and what it is otherwise.
    """
    path = Path(path)
    try:  # O_NONBLOCK: opening a named pipe does not wait for a writer
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise FileNotFoundError(f"no such file: {path}") from None
    except OSError as err:
        raise ValueError(f"cannot read {path}: {err.strerror or err}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ValueError(f"{path} is {_file_kind(info.st_mode)}, not a regular file")
        if limit is not None and info.st_size > limit:
            raise ValueError(f"{path} is {_megabytes(info.st_size)}, over the {_megabytes(limit)} it may have")
        with os.fdopen(os.dup(fd), "rb") as f:
            data = f.read() if limit is None else f.read(limit + 1)
    finally:
        os.close(fd)
    if limit is not None and len(data) > limit:  # it grew while being read
        raise ValueError(f"{path} is over the {_megabytes(limit)} it may have")
    return data


def library_versions() -> dict[str, str]:
    """Python's version and those of the installed libraries that shape a run's numbers."""
    versions = {"python": platform.python_version()}
    for name in VERSIONED:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def _outputs_for(run_dir: Path, recipe: Any) -> list[str]:
    """What a run with this recipe writes in ``run_dir``: every name of ``RUN_OUTPUTS``, but ``data`` only when the
    recipe's data lives in ``run_dir/data`` (a pipeline built in Python keeps the rows it was handed there; data a
    recipe names is the user's, wherever it lies)."""
    data = recipe.get("data") if isinstance(recipe, dict) else None
    sources = [data.get(split) for split in ("train", "eval")] if isinstance(data, dict) else []
    own = (run_dir / "data").resolve()
    keeps_data = any(isinstance(s, str) and Path(s).resolve().parent == own for s in sources)
    return [name for name in RUN_OUTPUTS if name != "data" or keeps_data]


_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def _file_kind(mode: int) -> str:
    return next((kind for is_kind, kind in _KINDS if is_kind(mode)), "a special file")


def _megabytes(size: int) -> str:
    return f"{size / 2**20:.1f} MB" if size >= 2**20 else f"{size} bytes"


def _fsync_dir(path: Path) -> None:
    """Make the rename itself durable; best effort (not every file system allows opening a folder)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
