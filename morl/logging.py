"""Where metrics go: a JSONL file per run (plus TensorBoard, W&B or trackio if asked), a live progress bar,
and start/end tables."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from morl import metrics as M
from morl.run import JsonlWriter, read_jsonl
from morl.run import read_metrics as read_run_metrics

console = Console()

SHORT = {"accuracy": "acc", "conciseness": "conc", "clarity": "clar"}


class TensorBoardLogger:
    """The same metric names as TensorBoard scalars in ``RUN_DIR/tensorboard`` (needs ``pip install tensorboard``)."""

    def __init__(self, run_dir: Path, config: dict[str, Any] | None = None) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as err:
            raise ImportError(f"the tensorboard logger needs `pip install tensorboard` ({err})") from None
        self._writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))

    def write(self, row: dict[str, Any]) -> None:
        step = int(row.get("step", 0))
        for key, value in _scalars(row).items():
            self._writer.add_scalar(key, value, step)

    def write_completions(self, step: int, rows: list[dict[str, Any]]) -> None:
        """A markdown table under the TEXT tab, one per logged step (TensorBoard's way of showing text)."""
        columns, data = completion_table(rows)
        lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        lines += ["| " + " | ".join(_cell(v) for v in values) + " |" for values in data]
        self._writer.add_text(COMPLETIONS_TAG, "\n".join(lines), step)

    def close(self) -> None:
        self._writer.close()


class WandbLogger:
    """Weights & Biases, same names; project from ``WANDB_PROJECT`` (default ``morl``), run named after its dir."""

    def __init__(self, run_dir: Path, config: dict[str, Any] | None = None) -> None:
        try:
            import wandb
        except ImportError:
            raise ImportError("the wandb logger needs `pip install wandb`") from None
        self._wandb = wandb
        self._run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", "morl"), name=run_dir.name, dir=str(run_dir), config=config
        )

    def write(self, row: dict[str, Any]) -> None:
        self._run.log(_scalars(row), step=int(row.get("step", 0)))

    def write_completions(self, step: int, rows: list[dict[str, Any]]) -> None:
        columns, data = completion_table(rows)
        self._run.log({COMPLETIONS_TAG: self._wandb.Table(columns=columns, data=data)}, step=step)

    def close(self) -> None:
        self._run.finish()


class TrackioLogger:
    """Trackio (the local-first, wandb-compatible tracker); project from ``TRACKIO_PROJECT`` (default ``morl``)."""

    def __init__(self, run_dir: Path, config: dict[str, Any] | None = None) -> None:
        try:
            import trackio
        except ImportError:
            raise ImportError("the trackio logger needs `pip install trackio`") from None
        self._trackio = trackio
        trackio.init(project=os.environ.get("TRACKIO_PROJECT", "morl"), name=run_dir.name, config=config)

    def write(self, row: dict[str, Any]) -> None:
        self._trackio.log(_scalars(row), step=int(row.get("step", 0)))

    def close(self) -> None:
        self._trackio.finish()


LOGGERS = {"tensorboard": TensorBoardLogger, "wandb": WandbLogger, "trackio": TrackioLogger}
COMPLETIONS_TAG = "completions"


@runtime_checkable
class CompletionsTable(Protocol):
    """A logger that shows a step's sampled completions as a table (``train.log_completions``)."""

    def write_completions(self, step: int, rows: list[dict[str, Any]]) -> None: ...


def completion_table(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    """Completion rows (prompt, completion, rewards by objective, score, advantage) as columns and rows; TRL's
    column names, each objective's raw reward under its own name."""
    objectives = list(rows[0]["rewards"]) if rows else []
    columns = ["prompt", "completion", *objectives, "score", "advantage"]
    data = [
        [r["prompt"], r["completion"], *(r["rewards"][name] for name in objectives), r["score"], r["advantage"]]
        for r in rows
    ]
    return columns, data


class Loggers:
    """The JSONL file (always) and any optional loggers, written together with the same rows."""

    def __init__(self, writers: list[Any]) -> None:
        self.writers = writers

    def write(self, row: dict[str, Any]) -> None:
        for writer in self.writers:
            writer.write(row)

    def write_completions(self, step: int, rows: list[dict[str, Any]]) -> None:
        """Show a step's completions in every logger that has tables (the JSONL record is the trainer's)."""
        for writer in self.writers:
            if isinstance(writer, CompletionsTable):
                writer.write_completions(step, rows)

    def close(self) -> None:
        for writer in self.writers:
            writer.close()


def open_loggers(run_dir: Path, names: Sequence[str] = (), config: dict[str, Any] | None = None) -> Loggers:
    """``metrics.jsonl`` plus each named logger (``tensorboard``, ``wandb``, ``trackio``); ``jsonl`` is implied.

    A named logger whose package is missing fails here, before training, with the ``pip install`` to run.
    """
    writers: list[Any] = [JsonlWriter(Path(run_dir) / "metrics.jsonl")]  # append-only: a run never rewrites it
    try:
        for name in dict.fromkeys(names):
            if name == "jsonl":
                continue
            if name not in LOGGERS:
                raise ValueError(f"unknown logger {name!r}; allowed: jsonl, {', '.join(LOGGERS)}")
            writers.append(LOGGERS[name](Path(run_dir), config))
    except Exception:
        for writer in writers:
            writer.close()
        raise
    return Loggers(writers)


def _scalars(row: dict[str, Any]) -> dict[str, float]:
    """Numeric, finite values of a metrics row, without its bookkeeping keys, tagged as TRL's trackers tag them:
    a training row's ``rewards/acc/mean`` is ``train/rewards/acc/mean`` (evaluation keys start with ``eval/``).
    ``metrics.jsonl`` keeps the plain names."""
    prefix = "" if row.get("kind") == "eval" else "train/"
    return {
        f"{prefix}{k}": float(v)
        for k, v in row.items()
        if k not in ("kind", "step") and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    }


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a run's ``metrics.jsonl`` (a run directory or the file itself).

    A torn last line (a killed writer) is skipped, and so are rows a resumed run redid (see ``morl.run``).
    """
    path = Path(path)
    file = path / "metrics.jsonl" if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"no such metrics file: {file}")
    return read_run_metrics(path) if path.is_dir() else read_jsonl(file)


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
            value = _number(metrics.get(M.reward_mean(name)))
            parts.append(f"{SHORT.get(name, name)} {value:.2f}")
        parts.append(f"len {_number(metrics.get(M.COMPLETIONS_MEAN_LENGTH)):.0f}")
        self._progress.update(self._task, advance=1, description=" ".join(parts))


def print_eval_table(
    first: dict[str, Any], last: dict[str, Any], objectives: list[str], moving_targets: frozenset[str] = frozenset()
) -> None:
    """Held-out objectives (greedy and sampled) and mean length, at the start and at the end.

    Objectives whose reward is a moving target (conciseness: relative to the training history, to the batch itself
    before any length is known) are left out: their start and end are not comparable, and mean length says it instead.
    """
    table = Table(title="held-out evaluation")
    table.add_column("metric")
    table.add_column(f"step {first['step']}", justify="right")
    table.add_column(f"step {last['step']}", justify="right")
    table.add_column("change", justify="right")
    rows = []
    for mode in M.EVAL_MODES:
        rows += [(f"{mode}/{name}", M.eval_metric(mode, name)) for name in objectives if name not in moving_targets]
        rows.append((f"{mode}/{M.MEAN_LENGTH}", M.eval_mean_length(mode)))
    for label, key in rows:
        a, b = first.get(key), last.get(key)
        if a is None or b is None:
            continue
        delta = b - a
        sign = -delta if M.direction(key) == "minimize" else delta
        style = "green" if sign > 0 else "red" if sign < 0 else ""
        table.add_row(label, f"{a:.3f}", f"{b:.3f}", f"[{style}]{delta:+.3f}[/]" if style else "0")
    console.print(table)


def _cell(value: Any) -> str:
    """A markdown table cell: numbers to 4 significant digits, NaN as n/a, and no line break or bar that would
    end the cell."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("\\", "\\\\").replace("|", "\\|").replace("\n", "<br>")


def _number(value: Any) -> float:
    """A logged value for display: NaN when it is missing or null (JSON has no NaN)."""
    return math.nan if value is None else float(value)
