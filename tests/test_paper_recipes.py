"""The paper's GPU recipes (cookbook/recipes/paper): every one validates without a model, a GPU or vLLM, and
carries Table 1's settings."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from morl.cli import app

PAPER = Path(__file__).resolve().parents[1] / "cookbook" / "recipes" / "paper"
RECIPES = sorted(PAPER.glob("*.yaml"))
METHODS = {"linear", "ctwa", "tchebycheff", "lagrangian", "dynamic_hv", "dynamic_gradient", "pama", "mgda"}
METHODS |= {"gradnorm", "gdpo"}


def test_one_recipe_per_method_and_algorithm():
    assert {p.stem for p in RECIPES} == {f"{a}_{m}" for a in ("grpo", "reinforce") for m in METHODS}


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_paper_recipe_validates(path):
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 0, result.output
    raw = yaml.safe_load(path.read_text())
    assert "../shared" not in path.read_text() and raw["data"]["train"] == "HuggingFaceH4/MATH-500"
    assert raw["policy"]["model"] == "Qwen/Qwen2.5-1.5B" and raw["rollout"]["name"] == "vllm"
    train, algo = raw["train"], raw["algo"]
    assert (train["lr"], train["prompts_per_step"], train["group_size"]) == (1e-6, 32, 16)
    assert raw["rollout"]["max_new_tokens"] == 1024 and raw["rollout"]["max_prompt_tokens"] == 1024
    assert algo["entropy_coef"] == 0.0
    assert algo["kl_coef"] == (0.0 if path.stem.endswith("lagrangian") else 0.001)
    if path.stem.startswith("grpo"):
        assert algo["name"] == "grpo" and algo["clip_low"] == algo["clip_high"] == 0.2
    else:
        assert algo["name"] == "reinforce" and "clip_low" not in algo


def test_method_hyperparameters_are_the_papers():
    def controller(name):
        return yaml.safe_load((PAPER / f"grpo_{name}.yaml").read_text())["controller"]

    assert controller("ctwa") == {
        "name": "ctwa",
        "lambda0": [0.333, 0.333, 0.334],
        "lr": 0.05,
        "targets": [0.15, 0.08, 0.08],
        "ema": 0.1,
    }
    assert controller("lagrangian") == {
        "name": "lagrangian",
        "primary": "accuracy",
        "targets": {"conciseness": 0.9, "clarity": 0.9},
        "dual_lr": 0.01,
    }
    assert controller("gradnorm")["lr"] == 0.025 and controller("gradnorm")["alpha"] == 1.5


@pytest.mark.parametrize("name", ["ddp", "fsdp", "zero2"])
def test_accelerate_configs_load(name):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(PAPER.parents[1] / "accelerate" / f"{name}.yaml"))
    assert config.num_processes == 4 and config.mixed_precision == "bf16"
    assert config.distributed_type.name == {"ddp": "MULTI_GPU", "fsdp": "FSDP", "zero2": "DEEPSPEED"}[name]
