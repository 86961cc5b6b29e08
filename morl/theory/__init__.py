"""Executable theory: the paper's local covariance law, the two-mode example and a μ-PL probe, computed exactly.

- :mod:`morl.theory.bandit` — categorical bandit laboratory (Lemma 4.1, Theorem 4.2, Corollaries 4.6 and 4.7).
- :mod:`morl.theory.two_mode` — the two-mode example, closed forms against simulation.
- :mod:`morl.theory.pl_probe` — μ-PL quantities of a real causal LM on one prompt (imports torch lazily).
- :mod:`morl.theory.cli` — ``morl theory check``.
"""

from morl.theory.bandit import (
    Bandit,
    ClippedStep,
    SweepRow,
    covariance_law_sweep,
    log_softmax,
    random_bandit,
    scalarize,
    softmax,
)
from morl.theory.two_mode import TwoMode, TwoModeTrajectory

__all__ = [
    "Bandit",
    "ClippedStep",
    "PLProbe",
    "SweepRow",
    "TwoMode",
    "TwoModeTrajectory",
    "covariance_law_sweep",
    "log_softmax",
    "probe_pl",
    "random_bandit",
    "scalarize",
    "softmax",
]


def __getattr__(name: str) -> object:
    if name in ("PLProbe", "probe_pl"):
        from morl.theory import pl_probe

        return getattr(pl_probe, name)
    raise AttributeError(f"module 'morl.theory' has no attribute {name!r}")
