"""A run owns its directory: reruns are refused without touching it, one writer at a time, resume is the same
experiment or names every difference, and a pipeline built in Python records a recipe the CLI re-runs."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from morl import Pipeline, TrainConfig
from morl.cli import app
from morl.policy import Policy
from morl.run import Manifest, ResumeMismatch, RunExistsError, RunLock, RunLockedError, read_metrics
from morl.tinymath.task import make_split


def short(prompts, completions, **kwargs):
    return [1.0 if len(c) < 6 else 0.0 for c in completions]


def _pipeline(policy, out: Path, controller=None, algo="grpo", **train) -> Pipeline:
    config = {
        "steps": 2,
        "prompts_per_step": 2,
        "group_size": 2,
        "eval_every": 0,
        "checkpoint_every": 1,
        "progress": False,
        "threads": 1,
        "output_dir": str(out),
        **train,
    }
    return Pipeline(
        policy=policy,
        rewards=["conciseness", "clarity"],
        controller=controller or {"name": "ctwa", "targets": [0.1, 0.1]},
        algo=algo,
        rollout={"name": "transformers", "max_new_tokens": 4},
        config=TrainConfig(**config),
    )


def _tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.md5(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()}


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_a_second_fit_into_a_run_is_refused_and_touches_nothing(tiny_policy, tmp_path, one_thread):
    run = tmp_path / "run"
    _pipeline(tiny_policy, run).fit(make_split("train", 8, 0))
    before = _tree(run)
    assert {"manifest.json", "recipe.yaml", "metrics.jsonl", "training_state.json"} <= set(before)
    with pytest.raises(RunExistsError) as info:
        _pipeline(tiny_policy, run).fit(make_split("train", 8, 0))
    message = " ".join(str(info.value).split())
    assert "--resume" in message and "--overwrite" in message and str(run) in message
    assert _tree(run) == before  # not one byte changed

    (run / "notes.txt").write_text("mine")
    _pipeline(tiny_policy, run, steps=1).fit(make_split("train", 8, 0), overwrite=True)
    assert (run / "notes.txt").read_text() == "mine"  # overwrite discards morl's files only
    assert json.loads((run / "training_state.json").read_text())["step"] == 1  # the new run's, not the old one's
    assert [r["step"] for r in read_metrics(run)] == [1]


def test_a_second_writer_fails_fast(tiny_policy, tmp_path, one_thread):
    run = tmp_path / "run"
    _pipeline(tiny_policy, run, steps=1).fit(make_split("train", 8, 0))
    with RunLock(run), pytest.raises(RunLockedError, match="pid"):  # another fit is writing the run
        _pipeline(tiny_policy, run, steps=2).fit(make_split("train", 8, 0), resume_from=run)
    assert len(Manifest.load(run).segments) == 1


def test_resume_of_another_experiment_names_every_difference(tiny_policy, tmp_path, one_thread):
    run = tmp_path / "run"
    _pipeline(tiny_policy, run, steps=1).fit(make_split("train", 8, 0))
    other = _pipeline(
        tiny_policy,
        run,
        controller={"name": "lagrangian", "primary": "clarity", "targets": [0.5]},
        algo="reinforce",
        steps=2,
        lr=5e-4,
        group_size=4,
        seed=3,
    )
    with pytest.raises(ResumeMismatch) as info:
        other.fit(make_split("train", 8, 0), resume_from=run)
    message = str(info.value)
    for path in ("controller.name", "algo.name", "train.lr", "train.group_size", "train.seed", "classes.controller"):
        assert path in message, path
    assert "train.steps" not in message  # extending a run changes nothing that was trained
    assert "--accept-change" in message
    assert len(Manifest.load(run).segments) == 1  # refused before anything was written

    with pytest.raises(ResumeMismatch, match="train.lr"):
        _pipeline(tiny_policy, run, steps=2, lr=5e-4).fit(make_split("train", 8, 0), resume_from=run)
    resumed = _pipeline(tiny_policy, run, steps=2, lr=5e-4)
    resumed.fit(make_split("train", 8, 0), resume_from=run, accept_changes=["train.lr"])
    segments = Manifest.load(run).segments
    assert [(s.kind, s.from_step, s.to_step, s.status) for s in segments] == [
        ("start", 0, 1, "finished"),
        ("resume", 1, 2, "finished"),
    ]
    assert segments[1].accepted_differences == ["train.lr: 0.0001 -> 0.0005"]
    assert segments[1].recipe["train"]["lr"] == 5e-4 and segments[0].recipe["train"]["lr"] == 1e-4
    lrs = [row["learning_rate"] for row in read_metrics(run) if row["kind"] == "train"]
    assert lrs == [1e-4, 5e-4]  # the accepted lr is the one step 2 trained with, not the optimizer's saved one


def test_a_python_pipeline_records_a_recipe_the_cli_reruns(tiny_model_dir, tmp_path, one_thread):
    first = tmp_path / "python"
    pipe = Pipeline(
        policy=Policy.from_pretrained(str(tiny_model_dir)),
        rewards=["accuracy", short],
        controller={"name": "ctwa", "targets": {"accuracy": 0.2, "short": 0.0}},
        rollout={"name": "transformers", "max_new_tokens": 6},
        config=TrainConfig(
            steps=2, prompts_per_step=2, group_size=2, eval_every=0, progress=False, threads=1, output_dir=str(first)
        ),
    )
    pipe.fit(make_split("train", 6, 0), make_split("eval", 2, 0))
    assert (first / "data" / "train.jsonl").is_file()  # the data it was handed, so the recipe can re-run
    manifest = Manifest.load(first)
    assert manifest.recipe["rewards"][1] == "tests.test_trainer.short"
    assert manifest.method.controller == "ctwa" and manifest.method.weights_act_on == "reward"
    assert [o.name for o in manifest.objectives] == ["accuracy", "short"]

    second = tmp_path / "cli"
    result = CliRunner().invoke(app, ["fit", str(first / "recipe.yaml"), "--output-dir", str(second)])
    assert result.exit_code == 0, result.output

    def rows(run: Path) -> list[dict]:
        return [{k: v for k, v in r.items() if not k.startswith(("timing/", "step_time"))} for r in read_metrics(run)]

    assert rows(first) == rows(second) and len(rows(first)) == 4  # eval, 2 train steps, eval: the same run


def selective(prompts, completions, **kwargs):
    """Varies within a group only for prompts of even length; constant (no signal) for the others."""
    return [float(len(c) % 2) if len(p) % 2 == 0 else 1.0 for p, c in zip(prompts, completions)]


def test_dynamic_sampling_keeps_informative_groups_and_refills(tiny_policy, tmp_path, one_thread):
    pipe = Pipeline(
        policy=tiny_policy,
        rewards=[selective],
        rollout={"name": "transformers", "max_new_tokens": 6},
        config=TrainConfig(
            steps=3,
            prompts_per_step=2,
            group_size=4,
            eval_every=0,
            progress=False,
            output_dir=str(tmp_path / "r"),
            dynamic_sampling=True,
            dynamic_sampling_rounds=6,
        ),
        diagnostics=False,
    )
    train = make_split("train", 40, 0)
    assert {len(ex["prompt"]) % 2 for ex in train} == {0, 1}  # both kinds of prompt are there
    odd = next(ex for ex in train if len(ex["prompt"]) % 2)
    even = next(ex for ex in train if len(ex["prompt"]) % 2 == 0)
    record, metrics = pipe.step([odd, even], train)  # the odd prompt's group has no signal: dropped, refilled
    rewards = record.rewards.view(-1, 4)
    kept = int(metrics["dynamic_sampling/kept_groups"])
    assert kept == rewards.shape[0] and 1 <= kept <= 2
    assert all(len(prompt) % 2 == 0 for prompt in record.rollout.prompts)  # constant groups were dropped
    assert bool((rewards.max(1).values > rewards.min(1).values).all())  # every kept group has a signal
    assert metrics["dynamic_sampling/dropped_groups"] >= 1 and metrics["dynamic_sampling/rounds"] >= 1
    assert pipe.data_position >= metrics["dynamic_sampling/rounds"]  # each refill drew new training prompts


def _sparse(prompts, completions, **kwargs):  # applies to 2 completions of every 8
    return [float(len(c) % 3) if i % 8 in (0, 5) else None for i, c in enumerate(completions)]


def _length(prompts, completions, **kwargs):
    return [float(len(c)) for c in completions]


def test_not_applicable_rewards_are_left_out_of_the_advantages(tiny_policy):
    """2 applicable of K = 8: their advantages are those of the 2 alone (GRPO: ±1/√2 or 0), not inflated by
    sqrt(7) as a group-mean fill normalised over all 8 would make them; the others get 0."""
    for controller, rewards in (("fixed", [_sparse]), ("gdpo", [_sparse, _length])):
        pipe = Pipeline(
            policy=tiny_policy,
            rewards=rewards,
            controller=controller,
            rollout={"name": "transformers", "max_new_tokens": 6},
            config=TrainConfig(steps=1, prompts_per_step=2, group_size=8, progress=False),
        )
        weighted = pipe.step(make_split("train", 2, 0))[0].weighted
        sparse = weighted.scored.rewards[:, 0]
        advantages = weighted.advantages if controller == "fixed" else weighted.objective_advantages[:, 0]
        for rows in (torch.arange(8), torch.arange(8, 16)):
            applicable = rows[~torch.isnan(sparse[rows])]
            values = sparse[applicable].double()
            alone = (values - values.mean()) / values.std() if values.std() > 1e-6 else torch.zeros(2).double()
            torch.testing.assert_close(advantages[applicable].double(), alone, atol=1e-5, rtol=1e-5)
            assert (advantages[rows[torch.isnan(sparse[rows])]] == 0).all()
