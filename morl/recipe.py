"""Recipes: a YAML file naming each component and its parameters, validated before anything loads.

A component is a short name (``controller: ctwa``), a mapping with ``name`` and parameters
(``controller: {name: ctwa, lr: 0.5}``), or an import path for user components
(``rewards: [accuracy, my_pkg.rewards.Politeness]``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from morl.components import RecipeError, build, explain_validation_error
from morl.diagnostics import DiagnosticsConfig
from morl.pipeline import Pipeline, TrainConfig, check_combination
from morl.policy import Policy, PolicyConfig
from morl.rewards import objective_name

ComponentSpec = str | dict[str, Any]


class DataConfig(BaseModel):
    """Where prompts come from: ``tinymath``, a local jsonl/parquet file or folder, or a hub dataset name."""

    model_config = ConfigDict(extra="forbid")

    train: str = Field("tinymath", description="training prompts: tinymath, a jsonl/parquet file or folder, a hub name")
    eval: str | None = Field("tinymath", description="held-out prompts, same forms as train; None: no evaluation")
    train_split: str | None = Field(
        "train", description="split of a folder, hub dataset or tinymath (slices: test[:400])"
    )
    eval_split: str | None = Field("eval", description="split of the eval source")
    train_size: int | None = Field(2000, ge=1, description="use at most this many training rows; None: all")
    eval_size: int | None = Field(100, ge=1, description="use at most this many eval rows; None: all")
    columns: dict[str, str] | None = Field(
        None, description="source column (or dotted path) -> morl column, e.g. {problem: prompt}; None: defaults"
    )
    prompt_template: str | None = Field(None, description="'{prompt}' is replaced by each prompt (raw problems)")


class Recipe(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = None
    policy: PolicyConfig = PolicyConfig()
    data: DataConfig = DataConfig()
    rewards: list[ComponentSpec] = ["accuracy", "conciseness", "clarity"]
    scalarizer: ComponentSpec = "linear"
    advantage: ComponentSpec = "group_norm"
    algo: ComponentSpec = "grpo"
    controller: ComponentSpec = "fixed"
    rollout: ComponentSpec = "transformers"
    train: TrainConfig = TrainConfig()
    diagnostics: DiagnosticsConfig = DiagnosticsConfig()


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Parse YAML safely, apply ``key.path=value`` overrides, validate every field."""
    path = Path(path)
    if not path.exists():
        raise RecipeError(f"recipe not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise RecipeError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise RecipeError(f"{path}: a recipe is a mapping of sections, got {type(raw).__name__}")
    for item in overrides or []:
        apply_override(raw, item)
    return parse_recipe(raw, source=str(path))


def parse_recipe(raw: dict[str, Any], source: str = "recipe") -> Recipe:
    try:
        return Recipe.model_validate(raw)
    except ValidationError as err:
        raise RecipeError(explain_validation_error(err, source, Recipe)) from None


def apply_override(raw: dict[str, Any], item: str) -> None:
    """``train.steps=3`` or ``controller.lr=0.5`` (a short-name component becomes a mapping)."""
    if "=" not in item:
        raise RecipeError(f"--set expects key.path=value, got {item!r}")
    key, _, text = item.partition("=")
    value = yaml.safe_load(text)
    parts = key.strip().split(".")
    node = raw
    for part in parts[:-1]:
        child = node.get(part)
        if isinstance(child, str):
            child = {"name": child}
        elif child is None:
            child = {}
        elif not isinstance(child, dict):
            raise RecipeError(f"--set {key}: {part!r} is not a section")
        node[part] = child
        node = child
    node[parts[-1]] = value


def build_components(recipe: Recipe) -> dict[str, Any]:
    """Every component but the policy, checked against each other (objective names, weight lengths)."""
    if not recipe.rewards:
        raise RecipeError("rewards: give at least one objective (e.g. rewards: [accuracy, conciseness, clarity])")
    rewards = [_build_at(f"rewards[{i}]", "reward", spec) for i, spec in enumerate(recipe.rewards)]
    objectives = [objective_name(r) for r in rewards]
    repeated = sorted({o for o in objectives if objectives.count(o) > 1})
    if repeated:
        raise RecipeError(f"rewards: objective names must be unique, {repeated} appear more than once: {objectives}")
    components = {
        "rewards": rewards,
        "scalarizer": _build_at("scalarizer", "scalarizer", recipe.scalarizer),
        "advantage": _build_at("advantage", "advantage", recipe.advantage),
        "algo": _build_at("algo", "algo", recipe.algo),
        "controller": _build_at("controller", "controller", recipe.controller),
        "rollout": _build_at("rollout", "rollout", recipe.rollout),
    }
    try:
        components["controller"].clone().start(objectives)
    except (ValueError, KeyError) as err:
        raise RecipeError(str(err)) from None
    check_combination(components["controller"], components["scalarizer"], components["rollout"], components["algo"])
    return components


def _build_at(section: str, family: str, spec: Any) -> Any:
    """``build``, with the recipe section in the message (``rewards[1]: Accuracy: ... timeout_s: ...``)."""
    try:
        return build(family, spec)
    except RecipeError as err:
        message = str(err)
        raise RecipeError(message if message.startswith(f"{section}:") else f"{section}: {message}") from None


def load_data(recipe: Recipe) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    from morl.data import load_examples

    d = recipe.data
    options = {"columns": d.columns, "prompt_template": d.prompt_template}
    train = load_examples(d.train, d.train_split, limit=d.train_size, **options)
    evals = load_examples(d.eval, d.eval_split, limit=d.eval_size, **options) if d.eval else None
    return train, evals


def pipeline_from_recipe(recipe: Recipe, callbacks: list | None = None) -> Pipeline:
    components = build_components(recipe)
    policy = Policy.from_pretrained(**recipe.policy.model_dump())
    return Pipeline(
        policy=policy,
        config=recipe.train,
        callbacks=callbacks or [],
        recipe=recipe.model_dump(mode="json"),
        diagnostics=recipe.diagnostics,
        **components,
    )
