"""``morl plot``: figures from recorded runs, one line per run, figures without metrics skipped."""

import json

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from morl.cli import app
from morl.logging import MetricsWriter
from morl.plot import load_run, method_name, moving_average, plot_runs

OBJECTIVES = ["accuracy", "conciseness", "clarity"]


def _record(path, controller, steps=30, gradients=False, seed=0):
    """A small recorded run: training rows every step, evaluations every 10 steps, one alarm event."""
    rng = np.random.default_rng(seed)
    path.mkdir(parents=True)
    recipe = {"rewards": OBJECTIVES, "scalarizer": "linear", "controller": controller}
    (path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    writer = MetricsWriter(path / "metrics.jsonl")
    for step in range(steps + 1):
        if step % 10 == 0:
            row = {"kind": "eval", "step": step, "eval/greedy/mean_length": 40 - step / 2}
            row.update({f"eval/{mode}/{o}": float(rng.uniform()) for mode in ("greedy", "sampled") for o in OBJECTIVES})
            writer.write(row)
        if step == 0:
            continue
        row = {"kind": "train", "step": step, "completions/mean_length": 30.0, "clip_ratio/region_mean": 0.01}
        for o in OBJECTIVES:
            row[f"rewards/{o}/mean"] = float(rng.uniform())
            row[f"weights/{o}"] = 1 / 3 + (0.01 * step if controller != "fixed" else 0.0)
            row[f"cov/score/{o}"] = float(rng.normal(0.02, 0.01))
        if controller != "fixed":
            row.update({f"cov/clipped_weight/{o}": float(rng.normal(0.1, 0.05)) for o in OBJECTIVES})
            row.update({f"ctwa/target/{o}": 0.08 for o in OBJECTIVES})
            row["clip/removed_mass"] = 0.002
        if gradients and step % 5 == 0:
            row.update({"grad_cos/accuracy/conciseness": -0.5, "grad_cos/accuracy/clarity": 0.2})
            row.update({"grad_cos/conciseness/clarity": 0.1, "grad_align/accuracy": -0.1})
        writer.write(row)
    writer.close()
    event = {"event": "interference_alarm", "step": 12, "objective": "accuracy", "since_step": 3, "signal": "score"}
    (path / "events.jsonl").write_text(json.dumps(event) + "\n")
    return path


@pytest.fixture
def runs(tmp_path):
    return [
        _record(tmp_path / "linear_run", "fixed"),
        _record(tmp_path / "ctwa_run", {"name": "ctwa", "lr": 0.5}, gradients=True, seed=1),
    ]


def test_plot_writes_every_figure_with_its_panels(runs, tmp_path):
    written = {item.name: item for item in plot_runs(runs, tmp_path / "plots", dpi=40)}
    assert set(written) == {"objectives", "weights", "covariances", "grad_cosine", "grad_alignment", "clipping"}
    for item in written.values():
        assert item.path.exists() and item.path.stat().st_size > 2_000
    assert written["objectives"].panels[:4] == [f"{o} — train batch" for o in OBJECTIVES] + ["length — train batch"]
    assert "accuracy — greedy eval" in written["objectives"].panels
    assert len(written["objectives"].panels) == 12  # 3 rows (train, greedy, sampled) × 4 columns
    assert written["weights"].panels == [f"weight λ: {o}" for o in OBJECTIVES]
    assert "covariance(accuracy, clipped weight)" in written["covariances"].panels
    assert "covariance(clarity, score)" in written["covariances"].panels
    assert written["grad_cosine"].panels == [
        "cos(∇accuracy, ∇conciseness)",
        "cos(∇accuracy, ∇clarity)",
        "cos(∇conciseness, ∇clarity)",
    ]


def test_figures_without_metrics_are_skipped(tmp_path):
    run = tmp_path / "bare"
    run.mkdir()
    writer = MetricsWriter(run / "metrics.jsonl")
    for step in (1, 2, 3):
        writer.write({"kind": "train", "step": step, "rewards/acc/mean": 0.5, "completions/mean_length": 10.0})
    writer.close()
    written = plot_runs([run], tmp_path / "plots")
    assert [item.name for item in written] == ["objectives"]  # no weights, covariances, gradients or clipping
    assert load_run(run).label == "bare"  # no recipe.yaml: the directory's name


def test_cli_plot(runs, tmp_path):
    result = CliRunner().invoke(app, ["plot", *map(str, runs), "--out", str(tmp_path / "cli_plots")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "cli_plots" / "covariances.png").stat().st_size > 0
    missing = CliRunner().invoke(app, ["plot", str(tmp_path / "nowhere")])
    assert missing.exit_code == 2 and "no metrics.jsonl" in missing.output


def test_labels_and_smoothing():
    assert method_name({"controller": "fixed", "scalarizer": {"name": "tchebycheff"}}, "x") == "tchebycheff"
    assert method_name({"components": {"controller": "CTWA(lr=0.05)", "scalarizer": "Linear()"}}, "x") == "ctwa"
    assert method_name({}, "run-dir") == "run-dir"
    smoothed = moving_average(np.array([0.0, 1.0, 2.0, 3.0, 4.0]), 3)
    assert smoothed.tolist() == [0.5, 1.0, 2.0, 3.0, 3.5]  # centred: no lag
