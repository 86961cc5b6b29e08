r"""Accuracy: is the final ``\boxed{}`` answer mathematically equal to the ground truth? (0/1)

The paper's first reward ("Uncovering Cross-Objective Interference in Multi-Objective Alignment", 2026,
following its verl reference code): ``r_acc = 1`` iff the last ``\boxed{...}`` of the completion is equivalent
to the ground truth. Equivalence is decided by `math-verify <https://github.com/huggingface/Math-Verify>`_
(``parse`` + ``verify``: ``\frac{1}{2}`` = ``0.5``, ``2\sqrt{2}`` = ``\sqrt{8}``, ``x=3`` = ``3``, intervals,
sets, matrices), never by ``eval``.

Why a separate checker process. Completions are untrusted text, and sympy can spend minutes or gigabytes on
a ten-character answer (``9^{9^{9}}``, ``(10^{6})!``). math-verify's own time limit uses ``signal.alarm``: it
takes whole seconds, works only in the main thread (it raises ``ValueError`` anywhere else) and cannot stop
work stuck inside C code. So the check runs in a child process (started on first use, shared by all
:class:`Accuracy` objects): the child stops a sample at ``timeout_s`` with its own timer, and if the child does
not answer within ``timeout_s + 1`` s it is killed and restarted. Either way ``timeouts_`` counts the sample, and
it scores 0.0, incorrect (``on_timeout: incorrect``, the default), as math-verify and TRL's accuracy reward score
a timed-out check. Not applicable (None) would exempt it from the accuracy comparison altogether, so an answer
built to be slow to check (``\boxed{10^{10^{10^{10}}}}`` for a problem whose answer is 1) would escape the penalty a
wrong answer gets, and a policy could learn to write them; ``on_timeout: not_applicable`` still offers that, for
a checker too slow for some correct answers. Before anything reaches the child, cheap filters give 0 to answers
that are too long (``max_answer_chars``) or nested too deeply; identical strings and plain integers are decided
without a check.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import queue
import re
import subprocess
import sys
import threading
from typing import Any, Literal

from pydantic import Field

from morl.rewards.base import RESERVED_ARGUMENTS, RewardConfig, RewardFn
from morl.rewards.boxed import boxed_answer

#: Longest ``{ ( [`` nesting sent to the checker; real answers nest a few levels, hostile ones hundreds.
MAX_NESTING = 24
_PLAIN_INTEGER = re.compile(r"-?\d{1,100}")
_DISPLAY_ONLY = re.compile(r"\\(?:left|right)(?![A-Za-z])|\$")  # \left( is (, but \leftarrow is an arrow
#: Seconds the parent waits past ``timeout_s`` before it kills a checker stuck in C code.
_KILL_GRACE_S = 1.0
#: Seconds a fresh checker may take to import math-verify and sympy.
_START_TIMEOUT_S = 120.0
#: Address-space cap of the checker, so a huge integer fails with MemoryError instead of swapping.
_CHECKER_MEMORY_BYTES = 4 << 30


class Accuracy(RewardFn):
    r"""1.0 if the last ``\boxed{...}`` answer equals the ground truth (math-verify), else 0.0.

    Rewards getting the answer right, and nothing else: the verifiable signal of the paper's math task.
    Ground truth comes from the dataset column ``answer_column``; a row whose ground truth is ``None``
    scores ``None`` (not applicable). A completion without a well-formed final box scores 0.

    Args:
        answer_column: dataset column with the ground-truth answer (LaTeX or plain text, no ``\boxed``).
        timeout_s: per-sample time limit of the equivalence check; a sample over it (or one that crashes the
            checker) is counted in ``timeouts_`` (the pipeline logs it as ``rewards/accuracy/timeouts``) and scored
            as ``on_timeout`` says.
        on_timeout: ``incorrect`` (default): a check cut off at its limit scores 0.0, as math-verify and TRL do,
            so a slow-to-check answer is never a way out of the penalty for a wrong one; ``not_applicable``:
            None, left out of the accuracy statistics.
        max_answer_chars: longer boxed answers score 0 without a check.

    State: ``timeouts_`` (int), samples whose check was cut off, over the life of the object.

    Example:
        >>> acc = Accuracy()
        >>> acc(["p"] * 3, [r"so \boxed{\dfrac{1}{2}}", r"\boxed{0.6}", "1/2"], answer=["0.5"] * 3)
        [1.0, 0.0, 0.0]
        >>> acc.timeouts_
        0
    """

    name = "accuracy"

    class Config(RewardConfig):
        answer_column: str = Field(
            "answer", description="dataset column with the ground-truth answer (LaTeX or plain text, not boxed)"
        )
        timeout_s: float = Field(
            1.0, gt=0, le=600, description="seconds per equivalence check; a slower one is scored by on_timeout"
        )
        on_timeout: Literal["incorrect", "not_applicable"] = Field(
            "incorrect",
            description="a check cut off at timeout_s (counted in timeouts) scores 0.0 (incorrect, as math-verify "
            "and TRL) or None (not_applicable)",
        )
        max_answer_chars: int = Field(
            1000, ge=1, description="longer boxed answers score 0 without a check (guards the checker)"
        )

    def required_columns(self) -> list[str]:
        return [self.config.answer_column]

    def counters(self) -> dict[str, float]:
        return {"timeouts": float(getattr(self, "timeouts_", 0))}

    def __call__(self, prompts: list[str], completions: list[str], **columns: Any) -> list[float | None]:
        column = self.config.answer_column
        if column not in columns:
            present = sorted(k for k in columns if k not in RESERVED_ARGUMENTS)
            raise KeyError(f"accuracy: ground-truth column {column!r} not given; columns present: {present}")
        golds = list(columns[column])
        if len(golds) != len(completions):
            raise ValueError(f"accuracy: {len(golds)} values in {column!r} for {len(completions)} completions")
        if not hasattr(self, "timeouts_"):
            self.timeouts_ = 0
        scores: list[float | None] = []
        to_check: list[tuple[int, str, str]] = []
        for i, (completion, gold) in enumerate(zip(completions, golds, strict=True)):
            if gold is None:
                scores.append(None)
                continue
            gold = str(gold).strip()
            pred = boxed_answer(completion, max_chars=self.config.max_answer_chars)
            if pred is None or not pred.strip() or not gold or _nesting(pred) > MAX_NESTING:
                scores.append(0.0)
                continue
            verdict = _quick_verdict(_canonical(gold), _canonical(pred))
            scores.append(1.0 if verdict else 0.0)
            if verdict is None:
                to_check.append((i, gold, pred))
        if to_check:
            verdicts = _checker().check([(g, p) for _, g, p in to_check], self.config.timeout_s)
            timed_out = 0.0 if self.config.on_timeout == "incorrect" else None
            for (i, _, _), verdict in zip(to_check, verdicts, strict=True):
                if verdict is None:
                    self.timeouts_ += 1
                scores[i] = timed_out if verdict is None else (1.0 if verdict else 0.0)
        return scores


def _quick_verdict(gold: str, pred: str) -> bool | None:
    """Equal canonical strings are equivalent; two plain integers are compared as integers; else undecided."""
    if gold == pred:
        return True
    if _PLAIN_INTEGER.fullmatch(gold) and _PLAIN_INTEGER.fullmatch(pred):
        return int(gold) == int(pred)
    return None


def _canonical(answer: str) -> str:
    """Spacing and ``\\dfrac``/``\\left`` variants removed: equal canonical strings are surely equivalent."""
    answer = _DISPLAY_ONLY.sub("", answer.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac"))
    return "".join(answer.split())


def _nesting(answer: str) -> int:
    depth = deepest = 0
    for ch in answer:
        if ch in "{([":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "})]" and depth > 0:
            depth -= 1
    return deepest


# ---- the checker process -------------------------------------------------------------------------------------

# Runs with ``python -c`` so that the child imports math-verify only (not torch, not morl). Protocol, one JSON
# line each way: parent sends ``[gold, pred, timeout_s]``, child answers ``true``, ``false`` or ``"timeout"``;
# the child's first line is ``"ready"`` or ``{"error": ...}``.
_CHILD_SOURCE = r"""
import json, logging, signal, sys

def main():
    out, sys.stdout = sys.stdout, sys.stderr  # stray prints from imported libraries must not break the protocol
    # Ctrl-C in a terminal reaches the whole process group: the trainer finishes its step and checkpoints, so the
    # checker must keep answering (it exits when the trainer closes its stdin)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        import resource
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY, MEMORY))
    except Exception:
        pass
    try:
        from math_verify import parse, verify
    except Exception as err:
        print(json.dumps({"error": f"{type(err).__name__}: {err}"}), file=out, flush=True)
        return
    logging.getLogger("math_verify").setLevel(logging.CRITICAL)
    logging.getLogger("latex2sympy2_extended").setLevel(logging.CRITICAL)

    class Expired(BaseException):  # not an Exception, so math-verify's handlers let it through
        pass

    def expire(signum, frame):
        raise Expired()

    timer = hasattr(signal, "setitimer")
    if timer:
        signal.signal(signal.SIGALRM, expire)
    golds = {}

    def check(gold, pred):
        if gold not in golds:
            if len(golds) > 4096:
                golds.clear()
            golds[gold] = parse("\\boxed{" + gold + "}", parsing_timeout=None)
        target = parse("\\boxed{" + pred + "}", parsing_timeout=None)
        return bool(golds[gold]) and bool(target) and verify(golds[gold], target, timeout_seconds=None)

    print(json.dumps("ready"), file=out, flush=True)
    for line in sys.stdin:
        gold, pred, timeout_s = json.loads(line)
        try:
            try:
                if timer:
                    signal.setitimer(signal.ITIMER_REAL, timeout_s)
                answer = check(gold, pred)
            finally:
                if timer:
                    signal.setitimer(signal.ITIMER_REAL, 0)
        except Expired:
            answer = "timeout"
        except Exception:  # unparsable, RecursionError, MemoryError, ...: not equivalent
            answer = False
        print(json.dumps(answer), file=out, flush=True)

main()
"""


class _Checker:
    """One math-verify child process; a sample that runs past its limit kills it (restarted on next use)."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen[str] | None = None
        self._pid = os.getpid()
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._lock = threading.Lock()

    def check(self, pairs: list[tuple[str, str]], timeout_s: float) -> list[bool | None]:
        """True/False per ``(gold, pred)``; ``None`` where the check ran out of time or crashed the child."""
        with self._lock:
            return [self._check_one(gold, pred, timeout_s) for gold, pred in pairs]

    def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        with contextlib.suppress(OSError):
            proc.stdin.close()  # type: ignore[union-attr]

    def _check_one(self, gold: str, pred: str, timeout_s: float) -> bool | None:
        # ensure_ascii: lone surrogates and other odd code points travel as escapes, never as bad bytes
        request = json.dumps([gold, pred, timeout_s], ensure_ascii=True) + "\n"
        for attempt in range(2):
            self._start()
            try:
                self._proc.stdin.write(request)  # type: ignore[union-attr]
                self._proc.stdin.flush()  # type: ignore[union-attr]
            except OSError:  # the child died between samples (e.g. killed from outside): start again once
                self.close()
                if attempt:
                    return None
                continue
            try:
                line = self._lines.get(timeout=timeout_s + _KILL_GRACE_S)
            except queue.Empty:
                line = None
            if line is None:  # stuck past the limit, or crashed on this sample
                self.close()
                return None
            try:
                answer = json.loads(line)
            except ValueError:
                self.close()
                return None
            return None if answer == "timeout" else answer is True
        return None

    def _start(self) -> None:
        if self._pid != os.getpid():  # a forked copy of the parent: its pipes belong to the parent's checker
            self._proc, self._pid = None, os.getpid()
        if self._proc is not None and self._proc.poll() is None:
            return
        self.close()
        source = _CHILD_SOURCE.replace("MEMORY", str(_CHECKER_MEMORY_BYTES))
        self._proc = subprocess.Popen(
            [sys.executable, "-c", source],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            encoding="ascii",
            bufsize=1,
            env={**os.environ, "PYTHONIOENCODING": "ascii"},
        )
        self._lines = lines = queue.Queue()
        stdout = self._proc.stdout
        threading.Thread(target=_pump, args=(stdout, lines), daemon=True, name="morl-accuracy-checker").start()
        try:
            first = lines.get(timeout=_START_TIMEOUT_S)
        except queue.Empty:
            first = None
        try:
            hello = json.loads(first) if first else None
        except ValueError:
            hello = None
        if hello != "ready":
            self.close()
            why = hello["error"] if isinstance(hello, dict) else "it exited or hung while starting"
            raise RuntimeError(f"accuracy: the math-verify checker process could not start ({why})")


def _pump(stream: Any, lines: queue.Queue[str | None]) -> None:
    """Move the child's output lines onto a queue (so the parent can wait with a timeout); None at EOF."""
    try:
        for line in stream:
            lines.put(line)
    except (OSError, ValueError):
        pass
    finally:
        stream.close()
        lines.put(None)


_CHECKER: _Checker | None = None
_CHECKER_LOCK = threading.Lock()


def _checker() -> _Checker:
    global _CHECKER
    with _CHECKER_LOCK:
        if _CHECKER is None:
            _CHECKER = _Checker()
            atexit.register(_CHECKER.close)
        return _CHECKER
