"""TRL users' training habits: a learning-rate schedule with warmup (resumed exactly), sampled completions logged
with their rewards, the weights a step used in its row, and push_to_hub with a model card."""

from __future__ import annotations

import copy
import os
import signal
from pathlib import Path
from typing import ClassVar

import pytest
import torch
from pydantic import ValidationError

from morl import Callback, Pipeline, TrainConfig
from morl.checkpoint import Interrupted
from morl.policy import Policy
from morl.run import Manifest, effective_rows, read_jsonl, read_metrics
from morl.tinymath.task import make_split
from tests.small_runs import CHECKPOINTED_TRAIN


def short(prompts, completions, **kwargs):
    return [1.0 if len(c) < 6 else 0.0 for c in completions]


def odd_rows_na(prompts, completions, **kwargs):
    """Not applicable (None) to every other completion: logged as null, never as a number."""
    return [None if i % 2 else float(len(c) % 3) for i, c in enumerate(completions)]


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture
def fresh_policy(_tiny_policy_master):
    """A factory of untrained copies: a run and its uninterrupted twin must start from the same weights."""
    master = _tiny_policy_master
    return lambda: Policy(copy.deepcopy(master.model), master.tokenizer, master.config)


def _pipeline(policy: Policy, out: Path | None, controller=None, rewards=("conciseness", "clarity"), **train):
    config = {**CHECKPOINTED_TRAIN, "steps": 4, "threads": 1, "output_dir": str(out) if out else None, **train}
    return Pipeline(
        policy=policy,
        rewards=list(rewards),
        controller=controller or {"name": "ctwa", "targets": [0.1, 0.1]},
        algo={"name": "grpo", "minibatches": 2},  # two optimizer steps per training step
        rollout={"name": "transformers", "max_new_tokens": 4},
        config=TrainConfig(**config),
    )


def _rows(run: Path) -> list[dict]:
    return [
        {k: v for k, v in r.items() if not k.startswith(("timing/", "step_time")) and k != "segment"}
        for r in read_metrics(run)
    ]


def _expected_lrs(lr: float, kind: str, warmup: int, total: int, at: list[int]) -> list[float]:
    """The learning rate transformers' schedule gives at these optimizer steps (counted from 0)."""
    from transformers import get_scheduler

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    sched = get_scheduler(kind, opt, num_warmup_steps=warmup, num_training_steps=total)
    out = []
    for i in range(total):
        if i in at:
            out.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    return out


# ---- learning-rate schedule ----------------------------------------------------------------------------------------


def test_the_default_constant_schedule_keeps_train_lr(tiny_policy, tmp_path, one_thread):
    pipe = _pipeline(tiny_policy, tmp_path / "run", steps=2, lr=3e-4)
    pipe.fit(make_split("train", 8, 0))
    rows = [r for r in read_metrics(tmp_path / "run") if r["kind"] == "train"]
    assert [r["learning_rate"] for r in rows] == [3e-4, 3e-4]
    assert all(group["lr"] == 3e-4 for group in pipe.optimizer.param_groups)  # multiplied by exactly 1


@pytest.mark.parametrize("warmup", [{"warmup_steps": 2}, {"warmup_ratio": 0.25}, {"warmup_steps": 0.25}])
def test_cosine_with_warmup_counts_optimizer_steps(tiny_policy, tmp_path, one_thread, warmup):
    pipe = _pipeline(tiny_policy, tmp_path / "run", lr=1e-3, lr_scheduler_type="cosine", checkpoint_every=0, **warmup)
    pipe.fit(make_split("train", 8, 0))
    rows = [r for r in read_metrics(tmp_path / "run") if r["kind"] == "train"]
    # 4 training steps × 2 mini-batches = 8 optimizer steps, 2 of warmup; a row logs its first optimizer step's lr
    assert [r["learning_rate"] for r in rows] == _expected_lrs(1e-3, "cosine", 2, 8, at=[0, 2, 4, 6])
    assert rows[0]["learning_rate"] == 0.0 and rows[1]["learning_rate"] == 1e-3
    assert pipe.lr_scheduler.last_epoch == 8  # advanced by every optimizer step, inside the training steps


def test_a_resumed_cosine_schedule_is_bit_identical(fresh_policy, tmp_path, one_thread):
    schedule = {"lr": 1e-3, "lr_scheduler_type": "cosine", "warmup_steps": 3}  # warmup ends inside step 2
    clean = _pipeline(fresh_policy(), tmp_path / "clean", **schedule)
    clean.fit(make_split("train", 8, 0))

    killed = _pipeline(fresh_policy(), tmp_path / "killed", **schedule)
    killed.set_params(callbacks=[_SendSignal(at=2)])
    with pytest.raises(Interrupted):
        killed.fit(make_split("train", 8, 0))
    resumed = _pipeline(fresh_policy(), tmp_path / "killed", **schedule)
    resumed.fit(make_split("train", 8, 0), resume_from=tmp_path / "killed")

    a, b = _rows(tmp_path / "killed"), _rows(tmp_path / "clean")
    assert a == b
    assert len({r["learning_rate"] for r in a if r["kind"] == "train"}) == 4  # the schedule moved every step
    params_a, params_b = resumed.policy.model.state_dict(), clean.policy.model.state_dict()
    assert all(torch.equal(params_a[k], params_b[k]) for k in params_a)
    assert resumed.lr_scheduler.state_dict() == clean.lr_scheduler.state_dict()
    assert resumed.optimizer.param_groups[0]["lr"] == clean.optimizer.param_groups[0]["lr"]


class _SendSignal(Callback):
    def __init__(self, at: int) -> None:
        self.at = at

    def on_step_end(self, ctx) -> None:
        if ctx.step == self.at:
            os.kill(os.getpid(), signal.SIGTERM)


def test_schedule_settings_are_checked():
    with pytest.raises(ValidationError, match="constant_with_warmup"):
        TrainConfig(warmup_steps=10)  # constant has no warmup: say so rather than ignore it
    with pytest.raises(ValidationError, match="whole number of steps"):
        TrainConfig(lr_scheduler_type="linear", warmup_steps=2.5)
    with pytest.raises(ValidationError, match="save_model"):
        TrainConfig(push_to_hub=True, save_model=False)
    config = TrainConfig(lr_scheduler_type="linear", warmup_steps=5, warmup_ratio=0.5)
    assert config.warmup_for(100) == 5  # steps win over the ratio, as in transformers
    assert TrainConfig(lr_scheduler_type="linear", warmup_ratio=0.1).warmup_for(15) == 2  # rounded up


# ---- weights in the step's row -------------------------------------------------------------------------------------


def test_a_row_carries_the_weights_its_step_used(tiny_policy, one_thread):
    schedule = {"name": "schedule", "start": [1.0, 0.0], "end": [0.0, 1.0], "steps": 2}
    pipe = _pipeline(tiny_policy, None, controller=schedule)
    examples = make_split("train", 2, 0)
    _, first = pipe.step(examples)
    _, second = pipe.step(examples)
    # step 1 trained on the start weights; the controller's own state already points at step 2
    assert (first["weights/conciseness"], first["weights/clarity"]) == (1.0, 0.0)
    assert (second["weights/conciseness"], second["weights/clarity"]) == (0.5, 0.5)
    assert first["schedule/progress"] == 0.5  # the controller's own metrics are unchanged


# ---- sampled completions -------------------------------------------------------------------------------------------


def test_completions_are_logged_with_their_rewards(tiny_policy, tmp_path, one_thread):
    run = tmp_path / "run"
    pipe = _pipeline(
        tiny_policy,
        run,
        rewards=(short, odd_rows_na),
        controller={"name": "fixed"},
        log_completions=True,
        num_completions_to_print=3,
        log_completions_every=2,
        loggers=["tensorboard"],
    )
    pipe.fit(make_split("train", 8, 0))
    rows = effective_rows(read_jsonl(run / "completions.jsonl"), Manifest.load(run).segments)
    assert [(r["step"], r["segment"]) for r in rows] == [(2, 0)] * 3 + [(4, 0)] * 3
    for r in rows:
        # the example's columns too (TinyMath's answer and style), so `morl score` can score the file again
        assert set(r) == {"step", "segment", "prompt", "completion", "rewards", "score", "advantage"} | set(
            make_split("train", 1, 0)[0]
        )
        assert set(r["rewards"]) == {"short", "odd_rows_na"}
    assert rows[0]["prompt"] == rows[1]["prompt"]  # a prompt's group side by side (group_size 2)
    assert rows[1]["rewards"]["odd_rows_na"] is None and rows[0]["rewards"]["odd_rows_na"] is not None
    assert rows[0]["advantage"] == -rows[1]["advantage"] or rows[0]["advantage"] == rows[1]["advantage"] == 0

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"tensors": 0})
    events.Reload()
    tag = next(t for t in events.Tags()["tensors"] if t.startswith("completions"))
    tables = {e.step: e.tensor_proto.string_val[0].decode() for e in events.Tensors(tag)}
    assert sorted(tables) == [2, 4]
    header = tables[2].splitlines()[0]
    assert header == "| prompt | completion | short | odd_rows_na | score | advantage |"
    assert len(tables[2].splitlines()) == 2 + 3 and "n/a" in tables[2]


def test_completions_are_off_by_default(tiny_policy, tmp_path, one_thread):
    _pipeline(tiny_policy, tmp_path / "run", steps=1).fit(make_split("train", 8, 0))
    assert not (tmp_path / "run" / "completions.jsonl").exists()


# ---- push_to_hub ---------------------------------------------------------------------------------------------------


class _FakeHub:
    """Stands in for huggingface_hub.HfApi: records the calls; ``fail`` makes the upload raise."""

    calls: ClassVar[list] = []
    fail: ClassVar[Exception | None] = None

    def create_repo(self, repo_id, private=None, exist_ok=False):
        from huggingface_hub import RepoUrl

        self.calls.append(("create_repo", repo_id, private, exist_ok))
        return RepoUrl(f"https://huggingface.co/{repo_id}")

    def upload_folder(self, repo_id, folder_path, commit_message=None, **kwargs):
        self.calls.append(("upload_folder", repo_id, Path(folder_path)))
        if self.fail is not None:
            raise self.fail


@pytest.fixture
def fake_hub(monkeypatch):
    import huggingface_hub

    _FakeHub.calls, _FakeHub.fail = [], None
    monkeypatch.setattr(huggingface_hub, "HfApi", _FakeHub)
    return _FakeHub


def _hub_pipeline(policy: Policy, run: Path) -> Pipeline:
    return _pipeline(
        policy, run, steps=2, push_to_hub=True, hub_model_id="me/tiny-ctwa", hub_private_repo=True, eval_every=0
    )


def test_push_to_hub_uploads_the_model_with_a_card(tiny_policy, tmp_path, one_thread, fake_hub):
    run = tmp_path / "run"
    result = _hub_pipeline(tiny_policy, run).fit(make_split("train", 8, 0), make_split("eval", 3, 0))
    assert fake_hub.calls == [
        ("create_repo", "me/tiny-ctwa", True, True),
        ("upload_folder", "me/tiny-ctwa", run / "model"),
    ]
    assert result.hub_url_ == "https://huggingface.co/me/tiny-ctwa"
    card = (run / "model" / "README.md").read_text()
    for text in (
        "library_name: transformers",
        "| conciseness | maximize | `morl.rewards.conciseness.Conciseness` | moving target",
        "| clarity | maximize | `morl.rewards.clarity.Clarity` |",
        "weight controller: `ctwa`; its weights act on **rewards**",
        "- scalarizer: `linear`",
        "policy algorithm: `grpo`",
        "| metric | step 0 | step 2 | change |",
        "| greedy/clarity |",
        "| sampled/mean_length |",
        "```yaml",
        "lr_scheduler_type: constant",
        "push_to_hub: true",
    ):
        assert text in card, text


def test_a_failed_upload_is_reported_and_the_run_stays_finished(tiny_policy, tmp_path, one_thread, fake_hub, capsys):
    fake_hub.fail = OSError("no network")
    run = tmp_path / "run"
    result = _hub_pipeline(tiny_policy, run).fit(make_split("train", 8, 0))
    out = " ".join(capsys.readouterr().out.split())
    assert result.hub_url_ is None
    assert "upload to 'me/tiny-ctwa' failed" in out and "no network" in out and "hf upload me/tiny-ctwa" in out
    assert Manifest.load(run).current_segment.status == "finished"
    assert (run / "model" / "model.safetensors").is_file() and (run / "model" / "README.md").is_file()
    assert "The run evaluated on no held-out prompts." in (run / "model" / "README.md").read_text()


def test_morl_score_scores_a_runs_own_completions_again(tiny_policy, tmp_path, one_thread):
    """completions.jsonl carries the example's columns (the answer), so the file re-scores as it is."""
    from typer.testing import CliRunner

    from morl.cli import app

    run = tmp_path / "run"
    pipe = _pipeline(tiny_policy, run, rewards=("accuracy", "clarity"), controller={"name": "fixed"}, steps=1)
    pipe.set_params(config__log_completions=True).fit(make_split("train", 8, 0))
    out = tmp_path / "scored.jsonl"
    result = CliRunner().invoke(
        app, ["score", str(run / "completions.jsonl"), "--rewards", "accuracy", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    logged = read_jsonl(run / "completions.jsonl")
    scored = read_jsonl(out)
    assert [r["rewards"]["accuracy"] for r in logged] == [r["rewards"]["accuracy"] for r in scored]  # same verdicts
