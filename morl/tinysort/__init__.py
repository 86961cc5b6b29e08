"""TinySort: the second embedded task (sort 3-6 digits), with a reward-scale trap, and its tiny warm-started model.

TinyMath's cheap mode wins by majority (two 0/1 rewards of three); TinySort's wins by scale (a 0-10 brevity
reward beside a 0/1 exact match). See :mod:`morl.tinysort.task` for the styles and their rewards.

Example:
    >>> from transformers import AutoModelForCausalLM, AutoTokenizer
    >>> model = AutoModelForCausalLM.from_pretrained(default_model_path())
    >>> tokenizer = AutoTokenizer.from_pretrained(default_model_path(), padding_side="left")
    >>> make_split("eval", 1, seed=0)[0]["prompt"].startswith("sort: ")
    True
"""

from __future__ import annotations

from pathlib import Path

from morl.tinysort.build import build_tinysort, evaluate_styles
from morl.tinysort.task import (
    ANSWER_PATTERN,
    DEFAULT_MIXTURE,
    STYLES,
    classify_style,
    extract_list,
    make_problems,
    make_sft_data,
    make_split,
    write_solution,
)

__all__ = [
    "ANSWER_PATTERN",
    "DEFAULT_MIXTURE",
    "STYLES",
    "build_tinysort",
    "classify_style",
    "default_model_path",
    "evaluate_styles",
    "extract_list",
    "make_problems",
    "make_sft_data",
    "make_split",
    "write_solution",
]


def default_model_path() -> Path:
    """Folder of the shipped model (``build_tinysort(path, seed=0)``), loadable with the ``Auto*`` classes."""
    return Path(__file__).parent / "model"
