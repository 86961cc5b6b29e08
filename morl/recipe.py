"""Recipes: a YAML file naming each component and its parameters, validated before anything loads.

A component is a short name (``controller: ctwa``), a mapping with ``name`` and parameters
(``controller: {name: ctwa, lr: 0.5}``), or an import path for user components
(``rewards: [accuracy, my_pkg.rewards.Politeness]``).

An import path resolves as Python would, then from the current folder, then from the recipe's own folder, so
``my_pkg/rewards.py`` beside the recipe works from any folder without ``PYTHONPATH``. The folder that held the
package is appended to ``sys.path`` (never prepended: a file beside the recipe cannot shadow an installed
package), and only when an import needed it (:func:`morl.components.import_module`).

**Security:** an import path runs code. Validating or running a recipe (``morl validate`` included) imports the
modules it names, and a module runs whatever its top level says; a recipe with import paths is a program, so
run only recipes you trust, and keep untrusted files out of the recipe's folder. YAML itself is parsed safely
(``yaml.safe_load``: no tags that construct objects).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError

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
    # not a field: where the recipe lives is not part of the experiment (resume ignores it)
    _folder: Path | None = PrivateAttr(None)

    @property
    def folder(self) -> Path | None:
        """The folder of the recipe's file, where its import paths also resolve; None for one built in Python."""
        return self._folder


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
    return parse_recipe(raw, source=str(path), folder=path.resolve().parent)


def parse_recipe(raw: dict[str, Any], source: str = "recipe", folder: str | Path | None = None) -> Recipe:
    """Validate a recipe mapping; ``folder`` is where its import paths also resolve (its file's folder)."""
    try:
        recipe = Recipe.model_validate(raw)
    except ValidationError as err:
        raise RecipeError(explain_validation_error(err, source, Recipe)) from None
    recipe._folder = Path(folder) if folder is not None else None
    return recipe


def apply_override(raw: dict[str, Any], item: str) -> None:
    """``train.steps=3``, ``controller.lr=0.5`` or one reward's parameter, ``rewards.1.timeout_s=2`` (a list item
    by its index; a short-name component becomes a mapping). The value is read as YAML."""
    if "=" not in item:
        raise RecipeError(f"--set expects key.path=value, got {item!r}")
    key, _, text = item.partition("=")
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise RecipeError(f"--set {key}: {text!r} is not a YAML value ({str(err).splitlines()[0]})") from None
    parts = key.strip().split(".")
    node: Any = raw
    for depth, part in enumerate(parts[:-1]):
        where = ".".join(parts[: depth + 1])
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise RecipeError(f"--set {key}: {where} needs an index below {len(node)} (the list's length)")
            index: Any = int(part)
            child = node[index]
        else:
            index, child = part, node.get(part)
        if isinstance(child, str):
            child = {"name": child}
        elif child is None:
            child = {}
        elif not isinstance(child, (dict, list)):
            raise RecipeError(f"--set {key}: {where} is a value ({child!r}), not a section")
        node[index] = child
        node = child
    last = parts[-1]
    if isinstance(node, list):
        if not last.isdigit() or int(last) >= len(node):
            raise RecipeError(f"--set {key}: the last part needs an index below {len(node)} (the list's length)")
        node[int(last)] = value
    else:
        node[last] = value


def build_components(recipe: Recipe) -> dict[str, Any]:
    """Every component but the policy, checked against each other (objective names, weight lengths)."""
    if not recipe.rewards:
        raise RecipeError("rewards: give at least one objective (e.g. rewards: [accuracy, conciseness, clarity])")
    search = [recipe.folder] if recipe.folder is not None else []
    rewards = [_build_at(f"rewards[{i}]", "reward", spec, search) for i, spec in enumerate(recipe.rewards)]
    objectives = [objective_name(r) for r in rewards]
    repeated = sorted({o for o in objectives if objectives.count(o) > 1})
    if repeated:
        raise RecipeError(f"rewards: objective names must be unique, {repeated} appear more than once: {objectives}")
    components = {
        "rewards": rewards,
        "scalarizer": _build_at("scalarizer", "scalarizer", recipe.scalarizer, search),
        "advantage": _build_at("advantage", "advantage", recipe.advantage, search),
        "algo": _build_at("algo", "algo", recipe.algo, search),
        "controller": _build_at("controller", "controller", recipe.controller, search),
        "rollout": _build_at("rollout", "rollout", recipe.rollout, search),
    }
    try:
        components["controller"].clone().start(objectives)
    except (ValueError, KeyError) as err:
        raise RecipeError(str(err)) from None
    check_combination(components["controller"], components["scalarizer"], components["rollout"], components["algo"])
    return components


def _build_at(section: str, family: str, spec: Any, search: list[Path]) -> Any:
    """``build``, with the recipe section in the message (``rewards[1]: Accuracy: ... timeout_s: ...``)."""
    try:
        return build(family, spec, search)
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
