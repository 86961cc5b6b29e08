"""``morl validate`` accepts only what ``fit`` can run: components of the right family, installed loggers, finite
numbers, weights that train something, a local model that is a causal LM with room for prompt and completion.

The fuzz tests throw random recipes (random nesting and types, NaN and inf, unknown keys, wrong component names, lists
where mappings belong) at the parser and the validation: whatever comes in, the answer is "ok" or a
:class:`ValueError` (``RecipeError``) with a message, and the command line exits 2 without a traceback.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from typer.testing import CliRunner

from morl.cli import app
from morl.components import FAMILIES, RecipeError, build, registered
from morl.controllers.fixed import FixedWeights
from morl.diagnostics import DiagnosticsConfig
from morl.policy import LoraConfig, PolicyConfig
from morl.recipe import LOGGER_PACKAGES, Recipe, TrainConfig, apply_override, parse_recipe, validate_recipe
from morl.rewards import Accuracy, RewardFn

NAN, INF = math.nan, math.inf


def politeness(prompts: list[str], completions: list[str], **columns: Any) -> list[float]:
    """A plain-function reward, as TRL users write them."""
    return [float("please" in c) for c in completions]


class Shouting:
    """A callable object as a reward: allowed, like a function."""

    __name__ = "shouting"

    def __call__(self, prompts: list[str], completions: list[str], **columns: Any) -> list[float]:
        return [float(c.isupper()) for c in completions]


shouting = Shouting()


class Kindness(RewardFn):
    """A user's RewardFn subclass, named by import path."""

    def __call__(self, prompts: list[str], completions: list[str], **columns: Any) -> list[float]:
        return politeness(prompts, completions)


def flat(text: str) -> str:
    """Rich wraps long lines; compare messages with their whitespace collapsed."""
    return " ".join(text.split())


def refused(raw: dict[str, Any], pattern: str) -> None:
    """The recipe fails validation with a message matching ``pattern``."""
    with pytest.raises(RecipeError, match=pattern):
        validate_recipe(parse_recipe(raw))


# ---- 1. components resolve to their family ------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["scalarizer", "advantage", "algo", "controller", "rollout"])
def test_a_function_is_not_a_component_of_another_family_than_reward(family):
    refused(
        {family: "tests.test_validate.politeness"}, rf"{family}: .*is a function \(politeness\); expected a {family}"
    )


@pytest.mark.parametrize(
    ("path", "what"),
    [
        ("sys.maxsize", r"not callable \(a value of type int"),
        ("math.pi", r"not callable \(a value of type float"),
        ("collections.OrderedDict", r"a class that is not a morl component"),
        ("morl.controllers.fixed.FixedWeights", r"a controller class"),
    ],
)
def test_a_reward_is_a_reward_class_or_a_callable(path, what):
    refused({"rewards": ["accuracy", path]}, rf"rewards\[1\]: '{path}' is {what}.*expected a reward component")


def test_a_class_of_another_family_is_refused_naming_both():
    refused({"controller": "morl.rewards.Accuracy"}, r"controller: .* is a reward class .*; expected a controller")
    refused({"scalarizer": "morl.controllers.fixed.FixedWeights"}, r"is a controller class.*expected a scalarizer")


def test_rewards_may_be_functions_callables_and_reward_classes():
    raw = {"rewards": ["accuracy", "tests.test_validate.politeness", "tests.test_validate.shouting"]}
    raw["rewards"].append({"name": "tests.test_validate.Kindness"})
    rewards = validate_recipe(parse_recipe(raw))[0]["rewards"]
    assert rewards[1] is politeness and rewards[2] is shouting and isinstance(rewards[3], Kindness)


def test_objects_given_in_python_are_checked_too():
    with pytest.raises(RecipeError, match=r"controller: .* is a reward \(Accuracy\)"):
        build("controller", Accuracy())
    with pytest.raises(RecipeError, match=r"reward: .* is a controller"):
        build("reward", FixedWeights())
    with pytest.raises(RecipeError, match=r"scalarizer: .* is a function"):
        build("scalarizer", politeness)
    assert isinstance(build("controller", FixedWeights), FixedWeights)  # a class: built with its defaults


@pytest.mark.parametrize("name", [5, None, ["fixed"], ""])
def test_a_name_that_is_not_text_is_a_recipe_error(name):
    with pytest.raises(RecipeError, match=r"'name' must be a component name"):
        build("controller", {"name": name})


# ---- 2. loggers are installed -------------------------------------------------------------------------------------


def test_a_logger_whose_package_is_missing_is_refused_with_the_install(monkeypatch):
    monkeypatch.setitem(LOGGER_PACKAGES, "wandb", "morl_test_no_such_package")
    refused({"train": {"loggers": ["jsonl", "wandb"]}}, r"train.loggers: .*wandb \(pip install morl_test_no_such")


def test_an_installed_logger_is_accepted_and_said():
    pytest.importorskip("tensorboard")
    checks = validate_recipe(parse_recipe({"train": {"loggers": ["tensorboard"]}}))[1]
    assert "train.loggers: tensorboard installed" in checks


# ---- 3. numbers are finite; weights train something ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"train": {"lr": INF}}, "train.lr"),
        ({"train": {"lr": NAN}}, "train.lr"),
        ({"train": {"weight_decay": INF}}, "train.weight_decay"),
        ({"train": {"warmup_ratio": NAN, "lr_scheduler_type": "linear"}}, "train.warmup_ratio"),
        ({"diagnostics": {"alarm_threshold": -INF}}, "diagnostics.alarm_threshold"),
        ({"policy": {"lora": {"alpha": INF}}}, "policy.lora.alpha"),
        ({"controller": {"name": "ctwa", "lr": INF}}, "lr"),
        ({"controller": {"name": "ctwa", "targets": [NAN, 0.1, 0.1]}}, "targets"),
        ({"controller": {"name": "fixed", "weights": [NAN, 1, 1]}}, "weights"),
        ({"controller": {"name": "fixed", "weights": {"accuracy": INF, "conciseness": 1, "clarity": 1}}}, "weights"),
        ({"algo": {"name": "grpo", "kl_coef": NAN}}, "kl_coef"),
        ({"rewards": [{"name": "accuracy", "timeout_s": INF}]}, "timeout_s"),
    ],
)
def test_nan_and_inf_are_refused_naming_the_field(raw, field):
    refused(raw, rf"(?s){field}.*finite number")


CONFIGS = [(f"{family}:{name}", cls.Config) for family in FAMILIES for name, cls in sorted(registered(family).items())]
CONFIGS += [("train", TrainConfig), ("diagnostics", DiagnosticsConfig), ("policy", PolicyConfig)]
CONFIGS += [("policy.lora", LoraConfig)]


@pytest.mark.parametrize(("owner", "config"), CONFIGS, ids=[o for o, _ in CONFIGS])
def test_every_float_field_of_every_config_refuses_nan(owner, config):
    """The generic rule: no config takes NaN in a float field, alone, in a list or in a mapping by objective (CTWA's
    gate takes +inf, meaning never, but not NaN)."""
    for field, info in config.model_fields.items():
        if not re.search(r"\bfloat\b", str(info.annotation)):  # not Literal["float32", ...]
            continue
        messages = []
        for value in (NAN, [NAN], {"accuracy": NAN}):
            try:
                config(**{field: value})
            except ValidationError as err:
                messages += [e["msg"] for e in err.errors() if e["loc"] and e["loc"][0] == field]
            else:
                pytest.fail(f"{owner}.{field} accepted {value!r}")
        assert any("finite" in m or "NaN" in m for m in messages), (owner, field, messages)


@pytest.mark.parametrize(
    ("controller", "pattern"),
    [
        ({"name": "fixed", "weights": [0, 0, 0]}, r"weights: .*all 0"),
        ({"name": "fixed", "weights": {"accuracy": 0, "conciseness": 0.0, "clarity": 0}}, r"weights: .*all 0"),
        ({"name": "gdpo", "weights": [0, 0, 0]}, r"weights: .*all 0"),
        ({"name": "schedule", "end": [0, 0, 0]}, r"end: the weights are all 0"),
        ({"name": "schedule", "start": [0, 0, 0]}, r"start: the weights are all 0"),  # constant: end is start
    ],
)
def test_all_zero_weights_are_refused(controller, pattern):
    refused({"controller": controller}, rf"(?s)controller: .*{pattern}")


def test_k1_in_the_loss_is_refused_with_the_fix():
    """On-policy the expected gradient of k1 is 0: a KL penalty that does nothing (tests/algos/test_loss.py)."""
    raw = {"algo": {"name": "grpo", "kl_coef": 0.001, "kl_estimator": "k1"}}
    refused(raw, r"(?s)algo: .*kl_estimator: k1 with kl_in: loss .*k3 in the loss, or kl_in: reward with k1")
    validate_recipe(parse_recipe({"algo": {**raw["algo"], "kl_in": "reward"}}))


def test_a_schedule_may_ramp_up_from_zero():
    raw = {"controller": {"name": "schedule", "start": [0, 0, 0], "end": [1, 1, 1]}}
    assert validate_recipe(parse_recipe(raw))[0]["controller"].config.start == [0, 0, 0]


def test_ctwa_gate_takes_none_or_inf_for_never_but_not_nan():
    for gate in ([None, INF, 0.9], {"accuracy": INF}, None):
        controller = validate_recipe(parse_recipe({"controller": {"name": "ctwa", "gate": gate}}))[0]["controller"]
        controller.start(["accuracy", "conciseness", "clarity"])
        assert controller._gate[0] == INF
    for gate in ([NAN, 1.0, 1.0], {"accuracy": NAN}, [-INF, 1.0, 1.0]):
        refused({"controller": {"name": "ctwa", "gate": gate}}, r"gate: .*NaN and -inf are not")


# ---- 4. a local model is a causal LM with room for prompt and completion -----------------------------------------


def _model_folder(root: Path, **config: Any) -> str:
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text(json.dumps(config))
    return str(root)


def test_tinymath_is_checked_and_said():
    checks = validate_recipe(parse_recipe({"rollout": {"name": "transformers", "max_prompt_tokens": 100}}))[1]
    assert any("causal LM, context 256 tokens >= 100 prompt + 64 new" in line for line in checks), checks


@pytest.mark.parametrize(
    ("rollout", "pattern"),
    [
        ({"max_new_tokens": 256}, r"max_new_tokens=256 leaves no room for a prompt .* 256 tokens"),
        ({"max_new_tokens": 64, "max_prompt_tokens": 200}, r"max_prompt_tokens=200 \+ max_new_tokens=64 = 264"),
    ],
)
def test_prompt_and_completion_must_fit_the_context(rollout, pattern):
    refused({"rollout": {"name": "transformers", **rollout}}, pattern)


def test_a_model_that_is_not_a_causal_lm_is_refused(tmp_path):
    model = _model_folder(tmp_path / "bert", model_type="bert", architectures=["BertForMaskedLM"])
    refused({"policy": {"model": model}}, r"policy.model: .* is a BertForMaskedLM model, not a causal language model")


def test_a_causal_lm_folder_uses_its_own_context_name(tmp_path):
    model = _model_folder(tmp_path / "gpt2", model_type="gpt2", n_positions=96, architectures=["GPT2LMHeadModel"])
    refused({"policy": {"model": model}, "rollout": {"name": "transformers", "max_new_tokens": 100}}, r"context of 96")
    checks = validate_recipe(parse_recipe({"policy": {"model": model}}))[1]
    assert any("causal LM, context 96 tokens" in line for line in checks), checks


def test_an_unreadable_config_is_refused(tmp_path):
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{not json")
    refused({"policy": {"model": str(tmp_path / "broken")}}, r"policy.model: .*config.json cannot be read")


def test_a_hub_model_is_said_not_checked():
    checks = validate_recipe(parse_recipe({"policy": {"model": "Qwen/Qwen2.5-0.5B"}}))[1]
    assert any("not checked" in line for line in checks), checks


def test_validate_prints_what_it_checked(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("train: {steps: 3}\n")
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 0, result.output
    text = flat(result.output)
    assert "checked:" in text and "each resolved to its family" in text and "context 256 tokens" in text


# ---- 5. fuzzing: never a traceback --------------------------------------------------------------------------------

# safe import paths only: a random dotted name would import whatever module happens to be installed under it
IMPORT_PATHS = [
    "math.pi",
    "sys.maxsize",
    "os.path.join",
    "collections.OrderedDict",
    "morl.components.FAMILIES",
    "morl.components.Component",
    "morl.controllers.fixed.FixedWeights",
    "morl.controllers.base.WeightController",
    "morl.rewards.Accuracy",
    "morl.rewards.RewardFn",
    "tests.test_validate.politeness",
    "tests.test_validate.shouting",
    "tests.test_validate.Kindness",
    "morl.no_such_module.Thing",
    "morl_no_such_package.Thing",
]
NAMES = sorted({name for family in FAMILIES for name in registered(family)})
FIELDS = sorted(
    {field for family in FAMILIES for cls in registered(family).values() for field in cls.Config.model_fields}
)
OBJECTIVES = ["accuracy", "conciseness", "clarity", "politeness"]
text = st.text(alphabet=st.characters(codec="utf-8", exclude_characters="."), max_size=10)
numbers = st.sampled_from([0, 1, 2, 0.5, -1, NAN, INF, -INF]) | st.integers(-(10**4), 10**4) | st.floats()
scalars = st.none() | st.booleans() | numbers | text
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(FIELDS) | text, inner, max_size=4),
    max_leaves=10,
)
# what a field usually holds: a number, a list of them, a mapping by objective name
plausible = (
    numbers
    | st.booleans()
    | st.lists(numbers, max_size=4)
    | st.dictionaries(st.sampled_from(OBJECTIVES), numbers, max_size=4)
)


def _field_values(info: Any, wild: bool) -> st.SearchStrategy[Any]:
    """Values near what a field takes: its default, its Literal options, plausible numbers; if wild, also anything."""
    options = re.findall(r"'([^']*)'", str(info.annotation))
    near = st.just(info.get_default(call_default_factory=True)) | plausible
    if options:
        near = near | st.sampled_from(options)
    return near | near | values if wild else near


def _mapping(model: type, wild: bool) -> st.SearchStrategy[dict[str, Any]]:
    """A few of ``model``'s fields with values near their kind; if wild, now and then an unknown key."""
    fields = {name: _field_values(info, wild) for name, info in model.model_fields.items()}
    known = (
        st.lists(st.sampled_from(sorted(fields)), max_size=3, unique=True).flatmap(
            lambda keys: st.fixed_dictionaries({k: fields[k] for k in keys})
        )
        if fields
        else st.just({})
    )
    if not wild:
        return known
    return st.builds(lambda a, b: {**a, **b}, known, st.dictionaries(text, values, max_size=1) | st.just({}))


def _specs(family: str, wild: bool) -> st.SearchStrategy[Any]:
    """A component of the family, by name or as a mapping with parameters; if wild, often anything else."""
    classes = registered(family)
    right = st.sampled_from(sorted(classes)).flatmap(
        lambda name: st.just(name) | _mapping(classes[name].Config, wild).map(lambda params: {"name": name, **params})
    )
    if not wild:
        return right
    wrong_name = st.sampled_from(NAMES) | st.sampled_from(IMPORT_PATHS) | text
    wrong = wrong_name | st.builds(lambda n, p: {"name": n, **p}, wrong_name | values, st.dictionaries(text, values))
    return right | wrong | values


def _recipes(wild: bool) -> st.SearchStrategy[dict[str, Any]]:
    """Recipes whose every section is near a valid one (each mistake then reaches the component checks), or wild:
    random nesting and types, unknown keys, wrong names, lists where mappings belong."""
    anything = values if wild else st.nothing()
    models = st.sampled_from(["tinymath", "morl/tinymath/model", "/no/such/model", "Qwen/Qwen2.5-0.5B"])
    policy = _mapping(PolicyConfig, wild)
    sections = {
        "rewards": st.lists(_specs("reward", wild), min_size=0 if wild else 1, max_size=4) | anything,
        **{family: _specs(family, wild) for family in FAMILIES if family != "reward"},
        "train": _mapping(TrainConfig, wild) | anything,
        "diagnostics": _mapping(DiagnosticsConfig, wild) | anything,
        "policy": st.builds(lambda d, m: {**d, "model": m}, policy, models | (text if wild else models)) | anything,
    }
    junk = st.dictionaries(st.sampled_from(sorted(Recipe.model_fields)) | text, values, max_size=1) if wild else None
    return st.builds(
        lambda chosen, extra: {**chosen, **extra},
        st.fixed_dictionaries({}, optional=sections),
        junk | st.just({}) if junk is not None else st.just({}),
    )


recipes = _recipes(wild=False) | _recipes(wild=True)

# about 5 s on one core; no example database, so a run leaves no files in the tree (CI sees fresh examples each time)
FUZZ = settings(max_examples=500, deadline=None, database=None, suppress_health_check=list(HealthCheck))


def _answer_is_ok_or_a_message(run: Any) -> None:
    """``run()`` passes, or raises a ValueError (RecipeError is one; the command line catches both) with a message
    of its own, not pydantic's raw report."""
    try:
        run()
    except ValueError as err:
        assert str(err).strip(), f"{type(err).__name__} without a message"
        assert not isinstance(err, ValidationError), f"a raw pydantic error reached the user: {err}"


@FUZZ
@given(raw=recipes)
def test_fuzzed_recipes_are_valid_or_a_recipe_error_with_a_message(raw):
    _answer_is_ok_or_a_message(lambda: validate_recipe(parse_recipe(raw)))


override_keys = st.lists(st.sampled_from([*Recipe.model_fields, *FIELDS, "0", "1", "9"]) | text, min_size=1, max_size=4)


@FUZZ
@given(raw=recipes, keys=override_keys, value=text | st.sampled_from([".nan", ".inf", "[0, 0, 0]", "{a: 1}", "wandb"]))
def test_fuzzed_overrides_are_valid_or_a_recipe_error_with_a_message(raw, keys, value):
    """``--set key.path=value`` on any recipe: into lists, through scalars, past the end of a list."""

    def run() -> None:
        recipe = dict(raw)
        apply_override(recipe, f"{'.'.join(keys)}={value}")
        validate_recipe(parse_recipe(recipe))

    _answer_is_ok_or_a_message(run)


def _cli_validates(raw: Any) -> None:
    """``morl validate`` on the recipe's YAML: exit 0 or 2, never an exception out of the command."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "recipe.yaml"
        path.write_text(yaml.safe_dump(raw, allow_unicode=True))
        result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code in (0, 2), (result.output, result.exception)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    if result.exit_code == 2:
        assert "error:" in result.output


@settings(max_examples=50, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(raw=recipes)
def test_fuzzed_recipes_through_the_command_line(raw):
    _cli_validates(raw)


@settings(max_examples=20, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(raw=values)
def test_any_yaml_value_as_a_recipe_file(raw):
    _cli_validates(raw)


def test_the_installed_command_exits_2_without_a_traceback(tmp_path):
    path = tmp_path / "r.yaml"
    for text_ in ("train: {lr: .inf, loggers: [jsonl]}\n", "scalarizer: tests.test_validate.politeness\n"):
        path.write_text(text_)
        done = subprocess.run(
            [sys.executable, "-m", "morl", "validate", str(path)], capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 2, done.stdout + done.stderr
        assert "Traceback" not in done.stdout + done.stderr and "error:" in done.stderr


def test_the_names_the_fuzzer_draws_from_are_real():
    """A renamed section or field would silently weaken the fuzzing: the strategies draw from real ones."""
    assert {"train", "policy", "diagnostics", "rewards", "controller"} <= set(Recipe.model_fields)
    assert {"weights", "targets", "lr", "max_new_tokens", "max_prompt_tokens", "gate"} <= set(FIELDS)
