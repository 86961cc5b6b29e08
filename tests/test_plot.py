"""``morl plot``: figures from recorded runs (read through their manifests), one line per run, figures without
metrics skipped, clear errors for folders that are not readable runs."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from morl import metrics as M
from morl.cli import app
from morl.plot import load_run, method_name, moving_average, plot_runs
from morl.run import Method

OBJECTIVES = ["accuracy", "conciseness", "clarity"]
REWARDS = {
    "accuracy": "morl.rewards.accuracy.Accuracy",
    "conciseness": "morl.rewards.conciseness.Conciseness",
    "clarity": "morl.rewards.clarity.Clarity",
}


def write_manifest(path, objectives, controller="fixed", scalarizer="linear", moving=(), recipe=None, steps=30):
    """A run's ``manifest.json`` as plain JSON, the way a run records itself at its start."""
    path.mkdir(parents=True, exist_ok=True)
    manifest = {
        "format": 1,
        "created": "2026-01-01T00:00:00",
        "recipe": recipe or {},
        "objectives": [
            {"name": o, "direction": "maximize", "moving_target": o in moving, "reward": REWARDS.get(o, "my.Reward")}
            for o in objectives
        ],
        "method": {
            "controller": controller,
            "weights_act_on": "reward",
            "normalization": "free",
            "scalarizer": scalarizer,
            "advantage": "group_norm",
            "algo": "grpo",
        },
        "versions": {},
        "segments": [
            {
                "index": 0,
                "kind": "start",
                "from_step": 0,
                "to_step": steps,
                "started": "2026-01-01T00:00:00",
                "ended": "2026-01-01T00:10:00",
                "status": "finished",
                "recipe": {},
                "accepted_differences": [],
            }
        ],
    }
    (path / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return path


def write_rows(path, rows, torn=True):
    """``metrics.jsonl`` by hand; ``torn`` ends it with half a line, as a killed writer leaves it."""
    text = "".join(json.dumps(row) + "\n" for row in rows)
    if torn:
        text += '{"kind": "train", "step": 999, "rewards/accura'
    (path / "metrics.jsonl").write_text(text)


def _record(path, controller, steps=30, gradients=False, seed=0, signal="covariance"):
    """A small recorded run: training rows every step, evaluations every 10 steps, one alarm event."""
    rng = np.random.default_rng(seed)
    recipe = {"controller": {"name": controller, "signal": signal}} if controller == "ctwa" else {}
    write_manifest(path, OBJECTIVES, controller, moving=("conciseness",), recipe=recipe, steps=steps)
    rows = []
    for step in range(steps + 1):
        if step % 10 == 0:
            row = {"kind": "eval", "step": step, M.eval_mean_length("greedy"): 40 - step / 2}
            row.update({M.eval_metric(mode, o): float(rng.uniform()) for mode in M.EVAL_MODES for o in OBJECTIVES})
            rows.append(row)
        if step == 0:
            continue
        row = {"kind": "train", "step": step, M.COMPLETIONS_MEAN_LENGTH: 30.0, M.CLIP_RATIO_REGION: 0.01}
        for o in OBJECTIVES:
            row[M.reward_mean(o)] = float(rng.uniform())
            row[M.weight(o)] = 1 / 3 + (0.01 * step if controller != "fixed" else 0.0)
            row[M.covariance("score", o)] = float(rng.normal(0.02, 0.01))
        if controller != "fixed":
            row.update({M.covariance("clipped_weight", o): float(rng.normal(0.1, 0.05)) for o in OBJECTIVES})
            row.update({M.correlation("clipped_weight", o): float(rng.normal(0.3, 0.1)) for o in OBJECTIVES})
            row.update({M.method_key(M.CTWA, "target", o): 0.08 for o in OBJECTIVES})
            row[M.CLIP_REMOVED_MASS] = 0.002
        if step % 5 == 1:  # the forecast, measured every 5 steps
            row.update({M.forecast("z", o): float(rng.normal(-0.2, 1.0)) for o in OBJECTIVES})
        if gradients and step % 5 == 0:
            row.update({M.grad_cos("accuracy", "conciseness"): -0.5, M.grad_cos("accuracy", "clarity"): 0.2})
            row.update({M.grad_cos("conciseness", "clarity"): 0.1, M.grad_align("accuracy"): -0.1})
        rows.append(row)
    write_rows(path, rows)
    event = {"event": "interference_alarm", "step": 12, "objective": "accuracy", "since_step": 3, "signal": "score"}
    forecast = {**event, "step": 16, "since_step": 6, "signal": "forecast"}
    (path / "events.jsonl").write_text(json.dumps(event) + "\n" + json.dumps(forecast) + "\n")
    return path


@pytest.fixture
def runs(tmp_path):
    return [
        _record(tmp_path / "linear_run", "fixed"),
        _record(tmp_path / "ctwa_run", "ctwa", gradients=True, seed=1),
    ]


def test_plot_writes_every_figure_with_its_panels(runs, tmp_path):
    written = {item.name: item for item in plot_runs(runs, tmp_path / "plots", dpi=40)}
    assert set(written) == {
        "objectives", "weights", "covariances", "grad_cosine", "grad_alignment", "clipping", "forecast",
    }  # fmt: skip
    # the forecast beside what it forecasts, one column per objective
    assert written["forecast"].panels == [f"{o} — sampled eval" for o in OBJECTIVES] + [
        f"{o} — forecast z" for o in OBJECTIVES
    ]
    for item in written.values():
        assert item.path.exists() and item.path.stat().st_size > 2_000
    assert written["objectives"].panels[:4] == [f"{o} — train batch" for o in OBJECTIVES] + ["length — train batch"]
    assert "accuracy — greedy eval" in written["objectives"].panels
    assert len(written["objectives"].panels) == 12  # 3 rows (train, greedy, sampled) × 4 columns
    assert written["weights"].panels == [f"weight λ: {o}" for o in OBJECTIVES]
    assert "covariance(accuracy, clipped weight)" in written["covariances"].panels
    assert "covariance(clarity, score)" in written["covariances"].panels
    assert not any(p.startswith("correlation") for p in written["covariances"].panels)  # no target on correlations
    assert written["grad_cosine"].panels == [
        "cos(∇accuracy, ∇conciseness)",
        "cos(∇accuracy, ∇clarity)",
        "cos(∇conciseness, ∇clarity)",
    ]


def test_run_is_read_through_its_manifest(runs, tmp_path):
    linear, ctwa = (load_run(path) for path in runs)
    assert (linear.label, ctwa.label) == ("linear", "ctwa")  # fixed weights: named by the scalarizer
    assert linear.objectives() == OBJECTIVES and linear.moving_targets() == {"conciseness"}
    assert max(row["step"] for row in linear.train) == 30  # the torn last line (step 999) is skipped
    assert (linear.ctwa_signal(), ctwa.ctwa_signal()) == (None, "cov")
    assert ctwa.events[0]["objective"] == "accuracy"
    corr = load_run(_record(tmp_path / "corr_run", "ctwa", signal="correlation"))
    assert corr.ctwa_signal() == "corr"
    written = {item.name: item for item in plot_runs([corr.path], tmp_path / "corr_plots", dpi=30)}
    assert "correlation(accuracy, clipped weight)" in written["covariances"].panels


def test_figures_without_metrics_are_skipped(tmp_path):
    run = write_manifest(tmp_path / "bare", ["acc"], controller="fixed", scalarizer="tchebycheff")
    rows = [{"kind": "train", "step": s, M.reward_mean("acc"): 0.5, M.COMPLETIONS_MEAN_LENGTH: 10.0} for s in (1, 2, 3)]
    write_rows(run, rows, torn=False)
    written = plot_runs([run], tmp_path / "plots")
    assert [item.name for item in written] == ["objectives"]  # no weights, covariances, gradients or clipping
    assert load_run(run).label == "tchebycheff"


def test_unreadable_runs_fail_clearly(runs, tmp_path):
    old = tmp_path / "old_run"  # written before runs recorded manifests
    old.mkdir()
    write_rows(old, [{"kind": "train", "step": 1, M.reward_mean("acc"): 0.5}])
    with pytest.raises(FileNotFoundError, match=r"old_run: no manifest\.json"):
        load_run(old)
    empty = write_manifest(tmp_path / "empty_run", ["acc"])
    (empty / "metrics.jsonl").write_text("")
    with pytest.raises(ValueError, match=r"empty_run/metrics\.jsonl: no readable rows"):
        load_run(empty)
    silent = write_manifest(tmp_path / "silent_run", ["acc"])
    with pytest.raises(FileNotFoundError, match="silent_run: no metrics.jsonl"):
        load_run(silent)
    (tmp_path / "broken_run").mkdir()
    (tmp_path / "broken_run" / "manifest.json").write_text("{not json")
    with pytest.raises(ValueError, match="broken_run"):
        load_run(tmp_path / "broken_run")


def test_cli_plot(runs, tmp_path):
    result = CliRunner().invoke(app, ["plot", *map(str, runs), "--out", str(tmp_path / "cli_plots")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "cli_plots" / "covariances.png").stat().st_size > 0
    missing = CliRunner().invoke(app, ["plot", str(tmp_path / "nowhere")])
    assert missing.exit_code == 2 and "no such run directory" in " ".join(missing.output.split())  # rich wraps
    old = tmp_path / "old_run"
    old.mkdir()
    write_rows(old, [{"kind": "train", "step": 1}])
    result = CliRunner().invoke(app, ["plot", str(old)])
    message = " ".join(result.output.split())
    assert result.exit_code == 2 and "old_run: no manifest.json" in message and "Traceback" not in message


@pytest.mark.parametrize("where", ["file", "under_file"])
def test_an_output_folder_that_is_a_file_is_refused_and_kept(runs, tmp_path, where):
    afile = tmp_path / "afile"
    afile.write_text("a user's file\n")
    out = afile if where == "file" else afile / "plots"
    with pytest.raises(ValueError, match="afile"):
        plot_runs(runs, out)
    result = CliRunner().invoke(app, ["plot", *map(str, runs), "--out", str(out)])
    message = " ".join(result.output.split())
    assert result.exit_code == 2 and "afile" in message and "Traceback" not in result.output, result.output
    assert afile.read_text() == "a user's file\n"


def test_labels_and_smoothing():
    kinds = {"weights_act_on": "reward", "normalization": "free", "advantage": "group_norm", "algo": "grpo"}
    assert method_name(Method(controller="fixed", scalarizer="tchebycheff", **kinds)) == "tchebycheff"
    assert method_name(Method(controller="ctwa", scalarizer="linear", **kinds)) == "ctwa"
    smoothed = moving_average(np.array([0.0, 1.0, 2.0, 3.0, 4.0]), 3)
    assert smoothed.tolist() == [0.5, 1.0, 2.0, 3.0, 3.5]  # centred: no lag


def test_constant_weights_are_drawn_on_a_readable_axis(tmp_path):
    """Equal fixed weights (1/3 each, stored as 0.3333 and 0.3334) must not fill the axis with a rounding difference."""
    import matplotlib

    matplotlib.use("Agg")
    from morl.plot import weights_figure

    run_dir = write_manifest(tmp_path / "run", ["a", "b"])
    rows = [{"kind": "train", "step": s, M.weight("a"): 0.3333, M.weight("b"): 0.3334} for s in range(1, 6)]
    write_rows(run_dir, rows, torn=False)
    run = load_run(run_dir)
    fig = weights_figure([run], {run.label: "#000000"})
    low, high = fig.axes[0].get_ylim()
    assert high - low > 0.05 and low < 0.3333 < 0.3334 < high


def test_the_covariance_figure_says_what_the_law_does_not_promise(runs, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    from morl.plot import covariance_figure

    fig = covariance_figure([load_run(r) for r in runs], {"linear": "#000", "ctwa": "#111"})
    title = fig.get_suptitle()
    assert "on the batch trained on" in title and "held-out objective can still fall" in title


def test_a_panel_says_which_runs_it_lacks(runs, tmp_path):
    """The legend lists both runs; a panel only one of them logs says so instead of looking complete."""
    written = {item.name: item for item in plot_runs(runs, tmp_path / "plots", dpi=40)}
    covariance_notes = written["covariances"].notes
    for objective in OBJECTIVES:
        assert f"covariance({objective}, clipped weight): not logged by linear" in covariance_notes
    assert not any(note.startswith(f"covariance({o}, score)") for o in OBJECTIVES for note in covariance_notes)
    assert written["clipping"].notes == ["advantage mass clipped away: not logged by linear"]
    assert written["objectives"].notes == []


def test_a_clipping_panel_at_zero_throughout_is_left_out_and_said(tmp_path):
    run_dir = write_manifest(tmp_path / "run", ["a"])
    rows = [
        {"kind": "train", "step": s, M.CLIP_RATIO_REGION: 0.0, M.CLIP_TOKEN_FRACTION: 0.001 * (s % 3)}
        for s in range(1, 30)
    ]
    write_rows(run_dir, rows, torn=False)
    (clipping,) = [item for item in plot_runs([run_dir], tmp_path / "plots", dpi=40) if item.name == "clipping"]
    assert clipping.panels == ["clipped tokens (updated policy)"]
    assert len(clipping.notes) == 1 and clipping.notes[0].startswith("clipped tokens (in update): 0 on every step")

    rows[3][M.CLIP_RATIO_REGION] = 0.02  # one step clipped something: the panel is drawn
    write_rows(run_dir, rows, torn=False)
    (clipping,) = [item for item in plot_runs([run_dir], tmp_path / "plots2", dpi=40) if item.name == "clipping"]
    assert clipping.panels == ["clipped tokens (in update)", "clipped tokens (updated policy)"]
    assert clipping.notes == []
