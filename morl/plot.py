"""``morl plot``: the paper's figures from run directories, one line per run.

- ``objectives.png`` (Figure 1): per objective, the training reward mean and the held-out greedy and sampled
  evaluations over steps, raw (faint) and moving average (bold); the last column is the mean length.
- ``weights.png`` (Figure 2): the weights λ per objective over steps (log scale when all are positive).
- ``covariances.png`` (Figure 3): the covariance of each reward with the training signal (score, and the clipped
  advantage weight when logged), CTWA's targets dashed, interference alarms as triangles.
- ``grad_cosine.png`` (Figure 4): the upper triangle of the per-objective gradient-cosine matrix over steps, and
  ``grad_alignment.png``: the cosine of each objective's gradient with the update the step made.
- ``clipping.png``: clipped-token fractions and the advantage mass clipping removed.
- ``forecast.png``: per objective, the held-out sampled evaluation above the interference forecast's z (every
  measurement, the alarm threshold dashed, the forecast alarms as triangles): the one signal that sees a held-out
  collapse coming while the in-batch covariances stay positive.

A run directory is read through its ``manifest.json`` (objectives, their directions, the method) and its
``metrics.jsonl``/``events.jsonl``; every metric is looked up by the name :mod:`morl.metrics` builds. A figure whose
metrics no run has is skipped. The legend names a run by its method (the controller, or the scalarizer for fixed
weights); runs of the same method share a colour.

Example:
    >>> moving_average(np.array([1.0, 3.0, np.nan, 5.0]), 3).tolist()
    [2.0, 2.0, 4.0, 5.0]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from morl import metrics as M

if TYPE_CHECKING:
    from morl.run import Manifest, Method

COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f"]
STYLE = {"axes.titlesize": 10.5, "axes.labelsize": 9, "xtick.labelsize": 8, "ytick.labelsize": 8, "legend.fontsize": 10}
INTERFERENCE_ALARM = "interference_alarm"  # the event diagnostics record when an alarm is raised


@dataclass
class Run:
    """One run directory: its manifest and its metrics, split into training and evaluation rows."""

    path: Path
    label: str
    manifest: Manifest
    train: list[dict[str, Any]]
    evals: list[dict[str, Any]]
    events: list[dict[str, Any]] = field(default_factory=list)

    def rows(self, kind: str) -> list[dict[str, Any]]:
        return self.evals if kind == "eval" else self.train

    def has(self, key: str, kind: str = "train") -> bool:
        return any(row.get(key) is not None for row in self.rows(kind))

    def series(self, key: str, kind: str = "train") -> tuple[np.ndarray, np.ndarray]:
        """Steps and values of ``key`` (rows without it are left out; logged NaN comes back as NaN)."""
        rows = [row for row in self.rows(kind) if key in row]
        steps = np.array([row["step"] for row in rows], dtype=float)
        values = np.array([np.nan if row[key] is None else row[key] for row in rows], dtype=float)
        return steps, values

    def objectives(self) -> list[str]:
        """The run's objectives, in the order it trained them (from the manifest)."""
        return [o.name for o in self.manifest.objectives]

    def directions(self) -> dict[str, str]:
        return {o.name: o.direction for o in self.manifest.objectives}

    def moving_targets(self) -> set[str]:
        """Objectives whose reward's standard moves during training: held-out values not comparable over steps."""
        return {o.name for o in self.manifest.objectives if o.moving_target}

    def ctwa_signal(self) -> str | None:
        """``"cov"`` or ``"corr"`` when the run's controller is CTWA, else None."""
        if self.manifest.method.controller != M.CTWA:
            return None
        return "corr" if _controller_setting(self.manifest, "signal") == "correlation" else "cov"

    def forecast_threshold(self) -> float | None:
        """The forecast alarm's threshold as the run's recipe set it (the diagnostics' default otherwise)."""
        diagnostics = self.manifest.recipe.get("diagnostics")
        if isinstance(diagnostics, dict) and "forecast_threshold" in diagnostics:
            return float(diagnostics["forecast_threshold"])
        from morl.diagnostics import DiagnosticsConfig

        return DiagnosticsConfig().forecast_threshold


@dataclass
class PlotFile:
    """A written figure: its name, path, the titles of its panels, and the notes written on it (a run a panel
    lacks, a panel left out)."""

    name: str
    path: Path
    panels: list[str]
    notes: list[str] = field(default_factory=list)


def load_run(path: str | Path, label: str | None = None) -> Run:
    """Read a run directory through its manifest; a clear error (no traceback) when it is not a readable run.

    Raises ``FileNotFoundError`` when the folder, its ``manifest.json`` or its ``metrics.jsonl`` is missing, and
    ``ValueError`` when the manifest is unreadable or the metrics file has no readable row.
    """
    from morl.run import MANIFEST_FILE, Manifest, RunDirError, read_events, read_metrics

    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such run directory")
    try:
        manifest = Manifest.load(path)
    except RunDirError as err:
        raise ValueError(str(err)) from None
    if manifest is None:
        raise FileNotFoundError(
            f"{path}: no {MANIFEST_FILE} (not a run directory, or one written by a morl that did not record "
            "manifests; rerun it to plot or compare it)"
        )
    metrics_file = path / "metrics.jsonl"
    if not metrics_file.is_file():
        raise FileNotFoundError(f"{path}: no metrics.jsonl (the run logged nothing yet)")
    try:
        rows = read_metrics(path)
    except OSError as err:
        raise ValueError(f"{metrics_file}: unreadable ({err.strerror or err})") from None
    if not rows:
        raise ValueError(f"{metrics_file}: no readable rows (empty, or not JSON lines)")
    return Run(
        path=path,
        label=label or method_name(manifest.method),
        manifest=manifest,
        train=[r for r in rows if r.get("kind", "train") == "train"],
        evals=[r for r in rows if r.get("kind") == "eval"],
        events=read_events(path),
    )


def method_name(method: Method) -> str:
    """The method a run ran, as the manifest records it: its controller, or its scalarizer for fixed weights.

    Example:
        >>> from morl.run import Method
        >>> kinds = {"weights_act_on": "reward", "normalization": "free", "advantage": "group_norm", "algo": "grpo"}
        >>> method_name(Method(controller="fixed", scalarizer="tchebycheff", **kinds))
        'tchebycheff'
        >>> method_name(Method(controller="ctwa", scalarizer="linear", **kinds))
        'ctwa'
    """
    if method.controller == "fixed" and method.scalarizer:
        return method.scalarizer
    return method.controller


def moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """Centred mean over ``window`` points (shorter at the ends), ignoring NaN; no lag, unlike a trailing mean."""
    values = np.asarray(values, dtype=float)
    out = np.full_like(values, np.nan)
    before = (window - 1) // 2
    after = window - 1 - before
    for i in range(len(values)):
        chunk = values[max(0, i - before) : i + after + 1]
        chunk = chunk[np.isfinite(chunk)]
        if chunk.size:
            out[i] = chunk.mean()
    return out


def plot_runs(
    run_dirs: Sequence[str | Path],
    out: str | Path | None = None,
    smooth: int = 10,
    labels: Sequence[str] | None = None,
    dpi: int = 110,
) -> list[PlotFile]:
    """Write the figures for these runs to ``out`` (default: the first run's ``plots/``); returns what was written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not run_dirs:
        raise ValueError("no run directories given")
    out = Path(out) if out is not None else Path(run_dirs[0]) / "plots"
    if out.exists() and not out.is_dir():  # before reading the runs: a wrong --out fails fast
        raise ValueError(f"the output folder {out} is a file; give a folder for the figures (it is created if missing)")
    runs = [load_run(d, labels[i] if labels else None) for i, d in enumerate(run_dirs)]
    _disambiguate(runs)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:  # a file on the way, no permission
        raise ValueError(f"cannot create the output folder {out}: {err.strerror or err}") from None
    colors = _colors(runs)
    builders = {
        "objectives": objectives_figure,
        "weights": weights_figure,
        "covariances": covariance_figure,
        "grad_cosine": grad_cosine_figure,
        "grad_alignment": grad_alignment_figure,
        "clipping": clipping_figure,
        "forecast": forecast_figure,
    }
    written = []
    for name, builder in builders.items():
        with plt.rc_context(STYLE):
            fig = builder(runs, colors, smooth)
            if fig is None:
                continue
            path = out / f"{name}.png"
            fig.savefig(path, dpi=dpi)
        panels = [ax.get_title() for ax in fig.axes if ax.get_visible() and ax.get_title()]
        notes = [text.get_text() for text in fig.texts if text.get_gid() == _NOTE]
        notes += [f"{ax.get_title()}: {t.get_text()}" for ax in fig.axes for t in ax.texts if t.get_gid() == _NOTE]
        plt.close(fig)
        written.append(PlotFile(name=name, path=path, panels=panels, notes=notes))
    return written


# ---- figures ------------------------------------------------------------------------------------------


def objectives_figure(runs: list[Run], colors: dict[str, str], smooth: int = 10):
    """Figure 1: rows = training reward, greedy eval, sampled eval; columns = objectives + mean length."""
    objectives = _union(r.objectives() for r in runs)
    if not objectives:
        return None
    directions = {name: d for run in runs for name, d in run.directions().items()}
    columns: list[str | None] = [*objectives, None]  # None: the mean response length

    def train_key(objective: str | None) -> str:
        return M.COMPLETIONS_MEAN_LENGTH if objective is None else M.reward_mean(objective)

    def eval_key(mode: str):
        return lambda o: M.eval_mean_length(mode) if o is None else M.eval_metric(mode, o)

    rows = []
    if any(r.has(M.reward_mean(o)) for r in runs for o in objectives):
        rows.append(("train", "train batch", train_key))
    for mode in M.EVAL_MODES:
        key_of = eval_key(mode)
        if any(r.has(key_of(o), "eval") for r in runs for o in columns):
            rows.append(("eval", f"{mode} eval", key_of))
    if not rows:
        return None
    fig, axes = _grid(len(rows), len(columns))
    for i, (kind, row_title, key_of) in enumerate(rows):
        for j, objective in enumerate(columns):
            ax = axes[i][j]
            key = key_of(objective)
            for run in runs:
                if run.has(key, kind):
                    steps, values = run.series(key, kind)
                    _curve(ax, steps, values, colors[run.label], run.label, smooth if kind == "train" else 3)
            ax.set_title(f"{objective or 'length'} — {row_title}")
            ax.set_xlabel("step")
            lower = M.direction(key, directions) == "minimize"
            unit = "tokens" if objective is None else "mean reward"
            ax.set_ylabel(f"{unit} (lower is better)" if lower else unit)
    fig.suptitle(f"Objectives over training: train batches (moving average of {smooth}) and held-out evaluation")
    _legend(fig, runs, colors)
    return fig


def weights_figure(runs: list[Run], colors: dict[str, str], smooth: int = 10):
    """Figure 2: λ per objective over steps."""
    objectives = [o for o in _union(r.objectives() for r in runs) if any(r.has(M.weight(o)) for r in runs)]
    if not objectives:
        return None
    fig, axes = _grid(1, len(objectives))
    positive = True
    for j, objective in enumerate(objectives):
        ax = axes[0][j]
        for run in runs:
            steps, values = run.series(M.weight(objective))
            if steps.size:
                ax.plot(steps, values, color=colors[run.label], lw=1.6, label=run.label)
                positive &= bool(np.nanmin(values) > 0) if np.isfinite(values).any() else True
        ax.set_title(f"weight λ: {objective}")
        ax.set_xlabel("step")
        ax.set_ylabel("λ")
    values = np.concatenate([r.series(M.weight(o))[1] for r in runs for o in objectives])
    values = values[np.isfinite(values)]
    if positive and values.size and values.max() > 3 * values.min():  # a log axis only when the weights spread
        for ax in axes[0]:
            ax.set_yscale("log")
            ax.set_ylabel("λ (log scale)")
    elif values.size and values.max() - values.min() <= 1e-3 * max(abs(values.max()), 1e-12):
        # constant weights: matplotlib would stretch a rounding difference (0.3334 to 0.334) over the whole axis
        middle = float(values.mean())
        pad = max(0.1 * abs(middle), 1e-3)
        for ax in axes[0]:
            ax.set_ylim(middle - pad, middle + pad)
    fig.suptitle("Objective weights over training")
    _legend(fig, runs, colors)
    return fig


def covariance_figure(runs: list[Run], colors: dict[str, str], smooth: int = 10):
    """Figure 3: Cov(r_m, training signal) per objective, with CTWA's targets and the alarms."""
    objectives = _union(r.objectives() for r in runs)
    rows = []
    for measure, signal in (("cov", "clipped_weight"), ("corr", "clipped_weight"), ("cov", "score")):
        if measure == "corr" and not any(r.ctwa_signal() == "corr" for r in runs):
            continue  # correlations are logged too, but only worth a row when a target is set on them
        if any(_cov_series(r, measure, signal, o)[0].size for r in runs for o in objectives):
            rows.append((measure, signal))
    if not rows:
        return None
    fig, axes = _grid(len(rows), len(objectives))
    for i, (measure, signal) in enumerate(rows):
        for j, objective in enumerate(objectives):
            ax = axes[i][j]
            ax.axhline(0.0, color="0.6", lw=0.8)
            missing = []
            for run in runs:
                color = colors[run.label]
                steps, values = _cov_series(run, measure, signal, objective)
                if steps.size:
                    _curve(ax, steps, values, color, run.label, smooth)
                else:
                    missing.append(run.label)
                target_key = M.method_key(M.CTWA, "target", objective)
                if signal == "clipped_weight" and run.ctwa_signal() == measure and run.has(target_key):
                    t_steps, targets = run.series(target_key)
                    ax.plot(t_steps, targets, color=color, lw=1.2, ls="--")
                if measure == "cov":
                    for step in _alarm_steps(run, objective, signal):
                        ax.plot([step], [0.0], marker="v", ms=9, color=color, ls="none")
            _note_missing(ax, missing)
            what = "correlation" if measure == "corr" else "covariance"
            ax.set_title(f"{what}({objective}, {signal.replace('_', ' ')})")
            ax.set_xlabel("step")
            ax.set_ylabel(f"{what} (dashed: target)" if j == 0 and signal == "clipped_weight" else what)
    fig.suptitle(
        "Covariance law, to first order and on the batch trained on: positive covariance with the signal means that\n"
        "batch improves; a held-out objective can still fall while it stays positive (forecast.png sees that) (▼ alarm)"
    )
    _legend(fig, runs, colors)
    return fig


def forecast_figure(runs: list[Run], colors: dict[str, str], smooth: int = 10):
    """The interference forecast beside what it forecasts: per objective, the held-out sampled evaluation (top) and
    the forecast's z (bottom, every measurement, the alarm threshold dashed, ▼ where the forecast alarm fired)."""
    objectives = [o for o in _union(r.objectives() for r in runs) if any(r.has(M.forecast("z", o)) for r in runs)]
    if not objectives:
        return None
    fig, axes = _grid(2, len(objectives))
    for j, objective in enumerate(objectives):
        top, bottom = axes[0][j], axes[1][j]
        bottom.axhline(0.0, color="0.6", lw=0.8)
        for run in runs:
            color = colors[run.label]
            if run.has(M.eval_metric("sampled", objective), "eval"):
                steps, values = run.series(M.eval_metric("sampled", objective), "eval")
                top.plot(steps, values, color=color, lw=1.6, marker="o", ms=3, label=run.label)
            steps, z = run.series(M.forecast("z", objective))
            if steps.size:
                bottom.plot(steps, z, color=color, lw=1.2, marker=".", ms=5, label=run.label)
            threshold = run.forecast_threshold()
            if threshold is not None:
                bottom.axhline(threshold, color=color, lw=0.8, ls="--")
            for step in _alarm_steps(run, objective, "forecast"):
                bottom.plot([step], [0.0], marker="v", ms=9, color=color, ls="none")
        top.set_title(f"{objective} — sampled eval")
        top.set_ylabel("held-out mean reward")
        bottom.set_title(f"{objective} — forecast z")
        bottom.set_ylabel("z (dashed: alarm threshold)" if j == 0 else "z")
        for ax in (top, bottom):
            ax.set_xlabel("step")
    fig.suptitle(
        "Interference forecast: each objective's first-order change along the recent updates, on completions they\n"
        "never trained on (z < 0: forecast to fall; ▼ forecast alarm), beside its held-out evaluation"
    )
    _legend(fig, runs, colors)
    return fig


def grad_cosine_figure(runs: list[Run], colors: dict[str, str], smooth: int = 10):
    """Figure 4: the per-objective gradient-cosine matrix over time, one panel per pair (upper triangle)."""
    objectives = _union(r.objectives() for r in runs)
    pairs = [
        (a, b)
        for i, a in enumerate(objectives)
        for b in objectives[i + 1 :]
        if any(r.has(M.grad_cos(a, b)) for r in runs)
    ]
    if not pairs:
        return None
    size = len(objectives) - 1
    fig, axes = _grid(size, size)
    for ax in (ax for row in axes for ax in row):
        ax.set_visible(False)
    for a, b in pairs:
        ax = axes[objectives.index(a)][objectives.index(b) - 1]
        ax.set_visible(True)
        ax.axhline(0.0, color="0.6", lw=0.8)
        for run in runs:
            steps, values = run.series(M.grad_cos(a, b))
            keep = np.isfinite(values)  # NaN: an objective without variation in the batch has no gradient
            if keep.any():
                _curve(ax, steps[keep], values[keep], colors[run.label], run.label, max(1, smooth // 2))
        ax.set_ylim(-1.05, 1.05)
        ax.set_title(f"cos(∇{a}, ∇{b})")
        ax.set_xlabel("step")
        ax.set_ylabel("cosine")
    fig.suptitle("Per-objective policy-gradient cosine similarity (negative: conflicting gradients)")
    _legend(fig, runs, colors)
    return fig


def grad_alignment_figure(runs: list[Run], colors: dict[str, str], smooth: int = 10):
    """cos(∇J_m, Δθ): whether the update each step made points up or down objective m (first order)."""
    objectives = [o for o in _union(r.objectives() for r in runs) if any(r.has(M.grad_align(o)) for r in runs)]
    if not objectives:
        return None
    fig, axes = _grid(1, len(objectives))
    for ax, objective in zip(axes[0], objectives):
        ax.axhline(0.0, color="0.6", lw=0.8)
        for run in runs:
            steps, values = run.series(M.grad_align(objective))
            keep = np.isfinite(values)
            if keep.any():
                _curve(ax, steps[keep], values[keep], colors[run.label], run.label, max(1, smooth // 2))
            for step in _alarm_steps(run, objective, "gradient"):
                ax.plot([step], [0.0], marker="v", ms=9, color=colors[run.label], ls="none")
        ax.set_title(f"cos(∇{objective}, update)")
        ax.set_xlabel("step")
        ax.set_ylabel("cosine (< 0: the update lowers it)")
    fig.suptitle("Alignment of each objective's policy gradient with the parameter update Δθ (▼ alarm)")
    _legend(fig, runs, colors)
    return fig


def clipping_figure(runs: list[Run], colors: dict[str, str], smooth: int = 10):
    """Clipped tokens during the update, under the updated policy, and the advantage mass clipping removed.

    A panel that is 0 on every step of every run is left out and said in a note: with one update per batch the
    importance ratio is exactly 1 during it, so nothing is clipped there, and a flat line at 0 only takes room.
    """
    panels = [
        (M.CLIP_RATIO_REGION, "clipped tokens (in update)", "fraction of tokens"),
        (M.CLIP_TOKEN_FRACTION, "clipped tokens (updated policy)", "fraction of tokens"),
        (M.CLIP_REMOVED_MASS, "advantage mass clipped away", "Σ|Aρ|·1[clipped] / Σ|Aρ|"),
    ]
    panels = [p for p in panels if any(r.has(p[0]) for r in runs)]
    zero = [p for p in panels if all(_all_zero(r, p[0]) for r in runs)]
    panels = [p for p in panels if p not in zero]
    if not panels:
        return None
    fig, axes = _grid(1, len(panels))
    for ax, (key, title, ylabel) in zip(axes[0], panels):
        missing = []
        for run in runs:
            if run.has(key):
                steps, values = run.series(key)
                _curve(ax, steps, values, colors[run.label], run.label, smooth)
            else:
                missing.append(run.label)
        _note_missing(ax, missing)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
    fig.suptitle("Clipping")
    for _, title, _ in zero:
        fig.text(
            0.01, 0.01, f"{title}: 0 on every step of every run (left out; one update per batch keeps the ratio at 1)",
            fontsize=8, color="0.35", gid=_NOTE,
        )  # fmt: skip
    _legend(fig, runs, colors)
    return fig


# ---- helpers ------------------------------------------------------------------------------------------


def _grid(rows: int, cols: int):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        rows, cols, figsize=(3.7 * cols + 0.4, 2.8 * rows + 0.9), squeeze=False, layout="constrained"
    )
    for ax in axes.flat:
        ax.grid(alpha=0.3)
    return fig, axes


def _curve(ax, steps: np.ndarray, values: np.ndarray, color: str, label: str, window: int) -> None:
    """Raw values faint, moving average bold; short series (evaluations) as a line with markers."""
    finite = np.isfinite(values)
    if not finite.any():
        return
    if finite.sum() < max(15, 2 * window):
        ax.plot(steps[finite], values[finite], color=color, lw=1.8, marker="o", ms=3.5, label=label)
        return
    ax.plot(steps, values, color=color, lw=0.8, alpha=0.3)
    ax.plot(steps, moving_average(values, window), color=color, lw=1.8, label=label)


#: marks the texts that are notes to the reader, listed in :class:`PlotFile`'s ``notes``
_NOTE = "morl-note"


def _note_missing(ax, labels: list[str]) -> None:
    """Say in the panel which runs it lacks: a legend lists every run drawn somewhere in the figure, so a run absent
    from one panel must not look as if it were hidden behind another's line."""
    if labels:
        ax.text(
            0.02, 0.97, f"not logged by {', '.join(labels)}", transform=ax.transAxes, ha="left", va="top",
            fontsize=8, color="0.35", gid=_NOTE, bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.8},
        )  # fmt: skip


def _all_zero(run: Run, key: str) -> bool:
    if not run.has(key):
        return True
    values = run.series(key)[1]
    finite = values[np.isfinite(values)]
    return bool(finite.size == 0 or not finite.any())


def _legend(fig, runs: list[Run], colors: dict[str, str]) -> None:
    from matplotlib.lines import Line2D

    drawn = {line.get_label() for ax in fig.axes for line in ax.get_lines()}
    labels = [label for label in dict.fromkeys(r.label for r in runs) if label in drawn]  # runs with data here
    handles = [Line2D([], [], color=colors[label], lw=2) for label in labels]
    fig.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 6), frameon=False)


def _colors(runs: list[Run]) -> dict[str, str]:
    labels = list(dict.fromkeys(r.label for r in runs))
    return {label: COLORS[i % len(COLORS)] for i, label in enumerate(labels)}


def _disambiguate(runs: list[Run]) -> None:
    """Two runs of the same method get their directory names, unless their parents already tell them apart."""
    counts: dict[str, int] = {}
    for run in runs:
        counts[run.label] = counts.get(run.label, 0) + 1
    dirs = {run.path.resolve().parent for run in runs}
    for run in runs:
        # OUT/<method>/seed<k> (morl compare): seeds of one method share a colour and a legend entry
        same_method_dir = len(dirs) < len(runs) and run.path.resolve().parent.name == run.label
        if counts[run.label] > 1 and not same_method_dir:
            run.label = f"{run.label} ({run.path.name})"


def _cov_series(run: Run, measure: str, signal: str, objective: str) -> tuple[np.ndarray, np.ndarray]:
    key = (M.correlation if measure == "corr" else M.covariance)(signal, objective)
    if run.has(key):
        return run.series(key)
    # runs without the diagnostics still have the controller's own signal
    own = M.method_key(M.CTWA, "cov", objective)
    if signal == "clipped_weight" and run.ctwa_signal() == measure and run.has(own):
        return run.series(own)
    return np.array([]), np.array([])


def _alarm_steps(run: Run, objective: str, signal: str) -> list[int]:
    """Steps at which an interference alarm on ``objective``, measured with ``signal``, was raised."""
    return [
        event["step"]
        for event in run.events
        if event.get("event") == INTERFERENCE_ALARM
        and event.get("objective") == objective
        and event.get("signal") == signal
        and "step" in event
    ]


def _controller_setting(manifest: Manifest, name: str) -> Any:
    """A setting of the run's controller: from the manifest's method, else from the recipe's controller section."""
    extra = manifest.method.model_extra or {}
    if name in extra:
        return extra[name]
    section = manifest.recipe.get("controller")
    return section.get(name) if isinstance(section, dict) else None


def _union(lists) -> list[str]:
    out: list[str] = []
    for items in lists:
        out += [x for x in items if x not in out]
    return out
