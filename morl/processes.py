"""The processes around a run, on Linux: children that die with it, orphans it adopts, signals that get through.

Three things Python's standard library cannot say, each a ``prctl`` or ``sigaction`` call through ``ctypes``:

- :func:`die_with_parent`: a forked helper (the reward worker) is killed when the process that forked it dies,
  even by ``SIGKILL``, instead of living on as an orphan that keeps the run's files and lock open;
- :func:`adopt_orphans` and :func:`descendants`: processes a reward started and left behind stay this process's
  descendants (not ``init``'s), so they can be found and stopped when the command ends;
- :func:`reset_on_delivery`: a Python signal handler whose next delivery also restores the default action, so a
  second ``SIGINT``/``SIGTERM`` ends the process even while C code holds the GIL and no Python handler can run.

Elsewhere (macOS, Windows, an unknown architecture) each function does nothing and returns ``False``.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import platform
import signal
import sys
import time
from collections.abc import Iterable
from typing import Any

_LINUX = sys.platform.startswith("linux")
_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36
_SA_RESETHAND = 0x80000000
_SA_ONSTACK = 0x08000000
# ``struct sigaction`` of glibc and musl on 64-bit x86 and ARM: the handler, a 1024-bit signal mask, then the flags
_SA_FLAGS_OFFSET = 8 + 128 if platform.machine() in ("x86_64", "aarch64") else None


@functools.cache
def _libc() -> Any:
    return ctypes.CDLL(None, use_errno=True)


def _prctl(option: int, value: int) -> bool:
    if not _LINUX:
        return False
    try:
        return _libc().prctl(option, value, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def die_with_parent(parent_pid: int) -> bool:
    """In a forked child: be killed (``SIGKILL``) when the thread that forked it ends, which for a child forked by
    the main thread is when the parent process dies. Exits at once if the parent is already gone."""
    if not _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL):
        return False
    if os.getppid() != parent_pid:  # it died before the prctl: no signal will come
        os._exit(1)
    return True


def adopt_orphans() -> bool:
    """Make this process the subreaper of its descendants: one whose parent dies becomes this process's child."""
    return _prctl(_PR_SET_CHILD_SUBREAPER, 1)


def descendants(pid: int | None = None) -> list[int]:
    """The live processes below ``pid`` (default: this process), parents before their children."""
    if not _LINUX:
        return []
    children: dict[int, list[int]] = {}
    with contextlib.suppress(OSError):
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                stat = _stat(int(entry.name))
                if stat is not None and stat[0] != "Z":
                    children.setdefault(stat[1], []).append(int(entry.name))
    found: list[int] = []
    todo = [os.getpid() if pid is None else pid]
    while todo:
        below = children.get(todo.pop(0), [])
        found += below
        todo += below
    return found


def multiprocessing_services() -> set[int]:
    """The pids of the stdlib multiprocessing's own service processes (its resource tracker, which a ``spawn`` start
    launches once and which ends by itself with this process): not leftovers of anyone's work."""
    from multiprocessing import resource_tracker

    pid = getattr(getattr(resource_tracker, "_resource_tracker", None), "_pid", None)
    return {pid} if isinstance(pid, int) else set()


def stop(pids: Iterable[int], grace_s: float = 0.5, wait_s: float = 2.0) -> list[int]:
    """Give the processes ``grace_s`` to end on their own (a helper whose input just closed), then ``SIGKILL`` the
    rest and wait up to ``wait_s`` for them; returns those that had to be killed. Reaps the ones that are this
    process's children (an orphan among them becomes one when its parent dies, under :func:`adopt_orphans`)."""
    left = _wait(list(pids), grace_s)
    killed = list(left)
    for pid in killed:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    _wait(left, wait_s)
    return killed


def _wait(pids: list[int], timeout_s: float) -> list[int]:
    """The processes among ``pids`` still alive after up to ``timeout_s``; this process's children are reaped."""
    left = list(pids)
    deadline = time.monotonic() + timeout_s
    while left:
        for pid in list(left):
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            stat = _stat(pid)
            if stat is None or (stat[0] == "Z" and stat[1] != os.getpid()):  # gone, or its parent will reap it
                left.remove(pid)
        if not left or time.monotonic() >= deadline:
            break
        time.sleep(0.01)
    return left


def drop_inherited_locks() -> None:
    """In a forked child: close its copies of the file descriptors that hold a ``flock`` lock (the run directory's
    ``.lock``). A lock belongs to the open file, so a child's copy would keep it after the parent dies; closing the
    copy releases nothing while the parent holds its own."""
    if not _LINUX:
        return
    with contextlib.suppress(OSError):
        for name in os.listdir("/proc/self/fdinfo"):
            try:
                with open(f"/proc/self/fdinfo/{name}") as info:
                    locked = any(line.startswith("lock:") and "FLOCK" in line for line in info)
            except OSError:  # closed since the listing (the listing's own descriptor)
                continue
            if locked:
                with contextlib.suppress(OSError):
                    os.close(int(name))


def reset_on_delivery(signum: int) -> bool:
    """(Re)install ``signum``'s Python handler so that its next delivery also restores the default action.

    Python runs a handler in the main thread between two bytecodes, so while C code holds the GIL (a reward
    computing ``9**9**9``) no handler runs, however many signals come. With this flag the first signal is noted as
    usual and the second one ends the process at once, as if no handler were set. The handler must call this again
    when it runs, to keep the next signal for itself.
    """
    if not _LINUX or _SA_FLAGS_OFFSET is None:
        return False
    handler = signal.getsignal(signum)
    if not callable(handler):  # SIG_DFL, SIG_IGN, or a handler not set from Python: nothing to make one-shot
        return False
    signal.signal(signum, handler)  # the first delivery reset the kernel's action; Python still lists the handler
    action = ctypes.create_string_buffer(256)  # larger than struct sigaction
    libc = _libc()
    if libc.sigaction(signum, None, action) != 0:
        return False
    flags = ctypes.c_uint32.from_buffer(action, _SA_FLAGS_OFFSET)
    if not flags.value & _SA_ONSTACK:  # Python always sets it: without it, this is not the layout assumed
        return False
    flags.value |= _SA_RESETHAND
    return libc.sigaction(signum, action, None) == 0


def command(pid: int) -> str:
    """A process's command line as ``ps`` shows it (``?`` when it is gone or hidden)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().replace(b"\0", b" ").decode(errors="replace").strip() or "?"
    except OSError:
        return "?"


def _stat(pid: int) -> tuple[str, int] | None:
    """A process's state letter and parent pid, from ``/proc/PID/stat``; None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            fields = fh.read().rpartition(b")")[2].split()
    except OSError:
        return None
    return fields[0].decode(), int(fields[1])
