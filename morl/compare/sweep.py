"""Running a comparison: one base recipe under several methods and seeds, finished runs skipped.

Runs go to ``OUT/<method>/seed<k>`` and ``OUT/sweep.json`` indexes them, so the report can be written again from
the folder alone (:func:`morl.compare.write_report`). A run whose manifest says it finished (or that wrote its
end-of-fit ``training_state.json``) is skipped; one with checkpoints resumes from its newest.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from morl.callbacks import Callback, StepContext
from morl.compare.report import SWEEP_FILE, Comparison, RunRef, write_report
from morl.components import RecipeError, registered
from morl.recipe import Recipe, load_recipe, parse_recipe

METHOD_KEYS = ("scalarizer", "advantage", "controller")
FINISHED = "training_state.json"  # the top-level one is written when a fit ends


def method_components(method: str, base: Recipe, recipe_path: Path | None = None) -> dict[str, Any]:
    """The recipe sections that define ``method`` (see :mod:`morl.compare` for the lookup order)."""
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


def run_sweep(
    recipe_path: str | Path,
    methods: Sequence[str],
    seeds: Sequence[int] = (0,),
    out: str | Path = "runs/compare",
    overrides: Sequence[str] = (),
    mode: str = "greedy",
    progress: bool = True,
) -> list[RunRef]:
    """Train every method × seed that has not finished; returns the runs in order and writes ``OUT/sweep.json``.

    Every method is checked before any training starts, so a typo in the last method fails at once.
    """
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
    plans = {}
    for method, name in zip(methods, names):
        raw = base.model_dump(mode="json")
        raw.update(method_components(method, base, recipe_path))
        plans[name] = raw
        build_components(parse_recipe(raw, source=f"method {name}"))
    out = Path(out)
    refs = [RunRef(name, seed, out / name / f"seed{seed}") for name in names for seed in seeds]
    _write_index(out, recipe_path, mode, refs)
    train, evals = load_data(base)
    # no per-shard load/save bars of transformers under the live sweep bar (in Jupyter they recurse through rich)
    with _quiet_transformers(), SweepProgress(len(refs), base.train.steps, enabled=progress) as bar:
        for ref in refs:
            label = f"{ref.method} seed {ref.seed}"
            if finished(ref.run_dir):
                bar.skip(label)
                continue
            raw = json.loads(json.dumps(plans[ref.method]))
            raw["name"] = f"{base.name or recipe_path.stem}/{ref.method}"
            raw["train"].update(seed=ref.seed, output_dir=str(ref.run_dir), progress=False)
            recipe = parse_recipe(raw, source=f"method {ref.method}")
            pipeline = pipeline_from_recipe(recipe, callbacks=[bar.callback()])
            bar.start(label)
            pipeline.fit(train, evals, resume_from=ref.run_dir if _has_checkpoint(ref.run_dir) else None)
            bar.done()
    return refs


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
    """Run every method × seed (skipping finished runs), then write the comparison report to ``out``."""
    refs = run_sweep(recipe_path, methods, seeds, out, overrides, mode, progress)
    return write_report(refs, out, mode=mode, ignore=ignore, plots=plots)


def finished(run_dir: str | Path) -> bool:
    """Whether a run has nothing left to train: its manifest's last segment finished, or its fit ended."""
    from morl.run import Manifest, RunDirError

    run_dir = Path(run_dir)
    if (run_dir / FINISHED).exists():
        return True
    try:
        manifest = Manifest.load(run_dir)
    except RunDirError:
        return False
    return manifest is not None and manifest.current_segment.status == "finished"


class SweepProgress:
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

    def __enter__(self) -> SweepProgress:
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

    def advance_to(self, step: int) -> None:
        self._progress.update(self._run, completed=step)

    def callback(self) -> Callback:
        """A callback that moves the current run's bar to each finished step."""
        return _StepBar(self)


class _StepBar(Callback):
    def __init__(self, bar: SweepProgress) -> None:
        self.bar = bar

    def on_step_end(self, ctx: StepContext) -> None:
        self.bar.advance_to(ctx.step)


# ---- internals -------------------------------------------------------------------------------------------


def _write_index(out: Path, recipe_path: Path, mode: str, refs: Sequence[RunRef]) -> None:
    """``OUT/sweep.json``: which run directory holds which method and seed, in the sweep's order."""
    out.mkdir(parents=True, exist_ok=True)
    runs = [{"method": r.method, "seed": r.seed, "run_dir": str(r.run_dir.relative_to(out))} for r in refs]
    index = {"format": 1, "recipe": str(recipe_path), "mode": mode, "runs": runs}
    (out / SWEEP_FILE).write_text(json.dumps(index, indent=2) + "\n")


def _method_file(method: str, recipe_path: Path | None) -> Path | None:
    if method.endswith((".yaml", ".yml")):
        path = Path(method)
        if not path.exists():
            raise RecipeError(f"method recipe not found: {method}")
        return path
    here = Path(__file__).resolve().parents[2] / "cookbook" / "recipes"
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
