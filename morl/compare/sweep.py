"""Running a comparison: one base recipe under several methods and seeds, finished runs skipped.

Runs go to ``OUT/<method>/seed<k>`` and ``OUT/sweep.json`` indexes them, so the report can be written again from
the folder alone (:func:`morl.compare.write_report`). A run whose manifest says it finished (or that wrote its
end-of-fit ``training_state.json``) is skipped; one with checkpoints resumes from its newest.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from morl.callbacks import Callback, StepContext
from morl.compare.report import METHOD_KEYS, SWEEP_FILE, Comparison, RunRef, write_report
from morl.components import RecipeError, registered
from morl.recipe import Recipe, load_recipe, parse_recipe

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable  # Python 3.11+; only a type here

FINISHED = "training_state.json"  # the top-level one is written when a fit ends
PRESETS = "presets"  # morl/compare/presets/<method>.yaml, shipped in the wheel (package data)
PRESET_KEYS = ("scalarizer", "controller")  # a preset never changes the base's advantage: that is the algorithm's


@dataclass(frozen=True)
class MethodPlan:
    """Which recipe sections a method runs with, and where they came from (the report says both)."""

    name: str
    components: dict[str, Any]
    source: str  # "recipe" (the base recipe's own), "file" (a method recipe), "preset" or "defaults"
    origin: str  # for people: "the recipe's own", "preset .../ctwa.yaml: the paper's defaults", ...


def method_components(method: str, base: Recipe, recipe_path: Path | None = None) -> dict[str, Any]:
    """The recipe sections that define ``method`` (see :mod:`morl.compare` for the lookup order)."""
    return plan_method(method, base, recipe_path).components


def plan_method(method: str, base: Recipe, recipe_path: Path | None = None) -> MethodPlan:
    """The sections and the provenance of ``method`` run on ``base``; first match wins.

    1. the recipe's own method (its controller, or with fixed weights its scalarizer, is named ``method``;
       ``linear`` with fixed weights keeps the recipe's weights): its settings unchanged, so a tuned CTWA in the
       recipe is what ``--methods ctwa`` compares;
    2. a method recipe: a path to a ``.yaml`` file, or ``<method>.yaml`` beside the base recipe;
    3. a preset shipped inside morl (:func:`preset_names`), never a file of the current folder, so an installed
       morl compares the same methods as a source checkout;
    4. a registered component without a preset (``fixed``, ``schedule``, a plugin's) with its defaults.
    """
    label = _method_label(method)
    controller, scalarizer = _name(base.controller), _name(base.scalarizer)
    if method == "linear" and controller == "fixed":
        kept = base.scalarizer if scalarizer == "linear" else "linear"
        own = "the recipe's own" if scalarizer == "linear" else "the recipe's own weights, linear scalarisation"
        return MethodPlan(label, {"controller": base.controller, "scalarizer": kept}, "recipe", own)
    if method == controller or (method == scalarizer and controller == "fixed"):
        parts = {"controller": base.controller, "scalarizer": base.scalarizer}
        return MethodPlan(label, parts, "recipe", "the recipe's own")
    file = _method_file(method, recipe_path)
    if file is not None:
        raw = load_recipe(file).model_dump(mode="json")
        return MethodPlan(label, {key: raw[key] for key in METHOD_KEYS}, "file", f"method recipe {file}")
    preset = preset_file(method)
    if preset is not None:
        raw = yaml.safe_load(preset.read_text()) or {}
        parts = {key: raw[key] for key in PRESET_KEYS if key in raw}
        about = f": {raw['about']}" if raw.get("about") else ""
        return MethodPlan(label, parts, "preset", f"preset morl/compare/{PRESETS}/{method}.yaml{about}")
    if method in registered("controller"):
        return MethodPlan(label, {"controller": method, "scalarizer": "linear"}, "defaults", "component defaults")
    if method in registered("scalarizer"):
        return MethodPlan(label, {"controller": "fixed", "scalarizer": method}, "defaults", "component defaults")
    raise RecipeError(
        f"unknown method {method!r}: no such preset or component, and no {method}.yaml beside the recipe; "
        f"known: {', '.join(known_methods())} (or a path to a method recipe .yaml)"
    )


def preset_names() -> list[str]:
    """The methods morl ships settings for (``morl/compare/presets/<method>.yaml``)."""
    folder = resources.files("morl.compare") / PRESETS
    return sorted(item.name[: -len(".yaml")] for item in folder.iterdir() if item.name.endswith(".yaml"))


def known_methods() -> list[str]:
    """Every method name ``compare`` resolves without a file: the presets and the registered components."""
    return sorted({*preset_names(), *registered("controller"), *registered("scalarizer")})


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
    from morl.checkpoint.write import _quiet_transformers
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
    folder = recipe_path.resolve().parent  # import paths in the recipe resolve from its folder too
    method_plans = [plan_method(m, base, recipe_path) for m in methods]
    names = [plan.name for plan in method_plans]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise RecipeError(f"--methods names {repeated} more than once (a method's label is its name or file stem)")
    plans = {}
    for plan in method_plans:
        raw = base.model_dump(mode="json")
        raw.update(plan.components)
        plans[plan.name] = raw
        try:
            build_components(parse_recipe(raw, source=f"method {plan.name}", folder=folder))
        except RecipeError as err:
            raise RecipeError(f"method {plan.name} ({plan.origin}) does not fit this recipe: {err}") from None
    out = Path(out)
    origins = {plan.name: plan.origin for plan in method_plans}
    refs = [RunRef(n, seed, out / n / f"seed{seed}", origins[n]) for n in names for seed in seeds]
    _write_index(out, recipe_path, mode, refs, {plan.name: plan for plan in method_plans})
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
            recipe = parse_recipe(raw, source=f"method {ref.method}", folder=folder)
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


def _write_index(out: Path, recipe_path: Path, mode: str, refs: Sequence[RunRef], plans: dict[str, MethodPlan]) -> None:
    """``OUT/sweep.json``: which run directory holds which method and seed, in the sweep's order, and where each
    method's settings came from."""
    out.mkdir(parents=True, exist_ok=True)
    runs = [{"method": r.method, "seed": r.seed, "run_dir": str(r.run_dir.relative_to(out))} for r in refs]
    methods = {n: {"source": p.source, "origin": p.origin, "settings": p.components} for n, p in plans.items()}
    index = {"format": 1, "recipe": str(recipe_path), "mode": mode, "methods": methods, "runs": runs}
    (out / SWEEP_FILE).write_text(json.dumps(index, indent=2) + "\n")


def _method_file(method: str, recipe_path: Path | None) -> Path | None:
    if method.endswith((".yaml", ".yml")):
        path = Path(method)
        if not path.exists():
            raise RecipeError(f"method recipe not found: {method}")
        return path
    if recipe_path is None:
        return None
    candidate = recipe_path.parent / f"{method}.yaml"
    if candidate.exists() and candidate.resolve() != recipe_path.resolve():
        return candidate
    return None


def preset_file(method: str) -> Traversable | None:
    """The preset shipped with morl for ``method``, looked up in the installed package, never in the current
    folder (``morl/compare/presets/<method>.yaml``); None if morl has none."""
    if not method.isidentifier():  # a preset is a bare method name, never a path
        return None
    candidate = resources.files("morl.compare") / PRESETS / f"{method}.yaml"
    return candidate if candidate.is_file() else None


def _method_label(method: str) -> str:
    return Path(method).stem if method.endswith((".yaml", ".yml")) else method


def _name(spec: Any) -> str | None:
    return spec if isinstance(spec, str) else spec.get("name") if isinstance(spec, dict) else None


def _has_checkpoint(run_dir: Path) -> bool:
    from morl.checkpoint.find import list_checkpoints

    return run_dir.is_dir() and bool(list_checkpoints(run_dir)[0])
