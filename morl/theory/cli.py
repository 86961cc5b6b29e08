"""``morl theory check``: verify the local covariance law (Theorem 4.2) on a seeded random bandit.

For a sweep of step sizes η it prints, per objective, the exact change ``J_m(π') − J_m(π)`` after one tilt, the
prediction ``η E_x Cov(r_m, s)``, and ``(exact − prediction)/η²``, which must stay bounded and converge to
``½ E_x κ(r_m, s, s)`` (the "limit" column) if the law holds with an O(η²) remainder.
"""

from __future__ import annotations

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from morl.theory.bandit import covariance_law_sweep, random_bandit

theory_app = typer.Typer(help="Executable theory: check the paper's local results on exact bandits.")


@theory_app.callback()
def _main() -> None:
    """Executable theory: check the paper's local results on exact bandits."""


@theory_app.command()
def check(
    seed: int = typer.Option(0, help="Seed of the random bandit and of its scalarisation weights."),
    objectives: int = typer.Option(3, "--objectives", "-M", min=1, help="Number of objectives M."),
    completions: int = typer.Option(6, "--completions", "-Y", min=2, help="Completions per prompt Y."),
    prompts: int = typer.Option(4, "--prompts", "-X", min=1, help="Number of prompts X."),
    eta_max: float = typer.Option(1e-1, help="Largest step size."),
    decades: int = typer.Option(5, min=1, help="Number of step sizes, one per decade below --eta-max."),
) -> None:
    """Exact change vs η·Cov(r_m, s) after one KL-regularised step, over a sweep of η."""
    bandit = random_bandit(seed, prompts=prompts, completions=completions, objectives=objectives)
    weights = np.random.default_rng(seed + 1).dirichlet(np.ones(objectives))
    s = bandit.scalarize(weights)
    etas = [eta_max * 10.0**-k for k in range(decades)]
    limit = 0.5 * bandit.third_comoment(s)
    table = Table(
        title=f"Covariance law (seed {seed}, X={prompts}, Y={completions}, M={objectives}), λ={np.round(weights, 3)}",
        caption="limit = ½ E_x E_π[(r_m − E r_m)(s − E s)²], the value (exact − pred)/η² must approach.",
    )
    for name in ("η", "m", "exact ΔJ_m", "pred η·Cov", "(exact−pred)/η²", "limit"):
        table.add_column(name, justify="right")
    for row in covariance_law_sweep(bandit, s, etas):
        for m in range(objectives):
            table.add_row(
                f"{row.eta:.0e}",
                str(m),
                f"{row.exact[m]:+.6e}",
                f"{row.predicted[m]:+.6e}",
                f"{row.ratio[m]:+.6f}",
                f"{limit[m]:+.6f}",
                end_section=m == objectives - 1,
            )
    Console().print(table)
