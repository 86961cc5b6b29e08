"""How many CPU threads torch uses for a fit: ``train.threads``.

Why a default other than torch's: torch starts one thread per core. For a small model every operator is tiny, so
the time goes to per-call overhead and to threads meeting at every operator: a second thread saved 20–40% of a
step on an idle 2-core machine, but when another process kept a core busy each operator waited for the
descheduled thread and the TinyMath model (138k parameters) stepped 2.7–3.8× slower at 2 threads than at 1
(``benchmarks/RESULTS.md``, "Threads"). A large model's matrix products do split across cores, so it keeps
torch's setting.

Example:
    >>> resolve_threads("auto", parameters=138_000, device="cpu")
    1
    >>> resolve_threads("auto", parameters=1_500_000_000, device="cpu") is None  # torch's setting, untouched
    True
    >>> resolve_threads(4, parameters=138_000, device="cpu")
    4
"""

from __future__ import annotations

from typing import Any, Literal

#: Below this many parameters a policy on the CPU trains on one thread under ``threads: auto`` (measured, see above).
SMALL_MODEL_PARAMETERS = 5_000_000

ThreadSetting = int | Literal["auto"] | None


def resolve_threads(setting: ThreadSetting, parameters: int, device: Any) -> int | None:
    """The thread count to give ``torch.set_num_threads``, or None to leave torch's setting alone.

    ``setting`` is ``train.threads``: a number is used as is; ``None`` leaves torch alone (its default, or what the
    caller set); ``"auto"`` is 1 for a policy on the CPU with fewer than :data:`SMALL_MODEL_PARAMETERS`
    parameters, else None. A policy on an accelerator is left alone: its CPU threads only feed the device.
    """
    if setting is None or isinstance(setting, int):
        return setting
    if setting != "auto":
        raise ValueError(f"train.threads should be a positive number, 'auto' or None. Found `threads = {setting!r}`")
    on_cpu = str(getattr(device, "type", device)) == "cpu"
    return 1 if on_cpu and parameters < SMALL_MODEL_PARAMETERS else None


def policy_threads(setting: ThreadSetting, policy: Any) -> int | None:
    """:func:`resolve_threads` for a :class:`morl.policy.Policy` (every parameter counts, adapters' base too)."""
    if setting is None or isinstance(setting, int):
        return setting
    parameters = sum(p.numel() for p in policy.model.parameters())
    return resolve_threads(setting, parameters, policy.device)
