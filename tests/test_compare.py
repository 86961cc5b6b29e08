"""``morl compare``: same recipe, several methods, one table; finished runs are skipped; the report is written
again from the run directories alone (their manifests and metrics)."""

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

import morl
from morl import metrics as M
from morl.callbacks import StepContext
from morl.cli import app
from morl.compare import (
    RunRef,
    finished,
    interference,
    known_methods,
    method_components,
    plan_method,
    preset_file,
    preset_names,
    write_report,
)
from morl.compare.sweep import SweepProgress
from morl.components import RecipeError, registered
from morl.recipe import build_components, parse_recipe
from tests.test_plot import write_manifest, write_rows

OBJECTIVES = ["accuracy", "conciseness", "clarity"]


def _recipes(tmp_path):
    base = {
        "rewards": ["accuracy", "conciseness", "clarity"],
        "data": {"train_size": 8, "eval_size": 4},
        "rollout": {"name": "transformers", "max_new_tokens": 8},
        "train": {"steps": 2, "prompts_per_step": 2, "group_size": 2, "eval_every": 0, "save_model": False},
    }
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    method = {"controller": {"name": "ctwa", "lr": 0.5}, "train": {"steps": 999}}  # only the method's parts count
    (tmp_path / "ctwa_fast.yaml").write_text(yaml.safe_dump(method))
    return tmp_path / "base.yaml"


def test_compare_two_methods_writes_a_table(tiny_model_dir, tmp_path):
    recipe = _recipes(tmp_path)
    out = tmp_path / "cmp"
    args = ["compare", str(recipe), "--methods", "linear,ctwa_fast", "--seeds", "0", "--out", str(out)]
    args += ["--set", f"policy.model={tiny_model_dir}"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    table = (out / "comparison.md").read_text()
    summary = table.split("## Per objective")[0]
    rows = [line.split(" | ")[0] for line in summary.splitlines() if line.startswith("| ") and "---" not in line]
    assert rows == ["| method", "| linear", "| ctwa_fast"]  # one summary row per method
    assert "| ctwa_fast | accuracy |" in table and "conciseness (not scored)" in table
    assert (out / "comparison.png").stat().st_size > 0 and (out / "plots" / "objectives.png").exists()
    runs = json.loads((out / "comparison.json").read_text())["runs"]
    assert [(r["method"], r["seed"]) for r in runs] == [("linear", 0), ("ctwa_fast", 0)]
    assert "conciseness" not in runs[0]["scored"] and "mean_length" in runs[0]["scored"]
    saved = yaml.safe_load((out / "ctwa_fast" / "seed0" / "recipe.yaml").read_text())
    assert saved["controller"] == {"name": "ctwa", "lr": 0.5} and saved["train"]["steps"] == 2
    assert saved["train"]["seed"] == 0 and saved["policy"]["model"] == str(tiny_model_dir)
    # the report says which settings each method ran with, and where they came from
    assert "| linear | the recipe's own | fixed | linear | group_norm |" in table
    assert f"| ctwa_fast | method recipe {tmp_path / 'ctwa_fast.yaml'} | ctwa(lr=0.5) | linear | group_norm |" in table
    assert runs[1]["settings"]["controller"] == {"name": "ctwa", "lr": 0.5}
    assert runs[1]["origin"] == f"method recipe {tmp_path / 'ctwa_fast.yaml'}"

    metrics = out / "linear" / "seed0" / "metrics.jsonl"
    before = metrics.stat().st_mtime_ns
    again = CliRunner().invoke(app, [*args, "--no-plots"])  # resume: both runs finished, nothing retrains
    assert again.exit_code == 0, again.output
    assert metrics.stat().st_mtime_ns == before
    report = write_report(out, tmp_path / "again", plots=False)  # from the folder alone
    assert json.loads((tmp_path / "again" / "comparison.json").read_text())["runs"] == runs
    assert report.methods() == ["linear", "ctwa_fast"]


def test_method_resolution(tmp_path):
    recipe = _recipes(tmp_path)
    base = parse_recipe(yaml.safe_load(recipe.read_text()))
    assert method_components("linear", base) == {"controller": "fixed", "scalarizer": "linear"}
    ctwa = plan_method("ctwa", base)  # the recipe's controller is fixed: CTWA comes from morl's preset
    assert ctwa.components["controller"] == {"name": "ctwa", "targets": [0.15, 0.08, 0.08], "lr": 0.05, "ema": 0.1}
    assert ctwa.source == "preset" and "the paper's defaults" in ctwa.origin
    assert method_components("ctwa_fast", base, recipe)["controller"] == {"name": "ctwa", "lr": 0.5}
    assert plan_method("fixed", parse_recipe({"controller": "ctwa"})).source == "defaults"  # no preset: the defaults
    with pytest.raises(RecipeError, match=r"unknown method 'ctwaa'.*known: .*ctwa, .*lagrangian"):
        method_components("ctwaa", base, recipe)


def test_the_recipes_own_method_keeps_its_settings(tmp_path):
    """``--methods linear,ctwa`` on a recipe with a tuned CTWA compares that CTWA, not the paper's defaults."""
    tuned = {"name": "ctwa", "targets": {"accuracy": 0.45, "conciseness": 0.0, "clarity": 0.0}, "lr": 0.5}
    base = parse_recipe({"controller": tuned, "advantage": "rloo"})
    own = plan_method("ctwa", base, tmp_path / "r.yaml")
    assert own.components == {"controller": tuned, "scalarizer": "linear"} and own.origin == "the recipe's own"
    weights = {"name": "fixed", "weights": [0.5, 0.25, 0.25]}
    fixed = parse_recipe({"controller": weights, "scalarizer": {"name": "tchebycheff", "reference": "running"}})
    assert plan_method("linear", fixed).components == {"controller": weights, "scalarizer": "linear"}
    assert plan_method("tchebycheff", fixed).components["scalarizer"] == {"name": "tchebycheff", "reference": "running"}
    assert plan_method("tchebycheff", fixed).source == "recipe"
    # a preset changes the method only: the base's advantage estimator stays
    assert "advantage" not in plan_method("lagrangian", base).components


def test_presets_come_from_the_package_not_the_current_folder(tmp_path, monkeypatch):
    decoy = {"controller": {"name": "ctwa", "lr": 9.0}}
    for folder in (tmp_path, tmp_path / "cookbook" / "recipes", tmp_path / "morl" / "compare" / "presets"):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "ctwa.yaml").write_text(yaml.safe_dump(decoy))
    elsewhere = tmp_path / "project"
    elsewhere.mkdir()
    (elsewhere / "base.yaml").write_text("controller: fixed\n")
    monkeypatch.chdir(tmp_path)  # the decoys sit in the current folder and in its cookbook/ and morl/ look-alikes
    base = parse_recipe({"controller": "fixed"})
    plan = plan_method("ctwa", base, elsewhere / "base.yaml")
    assert plan.source == "preset" and plan.components["controller"]["lr"] == 0.05
    package = Path(morl.__file__).resolve().parent
    assert Path(str(preset_file("ctwa"))).resolve() == package / "compare" / "presets" / "ctwa.yaml"
    assert preset_file("../ctwa") is None  # a preset is a name, never a path


def test_every_builtin_method_has_a_preset_that_builds():
    """Every built-in controller and scalarizer but those whose weights are the user's (fixed, schedule) has a
    preset, and each preset builds on the default recipe (the paper's three objectives)."""
    builtin = {n for family in ("controller", "scalarizer") for n, cls in registered(family).items()}
    assert builtin - {"fixed", "schedule"} <= set(preset_names()) <= set(known_methods())
    for name in preset_names():
        raw = parse_recipe({}).model_dump(mode="json")
        raw.update(plan_method(name, parse_recipe({"controller": "fixed", "scalarizer": "linear"})).components)
        build_components(parse_recipe(raw))


def test_the_report_lists_each_methods_settings(sweep, tmp_path):
    index = json.loads((sweep / "sweep.json").read_text())
    index["methods"] = {
        "linear": {"source": "recipe", "origin": "the recipe's own"},
        "ctwa": {"source": "preset", "origin": "preset morl/compare/presets/ctwa.yaml: the paper's defaults"},
    }
    (sweep / "sweep.json").write_text(json.dumps(index))
    write_report(sweep, plots=False)
    table = (sweep / "comparison.md").read_text()
    methods = table.split("## Methods")[1]
    assert "| linear | the recipe's own | fixed | linear | group_norm |" in methods
    assert (
        "| ctwa | preset morl/compare/presets/ctwa.yaml: the paper's defaults | ctwa | linear | group_norm |" in methods
    )
    runs = json.loads((sweep / "comparison.json").read_text())["runs"]
    assert runs[2]["settings"] == {"scalarizer": "linear", "advantage": "group_norm", "controller": "ctwa"}
    assert runs[2]["origin"].startswith("preset")
    alone = write_report([sweep / "ctwa" / "seed0"], tmp_path / "alone", plots=False)  # no index: origin unknown
    assert alone.runs[0].origin is None and "| ctwa | — | ctwa |" in (tmp_path / "alone" / "comparison.md").read_text()


def test_interference_score():
    rows = [
        {"step": 0, "eval/greedy/acc": 0.9, "eval/greedy/clar": 0.5, "eval/greedy/mean_length": 40.0},
        {"step": 5, "eval/greedy/acc": 0.4, "eval/greedy/clar": 0.9, "eval/greedy/mean_length": 30.0},
        {"step": 9, "eval/greedy/acc": 0.8, "eval/greedy/clar": 0.9, "eval/greedy/mean_length": 64.0},
    ]
    assert interference(rows, ["acc", "clar"], "greedy") == (0.5, "acc")  # the worst point, not the final one
    assert interference(rows, ["acc", "clar", "mean_length"], "greedy") == (0.6, "mean_length")  # +60% length
    assert interference(rows, ["clar"], "greedy") == (0.0, None)
    assert interference(rows, ["clar"], "greedy", {"clar": "minimize"}) == (0.4, "clar")  # a rise hurts it


# ---- the report from hand-written run directories ---------------------------------------------------------------

# held-out greedy evaluations per run: (accuracy, conciseness, clarity, mean length) at steps 0, 10, 20
EVALS = {
    ("linear", 0): [(0.5, 1.0, 0.4, 40.0), (0.3, 0.6, 0.6, 50.0), (0.45, 0.5, 0.7, 44.0)],
    ("linear", 1): [(0.6, 1.0, 0.5, 40.0), (0.6, 0.9, 0.2, 38.0), (0.7, 0.8, 0.3, 36.0)],
    ("ctwa", 0): [(0.5, 1.0, 0.4, 40.0), (0.55, 0.95, 0.45, 35.0), (0.6, 0.9, 0.5, 30.0)],
}


def _run(path, method, seed, evals):
    controller, scalarizer = ("fixed", "linear") if method == "linear" else (method, "linear")
    recipe = {"train": {"seed": seed}}
    write_manifest(path, OBJECTIVES, controller, scalarizer, moving=("conciseness",), recipe=recipe, steps=20)
    rows = []
    for i, values in enumerate(evals):
        step = 10 * i
        row = {"kind": "eval", "step": step, M.eval_mean_length("greedy"): values[3]}
        row.update({M.eval_metric("greedy", o): v for o, v in zip(OBJECTIVES, values)})
        rows.append(row)
        rows.append({"kind": "train", "step": step + 1, **{M.reward_mean(o): 0.5 for o in OBJECTIVES}})
    write_rows(path, rows, torn=True)
    return path


@pytest.fixture
def sweep(tmp_path):
    out = tmp_path / "sweep"
    for (method, seed), evals in EVALS.items():
        _run(out / method / f"seed{seed}", method, seed, evals)
    index = [{"method": m, "seed": s, "run_dir": f"{m}/seed{s}"} for m, s in EVALS]
    (out / "sweep.json").write_text(json.dumps({"format": 1, "runs": index}))
    return out


def test_report_of_a_sweep_folder(sweep):
    result = write_report(sweep, plots=False)
    assert result.methods() == ["linear", "ctwa"]
    assert result.metrics == ["accuracy", "conciseness", "clarity", "mean_length"]
    assert [f.name for f in result.files] == ["comparison.md", "comparison.json", "comparison.png"]
    runs = json.loads((sweep / "comparison.json").read_text())["runs"]
    first, second, third = runs
    # linear seed 0: accuracy fell 0.5 -> 0.3 (0.2); length rose 40 -> 50 (+25%, the worst); conciseness not scored
    assert first["scored"] == ["accuracy", "clarity", "mean_length"]
    assert first["drops"] == pytest.approx({"accuracy": 0.2, "conciseness": 0.5, "clarity": 0.0, "mean_length": 0.25})
    assert (first["interference"], first["worst"]) == (pytest.approx(0.25), "mean_length")
    assert first["final"] == {"accuracy": 0.45, "conciseness": 0.5, "clarity": 0.7, "mean_length": 44.0}
    assert first["best"] == {"accuracy": 0.45, "conciseness": 0.6, "clarity": 0.7, "mean_length": 44.0}
    # linear seed 1: clarity fell 0.5 -> 0.2
    assert (second["interference"], second["worst"]) == (pytest.approx(0.3), "clarity")
    # ctwa: nothing fell, the length shrank
    assert (third["interference"], third["worst"], third["seed"]) == (0.0, None, 0)
    table = (sweep / "comparison.md").read_text()
    # interference 0.275 ± 0.035 (mean, sample std of 0.25 and 0.3); final accuracy 0.575 ± 0.177; length 40.0 ± 5.7
    assert (
        "| linear | 0.275 ± 0.035 | mean_length | 0.575 ± 0.177 | 0.650 ± 0.212 | 0.500 ± 0.283 | 40.0 ± 5.7 |" in table
    )
    assert "| ctwa | 0.000 | — | 0.600 | 0.900 | 0.500 | 30.0 |" in table
    assert "| linear | conciseness (not scored) |" in table and "| ctwa | mean_length (lower is better) |" in table


def test_report_of_run_directories(sweep, tmp_path):
    dirs = [sweep / "ctwa" / "seed0", sweep / "linear" / "seed1"]
    with pytest.raises(ValueError, match="give `out`"):
        write_report(dirs)
    result = write_report(dirs, tmp_path / "report", ignore=["clarity"])
    assert [(r.method, r.seed) for r in result.runs] == [("ctwa", 0), ("linear", 1)]  # named by their manifests
    assert result.of("linear")[0].scored == ["accuracy", "mean_length"] and result.of("linear")[0].interference == 0.0
    assert (tmp_path / "report" / "plots" / "objectives.png").exists()
    single = write_report(sweep / "ctwa" / "seed0", plots=False)  # one run directory
    assert single.methods() == ["ctwa"] and (sweep / "ctwa" / "seed0" / "comparison.md").exists()
    found = write_report(sweep, tmp_path / "found", plots=False)  # the index is not needed to find the runs
    assert len(found.runs) == 3


def test_report_errors_name_the_folder(sweep, tmp_path):
    (sweep / "linear" / "seed1" / "manifest.json").unlink()  # a run of a morl that recorded no manifest
    with pytest.raises(FileNotFoundError, match=r"linear/seed1: no manifest\.json"):
        write_report(sweep, plots=False)
    with pytest.raises(ValueError, match=r"no sampled evaluation; evaluated modes: \['greedy'\]"):
        write_report([sweep / "ctwa" / "seed0"], tmp_path / "x", mode="sampled", plots=False)
    no_evals = write_manifest(tmp_path / "no_evals", OBJECTIVES)
    write_rows(no_evals, [{"kind": "train", "step": 1, M.reward_mean("accuracy"): 0.5}])
    with pytest.raises(ValueError, match=r"no_evals/metrics\.jsonl: no evaluation rows"):
        write_report(no_evals, plots=False)
    result = CliRunner().invoke(app, ["compare", str(tmp_path / "missing.yaml")])
    assert result.exit_code == 2


def test_finished_runs_and_sweep_progress(sweep, tmp_path):
    assert finished(sweep / "ctwa" / "seed0")  # its manifest's last segment finished
    assert not finished(tmp_path / "never_started")
    running = write_manifest(tmp_path / "running", OBJECTIVES)
    manifest = json.loads((running / "manifest.json").read_text())
    manifest["segments"][0]["status"] = "interrupted"
    (running / "manifest.json").write_text(json.dumps(manifest))
    assert not finished(running)
    with SweepProgress(runs=1, steps=5, enabled=False) as bar:
        callback = bar.callback()
        callback.on_step_end(StepContext(fit=None, step=3, record=None, metrics={}))
        assert bar._progress.tasks[1].completed == 3
    assert RunRef("ctwa", 0, sweep).method == "ctwa"
