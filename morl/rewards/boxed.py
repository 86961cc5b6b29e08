r"""Find the answers a completion puts in ``\boxed{...}`` (shared by the accuracy and clarity rewards).

Extraction is brace-balanced (``\boxed{\frac{1}{2}}`` gives ``\frac{1}{2}``; escaped ``\{`` and ``\}`` do not
count), accepts ``\boxed {...}``, ``\fbox{...}`` and the unbraced ``\boxed 5``, and is bounded: a box whose
content runs past ``max_chars`` (an unbalanced or hostile one) counts as no box, and at most ``max_boxes`` boxes
are read from the end of the text, so a completion of ten thousand ``\boxed{`` costs a few milliseconds.

Example:
    >>> boxed_answer(r"so $x = \boxed{\frac{1}{2}}$, or \boxed {3}.")
    '3'
    >>> boxed_answers(r"\boxed{1} and \fbox{ 2 } but \boxed{")
    ['1', ' 2 ']
    >>> boxed_answer("no box here") is None
    True
"""

from __future__ import annotations

#: Longest box content read; longer (or never closed) boxes count as no box.
MAX_ANSWER_CHARS = 1000
#: Most boxes read from the end of one text.
MAX_BOXES = 32

_COMMANDS = ("\\boxed", "\\fbox")
_BARE_STOP = frozenset(" \t\r\n$}")


def boxed_answer(text: str, *, max_chars: int = MAX_ANSWER_CHARS) -> str | None:
    r"""Content of the *last* ``\boxed``/``\fbox`` command, or ``None`` if there is none or it is malformed.

    A malformed last box (never closed, empty command, longer than ``max_chars``) gives ``None`` rather than
    an earlier box: a completion cut off inside its final answer has not given one.
    """
    found = _last_command(text, len(text))
    return None if found is None else _argument(text, found[1], max_chars)


def boxed_answers(text: str, *, max_chars: int = MAX_ANSWER_CHARS, max_boxes: int = MAX_BOXES) -> list[str]:
    """Contents of the well-formed boxes among the last ``max_boxes`` box commands, in text order."""
    found: list[str] = []
    end = len(text)
    for _ in range(max_boxes):
        command = _last_command(text, end)
        if command is None:
            break
        content = _argument(text, command[1], max_chars)
        if content is not None:
            found.append(content)
        end = command[0]
    return found[::-1]


def _last_command(text: str, end: int) -> tuple[int, int] | None:
    """Start of the last box command that ends by ``end``, and the index just past its name."""
    best: tuple[int, int] | None = None
    for command in _COMMANDS:
        stop = end
        while (pos := text.rfind(command, 0, stop)) >= 0:  # each search starts where the last one ended
            after = pos + len(command)
            if after >= len(text) or not text[after].isalpha():  # \boxed, not \boxedsomething
                if best is None or pos > best[0]:
                    best = (pos, after)
                break
            stop = pos
    return best


def _argument(text: str, i: int, max_chars: int) -> str | None:
    """The argument of a command whose name ends at ``i``: a balanced ``{...}`` group or a bare token."""
    n = len(text)
    limit = min(n, i + max_chars + 64)  # whitespace before the group is bounded too
    while i < limit and text[i] in " \t\r\n":
        i += 1
    if i >= n:
        return None
    if text[i] != "{":
        j = i
        while j < n and j - i < max_chars and text[j] not in _BARE_STOP:
            j += 1
        return text[i:j] if j > i and (j == n or text[j] in _BARE_STOP) else None
    depth, j, stop = 0, i, min(n, i + max_chars + 2)
    while j < stop:
        ch = text[j]
        if ch == "\\":
            j += 2  # \{ and \} are literal braces, not grouping
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1 : j]
        j += 1
    return None
