"""The comparison report, from finished run directories alone: a sweep is re-reported without retraining.

Each run is read through its ``manifest.json`` (objectives, which way each is better, moving targets, the method)
and its ``metrics.jsonl``; every metric is looked up by the name :mod:`morl.metrics` builds. The report is
``comparison.md``, ``comparison.json`` and ``comparison.png``, plus, optionally, every run's curves in ``plots/``.
It says which settings each method ran with (its ``controller``, ``scalarizer`` and ``advantage``, from the run's
manifest: what ran, not what was asked for) and where they came from (the sweep's ``sweep.json``: the recipe's
own, a method recipe, a preset), so a method that ran with settings nobody chose cannot pass unnoticed.

Example:
    >>> rows = [{"step": 0, "eval/greedy/acc": 0.9, "eval/greedy/mean_length": 40.0},
    ...         {"step": 10, "eval/greedy/acc": 0.5, "eval/greedy/mean_length": 44.0}]
    >>> interference(rows, ["acc", "mean_length"], "greedy")
    (0.4, 'acc')
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from morl import metrics as M

SWEEP_FILE = "sweep.json"  # a sweep's index: which run directory holds which method and seed
METHOD_KEYS = ("scalarizer", "advantage", "controller")  # the recipe sections that make a method
MEAN_LENGTH = M.MEAN_LENGTH  # the report's name for the held-out mean response length


@dataclass(frozen=True)
class RunRef:
    """A run directory to report, and the method and seed it stands for."""

    method: str
    seed: int | None
    run_dir: Path
    origin: str | None = None  # where the method's settings came from ("the recipe's own", "preset ..."), if known


@dataclass
class RunSummary:
    """One run's held-out start, final and best values, its drops and interference score, and the method's
    settings (its recipe sections, from the manifest) and their origin."""

    method: str
    seed: int | None
    run_dir: Path
    start: dict[str, float]
    final: dict[str, float]
    best: dict[str, float]
    drops: dict[str, float]
    interference: float
    worst: str | None
    scored: list[str]
    settings: dict[str, Any] = field(default_factory=dict)
    origin: str | None = None


@dataclass
class Comparison:
    """What a report summarised: per-run summaries and the paths of the report files."""

    out: Path
    mode: str
    metrics: list[str]
    runs: list[RunSummary] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)
    directions: dict[str, str] = field(default_factory=dict)

    def methods(self) -> list[str]:
        return list(dict.fromkeys(r.method for r in self.runs))

    def of(self, method: str) -> list[RunSummary]:
        return [r for r in self.runs if r.method == method]

    def lower_is_better(self, metric: str) -> bool:
        return self.directions.get(metric) == "minimize"


def find_runs(source: str | Path | Sequence[str | Path | RunRef]) -> list[RunRef]:
    """The runs to report: a sweep folder (its ``sweep.json``, else every run directory below it), one run
    directory, or a list of run directories (each named by the method its manifest records)."""
    from morl.run import MANIFEST_FILE

    if isinstance(source, (str, Path)):
        folder = Path(source)
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: no such folder")
        if (folder / SWEEP_FILE).exists():
            return read_sweep(folder)
        if (folder / MANIFEST_FILE).exists():
            return [_ref(folder)]
        found = sorted(
            {p.parent for pattern in ("*/" + MANIFEST_FILE, "*/*/" + MANIFEST_FILE) for p in folder.glob(pattern)}
        )
        if not found:
            raise FileNotFoundError(f"{folder}: no {SWEEP_FILE} and no run directory with a {MANIFEST_FILE} below it")
        return [_ref(path) for path in found]
    refs = [item if isinstance(item, RunRef) else _ref(Path(item)) for item in source]
    if not refs:
        raise ValueError("no run directories given")
    return refs


def read_sweep(folder: str | Path) -> list[RunRef]:
    """The runs a sweep planned, in its order of methods and seeds (from ``sweep.json``)."""
    folder = Path(folder)
    path = folder / SWEEP_FILE
    try:
        index = json.loads(path.read_text())
        methods = index.get("methods") or {}  # absent in indexes written before origins were recorded
        origin = {name: (entry or {}).get("origin") for name, entry in methods.items()}
        runs = index["runs"]
        return [RunRef(r["method"], r.get("seed"), folder / r["run_dir"], origin.get(r["method"])) for r in runs]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path}: unreadable sweep index ({err})") from None


def write_report(
    runs: str | Path | Sequence[str | Path | RunRef],
    out: str | Path | None = None,
    mode: str = "greedy",
    ignore: Sequence[str] = (),
    plots: bool = True,
) -> Comparison:
    """Summarise finished runs and write ``comparison.md``, ``.json`` and ``.png`` (and, with ``plots``, every
    run's curves in ``OUT/plots``).

    ``runs`` is a sweep folder, a run directory or a list of run directories (see :func:`find_runs`); ``out``
    defaults to the folder given. Objectives in ``ignore`` and those the manifest marks as moving targets are
    reported but not scored.
    """
    from morl.plot import load_run

    if mode not in M.EVAL_MODES:
        raise ValueError(f"the evaluation mode should be one of {M.EVAL_MODES}. Found `mode = {mode!r}`")
    if out is None:
        if not isinstance(runs, (str, Path)):
            raise ValueError("write_report: give `out` when reporting a list of run directories")
        out = runs
    out = Path(out)
    refs = find_runs(runs)
    summaries: list[RunSummary] = []
    metrics: list[str] = []
    directions: dict[str, str] = {MEAN_LENGTH: "minimize"}
    for ref in refs:
        run = load_run(ref.run_dir, ref.method)
        evals = run.evals
        if not evals:
            raise ValueError(f"{ref.run_dir / 'metrics.jsonl'}: no evaluation rows (was data.eval set?)")
        objectives = run.objectives()
        _check_mode(evals, objectives, mode, ref.run_dir)
        directions.update(run.directions())
        metrics += [m for m in [*objectives, MEAN_LENGTH] if m not in metrics]
        skip = set(ignore) | run.moving_targets()
        scored = [m for m in [*objectives, MEAN_LENGTH] if m not in skip]
        summary = summarize_run(ref, evals, objectives, scored, mode, run.directions())
        summary.settings = method_settings(run.manifest)
        summaries.append(summary)
    metrics = [m for m in metrics if m != MEAN_LENGTH] + [MEAN_LENGTH]
    result = Comparison(out=out, mode=mode, metrics=metrics, runs=summaries, directions=directions)
    out.mkdir(parents=True, exist_ok=True)
    result.files = [_write_markdown(result), _write_json(result), _write_png(result)]
    if plots:
        from morl.plot import plot_runs

        written = plot_runs([r.run_dir for r in summaries], out / "plots", labels=[r.method for r in summaries])
        result.files += [item.path for item in written]
    return result


def summarize_run(
    ref: RunRef,
    evals: list[dict[str, Any]],
    objectives: Sequence[str],
    scored: Sequence[str],
    mode: str,
    directions: Mapping[str, str] | None = None,
) -> RunSummary:
    """Start, final and best held-out values of each objective and the mean length, and the run's score."""
    start, final, best = {}, {}, {}
    names = [*objectives, MEAN_LENGTH]
    for name in names:
        key = _eval_key(mode, name)
        values = [math.nan if row.get(key) is None else float(row[key]) for row in evals]
        start[name], final[name] = values[0], values[-1]
        later = [v for v in values[1:] if math.isfinite(v)] or [values[0]]
        best[name] = min(later) if _minimizes(name, mode, directions) else max(later)
    score, worst = interference(evals, scored, mode, directions)
    drops = _drops(evals, names, mode, directions)
    return RunSummary(
        ref.method, ref.seed, ref.run_dir, start, final, best, drops, score, worst, list(scored), origin=ref.origin
    )


def method_settings(manifest: Any) -> dict[str, Any]:
    """The sections that made a run's method, as its manifest's recipe wrote them (``scalarizer: None`` when the
    weights do not act on rewards, so no scalarizer was used); the manifest's method names fill a gap."""
    recipe = manifest.recipe or {}
    method = manifest.method
    out = {key: recipe.get(key) or getattr(method, key, None) for key in METHOD_KEYS}
    if method.scalarizer is None:
        out["scalarizer"] = None
    return out


def format_spec(spec: Any) -> str:
    """A recipe node in one line: ``ctwa(targets=[0.15, 0.08, 0.08], lr=0.05)``, ``linear``, ``—`` for none.

    Example:
        >>> format_spec({"name": "ctwa", "targets": {"accuracy": 0.45}, "lr": 0.5})
        'ctwa(targets={accuracy: 0.45}, lr=0.5)'
    """
    if spec is None:
        return "—"
    if not isinstance(spec, dict):
        return str(spec)
    params = {k: v for k, v in spec.items() if k != "name"}
    return f"{spec.get('name', '?')}(" + ", ".join(f"{k}={_plain(v)}" for k, v in params.items()) + ")"


def interference(
    evals: list[dict[str, Any]], objectives: Sequence[str], mode: str, directions: Mapping[str, str] | None = None
) -> tuple[float, str | None]:
    """``(score, objective)``: the largest drop below the start of these objectives, ``(0.0, None)`` if none drops.

    ``mean_length`` (the held-out mean response length) counts its rise relative to the start; an objective that
    ``directions`` says minimizes counts its rise, in its own units.
    """
    drops = _drops(evals, objectives, mode, directions)
    worst = max(drops, key=lambda k: drops[k], default=None)
    if worst is None or drops[worst] <= 0:
        return 0.0, None
    return round(drops[worst], 12), worst


def mean_std(values: Sequence[float], digits: int = 3) -> str:
    """``"0.500 ± 0.100"`` over seeds (just the mean for one value, ``n/a`` if none is finite)."""
    mean, std = _stats(values)
    if not math.isfinite(mean):
        return "n/a"
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if len(values) > 1 else f"{mean:.{digits}f}"


# ---- internals -------------------------------------------------------------------------------------------


def _plain(value: Any) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_plain(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_plain(v) for v in value) + "]"
    return str(value)


def _ref(run_dir: Path) -> RunRef:
    """A run named by its manifest: the method it ran and its seed."""
    from morl.plot import load_run

    run = load_run(run_dir)
    seed = (run.manifest.recipe.get("train") or {}).get("seed")
    return RunRef(run.label, seed if isinstance(seed, int) else None, run_dir)


def _eval_key(mode: str, name: str) -> str:
    return M.eval_mean_length(mode) if name == MEAN_LENGTH else M.eval_metric(mode, name)


def _minimizes(name: str, mode: str, directions: Mapping[str, str] | None) -> bool:
    return M.direction(_eval_key(mode, name), directions) == "minimize"


def _drops(
    evals: list[dict[str, Any]], objectives: Sequence[str], mode: str, directions: Mapping[str, str] | None = None
) -> dict[str, float]:
    first, later = evals[0], evals[1:]
    out = {}
    for name in objectives:
        key = _eval_key(mode, name)
        start = first.get(key)
        values = [row[key] for row in later if row.get(key) is not None]
        if start is None or not values:
            continue
        if name == MEAN_LENGTH:  # relative: a 20% longer answer weighs like a 0.2 drop of a 0/1 reward
            out[name] = max(0.0, (max(values) - start) / start) if start > 0 else 0.0
        elif _minimizes(name, mode, directions):
            out[name] = max(0.0, max(values) - start)
        else:
            out[name] = max(0.0, start - min(values))
    return out


def _check_mode(evals: list[dict[str, Any]], objectives: Sequence[str], mode: str, run_dir: Path) -> None:
    keys = {k for row in evals for k in row}
    if any(_eval_key(mode, name) in keys for name in [*objectives, MEAN_LENGTH]):
        return
    modes = sorted({p.mode for k in keys if (p := M.parse_key(k)) is not None and p.family == M.EVAL and p.mode})
    raise ValueError(f"{run_dir / 'metrics.jsonl'}: no {mode} evaluation; evaluated modes: {modes}")


def _stats(values: Sequence[float]) -> tuple[float, float]:
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return math.nan, math.nan
    return statistics.fmean(finite), statistics.stdev(finite) if len(finite) > 1 else 0.0


def _write_markdown(result: Comparison) -> Path:
    seeds = sorted({r.seed for r in result.runs if r.seed is not None})
    digits = {MEAN_LENGTH: 1}
    scored = list(dict.fromkeys(m for r in result.runs for m in r.scored))
    lines = [
        f"# Method comparison ({result.mode} evaluation)",
        "",
        f"{len(result.methods())} methods × {len(seeds)} seed(s) {seeds}; mean ± std over seeds. "
        "Interference: the largest drop of any scored objective below its start (mean_length: relative rise); "
        f"scored: {', '.join(scored)}.",
        "",
        "| method | interference | dropped most | " + " | ".join(f"final {m}" for m in result.metrics) + " |",
        "|---|---:|---|" + "---:|" * len(result.metrics),
    ]
    for method in result.methods():
        runs = result.of(method)
        worst = [r.worst for r in runs if r.worst]
        finals = [mean_std([r.final.get(m, math.nan) for r in runs], digits.get(m, 3)) for m in result.metrics]
        most = max(dict.fromkeys(worst), key=worst.count) if worst else "—"  # a tie: the first seed's
        lines.append(f"| {method} | {mean_std([r.interference for r in runs])} | {most} | " + " | ".join(finals) + " |")
    lines += [
        "",
        "## Per objective",
        "",
        "| method | metric | start | final | best | drop |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for method in result.methods():
        runs = result.of(method)
        for m in result.metrics:
            d = digits.get(m, 3)
            cells = [
                mean_std([getattr(r, part).get(m, math.nan) for r in runs], d) for part in ("start", "final", "best")
            ]
            drop = mean_std([r.drops.get(m, math.nan) for r in runs])
            label = f"{m} (lower is better)" if result.lower_is_better(m) else m
            if m not in runs[0].scored:
                label += " (not scored)"
            lines.append(f"| {method} | {label} | " + " | ".join(cells) + f" | {drop} |")
    lines += [
        "",
        "## Methods: the settings each ran with",
        "",
        "| method | settings from | controller | scalarizer | advantage |",
        "|---|---|---|---|---|",
    ]
    for method in result.methods():
        first = result.of(method)[0]
        cells = [first.origin or "—"]
        cells += [format_spec(first.settings.get(key)) for key in ("controller", "scalarizer", "advantage")]
        if first.settings and first.settings.get("scalarizer") is None:
            cells[2] = "— (weights do not act on rewards)"
        lines.append(f"| {method} | " + " | ".join(_cell(c) for c in cells) + " |")
    lines += ["", "Runs: " + ", ".join(f"`{r.run_dir}`" for r in result.runs), ""]
    path = result.out / "comparison.md"
    path.write_text("\n".join(lines))
    return path


def _cell(text: str) -> str:
    """Markdown table cell text: a ``|`` (in a regular expression of ``params``) would split the cell."""
    return text.replace("|", "\\|")


def _write_json(result: Comparison) -> Path:
    rows = [
        {
            "method": r.method,
            "seed": r.seed,
            "run_dir": str(r.run_dir),
            "start": r.start,
            "final": r.final,
            "best": r.best,
            "drops": r.drops,
            "interference": r.interference,
            "worst": r.worst,
            "scored": r.scored,
            "settings": r.settings,
            "origin": r.origin,
        }
        for r in result.runs
    ]
    path = result.out / "comparison.json"
    clean = json.loads(json.dumps(rows, default=str).replace("NaN", "null"))
    path.write_text(json.dumps({"mode": result.mode, "metrics": result.metrics, "runs": clean}, indent=2))
    return path


def _write_png(result: Comparison) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from morl.plot import COLORS, STYLE

    methods = result.methods()
    panels = [*result.metrics, "interference"]
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(
            1, len(panels), figsize=(3.2 * len(panels) + 0.4, 3.6), squeeze=False, layout="constrained"
        )
        x = np.arange(len(methods))
        for ax, metric in zip(axes[0], panels):
            for i, method in enumerate(methods):
                runs = result.of(method)
                color = COLORS[i % len(COLORS)]
                if metric == "interference":
                    mean, std = _stats([r.interference for r in runs])
                    ax.bar(i, mean, yerr=std if len(runs) > 1 else None, color=color, capsize=3)
                    continue
                s_mean, _ = _stats([r.start.get(metric, math.nan) for r in runs])
                f_mean, f_std = _stats([r.final.get(metric, math.nan) for r in runs])
                b_mean, _ = _stats([r.best.get(metric, math.nan) for r in runs])
                ax.bar(i, f_mean, yerr=f_std if len(runs) > 1 else None, color=color, capsize=3)
                ax.plot([i - 0.4, i + 0.4], [s_mean, s_mean], color="black", lw=1.5, ls="--")
                ax.plot([i], [b_mean], marker="*", ms=10, color="black", ls="none")
            ax.set_xticks(
                x, methods, rotation=30 if len(methods) > 3 else 0, ha="right" if len(methods) > 3 else "center"
            )
            if metric == "interference":
                ax.set_title("interference score (↓ better)")
                ax.set_ylabel("largest drop below start")
                ax.set_ylim(0, max(0.05, ax.get_ylim()[1]))
            elif metric not in result.runs[0].scored:
                ax.set_title(f"{metric} (not scored)")
                ax.set_ylabel(f"{result.mode} eval, final")
            else:
                better = "↓" if result.lower_is_better(metric) else "↑"
                ax.set_title(f"{metric} ({better} better)")
                ax.set_ylabel(f"{result.mode} eval, final")
            ax.grid(axis="y", alpha=0.3)
        fig.suptitle(f"Final held-out {result.mode} evaluation per method (bars; dashed: start, ★: best)")
        path = result.out / "comparison.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
    return path
