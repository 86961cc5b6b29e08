"""Component base class and registry.

Every swappable piece of morl (reward, scalarizer, advantage estimator, policy algorithm, weight
controller, rollout backend) is a small object whose parameters are validated by a pydantic
``Config`` and whose learned state lives in attributes with a trailing underscore (``lambdas_``),
created on first use — as in scikit-learn, absence of state means "not started".

Components register under a short name per family, so a recipe can say ``controller: ctwa``;
user components are named by import path (``my_pkg.rewards.Politeness``). An import path resolves as Python
would, then from the current folder and the folders given (a recipe's own folder), so a module beside the
recipe works without ``PYTHONPATH`` (see :func:`import_module`).

Example:
    >>> from morl.components import Component, build
    >>> build("controller", {"name": "fixed", "weights": [1.0, 2.0]})
    FixedWeights(weights=[1.0, 2.0])
"""

from __future__ import annotations

import importlib
import inspect
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

FAMILIES = ("reward", "scalarizer", "advantage", "algo", "controller", "rollout")

_REGISTRY: dict[str, dict[str, type[Component]]] = {family: {} for family in FAMILIES}


class ComponentConfig(BaseModel):
    """Base of every component config: unknown keys are errors, not silently ignored, and every float is finite.

    Why finite: a NaN or infinite parameter (``lr: .nan``, ``weights: [.inf, 1]``) is accepted by Python's
    arithmetic and only shows up steps later as NaN weights or losses, so it is refused here, where the message can
    still name the field. A field whose meaning needs infinity says so on its type
    (``Annotated[float, AllowInfNan(True)]``) and documents what it means.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


# TRL's GRPOConfig names where morl's differ (docs/trl.md maps every field): the hint an unknown field gets
TRL_NAMES = {
    "max_steps": "train.steps (TRL's max_steps counts optimizer steps: steps × algo.epochs × algo.minibatches)",
    "learning_rate": "train.lr (TRL's learning_rate)",
    "num_generations": "train.group_size (TRL's num_generations)",
    "beta": "algo.kl_coef (TRL's beta)",
    "epsilon": "algo.clip_low (TRL's epsilon)",
    "epsilon_high": "algo.clip_high (TRL's epsilon_high)",
    "num_iterations": "algo.epochs (TRL's num_iterations)",
    "per_device_train_batch_size": "algo.micro_batch_size (TRL's per_device_train_batch_size)",
    "max_completion_length": "rollout.max_new_tokens (TRL's max_completion_length)",
    "save_steps": "train.checkpoint_every (TRL's save_steps)",
    "report_to": "train.loggers (TRL's report_to)",
    "reward_weights": "controller: {name: fixed, weights: [...]} (TRL's reward_weights)",
    "use_vllm": "rollout: vllm (TRL's use_vllm)",
}


class RecipeError(ValueError):
    """A recipe or component spec is wrong; the message names the field and the allowed values."""


class Component:
    """Parameters in ``self.config``; learned state in ``name_`` attributes; nothing else.

    Subclasses declare ``family`` and ``name`` (registry short name) and a nested ``Config``.
    """

    family: ClassVar[str] = ""
    name: ClassVar[str] = ""
    Config: ClassVar[type[ComponentConfig]] = ComponentConfig

    def __init__(self, **params: Any) -> None:
        try:
            self.config = self.Config(**params)
        except ValidationError as err:
            raise RecipeError(explain_validation_error(err, type(self).__name__, self.Config, TRL_NAMES)) from None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("name") and cls.family:
            taken = _REGISTRY[cls.family].get(cls.name)
            # a module imported again (even under another name) re-registers the same class: fine
            if taken is not None and _defined_at(taken) != _defined_at(cls):
                raise RecipeError(
                    f"{cls.family} name {cls.name!r} is taken by {taken.__module__}.{taken.__qualname__}: "
                    f"{cls.__module__}.{cls.__qualname__} would silently replace it in every recipe; give it "
                    "another name (or none, and name it by its import path)"
                )
            _REGISTRY[cls.family][cls.name] = cls

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"

    def get_params(self) -> dict[str, Any]:
        return self.config.model_dump()

    def clone(self) -> Component:
        """A fresh, unstarted copy with the same parameters."""
        return type(self)(**self.get_params())

    def state_dict(self) -> dict[str, Any]:
        """Learned state (trailing-underscore attributes) as plain JSON-able values."""
        return {k: _to_plain(v) for k, v in vars(self).items() if k.endswith("_") and not k.startswith("_")}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            if not key.endswith("_"):
                raise KeyError(f"{type(self).__name__}: state key {key!r} is not learned state (no trailing _)")
            setattr(self, key, _from_plain(value))


def registered(family: str) -> dict[str, type[Component]]:
    """Short name -> class for one family (built-ins are imported on first call)."""
    _import_builtins()
    if family not in _REGISTRY:
        raise RecipeError(f"unknown component family {family!r}; allowed: {', '.join(FAMILIES)}")
    return dict(_REGISTRY[family])


def resolve(family: str, name: str, search: Sequence[str | Path] = ()) -> type[Component] | Any:
    """Class (or plain callable, for rewards) for a short name or an import path.

    An import path's module is found as Python finds it, else in the current folder, else in ``search`` (the
    recipe's folder): see :func:`import_module`.
    """
    table = registered(family)
    if name in table:
        return table[name]
    if "." in name:
        module_name, _, attr = name.rpartition(".")
        try:
            return getattr(import_module(module_name, search), attr)
        except (ImportError, AttributeError) as err:
            raise RecipeError(f"{family}: cannot import {name!r} ({err})") from None
    raise RecipeError(f"{family}: unknown component {name!r}; allowed: {', '.join(sorted(table))}, or an import path")


def import_module(module_name: str, search: Sequence[str | Path] = ()) -> ModuleType:
    """Import ``module_name``; if Python cannot find its top-level package, look in the current folder, then in
    each folder of ``search``.

    Why not prepend those folders to ``sys.path``: a file beside a recipe (``datasets.py``, ``math.py``) would then
    shadow an installed package for the whole process. Instead only the first folder that holds the missing
    top-level package (``my_pkg/`` or ``my_pkg.py``) is *appended* to ``sys.path``, and left there — the package's
    own later imports (``from my_pkg.util import x`` inside a function) and spawned worker processes need it — so
    installed packages always win and a folder that holds nothing asked for is never added.

    Example:
        >>> import_module("morl.components").__name__
        'morl.components'
    """
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        top = module_name.partition(".")[0]
        if err.name != top:  # the package was found; something it imports (or a submodule) is missing
            raise
        folders = [Path.cwd(), *(Path(f) for f in search)]
        for folder in folders:
            if (folder / top).is_dir() or (folder / f"{top}.py").is_file():
                entry = str(folder.resolve())
                if entry not in sys.path:
                    sys.path.append(entry)
                importlib.invalidate_caches()
                return importlib.import_module(module_name)
        looked = ", ".join(str(f) for f in dict.fromkeys(folders))
        raise ModuleNotFoundError(f"No module named {top!r} (looked on sys.path and in {looked})", name=top) from None


def build(family: str, spec: str | dict[str, Any] | Component, search: Sequence[str | Path] = ()) -> Any:
    """Instantiate a component from ``"name"`` or ``{"name": ..., **params}``; import paths also resolve from the
    folders in ``search`` (see :func:`resolve`).

    What a spec names must belong to ``family`` (:func:`check_family`): a function given as a scalarizer, or a
    reward given as the controller, is refused here rather than failing mid-training with a cryptic error.
    """
    if isinstance(spec, type):  # a class given in Python: its defaults, as its registry name would give
        return check_family(family, spec, spec.__qualname__)()
    if isinstance(spec, Component) or (callable(spec) and not isinstance(spec, (str, dict))):
        return check_family(family, spec, getattr(spec, "__qualname__", type(spec).__name__))
    if isinstance(spec, str):
        name, params = spec, {}
    elif isinstance(spec, dict):
        if "name" not in spec:
            raise RecipeError(f"{family}: a component needs a 'name' field; got keys {sorted(map(str, spec))}")
        params = dict(spec)
        name = params.pop("name")
    else:
        raise RecipeError(f"{family}: expected a name or a mapping with 'name', got {type(spec).__name__}")
    if not isinstance(name, str) or not name:
        raise RecipeError(f"{family}: 'name' must be a component name or an import path, got {name!r}")
    unnamed = [key for key in params if not isinstance(key, str)]
    if unnamed:
        raise RecipeError(f"{family}: {name!r}: parameter names must be text, got {unnamed!r}")
    target = check_family(family, resolve(family, name, search), name)
    if isinstance(target, type):
        return target(**params)
    if params and family == "reward":
        return _from_factory(name, target, params)
    if params:
        raise RecipeError(f"{family}: {name!r} is a plain function and takes no parameters, got {sorted(params)}")
    if family == "reward" and not _takes_completions(target):
        raise RecipeError(
            f"reward: {name!r} does not take completions (its parameters: {', '.join(_parameters(target))}); if it "
            f"is a reward factory (as TRL's get_soft_overlong_punishment), give its parameters: "
            f"{{name: {name}, {_parameters(target)[0] if _parameters(target) else 'param'}: ...}}"
        )
    return target


FACTORY_SPEC = "__morl_spec__"  # on a reward made by a factory: the recipe node that makes it again


def _from_factory(name: str, factory: Any, params: dict[str, Any]) -> Any:
    """A reward function made by calling ``factory(**params)`` (TRL's reward factories), remembering how."""
    try:
        made = factory(**params)
    except TypeError as err:
        raise RecipeError(f"reward: {name!r} with parameters {sorted(params)}: {err}") from None
    if not callable(made) or not _takes_completions(made):
        raise RecipeError(
            f"reward: {name!r} called with {sorted(params)} returned {_describe(made)}, not a reward function "
            "(a callable taking completions); a plain reward function takes no parameters"
        )
    try:
        setattr(made, FACTORY_SPEC, {"name": name, **params})
    except (AttributeError, TypeError):  # an object without a __dict__: the recipe names the factory's result
        pass
    return made


def _parameters(fn: Any) -> list[str]:
    try:
        return list(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return []


def _takes_completions(fn: Any) -> bool:
    """Whether ``fn`` can be called as a reward: with ``completions`` by keyword (or ``**kwargs``)."""
    try:
        parameters = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature: give it the benefit of the doubt
        return True
    return any(p.kind is p.VAR_KEYWORD or p.name == "completions" for p in parameters)


def check_family(family: str, target: Any, name: str) -> Any:
    """``target`` unchanged if it can serve as a ``family`` component, else a :class:`RecipeError` saying what it is
    and what is expected.

    A class must be a :class:`Component` of that family; an object, an instance of one. A reward may also be a
    plain callable (a function, or an object with ``__call__``), which is how TRL users write rewards — but not a
    class outside the reward family: calling it would construct an object, not return scores.
    """
    if isinstance(target, type):
        if issubclass(target, Component) and target.family == family:
            return target
    elif isinstance(target, Component):
        if target.family == family:
            return target
    elif family == "reward" and callable(target):
        return target
    raise RecipeError(f"{family}: {name!r} is {_describe(target)}; expected {_expected(family)}")


def _describe(target: Any) -> str:
    """What a resolved name turned out to be, in the words of an error message."""
    if isinstance(target, type):
        if issubclass(target, Component):
            return f"a {target.family or 'component'} class ({target.__module__}.{target.__qualname__})"
        return f"a class that is not a morl component ({target.__module__}.{target.__qualname__})"
    if isinstance(target, Component):
        return f"a {target.family or 'component'} ({type(target).__name__})"
    if callable(target):
        return f"a function ({getattr(target, '__qualname__', type(target).__name__)})"
    return f"not callable (a value of type {type(target).__name__}: {target!r:.60})"


# the base class a user component of each family subclasses, for error messages
_BASES = {
    "reward": "morl.rewards.RewardFn",
    "scalarizer": "morl.scalarize.base.Scalarizer",
    "advantage": "morl.algos.advantages.AdvantageEstimator",
    "algo": "morl.algos.policy_gradient.PolicyAlgo",
    "controller": "morl.controllers.base.WeightController",
    "rollout": "morl.rollout.RolloutBackend",
}


def _expected(family: str) -> str:
    what = f"a {family} component (a subclass of {_BASES.get(family, 'morl.components.Component')})"
    return what + (" or a plain function (prompts, completions, **columns) -> scores" if family == "reward" else "")


def spec_of(family: str, component: Any) -> str | dict[str, Any]:
    """The recipe node that builds ``component`` again: its short name (or import path) and its parameters.

    A plain function is named by its import path, which must be importable for the recipe to re-run (a function
    defined inside another function or a notebook cell is not; its path is recorded anyway, marked as such).
    """
    if isinstance(component, Component):
        cls = type(component)
        name = (
            component.name if registered(family).get(component.name) is cls else f"{cls.__module__}.{cls.__qualname__}"
        )
        return {"name": name, **component.config.model_dump(mode="json")}
    made_by = getattr(component, FACTORY_SPEC, None)
    if made_by is not None:
        return dict(made_by)
    path = f"{component.__module__}.{getattr(component, '__qualname__', type(component).__qualname__)}"
    return path


def unimportable(spec: str | dict[str, Any]) -> str | None:
    """Why a recipe node cannot be imported again by ``morl fit`` (a ``__main__`` or notebook function, one defined
    inside another function), or None."""
    name = spec if isinstance(spec, str) else spec.get("name", "")
    if name.startswith("__main__.") or "<locals>" in name or "<lambda>" in name:
        return f"{name} is defined in {'the running script' if name.startswith('__main__.') else 'a function'}"
    return None


def explain_validation_error(
    err: ValidationError, owner: str, config: type[BaseModel], hints: dict[str, str] | None = None
) -> str:
    """One line per problem, naming the field; an unknown field lists the fields allowed where it stands (the
    section's, not the top level's) and, from ``hints`` (another library's name -> ours), what was probably meant."""
    lines = [f"{owner}: invalid configuration"]
    for item in err.errors():
        field = ".".join(str(p) for p in item["loc"]) or "(config)"
        if item["type"] == "extra_forbidden":
            section = _model_at(config, item["loc"][:-1])
            allowed = ", ".join(section.model_fields) or "(none)"
            hint = (hints or {}).get(str(item["loc"][-1]))
            meant = f" did you mean {hint}?" if hint else ""
            lines.append(f"  {field}: unknown field;{meant} allowed fields: {allowed}")
        else:
            lines.append(f"  {field}: {item['msg']} (got {item.get('input')!r})")
    return "\n".join(lines)


def _defined_at(cls: type) -> tuple[str, str]:
    """Where a class is written: its module's file (or name) and its qualified name."""
    module = sys.modules.get(cls.__module__)
    return str(getattr(module, "__file__", None) or cls.__module__), cls.__qualname__


def _model_at(model: type[BaseModel], path: Sequence[Any]) -> type[BaseModel]:
    """The nested config class a location points into (``train`` -> ``TrainConfig``), as far as it goes."""
    for part in path:
        field = model.model_fields.get(str(part))
        nested = field.annotation if field is not None else None
        if not (isinstance(nested, type) and issubclass(nested, BaseModel)):
            break
        model = nested
    return model


def _to_plain(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return value
    if isinstance(value, dict):
        return {k: _to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_plain(v) for v in value]
    return value


def _from_plain(value: Any) -> Any:
    """Numeric lists come back as float arrays (NaN kept); anything else as it was saved."""
    if isinstance(value, list) and value:
        try:
            return np.asarray(value, dtype=float)
        except (TypeError, ValueError):
            return value
    return value


_BUILTINS_IMPORTED = False


def _import_builtins() -> None:
    global _BUILTINS_IMPORTED
    if _BUILTINS_IMPORTED:
        return
    _BUILTINS_IMPORTED = True
    builtins = ("morl.rewards", "morl.scalarize", "morl.algos", "morl.controllers", "morl.rollout", "morl.rollout_vllm")
    for module in builtins:  # morl.rollout_vllm imports vLLM only when an engine starts
        importlib.import_module(module)
