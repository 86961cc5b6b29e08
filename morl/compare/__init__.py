"""``morl compare``: one recipe under several methods and seeds, then a table of who paid for what.

Two parts: :mod:`morl.compare.sweep` trains the runs, :mod:`morl.compare.report` reads finished run directories
(their ``manifest.json`` and ``metrics.jsonl``) and writes the report, so a sweep is re-reported without
retraining: ``write_report("runs/compare")``.

Every run uses the base recipe's policy, data, rewards, algorithm, rollout and training settings; only the
method changes, and each seed is shared by all methods (same data order, same initial model, same first
samples). A method name resolves to components, first match wins:

- ``linear``: fixed weights (the base recipe's, if its controller is ``fixed``) with linear scalarisation;
- a recipe file ``<method>.yaml`` beside the base recipe or in ``cookbook/recipes/``: its ``scalarizer``,
  ``advantage`` and ``controller`` (where the weights apply is part of the method); a path to a ``.yaml``
  file works too, named by its stem;
- a registered controller (``ctwa``, ``mgda``, ...) with linear scalarisation;
- a registered scalarizer (``tchebycheff``, ...) with fixed equal weights.

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
    SWEEP_FILE,
    Comparison,
    RunRef,
    RunSummary,
    find_runs,
    interference,
    mean_std,
    read_sweep,
    summarize_run,
    write_report,
)
from morl.compare.sweep import METHOD_KEYS, compare, finished, method_components, run_sweep

__all__ = [
    "METHOD_KEYS",
    "SWEEP_FILE",
    "Comparison",
    "RunRef",
    "RunSummary",
    "compare",
    "find_runs",
    "finished",
    "interference",
    "mean_std",
    "method_components",
    "read_sweep",
    "run_sweep",
    "summarize_run",
    "write_report",
]
