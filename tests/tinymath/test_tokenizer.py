"""The character tokenizer round-trips every style and survives save/reload with the Auto classes."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from morl.tinymath.build import tinymath_config
from morl.tinymath.task import STYLES, make_problems, write_solution
from morl.tinymath.tokenizer import build_tokenizer, save_tokenizer


def texts() -> list[str]:
    rng = random.Random(0)
    problems = make_problems(20, seed=0)
    return [p["prompt"] + write_solution(p, s, rng) for p in problems for s in STYLES] + [
        "  spaces and ~`|^ \\frac{1}{2} $x_1$ [a] (b) <c> 'q' \"d\" #@!?%&*;"
    ]


def round_trip(tok: PreTrainedTokenizerBase, text: str) -> str:
    ids = tok(text)["input_ids"] + [tok.eos_token_id, tok.pad_token_id]
    return tok.decode(ids, skip_special_tokens=True)


def test_round_trip_one_token_per_character() -> None:
    tok = build_tokenizer()
    for text in texts():
        assert len(tok(text)["input_ids"]) == len(text)
        assert round_trip(tok, text) == text
    assert tok.unk_token_id in tok("é")["input_ids"]


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tokenizer saved next to a Llama config, as in a model folder."""
    path = tmp_path_factory.mktemp("tok")
    save_tokenizer(build_tokenizer(), path)
    tinymath_config(len(build_tokenizer())).save_pretrained(path)
    return path


def test_auto_tokenizer_reload(saved: Path) -> None:
    tok = AutoTokenizer.from_pretrained(saved)
    assert tok.pad_token == "<pad>" and tok.eos_token == "</s>"
    for text in texts():
        assert round_trip(tok, text) == text
        assert tok(text)["input_ids"] == build_tokenizer()(text)["input_ids"]


def test_left_padding(saved: Path) -> None:
    tok = AutoTokenizer.from_pretrained(saved, padding_side="left")
    batch = tok(["ab", "abcd"], padding=True, return_tensors="pt")
    assert batch["input_ids"][0, :2].tolist() == [tok.pad_token_id] * 2
    assert batch["attention_mask"].tolist() == [[0, 0, 1, 1], [1, 1, 1, 1]]
