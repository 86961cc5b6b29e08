"""Resume identity: list what differs, ignore what does not change training, accept changes by name."""

from __future__ import annotations

import copy
import pickle

import pytest

from morl.run import ABSENT, TRAJECTORY_NEUTRAL, Difference, ResumeMismatch, check_resume, recipe_differences

OLD = {
    "name": "paper",
    "controller": {"name": "ctwa", "lr": 0.05, "targets": [0.15, 0.08, 0.08]},
    "rewards": ["accuracy", "conciseness", "clarity"],
    "algo": "grpo",
    "train": {"steps": 100, "lr": 1e-4, "output_dir": "runs/a", "loggers": ["jsonl"], "threads": None},
}


def changed(**edits) -> dict:
    """OLD with dotted-path edits (``controller__lr=0.1``)."""
    new = copy.deepcopy(OLD)
    for dotted, value in edits.items():
        *parents, last = dotted.split("__")
        node = new
        for key in parents:
            node = node[key]
        node[last] = value
    return new


def test_identical_recipes_have_no_differences():
    assert recipe_differences(OLD, copy.deepcopy(OLD)) == []
    assert check_resume(OLD, copy.deepcopy(OLD)) == []


def test_differences_use_dotted_paths_and_list_indices():
    new = changed(controller__name="lagrangian", rewards=["accuracy", "length", "clarity"], controller__targets=[0.2])
    diffs = recipe_differences(OLD, new)
    assert [d.path for d in diffs] == [
        "controller.name",
        "controller.targets.0",
        "controller.targets.1",
        "controller.targets.2",
        "rewards.1",
    ]
    assert diffs[0] == Difference("controller.name", "ctwa", "lagrangian")
    assert diffs[2].old == 0.08 and diffs[2].new is ABSENT


def test_difference_reads_well():
    assert str(Difference("controller.name", "ctwa", "lagrangian")) == "controller.name: 'ctwa' -> 'lagrangian'"
    assert str(Difference("train.kl", ABSENT, 0.001)) == "train.kl: <absent> -> 0.001"
    assert str(Difference("x", "y" * 500, 1)).endswith("... -> 1")


def test_absent_survives_copy_and_pickle():
    assert copy.deepcopy(ABSENT) is ABSENT
    assert pickle.loads(pickle.dumps(ABSENT)) is ABSENT


def test_one_sided_keys_are_differences():
    new = changed()
    del new["algo"]
    new["scalarizer"] = "linear"
    assert [(d.path, d.old, d.new) for d in recipe_differences(OLD, new)] == [
        ("algo", "grpo", ABSENT),
        ("scalarizer", ABSENT, "linear"),
    ]


def test_a_new_section_is_compared_setting_by_setting():
    old = {"a": 1}
    new = {"a": 1, "train": {"steps": 5, "lr": 0.1}, "empty": {}}
    assert [d.path for d in recipe_differences(old, new)] == ["train.steps", "train.lr", "empty"]
    assert [d.path for d in check_resume(old, new, accept=["train.lr", "empty"])] == ["train.lr", "empty"]


def test_type_changes_are_differences():
    assert [d.path for d in recipe_differences({"x": 1, "y": {"a": 1}}, {"x": True, "y": [1]})] == ["x", "y"]
    assert recipe_differences({"x": 1}, {"x": 1.0}) == []  # the same number


def test_check_resume_lists_every_difference_at_once():
    new = changed(controller__name="lagrangian", algo="reinforce", train__lr=1e-3)
    with pytest.raises(ResumeMismatch) as info:
        check_resume(OLD, new)
    message = str(info.value)
    lines = message.splitlines()
    assert "3 settings" in lines[0]
    assert "  controller.name: 'ctwa' -> 'lagrangian'" in lines
    assert "  algo: 'grpo' -> 'reinforce'" in lines
    assert "  train.lr: 0.0001 -> 0.001" in lines
    assert "--accept-change" in message and "accept_changes=" in message
    assert "new run" in message
    assert [d.path for d in info.value.differences] == ["controller.name", "algo", "train.lr"]


def test_accepting_by_prefix_covers_everything_under_it():
    new = changed(controller__name="lagrangian", controller__lr=0.1, algo="reinforce")
    with pytest.raises(ResumeMismatch) as info:
        check_resume(OLD, new, accept=["controller"])
    assert [d.path for d in info.value.differences] == ["algo"]
    assert "controller" not in str(info.value).split("To continue")[0]
    accepted = check_resume(OLD, new, accept=["controller", "algo"])
    assert [d.path for d in accepted] == ["controller.name", "controller.lr", "algo"]


def test_a_prefix_is_a_whole_path_component():
    new = changed(controller__lr=0.1)
    with pytest.raises(ResumeMismatch, match="matching no difference"):
        check_resume(OLD, new, accept=["control"])


def test_neutral_settings_may_change_freely():
    new = changed(name="longer", train__steps=300, train__output_dir="runs/b", train__loggers=["jsonl", "wandb"])
    new["train"]["threads"] = 2
    new["train"]["checkpoint_every"] = 10
    assert len(recipe_differences(OLD, new)) == 6
    assert all(d.neutral for d in recipe_differences(OLD, new))
    assert check_resume(OLD, new) == []


def test_neutral_is_a_path_not_a_key_name():
    old = {"controller": {"steps": 1}, "train": {"steps_per_eval": 1}}
    new = {"controller": {"steps": 2}, "train": {"steps_per_eval": 2}}
    with pytest.raises(ResumeMismatch) as info:
        check_resume(old, new)
    assert [d.path for d in info.value.differences] == ["controller.steps", "train.steps_per_eval"]


def test_neutral_paths_are_the_documented_ones():
    assert {
        "name",
        "train.steps",
        "train.output_dir",
        "train.progress",
        "train.loggers",
        "train.checkpoint_every",
        "train.keep_checkpoints",
        "train.save_model",
        "train.max_nonfinite_steps",
        "train.threads",
        "train.overlap_after_update",
        "train.log_completions",
        "train.num_completions_to_print",
        "train.log_completions_every",
        "train.push_to_hub",
        "train.hub_model_id",
        "train.hub_private_repo",
        "train.stop_grace_s",
        "train.max_failed_reward_steps",
    } == TRAJECTORY_NEUTRAL
    assert "train.lr" not in TRAJECTORY_NEUTRAL and "train.seed" not in TRAJECTORY_NEUTRAL


def test_unknown_accept_name_is_rejected():
    new = changed(algo="reinforce")
    with pytest.raises(ResumeMismatch) as info:
        check_resume(OLD, new, accept=["algo", "controler"])
    assert info.value.unknown == ["controler"]
    assert info.value.differences == []
    assert "controler" in str(info.value) and "algo: 'grpo' -> 'reinforce'" in str(info.value)
    with pytest.raises(ResumeMismatch, match="do not differ"):
        check_resume(OLD, copy.deepcopy(OLD), accept=["algo"])


def test_accepting_a_neutral_change_is_not_unknown():
    new = changed(train__steps=200)
    assert check_resume(OLD, new, accept=["train.steps"]) == []


def test_a_single_string_accept_is_one_name():
    assert [d.path for d in check_resume(OLD, changed(algo="reinforce"), accept="algo")] == ["algo"]
