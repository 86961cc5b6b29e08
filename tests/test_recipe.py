import sys

import pytest
import yaml
from typer.testing import CliRunner

from morl.cli import app
from morl.components import RecipeError
from morl.recipe import apply_override, build_components, load_recipe, parse_recipe
from morl.rewards import objective_name


def _write(tmp_path, text):
    path = tmp_path / "r.yaml"
    path.write_text(text)
    return path


def test_defaults_and_overrides(tmp_path):
    recipe = load_recipe(_write(tmp_path, "controller: ctwa\n"), ["train.steps=3", "controller.lr=0.5"])
    assert recipe.train.steps == 3
    assert recipe.controller == {"name": "ctwa", "lr": 0.5}
    components = build_components(recipe)
    assert components["controller"].config.lr == 0.5


def test_unknown_section_names_allowed_fields(tmp_path):
    with pytest.raises(RecipeError, match=r"trian: unknown field; allowed fields: .*train"):
        load_recipe(_write(tmp_path, "trian: {steps: 3}\n"))


def test_misspelt_field_and_wrong_type(tmp_path):
    with pytest.raises(RecipeError, match=r"train.stpes: unknown field"):
        load_recipe(_write(tmp_path, "train: {stpes: 3}\n"))
    with pytest.raises(RecipeError, match=r"train.lr: .*greater than 0"):
        load_recipe(_write(tmp_path, "train: {lr: -1}\n"))
    with pytest.raises(RecipeError, match=r"train.group_size"):
        load_recipe(_write(tmp_path, "train: {group_size: 1}\n"))
    with pytest.raises(RecipeError, match=r"on_reward_error: .*'raise' or 'skip'"):
        load_recipe(_write(tmp_path, "train: {on_reward_error: ignore}\n"))


def test_unknown_component_and_bad_targets_fail_before_model_load(tmp_path):
    with pytest.raises(RecipeError, match="unknown component 'ctwaa'"):
        build_components(parse_recipe({"controller": "ctwaa"}))
    with pytest.raises(RecipeError, match="controller.targets: 2 values for 3 objectives"):
        build_components(parse_recipe({"controller": {"name": "ctwa", "targets": [0.1, 0.1]}}))


def test_override_syntax(tmp_path):
    raw = {"algo": "grpo"}
    apply_override(raw, "algo.clip_high=0.28")
    assert raw == {"algo": {"name": "grpo", "clip_high": 0.28}}
    with pytest.raises(RecipeError, match="key.path=value"):
        apply_override(raw, "algo.clip_high")


def test_invalid_yaml(tmp_path):
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(_write(tmp_path, "train: [unclosed\n"))


def test_the_sampling_settings_have_one_home_the_rollout():
    """The loss takes its log-probs at the rollout's temperature and dr_grpo's constant from its max_new_tokens; an
    algo.temperature given as well must agree (old recipes), and says where the setting lives."""
    rollout = {"name": "transformers", "temperature": 0.7, "max_new_tokens": 48}
    algo = build_components(parse_recipe({"rollout": rollout, "algo": {"name": "grpo", "loss_type": "dr_grpo"}}))[
        "algo"
    ]
    assert algo.temperature == 0.7 and algo.config.max_completion_length == 48
    with pytest.raises(RecipeError, match=r"rollout.temperature is 0.7 but algo.temperature is 1.0.*one home"):
        build_components(parse_recipe({"rollout": rollout, "algo": {"name": "grpo", "temperature": 1.0}}))
    agreed = {"rollout": rollout, "algo": {"name": "grpo", "temperature": 0.7}}
    assert build_components(parse_recipe(agreed))["algo"].temperature == 0.7


# ---- import paths: a module beside the recipe ----------------------------------------------------------------------


@pytest.fixture
def isolated_imports(monkeypatch):
    """Whatever a test appends to ``sys.path`` or imports under these names is undone afterwards."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    names: list[str] = []
    yield names
    for module in [m for m in sys.modules if m.partition(".")[0] in names]:
        del sys.modules[module]


def _project(tmp_path, package: str):
    """``project/recipe.yaml`` naming ``{package}.rewards.politeness``, with the package beside it."""
    project = tmp_path / "project"
    (project / package).mkdir(parents=True)
    (project / package / "__init__.py").write_text("")
    (project / package / "rewards.py").write_text(
        "def politeness(prompts, completions, **kwargs):\n    return [1.0] * len(completions)\n"
    )
    recipe = project / "recipe.yaml"
    recipe.write_text(f"rewards: [accuracy, {package}.rewards.politeness]\ncontroller: fixed\n")
    return recipe


def test_a_module_beside_the_recipe_is_found_from_another_folder(tmp_path, monkeypatch, isolated_imports):
    isolated_imports.append("beside_pkg")
    recipe = _project(tmp_path, "beside_pkg")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    before = list(sys.path)
    assert CliRunner().invoke(app, ["validate", str(recipe)]).exit_code == 0  # morl validate
    components = build_components(load_recipe(recipe))
    assert [objective_name(r) for r in components["rewards"]] == ["accuracy", "politeness"]
    assert components["rewards"][1](["p"], ["c"]) == [1.0]
    # the recipe's folder is appended (installed packages still win), once; the current folder held nothing
    assert sys.path == [*before, str(recipe.parent)]
    # a recipe built in Python has no folder: the module must be importable some other way
    assert load_recipe(recipe).folder == recipe.parent and parse_recipe({}).folder is None


def test_a_module_in_the_current_folder_is_found(tmp_path, monkeypatch, isolated_imports):
    isolated_imports.append("cwd_pkg")
    recipe = _project(tmp_path, "cwd_pkg")
    monkeypatch.chdir(recipe.parent)
    build_components(parse_recipe(yaml.safe_load(recipe.read_text())))  # no folder recorded: the current one serves


def test_import_errors_name_what_is_missing(tmp_path, monkeypatch, isolated_imports):
    isolated_imports.extend(["broken_pkg", "nowhere_pkg"])
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RecipeError, match=r"No module named 'nowhere_pkg' \(looked on sys.path and in "):
        build_components(parse_recipe({"rewards": ["nowhere_pkg.rewards.x"]}, folder=tmp_path))
    recipe = _project(tmp_path, "broken_pkg")
    (recipe.parent / "broken_pkg" / "rewards.py").write_text("import not_installed_anywhere\n")
    with pytest.raises(RecipeError, match=r"No module named 'not_installed_anywhere'"):  # the package's own import
        build_components(load_recipe(recipe))


def test_recipe_docstring_warns_that_import_paths_run_code():
    import morl.recipe

    assert "an import path runs code" in morl.recipe.__doc__.lower()


def test_set_reaches_one_reward_by_its_index():
    from morl.recipe import apply_override

    raw = {"rewards": ["accuracy", {"name": "conciseness"}, "clarity"], "train": {"steps": 3}}
    apply_override(raw, "rewards.0.timeout_s=2.5")
    apply_override(raw, "rewards.2=my_pkg.Politeness")
    assert raw["rewards"] == [{"name": "accuracy", "timeout_s": 2.5}, {"name": "conciseness"}, "my_pkg.Politeness"]
    for bad, message in (("rewards.7.x=1", "index below 3"), ("train.steps.x=1", "is a value"), ("a=[", "YAML")):
        with pytest.raises(RecipeError, match=message):
            apply_override(raw, bad)


def test_an_unknown_field_lists_its_sections_fields_and_trls_name_gets_a_hint():
    with pytest.raises(RecipeError) as info:
        parse_recipe({"train": {"max_steps": 10}})
    message = str(info.value)
    assert "train.max_steps: unknown field; did you mean train.steps (TRL's max_steps" in message
    assert "allowed fields: steps, prompts_per_step" in message and "diagnostics" not in message.split("allowed")[1]
    with pytest.raises(RecipeError, match=r"beta: unknown field; did you mean algo\.kl_coef"):
        build_components(parse_recipe({"algo": {"name": "grpo", "beta": 0.1}}))
