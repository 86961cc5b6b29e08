"""Stopping a run cleanly on SIGINT/SIGTERM: after the current step, with a checkpoint, or at once on a second
signal."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Any

from morl.processes import reset_on_delivery


class Interrupted(KeyboardInterrupt):
    """Training stopped on SIGINT/SIGTERM after writing a checkpoint; ``checkpoint`` is where to resume from."""

    def __init__(self, signum: int, step: int, checkpoint: Path | None) -> None:
        name = signal.Signals(signum).name
        super().__init__(f"stopped by {name} at step {step}; checkpoint: {checkpoint}")
        self.signum = signum
        self.step = step
        self.checkpoint = checkpoint


class GracefulStop:
    """While active (main thread only): SIGINT/SIGTERM stop the loop, after the current step or at once.

    The first signal sets :attr:`signum`; the loop finishes the step, writes a checkpoint and raises
    :class:`Interrupted`. A second signal, or the first one's grace period (``grace_s``) running out while the step
    still runs (a generation or a reward that takes that long), stops **at once**: ``KeyboardInterrupt`` is raised
    wherever the main thread is, so the loop can keep the last complete step's checkpoint and say where to resume.
    Why a grace period: a scheduler's SIGTERM is followed by SIGKILL after some seconds, and the step must not be
    what loses the run. One exception: between :meth:`hold` and :meth:`release` (the policy update and what follows
    it in a step) the stop is held until :meth:`release`, because a half-done update cannot be checkpointed.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, grace_s: float | None = None) -> None:
        self.signum: int | None = None
        self.grace_s = grace_s
        self.stopped_at_once = False  # the second signal (or the grace period) came
        self._holding = False
        self._pending = False
        self._timer: threading.Timer | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> GracefulStop:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
                reset_on_delivery(sig)  # a second signal ends the process even while C code holds the GIL
        return self

    def __exit__(self, *exc: object) -> None:
        if self._timer is not None:
            self._timer.cancel()
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def hold(self) -> None:
        """From here an immediate stop waits for :meth:`release` (the update must finish or not start)."""
        self._holding = True

    def release(self) -> None:
        """End of :meth:`hold`; raises ``KeyboardInterrupt`` if an immediate stop came meanwhile."""
        self._holding = False
        if self._pending:
            self._pending = False
            raise KeyboardInterrupt

    def _handle(self, signum: int, frame: Any) -> None:
        from morl.logging import console

        reset_on_delivery(signum)  # this delivery restored the default action: keep the next signal for this handler
        if self.signum is None:
            self.signum = signum
            grace = f", or after {self.grace_s:g} s" if self.grace_s else ""
            console.print(
                f"[yellow]{signal.Signals(signum).name}[/]: stopping after this step and writing a checkpoint "
                f"(a second SIGINT/SIGTERM{grace}: stop at once, keeping the last complete step's checkpoint)"
            )
            if self.grace_s:
                self._timer = threading.Timer(self.grace_s, self._grace_over)
                self._timer.daemon = True
                self._timer.start()
            return
        self.stopped_at_once = True
        if self._holding:
            self._pending = True
            console.print("[yellow]stopping at once[/], as soon as the policy update under way is finished")
            return
        console.print(f"[yellow]{signal.Signals(signum).name}[/]: stopping at once")
        raise KeyboardInterrupt

    def _grace_over(self) -> None:
        """The step outlived the grace period: deliver the first signal again, in the main thread, as a second one."""
        if self._previous and self.signum is not None:  # a real signal, so a sleep or a wait in the main thread ends
            signal.pthread_kill(threading.main_thread().ident, self.signum)  # type: ignore[arg-type]
