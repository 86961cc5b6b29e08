"""Shared fixtures: models are built once per test session (imports dominate the suite's time)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A ~13k-parameter random Llama with the TinyMath tokenizer: for plumbing, not for learning."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from morl.tinymath.tokenizer import build_tokenizer

    tok = build_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny-model")
    LlamaForCausalLM(config).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def _tiny_policy_master(tiny_model_dir):
    from morl.policy import Policy

    return Policy.from_pretrained(str(tiny_model_dir))


@pytest.fixture
def tiny_policy(_tiny_policy_master):
    """A fresh copy per test, so training in one test never leaks into another."""
    from morl.policy import Policy

    master = _tiny_policy_master
    return Policy(copy.deepcopy(master.model), master.tokenizer, master.config)


@pytest.fixture
def math500_dir() -> Path:
    path = SHARED / "data" / "math500"
    if not path.is_dir():
        pytest.skip(f"MATH-500 data not found at {path}")
    return path


@pytest.fixture
def tiny_pipeline(tiny_policy, tmp_path):
    """Make a small pipeline over ``tiny_policy``: 2 prompts × 4 completions a step, 12 new tokens, 2 steps, no
    evaluation schedule or progress bar, its run folder ``tmp_path/run``. Components are keyword arguments as for
    ``Pipeline``; ``train={...}`` overrides ``TrainConfig`` fields. The one way tests build a pipeline by hand."""
    from morl import Pipeline, TrainConfig

    def make(rewards=("accuracy", "clarity"), train=None, **components):
        defaults = {
            "steps": 2,
            "prompts_per_step": 2,
            "group_size": 4,
            "eval_every": 0,
            "progress": False,
            "output_dir": str(tmp_path / "run"),
        }
        config = TrainConfig(**{**defaults, **(train or {})})
        options = {"rollout": {"name": "transformers", "max_new_tokens": 12}, **components}
        return Pipeline(policy=tiny_policy, rewards=list(rewards), config=config, **options)

    return make
