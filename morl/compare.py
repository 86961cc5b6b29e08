"""``morl compare``: one recipe under several methods and seeds, then a table of who paid for what.

Every run uses the base recipe's policy, data, rewards, algorithm, rollout and training settings; only the
method changes, and each seed is shared by all methods (same data order, same initial model, same first
samples). A method name resolves to components, first match wins:

- ``linear``: fixed weights (the base recipe's, if its controller is ``fixed``) with linear scalarisation;
- a recipe file ``<method>.yaml`` beside the base recipe or in ``cookbook/recipes/``: its ``scalarizer``,
  ``advantage`` and ``controller`` (where the weights apply is part of the method); a path to a ``.yaml``
  file works too, named by its stem;
- a registered controller (``ctwa``, ``mgda``, ...) with linear scalarisation;
- a registered scalarizer (``tchebycheff``, ...) with fixed equal weights.

Runs go to ``OUT/<method>/seed<k>``; a run whose directory has ``controller_state.json`` (written when a fit
ends) is skipped, and one with checkpoints but no end marker resumes from its newest checkpoint.
The summary, from the held-out evaluations (greedy by default), is ``comparison.md``, ``comparison.json`` and
``comparison.png``, plus the training curves of every run in ``OUT/plots``.

**Interference score** of a run: the largest drop of any objective below its starting value, over the run's
evaluations after the start (0 if none drops). Drops are in reward units (for 0/1 rewards, a share of the
scale); for ``mean_length``, where lower is better, the rise counts, relative to the starting length — a 20%
longer answer weighs like a 0.2 drop of a 0/1 reward. Scores are averaged over seeds (mean ± std).
A reward whose held-out value is relative to the training history (``moving_target = True``, e.g. the
paper's conciseness, which is 1 before any training length is known) is reported but not scored — as in the
paper, conciseness counts through the mean length; ``ignore`` leaves out more objectives.

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
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from morl.components import RecipeError, registered
from morl.recipe import Recipe, load_recipe, parse_recipe

METHOD_KEYS = ("scalarizer", "advantage", "controller")
FINISHED = "controller_state.json"


@dataclass
class RunSummary:
    method: str
    seed: int
    run_dir: Path
    start: dict[str, float]
    final: dict[str, float]
    best: dict[str, float]
    drops: dict[str, float]
    interference: float
    worst: str | None
    scored: list[str]


@dataclass
class Comparison:
    """What ``compare`` wrote: per-run summaries and the paths of the report files."""

    out: Path
    mode: str
    metrics: list[str]
    runs: list[RunSummary] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)

    def methods(self) -> list[str]:
        return list(dict.fromkeys(r.method for r in self.runs))

    def of(self, method: str) -> list[RunSummary]:
        return [r for r in self.runs if r.method == method]


def method_components(method: str, base: Recipe, recipe_path: Path | None = None) -> dict[str, Any]:
    """The recipe sections that define ``method`` (see the module docstring for the lookup order)."""
    if method == "linear":
        controller = base.controller if _name(base.controller) == "fixed" else "fixed"
        return {"controller": controller, "scalarizer": "linear"}
    file = _method_file(method, recipe_path)
    if file is not None:
        raw = load_recipe(file).model_dump(mode="json")
        return {key: raw[key] for key in METHOD_KEYS}
    if method in registered("controller"):
        return {"controller": method, "scalarizer": "linear"}
    if method in registered("scalarizer"):
        return {"controller": "fixed", "scalarizer": method}
    known = sorted({"linear", *registered("controller"), *registered("scalarizer")})
    raise RecipeError(f"unknown method {method!r}: no {method}.yaml recipe and no such component; known: {known}")


def compare(
    recipe_path: str | Path,
    methods: Sequence[str],
    seeds: Sequence[int] = (0,),
    out: str | Path = "runs/compare",
    overrides: Sequence[str] = (),
    mode: str = "greedy",
    progress: bool = True,
    ignore: Sequence[str] = (),
    plots: bool = True,
) -> Comparison:
    """Run every method × seed (skipping finished runs), then write the comparison report."""
    from morl.checkpoint import _quiet_transformers
    from morl.recipe import build_components, load_data, pipeline_from_recipe

    if not methods:
        raise ValueError("no methods given")
    recipe_path = Path(recipe_path)
    base = load_recipe(recipe_path, list(overrides))
    if not base.data.eval:
        raise RecipeError("compare needs held-out evaluations: set data.eval in the recipe")
    if mode not in ("greedy", "sampled"):
        raise RecipeError(f"--eval must be greedy or sampled, got {mode!r}")
    if not getattr(base.train, f"eval_{mode}"):
        raise RecipeError(f"compare --eval {mode}: the recipe turns train.eval_{mode} off")
    names = [_method_label(m) for m in methods]
    plans = {}  # validate every method before training any
    for method, name in zip(methods, names):
        raw = base.model_dump(mode="json")
        raw.update(method_components(method, base, recipe_path))
        plans[name] = raw
        build_components(parse_recipe(raw, source=f"method {name}"))
    out = Path(out)
    train, evals = load_data(base)
    jobs = [(name, seed) for name in names for seed in seeds]
    # no per-shard load/save bars of transformers under the live sweep bar (in Jupyter they recurse through rich)
    with _quiet_transformers(), _SweepProgress(len(jobs), base.train.steps, enabled=progress) as bar:
        for name, seed in jobs:
            run_dir = out / name / f"seed{seed}"
            if (run_dir / FINISHED).exists():
                bar.skip(f"{name} seed {seed}")
                continue
            raw = json.loads(json.dumps(plans[name]))
            raw["name"] = f"{base.name or recipe_path.stem}/{name}"
            raw["train"].update(seed=seed, output_dir=str(run_dir), progress=False)
            pipeline = pipeline_from_recipe(parse_recipe(raw, source=f"method {name}"), callbacks=[bar.callback()])
            bar.start(f"{name} seed {seed}")
            pipeline.fit(train, evals, resume_from=run_dir if _has_checkpoint(run_dir) else None)
            bar.done()
    return summarize(out, names, seeds, mode, ignore, plots)


def summarize(
    out: str | Path,
    methods: Sequence[str],
    seeds: Sequence[int],
    mode: str = "greedy",
    ignore: Sequence[str] = (),
    plots: bool = True,
) -> Comparison:
    """Read ``OUT/<method>/seed<k>/metrics.jsonl`` and write ``comparison.md``, ``.json`` and ``.png`` (and, with
    ``plots``, every run's curves in ``OUT/plots``)."""
    from morl.logging import read_metrics

    out = Path(out)
    runs: list[RunSummary] = []
    metrics: list[str] = []
    for method in methods:
        for seed in seeds:
            run_dir = out / method / f"seed{seed}"
            evals = [row for row in read_metrics(run_dir) if row.get("kind") == "eval"]
            if not evals:
                raise ValueError(f"{run_dir}: no evaluation rows in metrics.jsonl")
            objectives = _objectives(evals, mode)
            metrics = metrics or [*objectives, "mean_length"]
            skip = set(ignore) | _moving_targets(run_dir)
            scored = [m for m in [*objectives, "mean_length"] if m not in skip]
            runs.append(_summarize_run(method, seed, run_dir, evals, objectives, scored, mode))
    result = Comparison(out=out, mode=mode, metrics=metrics, runs=runs)
    result.files = [_write_markdown(result), _write_json(result), _write_png(result)]
    if plots:
        from morl.plot import plot_runs

        written = plot_runs([r.run_dir for r in runs], out / "plots", labels=[r.method for r in runs])
        result.files += [item.path for item in written]
    return result


def interference(evals: list[dict[str, Any]], objectives: Sequence[str], mode: str) -> tuple[float, str | None]:
    """``(score, objective)``: the largest drop below the start of these objectives (``mean_length`` counts a
    relative rise; see the module docstring), and ``(0.0, None)`` if none drops."""
    drops = _drops(evals, objectives, mode)
    worst = max(drops, key=lambda k: drops[k], default=None)
    if worst is None or drops[worst] <= 0:
        return 0.0, None
    return round(drops[worst], 12), worst


# ---- internals -------------------------------------------------------------------------------------------


def _drops(evals: list[dict[str, Any]], objectives: Sequence[str], mode: str) -> dict[str, float]:
    first, later = evals[0], evals[1:]
    out = {}
    for name in objectives:
        key = f"eval/{mode}/{name}"
        start = first.get(key)
        values = [row[key] for row in later if row.get(key) is not None]
        if start is None or not values:
            continue
        if name == "mean_length":
            out[name] = max(0.0, (max(values) - start) / start) if start > 0 else 0.0
        else:
            out[name] = max(0.0, start - min(values))
    return out


def _summarize_run(
    method: str,
    seed: int,
    run_dir: Path,
    evals: list[dict[str, Any]],
    objectives: list[str],
    scored: list[str],
    mode: str,
) -> RunSummary:
    start, final, best = {}, {}, {}
    for name in [*objectives, "mean_length"]:
        key = f"eval/{mode}/{name}"
        values = [row.get(key) for row in evals]
        values = [math.nan if v is None else float(v) for v in values]
        start[name], final[name] = values[0], values[-1]
        later = [v for v in values[1:] if math.isfinite(v)] or [values[0]]
        best[name] = min(later) if name == "mean_length" else max(later)
    score, worst = interference(evals, scored, mode)
    drops = _drops(evals, [*objectives, "mean_length"], mode)
    return RunSummary(method, seed, run_dir, start, final, best, drops, score, worst, scored)


def _moving_targets(run_dir: Path) -> set[str]:
    """Objectives of the run's rewards that declare ``moving_target`` (held-out values not comparable over steps)."""
    import yaml

    from morl.components import build
    from morl.rewards import objective_name

    recipe_file = run_dir / "recipe.yaml"
    recipe = (yaml.safe_load(recipe_file.read_text()) or {}) if recipe_file.exists() else {}
    out = set()
    for spec in recipe.get("rewards") or []:
        try:
            reward = build("reward", spec)
        except (RecipeError, ValueError):
            continue
        if getattr(reward, "moving_target", False):
            out.add(objective_name(reward))
    return out


def _objectives(evals: list[dict[str, Any]], mode: str) -> list[str]:
    prefix = f"eval/{mode}/"
    names = [k[len(prefix) :] for k in evals[0] if k.startswith(prefix)]
    if not names:
        modes = sorted({k.split("/")[1] for k in evals[0] if k.startswith("eval/")})
        raise ValueError(f"no eval/{mode}/... metrics; evaluated modes: {modes}")
    return [n for n in names if n != "mean_length"]


def _stats(values: Sequence[float]) -> tuple[float, float]:
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return math.nan, math.nan
    return statistics.fmean(finite), statistics.stdev(finite) if len(finite) > 1 else 0.0


def mean_std(values: Sequence[float], digits: int = 3) -> str:
    """``"0.500 ± 0.100"`` over seeds (just the mean for one value, ``n/a`` if none is finite)."""
    mean, std = _stats(values)
    if not math.isfinite(mean):
        return "n/a"
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if len(values) > 1 else f"{mean:.{digits}f}"


def _write_markdown(result: Comparison) -> Path:
    seeds = sorted({r.seed for r in result.runs})
    digits = {"mean_length": 1}
    lines = [
        f"# Method comparison ({result.mode} evaluation)",
        "",
        f"{len(result.methods())} methods × {len(seeds)} seed(s) {seeds}; mean ± std over seeds. "
        "Interference: the largest drop of any scored objective below its start (mean_length: relative rise); "
        f"scored: {', '.join(result.runs[0].scored)}.",
        "",
        "| method | interference | dropped most | " + " | ".join(f"final {m}" for m in result.metrics) + " |",
        "|---|---:|---|" + "---:|" * len(result.metrics),
    ]
    for method in result.methods():
        runs = result.of(method)
        worst = [r.worst for r in runs if r.worst]
        finals = [mean_std([r.final[m] for r in runs], digits.get(m, 3)) for m in result.metrics]
        most = max(set(worst), key=worst.count) if worst else "—"
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
            cells = [mean_std([getattr(r, part)[m] for r in runs], d) for part in ("start", "final", "best")]
            drop = mean_std([r.drops.get(m, math.nan) for r in runs])
            label = f"{m} (lower is better)" if m == "mean_length" else m
            if m not in runs[0].scored:
                label += " (not scored)"
            lines.append(f"| {method} | {label} | " + " | ".join(cells) + f" | {drop} |")
    lines += ["", "Runs: " + ", ".join(f"`{r.run_dir}`" for r in result.runs), ""]
    path = result.out / "comparison.md"
    path.write_text("\n".join(lines))
    return path


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
                s_mean, _ = _stats([r.start[metric] for r in runs])
                f_mean, f_std = _stats([r.final[metric] for r in runs])
                b_mean, _ = _stats([r.best[metric] for r in runs])
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
                better = "↓" if metric == "mean_length" else "↑"
                ax.set_title(f"{metric} ({better} better)")
                ax.set_ylabel(f"{result.mode} eval, final")
            ax.grid(axis="y", alpha=0.3)
        fig.suptitle(f"Final held-out {result.mode} evaluation per method (bars; dashed: start, ★: best)")
        path = result.out / "comparison.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
    return path


def _method_file(method: str, recipe_path: Path | None) -> Path | None:
    if method.endswith((".yaml", ".yml")):
        path = Path(method)
        if not path.exists():
            raise RecipeError(f"method recipe not found: {method}")
        return path
    here = Path(__file__).resolve().parents[1] / "cookbook" / "recipes"
    folders = [recipe_path.parent] if recipe_path is not None else []
    folders += [Path("cookbook/recipes"), here]
    for folder in folders:
        candidate = folder / f"{method}.yaml"
        if candidate.exists() and (recipe_path is None or candidate.resolve() != recipe_path.resolve()):
            return candidate
    return None


def _method_label(method: str) -> str:
    return Path(method).stem if method.endswith((".yaml", ".yml")) else method


def _name(spec: Any) -> str | None:
    return spec if isinstance(spec, str) else spec.get("name") if isinstance(spec, dict) else None


def _has_checkpoint(run_dir: Path) -> bool:
    from morl.checkpoint import list_checkpoints

    return run_dir.is_dir() and bool(list_checkpoints(run_dir)[0])


class _SweepProgress:
    """One rich bar over the sweep's runs and one over the current run's steps."""

    def __init__(self, runs: int, steps: int, enabled: bool = True) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        from morl.logging import console

        self.steps = steps
        self._progress = Progress(
            TextColumn("{task.description:<24}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            disable=not enabled,
        )
        self._sweep = self._progress.add_task("sweep", total=runs)
        self._run = self._progress.add_task("", total=steps, visible=False)

    def __enter__(self) -> _SweepProgress:
        self._progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.__exit__(*exc)

    def start(self, label: str) -> None:
        self._progress.reset(self._run, total=self.steps, description=label, visible=True)

    def done(self) -> None:
        self._progress.update(self._run, visible=False)
        self._progress.advance(self._sweep)

    def skip(self, label: str) -> None:
        self._progress.console.print(f"[dim]skip {label}: finished[/]")
        self._progress.advance(self._sweep)

    def callback(self):
        from morl.pipeline import Callback

        bar = self

        class _Advance(Callback):
            def on_step_end(self, step: int, batch: Any, metrics: dict[str, float]) -> None:
                bar._progress.update(bar._run, completed=step)

        return _Advance()
