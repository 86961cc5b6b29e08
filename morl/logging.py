"""Where metrics go: a JSONL file per run, a live progress bar, and start/end tables."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

console = Console()

SHORT = {"accuracy": "acc", "conciseness": "conc", "clarity": "clar"}


class MetricsWriter:
    """One JSON object per line, flushed each write so a crashed run keeps what it logged."""

    def __init__(self, path: Path, append: bool = False) -> None:
        self.path = path
        self._file = path.open("a" if append else "w")

    def write(self, row: dict[str, Any]) -> None:
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}
        self._file.write(json.dumps(clean) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class TrainingProgress:
    """A rich progress bar whose text shows the live per-objective reward means."""

    def __init__(self, total: int, objectives: list[str], enabled: bool = True, start: int = 0) -> None:
        self.objectives = objectives
        self.enabled = enabled
        self._progress = Progress(
            TextColumn("[bold]train"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.description}"),
            console=console,
            disable=not enabled,
        )
        self._task = self._progress.add_task("", total=total, completed=start)

    def __enter__(self) -> TrainingProgress:
        self._progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.__exit__(*exc)

    def update(self, metrics: dict[str, float]) -> None:
        parts = []
        for name in self.objectives:
            value = metrics.get(f"rewards/{name}/mean", math.nan)
            parts.append(f"{SHORT.get(name, name)} {value:.2f}")
        parts.append(f"len {metrics.get('completions/mean_length', math.nan):.0f}")
        self._progress.update(self._task, advance=1, description=" ".join(parts))


def print_eval_table(first: dict[str, Any], last: dict[str, Any], objectives: list[str]) -> None:
    """The three objectives (held-out, greedy and sampled) and mean length, at the start and at the end."""
    table = Table(title="held-out evaluation")
    table.add_column("metric")
    table.add_column(f"step {first['step']}", justify="right")
    table.add_column(f"step {last['step']}", justify="right")
    table.add_column("change", justify="right")
    keys = [k for k in first if k.startswith("eval/")]
    for key in keys:
        a, b = first.get(key), last.get(key)
        if a is None or b is None:
            continue
        delta = b - a
        style = "green" if delta > 0 else "red" if delta < 0 else ""
        if key.endswith("mean_length"):
            style = "green" if delta < 0 else "red" if delta > 0 else ""
        table.add_row(key.removeprefix("eval/"), f"{a:.3f}", f"{b:.3f}", f"[{style}]{delta:+.3f}[/]" if style else "0")
    console.print(table)
