import pytest

from morl.components import RecipeError
from morl.recipe import apply_override, build_components, load_recipe, parse_recipe


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


def test_sampling_and_training_temperatures_must_agree():
    with pytest.raises(RecipeError, match=r"rollout.temperature is 0.7 but algo.temperature is 1.0"):
        build_components(parse_recipe({"rollout": {"name": "transformers", "temperature": 0.7}}))
    build_components(
        parse_recipe(
            {"rollout": {"name": "transformers", "temperature": 0.7}, "algo": {"name": "grpo", "temperature": 0.7}}
        )
    )
