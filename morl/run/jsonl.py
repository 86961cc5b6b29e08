"""Append-only JSON-lines logs that survive kills and resumes.

A run's ``metrics.jsonl`` and ``events.jsonl`` are only ever appended to: a rerun or a resume never truncates
what an earlier process wrote. A writer killed mid-line leaves a torn last line; the next writer starts on a
fresh line so the fragment stays a line of its own, and readers skip it. A resumed run redoes the steps after
its checkpoint; its rows carry the new segment's index, and ``effective_rows`` drops the rows they supersede.

Example:
    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "metrics.jsonl"
    >>> with JsonlWriter(path) as log:
    ...     log.write({"step": 1, "loss": float("nan")})
    >>> read_jsonl(path)
    [{'step': 1, 'loss': None}]
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from morl.run._plain import to_plain
from morl.run.manifest import Manifest, Segment

METRICS_FILE = "metrics.jsonl"
EVENTS_FILE = "events.jsonl"


class JsonlWriter:
    """One JSON object per line, appended and written through at each write so a killed run keeps what it logged.

    A write that fails (a full disk) raises an ``OSError`` naming the file and keeps nothing buffered, so closing
    the writer cannot fail again; part of the line may be on disk, and the next row starts on a fresh line."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("ab", buffering=0)
        self._torn = _ends_torn(self.path)

    def write(self, row: dict[str, Any]) -> None:
        """Append ``row`` as one line; non-finite floats become null (JSON has no NaN)."""
        line = json.dumps(to_plain(row), allow_nan=False) + "\n"
        data = memoryview((("\n" if self._torn else "") + line).encode("utf-8"))
        try:
            while data:
                data = data[self._file.write(data) :]  # a full disk can take part of it
        except OSError as err:
            self._torn = True
            raise OSError(err.errno, err.strerror, str(self.path)) from None
        self._torn = False

    def close(self) -> None:
        self._file.close()

    @property
    def closed(self) -> bool:
        return self._file.closed

    def __enter__(self) -> JsonlWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"JsonlWriter({str(self.path)!r})"


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Every well-formed JSON object line of ``path``; blank, torn or malformed lines are skipped; no file: ``[]``."""
    try:
        text = Path(path).read_bytes().decode("utf-8", errors="replace")  # a torn line may end mid-character
    except FileNotFoundError:
        return []
    rows = []
    for line in text.split("\n"):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def effective_rows(rows: list[dict[str, Any]], segments: Sequence[Segment]) -> list[dict[str, Any]]:
    """The rows that still stand: a row of segment ``s`` is dropped when a later segment resumed before its step.

    A row's segment is its ``"segment"`` key (0 when absent). A later segment ``s' > s`` that starts from
    ``from_step < row["step"]`` redid that step, so its own row replaces the old one. Order is kept.

    >>> segs = [Segment(index=0, kind="start", from_step=0, started=""),
    ...         Segment(index=1, kind="resume", from_step=2, started="")]
    >>> rows = [{"step": 1}, {"step": 2}, {"step": 3}, {"step": 3, "segment": 1}]
    >>> effective_rows(rows, segs)
    [{'step': 1}, {'step': 2}, {'step': 3, 'segment': 1}]
    """
    starts = sorted((seg.index, seg.from_step) for seg in segments)

    def cut(segment: int) -> float:
        """Steps above this were redone by a later segment."""
        return min((from_step for index, from_step in starts if index > segment), default=math.inf)

    cuts: dict[int, float] = {}
    kept = []
    for row in rows:
        step = row.get("step")
        segment = row.get("segment", 0)
        if _is_number(step) and _is_number(segment):
            if segment not in cuts:
                cuts[segment] = cut(segment)
            if step > cuts[segment]:
                continue
        kept.append(row)
    return kept


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The effective rows of ``run_dir/metrics.jsonl`` (superseded rows of resumed segments left out)."""
    return _read_log(Path(run_dir), METRICS_FILE)


def read_events(run_dir: str | Path) -> list[dict[str, Any]]:
    """The effective rows of ``run_dir/events.jsonl`` (superseded rows of resumed segments left out)."""
    return _read_log(Path(run_dir), EVENTS_FILE)


def _read_log(run_dir: Path, name: str) -> list[dict[str, Any]]:
    manifest = Manifest.load(run_dir)
    segments = manifest.segments if manifest is not None else []  # runs of older morl: one segment
    return effective_rows(read_jsonl(run_dir / name), segments)


def _ends_torn(path: Path) -> bool:
    with path.open("rb") as f:
        f.seek(0, 2)
        if f.tell() == 0:
            return False
        f.seek(-1, 2)
        return f.read(1) != b"\n"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
