"""The shipped TinySort model loads and sorts; the build runs at toy size and is deterministic from its seed."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from morl.tinymath.build import generate
from morl.tinysort import STYLES, build_tinysort, default_model_path, evaluate_styles, make_split


@pytest.fixture(scope="module")
def shipped() -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    path = default_model_path()
    return AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path, padding_side="left")


def test_shipped_model_files() -> None:
    names = {p.name for p in default_model_path().iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json", "README.md"} <= names
    assert (default_model_path() / "model.safetensors").stat().st_size < 1_000_000
    assert "build_tinysort(out_dir, seed=0" in (default_model_path() / "README.md").read_text()


def test_shipped_model_sorts_greedily(shipped: tuple[PreTrainedModel, PreTrainedTokenizerBase]) -> None:
    model, tok = shipped
    problems = make_split("eval", 16, seed=0)
    got = generate(model, tok, [p["prompt"] for p in problems], max_new_tokens=40)
    assert sum(g.strip() == p["answer"] for g, p in zip(got, problems, strict=True)) >= 15, got


def test_shipped_model_samples_every_style(shipped: tuple[PreTrainedModel, PreTrainedTokenizerBase]) -> None:
    """Measured at build on 200 eval prompts x 4: greedy 1.00, sampled 0.66 (plain 0.46 + verbose 0.20); slip 0.08,
    echo 0.07, head 0.13, other 0.06. Thresholds leave room for another machine's arithmetic."""
    model, tok = shipped
    report = evaluate_styles(model, tok, make_split("eval", 50, seed=0), n_samples=4)
    assert report["greedy_exact_match"] >= 0.9
    assert 0.45 <= report["sampled_exact_match"] <= 0.85
    assert report["greedy_style/plain"] >= 0.9
    assert sum(report[f"style/{s}"] for s in [*STYLES, "other"]) == pytest.approx(1.0)
    for style in STYLES:  # every mode is sampled, so RL has somewhere to go
        assert report[f"style/{style}"] >= 0.03, style
    assert report["style/other"] <= 0.15


def test_build_is_bit_identical(tmp_path: Path) -> None:
    threads = torch.get_num_threads()
    kwargs = {"seed": 7, "steps": 2, "hidden": 16, "layers": 1, "heads": 2, "progress": False}
    a = build_tinysort(tmp_path / "a", **kwargs)
    b = build_tinysort(tmp_path / "b", **kwargs)
    c = build_tinysort(tmp_path / "c", **{**kwargs, "seed": 8})
    weights = [(p / "model.safetensors").read_bytes() for p in (a, b, c)]
    assert weights[0] == weights[1] != weights[2]
    assert torch.get_num_threads() == threads and not torch.are_deterministic_algorithms_enabled()
    model = AutoModelForCausalLM.from_pretrained(a)
    tok = AutoTokenizer.from_pretrained(a)
    assert model.config.hidden_size == 16 and model.generation_config.max_new_tokens == 40
    assert tok.decode(tok("sort: 3 1 2\n1 2 3")["input_ids"]) == "sort: 3 1 2\n1 2 3"
    assert (a / "README.md").read_text().startswith("# TinySort")
