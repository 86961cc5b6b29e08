"""The shipped TinyMath model loads and is accurate; the build is deterministic from its seed."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from morl.tinymath import STYLES, build_tinymath, default_model_path, evaluate_styles, generate, make_split


@pytest.fixture(scope="module")
def shipped() -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    path = default_model_path()
    return AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path, padding_side="left")


def test_shipped_model_files() -> None:
    names = {p.name for p in default_model_path().iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json"} <= names
    assert (default_model_path() / "model.safetensors").stat().st_size < 1_000_000


def test_shipped_model_is_accurate_and_diverse(shipped: tuple[PreTrainedModel, PreTrainedTokenizerBase]) -> None:
    """Measured at build: greedy 0.95, sampled 0.43 on 200 eval problems; thresholds leave room for noise."""
    model, tok = shipped
    report = evaluate_styles(model, tok, make_split("eval", 50, seed=0), n_samples=4, temperature=1.0)
    assert report["greedy_accuracy"] >= 0.8
    assert 0.2 <= report["sampled_accuracy"] <= 0.7
    assert sum(report[f"style/{s}"] for s in [*STYLES, "other"]) == pytest.approx(1.0)
    for style in STYLES:  # every mode is sampled, so RL has somewhere to go
        assert report[f"style/{style}"] >= 0.03, style
    assert report["accuracy/steps"] > report["accuracy/empty_steps"]
    assert not any(math.isnan(report[f"accuracy/{s}"]) for s in STYLES)


def test_left_padded_batch_matches_single_prompts(shipped: tuple[PreTrainedModel, PreTrainedTokenizerBase]) -> None:
    model, tok = shipped
    prompts = [p["prompt"] for p in make_split("eval", 6, seed=1)]
    assert len({len(p) for p in prompts}) > 1  # the batch really is padded
    assert generate(model, tok, prompts) == [generate(model, tok, [p])[0] for p in prompts]
    assert tok.padding_side == "left"


def test_build_is_bit_identical(tmp_path: Path) -> None:
    threads = torch.get_num_threads()
    kwargs = {"seed": 7, "steps": 5, "hidden": 16, "layers": 1, "heads": 2, "progress": False}
    a = build_tinymath(tmp_path / "a", **kwargs)
    b = build_tinymath(tmp_path / "b", **kwargs)
    c = build_tinymath(tmp_path / "c", **{**kwargs, "seed": 8})
    weights = [(p / "model.safetensors").read_bytes() for p in (a, b, c)]
    assert weights[0] == weights[1] != weights[2]
    assert torch.get_num_threads() == threads and not torch.are_deterministic_algorithms_enabled()
    model = AutoModelForCausalLM.from_pretrained(a)
    tok = AutoTokenizer.from_pretrained(a)
    assert model.config.model_type == "llama" and model.config.hidden_size == 16
    assert tok.decode(tok("1.\n\\boxed{3}")["input_ids"]) == "1.\n\\boxed{3}"
    assert model.generation_config.eos_token_id == tok.eos_token_id
