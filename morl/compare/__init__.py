"""``morl compare``: one recipe under several methods and seeds, then a table of who paid for what.

Two parts: :mod:`morl.compare.sweep` trains the runs, :mod:`morl.compare.report` reads finished run directories
(their ``manifest.json`` and ``metrics.jsonl``) and writes the report, so a sweep is re-reported without
retraining: ``write_report("runs/compare")``.

Every run uses the base recipe's policy, data, rewards, algorithm, rollout and training settings; only the
method changes, and each seed is shared by all methods (same data order, same initial model, same first
samples). A method name resolves to recipe sections, first match wins (:func:`plan_method`):

- **the recipe's own**: a method the recipe already runs — its controller is named so (``ctwa`` for a recipe with
  ``controller: {name: ctwa, ...}``), or with fixed weights its scalarizer; ``linear`` with fixed weights keeps the
  recipe's weights — runs with the recipe's settings, unchanged;
- **a method recipe**: a path to a ``.yaml`` file (named by its stem), or ``<method>.yaml`` beside the base
  recipe: its ``scalarizer``, ``advantage`` and ``controller``;
- **a preset** shipped inside morl (``morl/compare/presets/<method>.yaml``, :func:`preset_names`): its
  ``scalarizer`` and ``controller`` (the base keeps its advantage estimator). Presets hold the paper's settings
  for each baseline; the CTWA preset is the paper's defaults, which are not tuned to any task. Files of the
  current folder are never consulted, so an installed morl compares what a source checkout does;
- a registered component without a preset (``fixed``, ``schedule``, a plugin's) with its defaults.

An unknown name is an error that lists the known ones. The report says, for each method, the settings it ran
with (from each run's manifest) and where they came from (``sweep.json`` records it).

Runs go to ``OUT/<method>/seed<k>``, indexed by ``OUT/sweep.json``; a finished run is skipped, and one with
checkpoints but not finished resumes from its newest checkpoint. The summary, from the held-out evaluations
(greedy by default), is ``comparison.md``, ``comparison.json`` and ``comparison.png``, plus the training curves
of every run in ``OUT/plots``.

**Interference score** of a run: the largest drop of any objective below its starting value, over the run's
evaluations after the start (0 if none drops). Drops are in reward units (for 0/1 rewards, a share of the
scale); for ``mean_length``, where lower is better, the rise counts, relative to the starting length — a 20%
longer answer weighs like a 0.2 drop of a 0/1 reward; an objective whose manifest says it minimizes counts its
rise. Scores are averaged over seeds (mean ± std). An objective whose manifest marks it as a moving target
(its held-out value is relative to the training history, e.g. the paper's conciseness, which is 1 before any
training length is known) is reported but not scored — as in the paper, conciseness counts through the mean
length; ``ignore`` leaves out more objectives.

Example:
    >>> rows = [{"step": 0, "eval/greedy/acc": 0.9, "eval/greedy/mean_length": 40.0},
    ...         {"step": 10, "eval/greedy/acc": 0.5, "eval/greedy/mean_length": 44.0}]
    >>> interference(rows, ["acc", "mean_length"], "greedy")
    (0.4, 'acc')
"""

from morl.compare.report import (
    METHOD_KEYS,
    SWEEP_FILE,
    Comparison,
    RunRef,
    RunSummary,
    find_runs,
    format_spec,
    interference,
    mean_std,
    method_settings,
    read_sweep,
    summarize_run,
    write_report,
)
from morl.compare.sweep import (
    MethodPlan,
    compare,
    finished,
    known_methods,
    method_components,
    plan_method,
    preset_file,
    preset_names,
    run_sweep,
)

__all__ = [
    "METHOD_KEYS",
    "SWEEP_FILE",
    "Comparison",
    "MethodPlan",
    "RunRef",
    "RunSummary",
    "compare",
    "find_runs",
    "finished",
    "format_spec",
    "interference",
    "known_methods",
    "mean_std",
    "method_components",
    "method_settings",
    "plan_method",
    "preset_file",
    "preset_names",
    "read_sweep",
    "run_sweep",
    "summarize_run",
    "write_report",
]
