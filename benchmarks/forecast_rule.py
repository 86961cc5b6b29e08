"""Choose the forecast alarm's rule on named seeds, offline: every rule of a grid replayed on the z the runs logged.

Reads the runs ``benchmarks/forecast.py`` wrote (``OUT/<task>/<recipe>-seed<k>``, a collapsing and a healthy recipe
per task) and, for each rule — an EMA of the forecast's z (rate ``ema``) below ``threshold`` on ``patience``
consecutive forecasts — counts per task: collapsing seeds warned at least 10 steps before the collapse (first alarm
on the objective, at or before the first greedy evaluation below 0.5) and alarms on the objective in healthy runs
(false alarms). A rule *meets the goal* when, on every task, it warns 10 steps ahead on at least 4 of 5 collapsing
seeds with at most 1 false alarm. The rule is then frozen in ``DiagnosticsConfig``'s defaults before fresh seeds are
run (``benchmarks/forecast.py`` replays the defaults).

Usage: ``python benchmarks/forecast_rule.py --task tinymath:accuracy:runs/forecast-study/tinymath
--task tinysort:exact_match:runs/forecast-study/tinysort``.
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import numpy as np

from morl import metrics as M
from morl.diagnostics import InterferenceAlarm
from morl.run import read_metrics

COLLAPSE = 0.5
LEAD = 10
EMAS = (1.0, 0.7, 0.5, 0.3)
THRESHOLDS = (0.0, -0.25, -0.5, -0.75, -1.0)
PATIENCES = (1, 2, 3, 4)


def series(run_dir: Path, objective: str) -> tuple[list[tuple[int, float]], int | None]:
    """The logged forecast z of ``objective`` by step, and the collapse step (None: no collapse)."""
    rows = read_metrics(run_dir)
    key = M.forecast("z", objective)
    z = [(r["step"], r[key]) for r in rows if r.get("kind") != "eval" and key in r and r[key] is not None]
    evals = [(r["step"], r[M.eval_metric("greedy", objective)]) for r in rows if r.get("kind") == "eval"]
    return z, next((s for s, v in evals if v < COLLAPSE), None)


def onsets(z: list[tuple[int, float]], ema: float, threshold: float, patience: int) -> list[int]:
    alarm = InterferenceAlarm(["m"], ema=ema, patience=patience, threshold=threshold)
    steps = []
    for step, value in z:
        event = alarm.observe(step, np.array([value]))[0]
        if event is not None and event["event"] == "interference_alarm":
            steps.append(step)
    return steps


def score(runs: list[tuple[list, int | None, bool]], rule: tuple[float, float, int]) -> tuple[int, int, int, int]:
    """(warned ahead, collapsed, false alarms, healthy runs) of ``rule`` on one task's runs."""
    ahead = collapsed = false = healthy = 0
    for z, collapse, is_healthy in runs:
        found = onsets(z, *rule)
        if is_healthy:
            healthy += 1
            false += len(found) if collapse is None else 0
        elif collapse is not None:
            collapsed += 1
            first = next((s for s in found if s <= collapse), None)
            ahead += first is not None and collapse - first >= LEAD
    return ahead, collapsed, false, healthy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", action="append", required=True, help="NAME:OBJECTIVE:FOLDER")
    parser.add_argument("--healthy", default="healthy recipe stems", help=argparse.SUPPRESS)
    args = parser.parse_args()
    tasks = {}
    for spec in args.task:
        name, objective, folder = spec.split(":", 2)
        runs = []
        for run_dir in sorted(Path(folder).iterdir()):
            if not (run_dir / "metrics.jsonl").exists():
                continue
            z, collapse = series(run_dir, objective)
            runs.append((z, collapse, "linear" not in run_dir.name))
        tasks[name] = runs
    rows = []
    for rule in itertools.product(EMAS, THRESHOLDS, PATIENCES):
        scores = {name: score(runs, rule) for name, runs in tasks.items()}
        meets = all(a >= 4 and f <= 1 for a, _, f, _ in scores.values())
        margin = sum(a - 2 * f for a, _, f, _ in scores.values())
        rows.append((meets, margin, rule, scores))
    rows.sort(key=lambda r: (not r[0], -r[1]))
    names = list(tasks)
    print(f"{'ema':>5}{'thr':>7}{'pat':>5}  " + "  ".join(f"{n + ' ahead/false':>22}" for n in names) + "  meets")
    for meets, _, (ema, thr, pat), scores in rows[:25]:
        cells = "  ".join(f"{f'{a}/{c} ahead, {f} false ({h})':>22}" for a, c, f, h in (scores[n] for n in names))
        print(f"{ema:>5}{thr:>7}{pat:>5}  {cells}  {'yes' if meets else 'no'}")


if __name__ == "__main__":
    main()
