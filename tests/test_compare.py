"""``morl compare``: same recipe, several methods, one table; finished runs are skipped."""

import json

import pytest
import yaml
from typer.testing import CliRunner

from morl.cli import app
from morl.compare import interference, method_components
from morl.components import RecipeError
from morl.recipe import parse_recipe


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

    metrics = out / "linear" / "seed0" / "metrics.jsonl"
    before = metrics.stat().st_mtime_ns
    again = CliRunner().invoke(app, [*args, "--no-plots"])  # resume: both runs finished, nothing retrains
    assert again.exit_code == 0, again.output
    assert metrics.stat().st_mtime_ns == before


def test_method_resolution(tmp_path):
    recipe = _recipes(tmp_path)
    base = parse_recipe(yaml.safe_load(recipe.read_text()))
    assert method_components("linear", base) == {"controller": "fixed", "scalarizer": "linear"}
    assert method_components("ctwa", base) == {"controller": "ctwa", "scalarizer": "linear"}
    assert method_components("ctwa_fast", base, recipe)["controller"] == {"name": "ctwa", "lr": 0.5}
    with pytest.raises(RecipeError, match="unknown method 'ctwaa'"):
        method_components("ctwaa", base, recipe)


def test_interference_score():
    rows = [
        {"step": 0, "eval/greedy/acc": 0.9, "eval/greedy/clar": 0.5, "eval/greedy/mean_length": 40.0},
        {"step": 5, "eval/greedy/acc": 0.4, "eval/greedy/clar": 0.9, "eval/greedy/mean_length": 30.0},
        {"step": 9, "eval/greedy/acc": 0.8, "eval/greedy/clar": 0.9, "eval/greedy/mean_length": 64.0},
    ]
    assert interference(rows, ["acc", "clar"], "greedy") == (0.5, "acc")  # the worst point, not the final one
    assert interference(rows, ["acc", "clar", "mean_length"], "greedy") == (0.6, "mean_length")  # +60% length
    assert interference(rows, ["clar"], "greedy") == (0.0, None)
