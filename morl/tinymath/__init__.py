"""TinyMath: the embedded default task (``a + b - c`` word problems) and its tiny warm-started model.

Example:
    >>> from transformers import AutoModelForCausalLM, AutoTokenizer
    >>> model = AutoModelForCausalLM.from_pretrained(default_model_path())
    >>> tokenizer = AutoTokenizer.from_pretrained(default_model_path(), padding_side="left")
    >>> make_split("eval", 1, seed=0)[0]["answer"]
    '13'
"""

from __future__ import annotations

from pathlib import Path

from morl.tinymath.build import build_tinymath, evaluate_styles, generate
from morl.tinymath.task import (
    DEFAULT_MIXTURE,
    STYLES,
    classify_style,
    extract_boxed,
    make_problems,
    make_sft_data,
    make_split,
    write_solution,
)
from morl.tinymath.tokenizer import build_tokenizer

__all__ = [
    "DEFAULT_MIXTURE",
    "STYLES",
    "build_tinymath",
    "build_tokenizer",
    "classify_style",
    "default_model_path",
    "evaluate_styles",
    "extract_boxed",
    "generate",
    "make_problems",
    "make_sft_data",
    "make_split",
    "write_solution",
]


def default_model_path() -> Path:
    """Folder of the shipped model (``build_tinymath(path, seed=0)``), loadable with the ``Auto*`` classes."""
    return Path(__file__).parent / "model"
