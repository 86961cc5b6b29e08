"""The paper's GPU recipes (cookbook/recipes/paper): every one validates without a model, a GPU or vLLM, and
carries the paper's settings as the authors' reference code runs them (github.com/yining610/ctwa, see the folder's
README.md): CTWA's gate, REINFORCE++ batch whitening, 2 mini-batches, the per-method KL and clipping."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from morl.algos.advantages import BatchWhiten, GroupNorm
from morl.cli import app
from morl.controllers.ctwa import CTWA
from morl.recipe import build_components, load_recipe
from morl.rewards import objective_name
from tests.batches import updated_record

PAPER = Path(__file__).resolve().parents[1] / "cookbook" / "recipes" / "paper"
RECIPES = sorted(PAPER.glob("*.yaml"))
METHODS = {"linear", "ctwa", "tchebycheff", "lagrangian", "dynamic_hv", "dynamic_gradient", "pama", "mgda"}
METHODS |= {"gradnorm", "gdpo"}
OBJECTIVES = ["accuracy", "conciseness", "clarity"]
GATE = [1.0, 0.95, 0.95]  # the authors' obj_targets, with gate_by_obj_targets: True
NO_KL = {"lagrangian", "gradnorm", "mgda"}  # their scripts set use_kl_loss=False
CLIPPED_REINFORCE = {"gradnorm", "lagrangian", "mgda", "pama", "tchebycheff"}  # their scripts keep clip 0.2
GROUP_NORM_ONLY = {"dynamic_hv", "gdpo"}  # not in the authors' code; defined by group normalisation


def split(path: Path) -> tuple[str, str]:
    algo, _, method = path.stem.partition("_")
    return algo, method


def raw(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def test_one_recipe_per_method_and_algorithm():
    assert {p.stem for p in RECIPES} == {f"{a}_{m}" for a in ("grpo", "reinforce") for m in METHODS}


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_paper_recipe_validates(path):
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 0, result.output
    components = build_components(load_recipe(path))  # no model load
    assert [objective_name(r) for r in components["rewards"]] == OBJECTIVES


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_common_settings_are_the_papers(path):
    recipe = raw(path)
    assert "../shared" not in path.read_text() and recipe["data"]["train"] == "HuggingFaceH4/MATH-500"
    assert recipe["policy"]["model"] == "Qwen/Qwen2.5-1.5B" and recipe["rollout"]["name"] == "vllm"
    assert recipe["rewards"] == OBJECTIVES
    train, algo, rollout = recipe["train"], recipe["algo"], recipe["rollout"]
    assert (train["lr"], train["prompts_per_step"], train["group_size"]) == (1e-6, 32, 16)
    assert train["weight_decay"] == 0.01 and algo["max_grad_norm"] == 1.0
    assert (train["steps"], train["eval_every"], train["eval_greedy"], train["eval_sampled"]) == (810, 5, True, False)
    assert rollout["max_new_tokens"] == 1024 and rollout["max_prompt_tokens"] == 1024
    assert rollout["temperature"] == 1.0 and "temperature" not in algo and rollout["top_p"] == 1.0  # one home
    assert rollout["dtype"] == "bfloat16"  # verl samples in bf16; the trainer keeps fp32 master weights
    assert algo["minibatches"] == 2 and algo.get("epochs", 1) == 1
    assert algo["entropy_coef"] == 0.0 and algo["kl_estimator"] == "k3"
    assert algo["importance_correction"] == "none"
    assert train["output_dir"] == f"runs/paper/{path.stem}" and recipe["name"] == path.stem


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_kl_clip_and_advantage_are_the_authors(path):
    algo_name, method = split(path)
    recipe = raw(path)
    algo = recipe["algo"]
    assert algo["kl_coef"] == (0.0 if method in NO_KL else 0.001)
    components = build_components(load_recipe(path))
    advantage = components["advantage"]
    if algo_name == "grpo" or method in GROUP_NORM_ONLY:
        assert isinstance(advantage, GroupNorm) and advantage.config.scale and advantage.config.unbiased
    else:  # REINFORCE++: whitened over the whole batch's tokens (verl's masked whitening), no per-group baseline
        assert isinstance(advantage, BatchWhiten)
        assert advantage.config.group_baseline is False and advantage.config.center == "batch"
        assert advantage.config.whiten_over == "tokens"
    if algo_name == "grpo" or method in CLIPPED_REINFORCE:
        assert algo["name"] == "grpo" and algo["clip_low"] == algo["clip_high"] == 0.2
    else:
        assert algo["name"] == "reinforce" and "clip_low" not in algo and "clip_high" not in algo


def test_recipes_differ_only_in_method_and_algorithm():
    shared = ("policy", "data", "rewards", "rollout")
    first = raw(RECIPES[0])
    for path in RECIPES[1:]:
        recipe = raw(path)
        assert {key: recipe[key] for key in shared} == {key: first[key] for key in shared}, path.stem
        train = {k: v for k, v in recipe["train"].items() if k != "output_dir"}
        assert train == {k: v for k, v in first["train"].items() if k != "output_dir"}, path.stem


@pytest.mark.parametrize("algo", ["grpo", "reinforce"])
def test_method_hyperparameters_are_the_authors(algo):
    def controller(name):
        return raw(PAPER / f"{algo}_{name}.yaml")["controller"]

    assert controller("ctwa") == {
        "name": "ctwa",
        "lambda0": [0.333, 0.333, 0.334],
        "lr": 0.05,
        "targets": [0.15, 0.08, 0.08],
        "ema": 0.1,
        "gate": GATE,
    }
    assert controller("lagrangian") == {
        "name": "lagrangian",
        "primary": "accuracy",
        "targets": {"conciseness": 0.9, "clarity": 0.9},
        "dual_lr": 0.01,
    }
    assert controller("gradnorm") == {"name": "gradnorm", "alpha": 1.5, "lr": 0.025, "params": "all"}
    assert controller("mgda") == {"name": "mgda", "params": "all", "normalize": "none"}
    assert controller("linear") == controller("tchebycheff") == {"name": "fixed", "weights": [0.333, 0.333, 0.334]}
    assert raw(PAPER / f"{algo}_tchebycheff.yaml")["scalarizer"] == {"name": "tchebycheff", "reference": "running"}
    dynamic = controller("dynamic_gradient")
    assert dynamic["name"] == "dynamic_gradient" and dynamic["lr"] == pytest.approx(1e-6**2 / 1e-5)
    names = [f"model.layers.{i}.mlp.up_proj.weight" for i in range(28)] + ["model.embed_tokens.weight"]
    chosen = [n for n in names if re.search(dynamic["params"], n)]
    assert chosen == [f"model.layers.{i}.mlp.up_proj.weight" for i in range(10, 26)]  # target_layer_ids 10..25


@pytest.mark.parametrize("algo", ["grpo", "reinforce"])
def test_ctwa_gate_is_the_authors_rule(algo):
    """gate_by_obj_targets: λ_m is not raised once the batch mean of r_m reaches its target (>=)."""

    def step(config: dict) -> np.ndarray:
        ctwa = CTWA(**{k: v for k, v in config.items() if k != "name"})
        ctwa.start(OBJECTIVES)
        before = ctwa.u_.copy()
        k = 20
        rewards = np.stack(
            [np.ones(k), np.arange(k) % 2, (np.arange(k) > 0).astype(float)], axis=1
        )  # batch means 1.0 (reached), 0.5 (not), 0.95 (reached, exactly the target)
        weights = np.linspace(-1.0, 1.0, k) * 1e-3  # covariances far below every target
        ctwa.after_update(updated_record(rewards, k, clipped_weights=weights, objectives=OBJECTIVES))
        return ctwa.u_ - before

    config = raw(PAPER / f"{algo}_ctwa.yaml")["controller"]
    built = build_components(load_recipe(PAPER / f"{algo}_ctwa.yaml"))["controller"]
    assert built.config.gate == GATE
    raised = step(config)
    assert raised[0] == 0.0 and raised[1] > 0 and raised[2] == 0.0
    ungated = step({**config, "gate": None})
    assert (ungated > 0).all()


def test_readme_states_the_recipes_settings():
    text = (PAPER / "README.md").read_text()
    assert "github.com/yining610/ctwa" in text
    for fact in ("810 steps", "2 optimiser steps of 16 prompts", "gate [1.0, 0.95, 0.95]", "1024 tokens"):
        assert fact in text, fact
    assert "β = 0.001; 0 for Lagrangian, GradNorm, MGDA" in text
    assert "GradNorm, Lagrangian, MGDA, PAMA, Tchebycheff" in text  # the REINFORCE runs that clip


@pytest.mark.parametrize("name", ["ddp", "fsdp", "zero2"])
def test_accelerate_configs_load(name):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(PAPER.parents[1] / "accelerate" / f"{name}.yaml"))
    assert config.num_processes == 4 and config.mixed_precision == "bf16"
    assert config.distributed_type.name == {"ddp": "MULTI_GPU", "fsdp": "FSDP", "zero2": "DEEPSPEED"}[name]
