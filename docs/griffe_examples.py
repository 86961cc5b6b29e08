"""Griffe extension for the docs build: read morl's ``Example:`` docstring sections as doctest examples.

morl's docstrings say ``Example:`` (singular), which griffe's Google parser takes for a generic admonition, so the
``>>>`` lines would render as nested block quotes. Renaming the section to ``Examples:`` when the docs are built
renders them as code; the sources, and the doctests pytest runs on them, are untouched.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_EXAMPLE = re.compile(r"^(\s*)Example:[ \t]*$", re.MULTILINE)


class DoctestExamples(griffe.Extension):
    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = _EXAMPLE.sub(r"\1Examples:", obj.docstring.value)
