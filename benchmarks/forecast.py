"""Does the interference forecast see a collapse coming? Lead time, false alarms and cost, against the covariance alarm.

Runs the quickstart's two recipes on several seeds with the default diagnostics (a forecast every 5 steps; the alarm
when the EMA of its z stays below -0.5 for 3 forecasts) and a greedy evaluation every 5 steps on 100 held-out
prompts:

- equal weights (``quickstart_linear.yaml``), which collapse onto the cheap mode: the *collapse step* is the first
  evaluation with greedy accuracy below 0.5; the *lead time* is the collapse step minus the step of the first forecast
  alarm on accuracy (and, separately, minus the onset of the alarm still active at the collapse);
- tuned CTWA (``quickstart.yaml``), which does not collapse: every forecast alarm on accuracy is a false alarm.

The covariance alarm (``alarm/{m}``, in-batch covariance with the score or the clipped weight) is scored the same way.
Cost: the forecast's seconds per step (``timing/forecast``, 0 between measurements) over the step's other timings.

Usage: ``python benchmarks/forecast.py [--seeds 0 1 2 3 4] [--out runs/forecast-study]``; TinySort:
``--collapsing cookbook/recipes/tinysort_linear.yaml --healthy cookbook/recipes/tinysort.yaml --objective
exact_match``.
Finished runs in ``--out`` are read, not run again. Prints a table per recipe and a summary.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from morl import metrics as M
from morl.diagnostics import DiagnosticsConfig, forecast_alarm
from morl.run import read_metrics

REPO = Path(__file__).resolve().parents[1]
OVERRIDES = [
    "train.eval_every=5",
    "data.eval_size=100",
    "train.eval_sampled=false",
    "train.progress=false",
    "train.checkpoint_every=0",
]
COLLAPSE = 0.5


def run(recipe: Path, out: Path, seed: int, extra: list[str]) -> Path:
    run_dir = out / f"{recipe.stem}-seed{seed}"
    if (run_dir / "training_state.json").exists():
        return run_dir
    sets = [*OVERRIDES, f"train.seed={seed}", *extra]
    cmd = [sys.executable, "-m", "morl", "fit", str(recipe), "--output-dir", str(run_dir), "--overwrite"]
    for item in sets:
        cmd += ["--set", item]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return run_dir


def alarm_states(run_dir: Path, objective: str, signal: str) -> list[tuple[int, bool]]:
    """``(step, raised)`` of the alarm on ``objective`` after each step.

    The forecast alarm is replayed on the logged z with the current defaults (``DiagnosticsConfig``), so a change of
    the rule is measured without training again; the covariance alarm is read as the run logged it.
    """
    rows = [r for r in read_metrics(run_dir) if r.get("kind") != "eval"]
    if signal != "forecast":
        key = M.alarm(objective)
        return [(r["step"], r.get(key, 0.0) >= 1) for r in rows]
    alarm = forecast_alarm([objective], DiagnosticsConfig())
    key = M.forecast("z", objective)
    states = []
    for r in rows:
        if key in r:
            alarm.observe(r["step"], np.array([np.nan if r[key] is None else r[key]], dtype=float))
        states.append((r["step"], bool(alarm.active_[0])))
    return states


def alarm_onsets(run_dir: Path, objective: str, signal: str) -> list[int]:
    """Steps where an alarm on ``objective`` was raised."""
    states = alarm_states(run_dir, objective, signal)
    return [s for i, (s, on) in enumerate(states) if on and (i == 0 or not states[i - 1][1])]


def active_onset(run_dir: Path, objective: str, signal: str, at: int) -> int | None:
    """Onset of the alarm still raised at step ``at`` (None if none was)."""
    onset = None
    for step, on in alarm_states(run_dir, objective, signal):
        if step > at:
            break
        onset = (onset or step) if on else None
    return onset


def study(run_dir: Path, objective: str = "accuracy") -> dict:
    rows = read_metrics(run_dir)
    evals = [(r["step"], r[M.eval_metric("greedy", objective)]) for r in rows if r.get("kind") == "eval"]
    collapse = next((s for s, acc in evals if acc < COLLAPSE), None)
    steps = [r for r in rows if r.get("kind") != "eval"]
    forecast = np.mean([r.get("timing/forecast", 0.0) for r in steps])
    other = np.mean([sum(v for k, v in r.items() if k.startswith("timing/") and k != "timing/forecast") for r in steps])
    out = {"collapse": collapse, "final": evals[-1][1], "overhead": forecast / other}
    for signal in ("forecast", "covariance"):
        onsets = alarm_onsets(run_dir, objective, signal)
        out[f"{signal}_onsets"] = onsets
        if collapse is not None:
            first = next((s for s in onsets if s <= collapse), None)
            active = active_onset(run_dir, objective, signal, collapse)
            out[f"{signal}_lead_first"] = None if first is None else collapse - first
            out[f"{signal}_lead_active"] = None if active is None else collapse - active
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "forecast-study")
    parser.add_argument("--collapsing", default="cookbook/recipes/quickstart_linear.yaml")
    parser.add_argument("--healthy", default="cookbook/recipes/quickstart.yaml")
    parser.add_argument("--objective", default="accuracy", help="the objective whose collapse is forecast")
    parser.add_argument("--set", dest="extra", action="append", default=[], help="another recipe override")
    args = parser.parse_args()
    results: dict[str, list[dict]] = {}
    for kind, recipe in (("collapsing", args.collapsing), ("healthy", args.healthy)):
        results[kind] = []
        for seed in args.seeds:
            run_dir = run(REPO / recipe, args.out, seed, args.extra)
            results[kind].append({"seed": seed, **study(run_dir, args.objective)})
    print(
        f"{'recipe':<11}{'seed':>5}{'collapse':>10}{'final':>7}  {'forecast alarms':<22}{'lead (first/active)':<21}"
        f"{'covariance alarms':<20}{'lead':<12}{'cost':>6}"
    )
    for kind, items in results.items():
        for r in items:
            lead_f = f"{r.get('forecast_lead_first')}/{r.get('forecast_lead_active')}" if r["collapse"] else "-"
            lead_c = f"{r.get('covariance_lead_first')}/{r.get('covariance_lead_active')}" if r["collapse"] else "-"
            print(
                f"{kind:<11}{r['seed']:>5}{r['collapse']!s:>10}{r['final']:>7.3f}  {r['forecast_onsets']!s:<22}"
                f"{lead_f:<21}{r['covariance_onsets']!s:<20}{lead_c:<12}{r['overhead']:>6.1%}"
            )
    collapsing, healthy = results["collapsing"], results["healthy"]
    for signal in ("forecast", "covariance"):
        ahead = sum(1 for r in collapsing if r["collapse"] and (r.get(f"{signal}_lead_first") or 0) >= 10)
        ahead_active = sum(1 for r in collapsing if r["collapse"] and (r.get(f"{signal}_lead_active") or 0) >= 10)
        collapsed = sum(1 for r in collapsing if r["collapse"])
        false = sum(1 for r in healthy if r["collapse"] is None for _ in r[f"{signal}_onsets"])
        false_runs = sum(1 for r in healthy if r["collapse"] is None and r[f"{signal}_onsets"])
        print(
            f"{signal}: alarm >= 10 steps ahead on {ahead}/{collapsed} collapsing seeds (first alarm), "
            f"{ahead_active}/{collapsed} (alarm active at the collapse); false accuracy alarms on healthy runs: "
            f"{false} ({false_runs} of {len(healthy)} runs)"
        )
    costs = [r["overhead"] for items in results.values() for r in items]
    print(f"forecast cost: {np.mean(costs):.1%} of a step on average (max {max(costs):.1%})")


if __name__ == "__main__":
    main()
