"""The fit loop around the steps: what it writes and says about the run directory."""

from __future__ import annotations

import pytest
import yaml

from morl.tinymath.task import make_split


def test_a_recipe_that_morl_fit_cannot_reimport_is_said_when_saved(tiny_pipeline, capsys):
    def local_reward(prompts, completions, **kwargs):  # defined in a function: no import path reaches it
        return [0.0] * len(completions)

    pipe = tiny_pipeline(["clarity", local_reward], train={"steps": 1})
    pipe.fit(make_split("train", 4, 0))
    said = capsys.readouterr().out.replace("\n", " ")
    assert "rewards[1]" in said and "cannot import" in said and "move that function into a module" in said
    saved = yaml.safe_load((pipe.run_dir_ / "recipe.yaml").read_text())
    assert saved["rewards"][1].endswith("<locals>.local_reward")  # recorded anyway, and said


def test_an_importable_recipe_is_saved_without_a_word(tiny_pipeline, capsys):
    pipe = tiny_pipeline(["clarity", "accuracy"], train={"steps": 1})
    pipe.fit(make_split("train", 4, 0))
    assert "cannot import" not in capsys.readouterr().out


def test_a_resume_below_the_step_reached_is_refused_from_python_too(tiny_pipeline):
    from morl.checkpoint import CheckpointError

    train = make_split("train", 4, 0)
    done = tiny_pipeline(["clarity"], train={"steps": 2, "checkpoint_every": 1}).fit(train)
    shorter = tiny_pipeline(["clarity"], train={"steps": 1})

    with pytest.raises(CheckpointError, match="already reached step 2, beyond train.steps=1"):
        shorter.fit(train, resume_from=done.run_dir_)


def test_a_reward_that_applies_to_nothing_is_said_once(tiny_pipeline, capsys):
    def never(prompts, completions, **kwargs):  # e.g. a column it needs is missing: None for every row
        return [None] * len(completions)

    tiny_pipeline(["clarity", never], train={"steps": 2}).fit(make_split("train", 4, 0))
    said = capsys.readouterr().out.replace("\n", " ")
    assert said.count("reward 'never' applied to no sample") == 1 and "no training signal" in said


def test_a_runs_files_follow_the_users_umask(tiny_pipeline):
    """safetensors and mkstemp write 0600; a run's model, checkpoints and manifest get what the user's umask gives
    any file they create (0644 under 022), like the rest of the run."""
    import os
    import stat

    previous = os.umask(0o022)
    try:
        pipe = tiny_pipeline(["clarity"], train={"steps": 1, "checkpoint_every": 1}).fit(make_split("train", 4, 0))
    finally:
        os.umask(previous)
    modes = {p.relative_to(pipe.run_dir_).as_posix(): stat.S_IMODE(p.stat().st_mode) for p in pipe.run_dir_.rglob("*")}
    files = {name: mode for name, mode in modes.items() if (pipe.run_dir_ / name).is_file() and name != ".lock"}
    assert files["manifest.json"] == files["model/model.safetensors"] == 0o644
    assert {mode for mode in files.values()} == {0o644}, files


def test_a_model_the_fast_decoder_cannot_run_is_said_once(tiny_pipeline, capsys):
    pipe = tiny_pipeline(["clarity"], train={"steps": 2})
    pipe.policy.model.model.layers[0].register_forward_hook(lambda module, args, out: out)  # e.g. a steering hook
    pipe.fit(make_split("train", 4, 0))
    said = " ".join(capsys.readouterr().out.split())  # rich wraps long lines
    assert said.count("sampling with transformers' generate") == 1 and "forward hooks" in said


def test_the_fast_decoder_says_nothing(tiny_pipeline, capsys):
    tiny_pipeline(["clarity"], train={"steps": 1}).fit(make_split("train", 4, 0))
    assert "sampling with transformers' generate" not in capsys.readouterr().out
