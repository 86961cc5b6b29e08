"""Diagnostics: covariance metrics, the interference alarm, clipping mass, gradient cosines, loggers."""

import json
import math

import numpy as np
import pytest
import torch

from morl.callbacks import FitContext, StepContext
from morl.components import RecipeError, build, registered
from morl.diagnostics import (
    Diagnostics,
    DiagnosticsConfig,
    InterferenceAlarm,
    clipped_mass,
    covariance_metrics,
)
from morl.recipe import parse_recipe
from morl.tinymath.task import make_split
from tests.batches import updated_record


def short(prompts, completions, **kwargs):
    return [1.0 if len(c) < 10 else 0.0 for c in completions]


def digits(prompts, completions, **kwargs):
    return [float(any(ch.isdigit() for ch in c)) for c in completions]


def _record(rewards, scores, k, objectives=("a", "b")):
    return updated_record(rewards, k, scores=scores, objectives=objectives)


def _direct(rewards, signal, k):
    """Mean over groups of the population covariance / correlation, NaN rewards left out per objective; a group
    where either side is constant counts in the covariance (as 0) but has no correlation and is left out of its
    mean (0 when every group is flat)."""
    rewards, signal = np.asarray(rewards, float), np.asarray(signal, float)
    cov, corr = [], []
    for j in range(rewards.shape[1]):
        cs, rs = [], []
        for g in range(len(signal) // k):
            r, s = rewards[g * k : (g + 1) * k, j], signal[g * k : (g + 1) * k]
            keep = ~np.isnan(r)
            if keep.sum() < 2:
                continue
            r, s = r[keep], s[keep]
            c = np.cov(r, s, bias=True)[0, 1]
            cs.append(c)
            if r.std() * s.std() > 0:
                rs.append(c / (r.std() * s.std()))
        cov.append(np.mean(cs) if cs else np.nan)
        corr.append(np.mean(rs) if rs else (0.0 if cs else np.nan))
    return cov, corr


def test_covariance_metrics_match_numpy():
    rng = np.random.default_rng(0)
    k = 4
    rewards = rng.integers(0, 2, size=(12, 2)).astype(float)
    rewards[[1, 6], 1] = np.nan  # not applicable
    rewards[8:12, 0] = 1.0  # a constant group: covariance 0 (counted), no correlation (left out)
    scores = rng.normal(size=12)
    metrics = covariance_metrics(torch.as_tensor(rewards), torch.as_tensor(scores), k, "ab", "score")
    cov, corr = _direct(rewards, scores, k)
    for j, name in enumerate("ab"):
        assert metrics[f"cov/score/{name}"] == pytest.approx(cov[j], abs=1e-6)
        assert metrics[f"corr/score/{name}"] == pytest.approx(corr[j], abs=1e-6)


def test_clipped_mass_matches_direct_computation():
    from morl.algos.loss import PolicyLoss

    old = torch.log(torch.tensor([[0.5, 0.5, 0.5], [0.5, 0.5, 0.5]]))
    new = torch.log(torch.tensor([[0.5, 0.7, 0.3], [0.9, 0.2, 0.5]]))  # ratios 1, 1.4, 0.6 / 1.8, 0.4, 1
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    advantages = torch.tensor([1.0, -1.0])
    clipped = PolicyLoss(clip=(0.2, 0.2))(new, advantages, mask, old_logp=old)  # the loss's own clip statistics
    out = clipped_mass(clipped.ratio, clipped.unclipped, advantages, mask)
    # row 0 (A>0): ratio 1.4 clipped high; row 1 (A<0): ratio 0.4 clipped low; the last token is padding
    mass = np.array([1.0, 1.4, 0.6, 1.8, 0.4])
    assert out["clip/removed_mass"] == pytest.approx((1.4 + 0.4) / mass.sum(), rel=1e-5)
    assert out["clip/token_fraction"] == pytest.approx(2 / 5)
    unclipped = PolicyLoss(clip=None)(new, advantages, mask, old_logp=old)
    assert clipped_mass(unclipped.ratio, unclipped.unclipped, advantages, mask) == {
        "clip/removed_mass": 0.0,
        "clip/token_fraction": 0.0,
    }


def _stream(diag, sign, steps, tmp_path=None):
    """Feed batches whose first objective covaries with the score with this sign (the second one positively)."""
    k = 4
    rewards = np.array([[1, 1], [0, 1], [1, 0], [0, 0]] * 2, dtype=float)  # uncorrelated within each group
    scores = sign * rewards[:, 0] + rewards[:, 1]  # objective b always covaries positively
    fit = FitContext(
        run_dir=tmp_path, objectives=("a", "b"), policy=None, algo=None, start_step=0, is_main=tmp_path is not None
    )
    diag.on_fit_start(fit)
    history = []
    for step in range(1, steps + 1):
        metrics = {}
        diag.on_step_end(StepContext(fit=fit, step=step, record=_record(rewards, scores, k), metrics=metrics))
        history.append(metrics)
    diag.on_fit_end(fit, history)
    return history


def test_alarm_fires_once_on_sustained_negative_covariance(tmp_path, capsys):
    diag = Diagnostics(alarm_patience=3)
    history = _stream(diag, -1, 8, tmp_path)
    assert [h["alarm/a"] for h in history] == [0, 0, 1, 1, 1, 1, 1, 1]
    assert all(h["alarm/b"] == 0 for h in history)
    assert history[0]["cov/score/a"] < 0 < history[0]["cov/score/b"]
    events = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert len(events) == 1  # warned once, not every step
    event = events[0]
    assert event["event"] == "interference_alarm" and event["objective"] == "a" and event["signal"] == "score"
    assert event["since_step"] == 1 and event["step"] == 3 and len(event["values"]) == 3
    assert all(v < 0 for v in event["values"])
    assert capsys.readouterr().out.count("interference alarm") == 1


def test_alarm_silent_on_positive_covariance(tmp_path):
    diag = Diagnostics(alarm_patience=2)
    history = _stream(diag, +1, 10, tmp_path)
    assert all(h["alarm/a"] == 0 and h["alarm/b"] == 0 for h in history)
    assert not (tmp_path / "events.jsonl").exists()


def test_alarm_recovers_and_rearms():
    alarm = InterferenceAlarm(["a"], ema=1.0, patience=2)
    values = [-1, -1, 1, -1, -1, -1]
    events = [alarm.observe(step, np.array([v], float))[0] for step, v in enumerate(values, start=1)]
    kinds = [e["event"] if e else None for e in events]
    assert kinds == [None, "interference_alarm", "interference_recovered", None, "interference_alarm", None]
    assert alarm.observe(7, np.array([math.nan]))[0] is None  # not observed: state unchanged
    assert alarm.active_[0]


def test_alarm_state_round_trips():
    diag = Diagnostics(alarm_patience=3)
    _stream(diag, -1, 2)
    state = json.loads(json.dumps(diag.state_dict()))
    resumed = Diagnostics(alarm_patience=3)
    resumed.load_state_dict(state)
    assert _stream(resumed, -1, 1)[0]["alarm/a"] == 1  # the third negative step in a row, across the resume


def test_pipeline_installs_cheap_diagnostics_by_default(tiny_policy, tmp_path, tiny_pipeline):
    pipe = tiny_pipeline([short, digits])
    assert isinstance(pipe.diagnostics_, Diagnostics)
    record, metrics = pipe.step(make_split("train", 2, 0))
    assert record.clipped_weights is None  # the forward pass is not paid for by default
    for key in ("cov/score/short", "corr/score/digits", "alarm/short", "clip_ratio/region_mean"):
        assert key in metrics
    assert not any(k.startswith(("cov/clipped_weight", "grad_cos", "clip/")) for k in metrics)
    assert tiny_pipeline([short, digits], diagnostics=False).diagnostics_ is None
    assert tiny_pipeline([short, digits], diagnostics={"enabled": False}).diagnostics_ is None


def test_clipped_weight_diagnostics_when_paid_for(tiny_policy, tmp_path, tiny_pipeline):
    ctwa = tiny_pipeline([short, digits], controller={"name": "ctwa", "targets": [0.1, 0.1]})
    _, metrics = ctwa.step(make_split("train", 2, 0))  # CTWA computes the clipped weights: free here
    forced = tiny_pipeline([short, digits], diagnostics={"clipped_weights": True})
    _, forced_metrics = forced.step(make_split("train", 2, 0))
    for m in (metrics, forced_metrics):
        for key in ("cov/clipped_weight/short", "corr/clipped_weight/digits", "clip/removed_mass"):
            assert key in m
        assert 0.0 <= m["clip/removed_mass"] <= 1.0


def _grads(policy, batch, advantages):
    """The on-policy surrogate's gradient, written out: token-mean of A·log π over the valid tokens."""
    params = [p for p in policy.model.parameters() if p.requires_grad]
    logp, _ = policy.token_logprobs(batch.input_ids, batch.attention_mask, batch.prompt_width)
    mask = batch.completion_mask.float()
    out = []
    for adv in advantages:
        objective = (adv.unsqueeze(1) * logp * mask).sum() / mask.sum()
        grads = torch.autograd.grad(objective, params, retain_graph=True, allow_unused=True)
        out.append(torch.cat([(g if g is not None else torch.zeros_like(p)).flatten() for g, p in zip(grads, params)]))
    return out


def test_gradient_cosine_matches_separate_gradients(tiny_policy, tmp_path, tiny_pipeline):
    pipe = tiny_pipeline([short, digits], diagnostics={"grad_cosine_every": 1})
    before = [p.detach().clone() for p in tiny_policy.model.parameters()]
    examples = make_split("train", 4, 0)
    for _ in range(3):
        record, metrics = pipe.step(examples[:2])
        batch = record.weighted.train
        if batch.objective_advantages.abs().sum(0).min() > 0:  # both objectives vary in this batch
            break
        before = [p.detach().clone() for p in tiny_policy.model.parameters()]
    else:
        pytest.skip("no batch where both rewards vary")
    g_short, g_digits = _grads(tiny_policy, batch, batch.objective_advantages.T)
    expected = float(g_short @ g_digits / (g_short.norm() * g_digits.norm()))
    assert metrics["grad_cos/short/digits"] == pytest.approx(expected, abs=1e-5)
    delta = torch.cat([(p.detach() - b).flatten() for p, b in zip(tiny_policy.model.parameters(), before)])
    for name, g in (("short", g_short), ("digits", g_digits)):
        assert metrics[f"grad_align/{name}"] == pytest.approx(float(g @ delta / (g.norm() * delta.norm())), abs=1e-5)


def test_recipe_section_and_validation():
    recipe = parse_recipe({"diagnostics": {"alarm_patience": 4, "grad_cosine_every": 10}})
    assert recipe.diagnostics.alarm_patience == 4
    with pytest.raises(RecipeError, match=r"diagnostics.alarm_patiance: unknown field"):
        parse_recipe({"diagnostics": {"alarm_patiance": 4}})
    with pytest.raises(RecipeError, match="grad_cosine_every"):
        parse_recipe({"diagnostics": {"alarm_signal": "gradient"}})
    assert DiagnosticsConfig().clipped_weights == "auto"


@pytest.mark.parametrize("name", sorted(registered("controller")))
def test_every_controller_logs_its_weights(name):
    cls = registered("controller")[name]
    if any(info.is_required() for info in cls.Config.model_fields.values()):
        pytest.skip("needs required parameters")
    controller = build("controller", name)
    try:
        controller.start(["accuracy", "conciseness", "clarity"])
    except (RecipeError, ValueError) as err:
        pytest.skip(f"defaults do not fit three objectives: {err}")
    metrics = controller.metrics()
    for objective in ("accuracy", "conciseness", "clarity"):
        assert math.isfinite(metrics[f"weights/{objective}"])


def test_tensorboard_logger_writes_trls_tags(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from morl.logging import open_loggers

    writer = open_loggers(tmp_path, ["jsonl", "tensorboard"])
    writer.write({"kind": "train", "step": 1, "rewards/acc/mean": 0.5, "cov/score/acc": None})
    writer.write({"kind": "eval", "step": 1, "eval/greedy/acc": 0.75})
    writer.close()
    assert (tmp_path / "metrics.jsonl").read_text().count("\n") == 2
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert set(events.Tags()["scalars"]) == {"train/rewards/acc/mean", "eval/greedy/acc"}  # as TRL's trackers tag


def test_missing_logger_package_fails_before_training(tmp_path, monkeypatch):
    import sys

    from morl.logging import open_loggers

    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb -> ImportError
    with pytest.raises(ImportError, match="pip install wandb"):
        open_loggers(tmp_path, ["wandb"])
