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

import importlib.util
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError

from morl.components import TRL_NAMES, RecipeError, explain_validation_error
from morl.diagnostics import DiagnosticsConfig
from morl.pipeline import COMPONENT_ROLES, Pipeline, TrainConfig, build_parts
from morl.policy import Policy, PolicyConfig, resolve_model_path
from morl.rewards import objective_name
from morl.run import read_regular_file

ComponentSpec = str | dict[str, Any]


class DataConfig(BaseModel):
    """Where prompts come from: ``tinymath`` or ``tinysort``, a local jsonl/parquet file or folder, or a hub dataset
    name."""

    model_config = ConfigDict(extra="forbid")

    train: str = Field(
        "tinymath", description="training prompts: tinymath, tinysort, a jsonl/parquet file or folder, a hub name"
    )
    eval: str | None = Field("tinymath", description="held-out prompts, same forms as train; None: no evaluation")
    train_split: str | None = Field(
        "train", description="split of a folder, hub dataset, tinymath or tinysort (slices: test[:400])"
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


#: A recipe is a few kilobytes; a bigger file is not one (and is refused before it is read).
RECIPE_MAX_BYTES = 10 * 2**20
#: Sections nest a few levels deep; far deeper nesting is no recipe, and would exhaust Python's stack downstream.
RECIPE_MAX_DEPTH = 50


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Parse YAML safely, apply ``key.path=value`` overrides, validate every field.

    Only a regular file of at most ``RECIPE_MAX_BYTES`` is read: a folder, a named pipe or a device (``/dev/zero``) is
    refused before reading, so a wrong path never hangs or fills memory.
    """
    path = Path(path)
    try:
        text = read_regular_file(path, limit=RECIPE_MAX_BYTES)
    except FileNotFoundError:
        raise RecipeError(f"recipe not found: {path}") from None
    except ValueError as err:
        raise RecipeError(f"recipe {err}; give a recipe YAML file") from None
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise RecipeError(f"{path}: not valid YAML: {err}") from None
    except RecursionError:  # the parser recurses once per level
        raise RecipeError(f"{path}: nested too deeply (a recipe nests at most {RECIPE_MAX_DEPTH} levels)") from None
    if not isinstance(raw, dict):
        raise RecipeError(f"{path}: a recipe is a mapping of sections, got {type(raw).__name__}")
    for item in overrides or []:
        apply_override(raw, item)
    _check_depth(raw, str(path))
    return parse_recipe(raw, source=str(path), folder=path.resolve().parent)


def _check_depth(raw: Any, source: str) -> None:
    """``RecipeError`` naming the first path nested deeper than ``RECIPE_MAX_DEPTH`` (walked without recursion)."""
    pending: list[tuple[Any, list[str]]] = [(raw, [])]
    while pending:
        node, where = pending.pop()
        if len(where) > RECIPE_MAX_DEPTH:
            raise RecipeError(
                f"{source}: {'.'.join(where[:5])}... nests more than {RECIPE_MAX_DEPTH} levels deep; no recipe setting "
                "is nested so deep"
            )
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        pending.extend((child, [*where, str(key)]) for key, child in items)


def parse_recipe(raw: dict[str, Any], source: str = "recipe", folder: str | Path | None = None) -> Recipe:
    """Validate a recipe mapping; ``folder`` is where its import paths also resolve (its file's folder)."""
    try:
        recipe = Recipe.model_validate(raw)
    except ValidationError as err:
        raise RecipeError(explain_validation_error(err, source, Recipe, TRL_NAMES)) from None
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
        raise RecipeError(f"--set {key}: {text!r:.80} is not a YAML value ({str(err).splitlines()[0]})") from None
    except RecursionError:
        raise RecipeError(f"--set {key}: the value nests too deeply (at most {RECIPE_MAX_DEPTH} levels)") from None
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
    """Every component but the policy, built and checked against each other once (:func:`morl.pipeline.build_parts`),
    import paths resolved from the recipe's folder too."""
    search = [recipe.folder] if recipe.folder is not None else []
    built = build_parts(
        recipe.rewards, recipe.scalarizer, recipe.advantage, recipe.algo, recipe.controller, recipe.rollout, search
    )
    return {role: getattr(built, role) for role in ("rewards", *COMPONENT_ROLES)}


# the package (and top-level module) each optional logger needs; jsonl needs none
LOGGER_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "trackio": "trackio"}


def validate_recipe(recipe: Recipe) -> tuple[dict[str, Any], list[str]]:
    """What ``morl validate`` runs: the components (:func:`build_components`), then what ``fit`` needs beyond them
    (:func:`check_runnable`). Returns the components and one line per check, saying what was checked and what was
    not, so that "ok" never claims more than was looked at."""
    components = build_components(recipe)
    return components, check_runnable(recipe, components)


def check_runnable(recipe: Recipe, components: dict[str, Any]) -> list[str]:
    """Checks a recipe's fields cannot express alone: the loggers' packages are installed, and a local model is a
    causal LM whose context holds a prompt and its completion. Raises :class:`RecipeError`; returns what it did.

    Kept out of :func:`build_components` on purpose: ``morl eval`` and ``compare`` build the same recipe's
    components without logging to W&B, and a recipe written on another machine must still be scorable here.
    """
    checks = [
        f"components: {len(components['rewards'])} objectives "
        f"({', '.join(objective_name(r) for r in components['rewards'])}), each resolved to its family"
    ]
    checks.append(check_loggers(recipe.train.loggers))
    checks.append(check_model(recipe.policy, components["rollout"]))
    return checks


def check_loggers(loggers: Sequence[str]) -> str:
    """Each logger named in ``train.loggers`` has its package installed, found without importing it (W&B takes
    seconds to import), so a typo'd environment fails in ``morl validate`` and not after the model has loaded."""
    missing = [
        f"{name} (pip install {LOGGER_PACKAGES[name]})"
        for name in dict.fromkeys(loggers)
        if name in LOGGER_PACKAGES and not _installed(LOGGER_PACKAGES[name])
    ]
    if missing:
        raise RecipeError(f"train.loggers: not installed: {', '.join(missing)}; install it or remove it from the list")
    named = [name for name in dict.fromkeys(loggers) if name in LOGGER_PACKAGES]
    return f"train.loggers: {', '.join(named)} installed" if named else "train.loggers: jsonl only (nothing to install)"


def check_model(policy: PolicyConfig, rollout: Any) -> str:
    """A local model (``tinymath``, ``tinysort``, or a folder with ``config.json``) is read without loading its
    weights: it must be a causal LM, and its context (``max_position_embeddings``) must hold
    ``rollout.max_prompt_tokens`` plus ``rollout.max_new_tokens``. A hub name or an adapter folder is not read here
    (that may download or load a base model); the returned line says so."""
    from morl.rollout import SamplingConfig

    path = Path(resolve_model_path(policy.model))
    if not (path / "config.json").is_file():
        return f"policy.model {policy.model!r}: not checked (not a local folder with config.json; fit loads it)"
    try:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(str(path), trust_remote_code=policy.trust_remote_code)
    except Exception as err:  # a bad config.json raises ValueError, OSError, KeyError, TypeError...: all refused
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise RecipeError(f"policy.model: {path / 'config.json'} cannot be read by transformers: {message}") from None
    if not _is_causal_lm(config):
        kind = ", ".join(getattr(config, "architectures", None) or []) or config.model_type
        raise RecipeError(
            f"policy.model: {policy.model!r} is a {kind} model, not a causal language model (AutoModelForCausalLM); "
            "morl samples completions from a decoder such as Llama, Qwen or GPT-2"
        )
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    context = getattr(text, "max_position_embeddings", None)
    sampling = getattr(rollout, "config", None)
    if not isinstance(context, int) or not isinstance(sampling, SamplingConfig):
        return f"policy.model {policy.model!r}: causal LM; context length not checked (not known)"
    new, prompt = sampling.max_new_tokens, sampling.max_prompt_tokens
    if prompt is None:
        if new >= context:
            raise RecipeError(
                f"rollout.max_new_tokens={new} leaves no room for a prompt in {policy.model!r}'s context of "
                f"{context} tokens (max_position_embeddings)"
            )
        return (
            f"policy.model {policy.model!r}: causal LM, context {context} tokens; max_new_tokens={new} leaves "
            f"{context - new} for prompts (rollout.max_prompt_tokens is not set: prompt lengths are checked at fit)"
        )
    if prompt + new > context:
        raise RecipeError(
            f"rollout.max_prompt_tokens={prompt} + max_new_tokens={new} = {prompt + new} tokens, over "
            f"{policy.model!r}'s context of {context} (max_position_embeddings)"
        )
    return f"policy.model {policy.model!r}: causal LM, context {context} tokens >= {prompt} prompt + {new} new tokens"


def _is_causal_lm(config: Any) -> bool:
    """``AutoModelForCausalLM`` builds this checkpoint as the decoder it was trained as: one of its architectures is
    a causal LM transformers knows (or its remote code registers one, ``auto_map``); with no architectures listed,
    its model type is. The architectures come first because a model type can map to a causal head the checkpoint was
    never trained with (``bert`` maps to ``BertLMHeadModel``, yet a ``BertForMaskedLM`` checkpoint is no decoder)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES as CAUSAL

    architectures = set(getattr(config, "architectures", None) or [])
    if "AutoModelForCausalLM" in (getattr(config, "auto_map", None) or {}):
        return True
    if architectures:
        known = set(CAUSAL.values())
        return any(a in known or a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures)
    return config.model_type in CAUSAL


def _installed(module: str) -> bool:
    """The top-level ``module`` is importable (or already imported, e.g. a stand-in a test put in ``sys.modules``)."""
    if sys.modules.get(module) is not None:
        return True
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def load_data(recipe: Recipe) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    from morl.data import load_examples

    d = recipe.data
    _check_data_source("data.train", d.train)
    _check_data_source("data.eval", d.eval)
    options = {"columns": d.columns, "prompt_template": d.prompt_template}
    train = load_examples(d.train, d.train_split, limit=d.train_size, **options)
    evals = load_examples(d.eval, d.eval_split, limit=d.eval_size, **options) if d.eval else None
    return train, evals


def _check_data_source(field: str, source: str | None) -> None:
    """``DataError`` for a data path that exists but is neither a folder nor a regular file: a named pipe or a device
    would block or never end when read."""
    from morl.data import EMBEDDED_TASKS, DataError

    if source is None or source in EMBEDDED_TASKS:
        return
    path = Path(source).expanduser()
    if path.exists() and not path.is_dir() and not path.is_file():
        raise DataError(
            f"{field}: {source} is not a regular file (a named pipe, a device or a socket); give a .jsonl, .json or "
            ".parquet file, or a folder of them"
        )


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
