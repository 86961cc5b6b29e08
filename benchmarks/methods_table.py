"""The methods table of the README: every method of a ``morl compare`` sweep, on each task, over its seeds.

For each run of the sweep folders (``morl compare ... --out FOLDER``): the final held-out evaluation (greedy and
sampled accuracy, sampled length, the other objectives sampled), the hypervolume of the final sampled point and the
seconds per training step. Mean ± std over seeds.

Hypervolume: of the run's final sampled point against the reference point 0, each objective scaled to [0, 1] with a
larger value better: 0/1 rewards as they are, the mean length as ``1 - tokens / max_new_tokens`` (the paper's
conciseness as length), a reward on another scale divided by its maximum (TinySort's brevity: / 10). For one point
that is the product of the scaled objectives: it is 0 when any objective is 0, so a collapse on one objective
shows.

Seconds per step: the mean over steps of the step's own timings (rollout, rewards, update, controller,
diagnostics), one thread; the sweeps shared the machine's 2 cores, so compare them within a table, not across.

Usage: ``python benchmarks/methods_table.py FOLDER [FOLDER ...]``; prints one Markdown table per folder, or with
``--merge`` one table over all of them (further seeds of some methods swept into another folder).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import numpy as np

from morl import metrics as M
from morl.compare.report import read_sweep
from morl.controllers.dynamic import hypervolume
from morl.run import read_metrics

SCALES = {"brevity": 10.0}  # objectives on another scale than [0, 1]
LENGTH_OBJECTIVES = ("conciseness",)  # evaluated as mean length instead (their 0/1 reward is a moving target)


def run_row(run_dir: Path) -> dict[str, float]:
    manifest = json.loads((run_dir / "manifest.json").read_text())
    recipe = manifest.get("recipe", {})
    max_new = float(recipe.get("rollout", {}).get("max_new_tokens", 64))
    objectives = [o["name"] for o in manifest["objectives"]]
    rows = read_metrics(run_dir)
    final = [r for r in rows if r.get("kind") == "eval"][-1]
    steps = [r for r in rows if r.get("kind") != "eval"]
    primary = objectives[0]
    out = {
        "greedy": final[M.eval_metric("greedy", primary)],
        "sampled": final[M.eval_metric("sampled", primary)],
        "length": final[M.eval_mean_length("sampled")],
        "seconds": float(np.mean([sum(v for k, v in r.items() if k.startswith("timing/")) for r in steps])),
    }
    point = []
    for name in objectives:
        if name in LENGTH_OBJECTIVES:
            point.append(max(0.0, 1 - out["length"] / max_new))
            continue
        value = final[M.eval_metric("sampled", name)]
        if name != primary:
            out[name] = value
        point.append(value / SCALES.get(name, 1.0))
    out["hypervolume"] = hypervolume(np.array([point]), np.zeros(len(point)))
    return out


def cell(values: list[float], digits: int) -> str:
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def table(folders: list[Path]) -> str:
    """One table over the sweeps in ``folders`` (a method's seeds may come from several sweeps of one task)."""
    by_method: dict[str, list[dict[str, float]]] = {}
    seen: set[Path] = set()
    for folder in folders:
        for ref in read_sweep(folder):
            if (ref.run_dir / "training_state.json").exists() and ref.run_dir.resolve() not in seen:
                seen.add(ref.run_dir.resolve())
                by_method.setdefault(ref.method, []).append(run_row(ref.run_dir))
    columns = list(dict.fromkeys(k for rows in by_method.values() for r in rows for k in r))
    digits = {"length": 1, "seconds": 2}
    lines = ["| method | seeds | " + " | ".join(columns) + " |", "|---|---:|" + "---:|" * len(columns)]
    order = sorted(by_method, key=lambda m: -statistics.mean(r["hypervolume"] for r in by_method[m]))
    for method in order:
        rows = by_method[method]
        cells = [cell([r[c] for r in rows if c in r], digits.get(c, 3)) for c in columns]
        lines.append(f"| {method} | {len(rows)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", type=Path, nargs="+")
    parser.add_argument("--merge", action="store_true", help="one table over every folder (sweeps of one task)")
    args = parser.parse_args()
    groups = [args.folders] if args.merge else [[folder] for folder in args.folders]
    for group in groups:
        print(f"## {', '.join(map(str, group))}\n\n{table(group)}\n")


if __name__ == "__main__":
    main()
