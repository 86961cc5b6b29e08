"""The interference forecast against independent computations: autograd directional derivatives, numpy means,
a hand-worked group; and in a fit: measured on schedule, trajectory untouched, resumed exactly."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from morl import Pipeline, TrainConfig
from morl.batch import Batch
from morl.forecast import (
    ForecastWindow,
    current_logprobs,
    forecast_from_changes,
    group_centred_advantages,
    logprob_changes,
    sequence_logprobs,
)
from morl.run import read_metrics
from morl.tinymath.task import make_split


def _token_batch(vocab: int, n: int = 6, group_size: int = 3, prompt: int = 3, completion: int = 4) -> Batch:
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(3, vocab, (n, prompt + completion), generator=gen)
    mask = torch.ones(n, completion, dtype=torch.long)
    mask[1, -1] = 0  # a shorter completion: its last token does not count
    return Batch(
        prompts=["p"] * n,
        completions=["c"] * n,
        columns={},
        group_size=group_size,
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        completion_mask=mask,
        prompt_width=prompt,
    )


def test_group_centred_advantages_hand_worked():
    rewards = torch.tensor([[1.0, 2.0], [0.0, math.nan], [3.0, 6.0], [1.0, 4.0]])
    adv = group_centred_advantages(rewards, group_size=2)
    # objective 0: centred ±0.5, ±1 -> σ = √((0.25·2 + 1·2)/4) = √0.625
    s0 = math.sqrt(0.625)
    assert adv[:, 0].tolist() == pytest.approx([0.5 / s0, -0.5 / s0, 1 / s0, -1 / s0])
    # objective 1: the NaN leaves its group's mean (2.0 stays alone: centred 0) and σ: √((0 + 1 + 1)/3)
    s1 = math.sqrt(2 / 3)
    assert adv[:, 1].tolist() == pytest.approx([0.0, 0.0, 1 / s1, -1 / s1])


def test_forecast_and_its_z_match_numpy():
    rng = np.random.default_rng(3)
    adv, changes = rng.normal(size=(12, 2)), rng.normal(size=12)
    f, z = forecast_from_changes(torch.tensor(adv), torch.tensor(changes), group_size=4)
    per_prompt = (adv * changes[:, None]).reshape(3, 4, 2).mean(axis=1)
    expected = per_prompt.mean(axis=0)
    assert f.numpy() == pytest.approx(expected)
    assert z.numpy() == pytest.approx(expected / (per_prompt.std(axis=0, ddof=1) / math.sqrt(3)))


def _sequence_logprobs_at(policy, batch, values) -> list[float]:
    """Each completion's log-probability under a copy of the policy holding ``values``: independent of the forecast."""
    import copy

    other = copy.deepcopy(policy)
    with torch.no_grad():
        for p, v in zip([q for q in other.model.parameters() if q.requires_grad], values, strict=True):
            p.copy_(v)
    out = []
    for i in range(batch.size):
        logp, _ = other.token_logprobs(batch.input_ids[i : i + 1], batch.attention_mask[i : i + 1], 3)
        out.append(float((logp * batch.completion_mask[i : i + 1]).sum().detach()))
    return out


def test_logprob_changes_are_the_change_of_one_more_window_like_the_last(tiny_policy):
    import copy

    policy = tiny_policy
    policy.model.double()
    batch = _token_batch(policy.model.config.vocab_size)
    params = [p for p in policy.model.parameters() if p.requires_grad]
    gen = torch.Generator().manual_seed(1)
    delta = [1e-3 * torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in params]
    now = [p.detach().clone() for p in params]
    start = [p - d for p, d in zip(now, delta, strict=True)]

    changes = logprob_changes(policy, batch, params, start)

    assert all(torch.equal(p, b) for p, b in zip(params, now, strict=True))  # restored bit for bit
    ahead = [p + d for p, d in zip(now, delta, strict=True)]
    later, current = _sequence_logprobs_at(policy, batch, ahead), _sequence_logprobs_at(policy, batch, now)
    assert changes.tolist() == pytest.approx([a - b for a, b in zip(later, current)], abs=1e-12)
    # it is the directional derivative along Δθ half a window ahead, to second order (autograd there)
    middle = copy.deepcopy(policy)
    middle_params = [p for p in middle.model.parameters() if p.requires_grad]
    with torch.no_grad():
        for p, v, d in zip(middle_params, now, delta, strict=True):
            p.copy_(v + d / 2)
    expected = []
    for i in range(batch.size):
        logp, _ = middle.token_logprobs(batch.input_ids[i : i + 1], batch.attention_mask[i : i + 1], 3)
        total = (logp * batch.completion_mask[i : i + 1]).sum()
        grads = torch.autograd.grad(total, middle_params)
        expected.append(sum(float((g * d).sum()) for g, d in zip(grads, delta, strict=True)))
    # the log-probs are float32 (the policy computes them so): the difference is exact to ~1e-5 per sequence
    assert changes.tolist() == pytest.approx(expected, rel=5e-3, abs=3e-5)
    assert max(abs(e) for e in expected) > 1e-3  # the directions are not trivially zero


def test_logprob_changes_take_the_current_log_probs_given_and_one_pass_fewer(tiny_policy):
    policy = tiny_policy
    batch = _token_batch(policy.model.config.vocab_size)
    params = [p for p in policy.model.parameters() if p.requires_grad]
    start = [p.detach() - 1e-3 for p in params]
    calls = []
    hook = policy.model.register_forward_hook(lambda *_: calls.append(1))
    try:
        own = logprob_changes(policy, batch, params, start)
        two_passes = len(calls)
        calls.clear()
        now = sequence_logprobs(policy, batch, 1.0, None)
        calls.clear()
        given = logprob_changes(policy, batch, params, start, current=now + 0.25)
    finally:
        hook.remove()
    assert len(calls) == two_passes // 2 > 0  # the log-probs at θ were not computed again
    assert given.tolist() == pytest.approx((own - 0.25).tolist(), abs=1e-9)


def test_current_logprobs_are_the_batch_s_own_in_full_precision_only(tiny_policy):
    batch = _token_batch(tiny_policy.model.config.vocab_size)
    assert current_logprobs(tiny_policy, batch) is None  # no log-probs of the sampling policy
    old = torch.rand(batch.size, batch.completion_mask.shape[1])
    batch = dataclasses.replace(batch, old_logprobs=old)
    expected = (old * batch.completion_mask).sum(dim=1)
    assert torch.equal(current_logprobs(tiny_policy, batch), expected)
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")  # float32 products that may round like TF32
    try:
        assert current_logprobs(tiny_policy, batch) is None
    finally:
        torch.set_float32_matmul_precision(previous)
    tiny_policy.model.to(torch.bfloat16)  # rounded by about as much as a window changes them
    assert current_logprobs(tiny_policy, batch) is None


def test_sequence_logprobs_do_not_depend_on_micro_batches(tiny_policy):
    batch = _token_batch(tiny_policy.model.config.vocab_size)
    whole = sequence_logprobs(tiny_policy, batch, 1.0, None)
    assert torch.allclose(sequence_logprobs(tiny_policy, batch, 1.0, 2), whole, atol=1e-5)


def test_window_measures_every_n_steps_over_the_last_n_updates(tiny_policy):
    policy = tiny_policy
    batch = _token_batch(policy.model.config.vocab_size)
    rewards = torch.tensor([[1.0], [0.0], [0.5], [0.0], [1.0], [1.0]])
    params = [p for p in policy.model.parameters() if p.requires_grad]
    window = ForecastWindow(every=2)
    assert window.observe(1, policy, params, batch, rewards) is None  # opens the first window
    start = [p.detach().clone() for p in params]
    with torch.no_grad():  # two "updates"
        for p in params:
            p.add_(1e-3)
    assert window.observe(2, policy, params, batch, rewards) is None  # not due
    f, _ = window.observe(3, policy, params, batch, rewards)
    changes = logprob_changes(policy, batch, params, start)
    expected, _ = forecast_from_changes(group_centred_advantages(rewards, 3), changes, 3)
    assert f == pytest.approx(expected.numpy())
    assert window.snapshot_step_ == 3 and all(torch.equal(s, p) for s, p in zip(window.snapshot_, params))


def _pipeline(policy, out, forecast_every: int, steps: int = 5) -> Pipeline:
    return Pipeline(
        policy=policy,
        rewards=["accuracy", "conciseness", "clarity"],
        rollout={"name": "transformers", "max_new_tokens": 6},
        diagnostics={"forecast_every": forecast_every},
        config=TrainConfig(
            steps=steps, prompts_per_step=2, group_size=3, eval_every=0, progress=False, seed=3, output_dir=str(out)
        ),
    )


def test_a_fit_logs_the_forecast_on_schedule_and_trains_the_same(tiny_policy, tmp_path):
    import copy

    other = copy.deepcopy(tiny_policy)
    data = make_split("train", 16, 0)
    _pipeline(tiny_policy, tmp_path / "on", forecast_every=2).fit(data)
    _pipeline(other, tmp_path / "off", forecast_every=0).fit(data)
    rows = [r for r in read_metrics(tmp_path / "on") if r.get("kind") != "eval"]
    measured = [r["step"] for r in rows if "forecast/change/accuracy" in r]
    assert measured == [3, 5]  # windows 1 -> 3 and 3 -> 5
    assert all(math.isfinite(r["forecast/change/clarity"]) for r in rows if r["step"] in measured)
    assert all(f"forecast/alarm/{m}" in rows[-1] for m in ("accuracy", "conciseness", "clarity"))
    assert rows[0]["timing/forecast"] >= 0 and rows[2]["timing/forecast"] > 0
    off = [r for r in read_metrics(tmp_path / "off") if r.get("kind") != "eval"]
    assert not any(k.startswith("forecast/") for r in off for k in r)
    for a, b in zip(tiny_policy.model.parameters(), other.model.parameters(), strict=True):
        assert torch.equal(a, b)  # the forecast moved the parameters and put them back exactly


# ---- CTWA on the forecast ---------------------------------------------------------------------------------------


def test_ctwa_on_the_forecast_raises_the_weights_of_objectives_forecast_to_fall():
    from morl.controllers.ctwa import CTWA
    from morl.stages import Need, Scored
    from tests.batches import reward_batch

    ctwa = CTWA(signal="forecast", targets=0.0, lr=0.3, ema=1.0, lambda0=[1.0, 1.0, 1.0])
    ctwa.start(["a", "b", "c"])
    assert ctwa.needs == frozenset({Need.FORECAST}) and ctwa.forecast_every == 3
    assert CTWA().needs == frozenset({Need.CLIPPED_WEIGHTS}) and CTWA().forecast_every == 0
    scored = Scored(rollout=reward_batch([[1.0, 0.0, 1.0]]), rewards=torch.tensor([[1.0, 0.0, 1.0]]), objectives=())
    ctwa.before_update(scored)  # nothing measured yet: no move
    assert ctwa.u_.tolist() == [0.0, 0.0, 0.0]
    ctwa.observe_forecast(np.array([-0.1, 0.2, -0.4]), np.array([-2.0, 1.0, -7.0]))
    ctwa.before_update(scored)
    # deficits max(0, 0 - clip(z, -3, 3)) = [2, 0, 3]; u += 0.3 * deficit
    assert ctwa.u_ == pytest.approx([0.6, 0.0, 0.9])
    ctwa.before_update(scored)  # a forecast moves the weights once
    assert ctwa.u_ == pytest.approx([0.6, 0.0, 0.9])
    assert ctwa.metrics()["ctwa/cov/c"] == -3.0


def _code_mod_3(prompts, completions, **kwargs):  # varies within a group, even for a random model
    return [float(sum(map(ord, c)) % 3) for c in completions]


def _code_mod_5(prompts, completions, **kwargs):
    return [float(sum(map(ord, c)) % 5) for c in completions]


def test_ctwa_on_the_forecast_in_a_fit_resumes_exactly(tiny_policy, tmp_path):
    import copy

    def pipe(policy, out, steps):
        return Pipeline(
            policy=policy,
            rewards=[_code_mod_3, _code_mod_5],
            controller={"name": "ctwa", "signal": "forecast", "targets": 0.0, "forecast_every": 2, "lr": 1.0},
            rollout={"name": "transformers", "max_new_tokens": 6},
            diagnostics=False,
            config=TrainConfig(
                steps=steps, prompts_per_step=2, group_size=3, eval_every=0, checkpoint_every=1, progress=False,
                seed=5, output_dir=str(out),
            ),
        )  # fmt: skip

    data = make_split("train", 16, 0)
    other = copy.deepcopy(tiny_policy)
    whole = pipe(tiny_policy, tmp_path / "whole", 4)
    whole.fit(data)
    assert (tmp_path / "whole" / "checkpoints" / "step-000004" / "state_tensors.safetensors").is_file()
    rows = [r for r in read_metrics(tmp_path / "whole") if r.get("kind") != "eval"]
    assert rows[2]["timing/forecast"] > 0  # step 3 closes the window opened at step 1
    assert [r["ctwa/cov/_code_mod_5"] is not None for r in rows] == [False, False, True, True]  # measured at step 3

    first = pipe(other, tmp_path / "resumed", 2)
    first.fit(data)
    second = pipe(other, tmp_path / "ignored", 4)
    second.fit(data, resume_from=tmp_path / "resumed")
    again = [r for r in read_metrics(tmp_path / "resumed") if r.get("kind") != "eval"]
    drop = ("timing/", "step_time", "segment")
    assert [{k: v for k, v in r.items() if not k.startswith(drop)} for r in again] == [
        {k: v for k, v in r.items() if not k.startswith(drop)} for r in rows
    ]


def test_the_forecast_has_one_owner_at_the_controllers_cadence(tiny_policy, tmp_path):
    """The step measures the forecast once, at the cadence of the controller that needs it; the diagnostics log
    that measurement (their own forecast_every is the cadence only when no controller sets one)."""
    pipe = Pipeline(
        policy=tiny_policy,
        rewards=[_code_mod_3, _code_mod_5],
        controller={"name": "ctwa", "signal": "forecast", "targets": 0.0, "forecast_every": 2},
        rollout={"name": "transformers", "max_new_tokens": 6},
        diagnostics={"forecast_every": 5},
        config=TrainConfig(steps=5, prompts_per_step=2, group_size=3, eval_every=0, progress=False, seed=5,
                           output_dir=str(tmp_path / "run")),
    )  # fmt: skip
    pipe.fit(make_split("train", 16, 0))
    rows = [r for r in read_metrics(tmp_path / "run") if r.get("kind") != "eval"]
    assert [r["step"] for r in rows if "forecast/z/_code_mod_5" in r] == [3, 5]  # the controller's cadence
    step3 = rows[2]
    assert step3["ctwa/cov/_code_mod_5"] == pytest.approx(max(-3.0, min(3.0, step3["forecast/z/_code_mod_5"])))


def test_the_trainer_forecasts_with_one_forward_pass(tiny_policy, tmp_path, monkeypatch):
    import morl.forecast as forecast

    calls = []
    real = forecast.sequence_logprobs
    monkeypatch.setattr(forecast, "sequence_logprobs", lambda *a, **k: calls.append(1) or real(*a, **k))
    _pipeline(tiny_policy, tmp_path, forecast_every=2, steps=3).fit(make_split("train", 16, 0))
    rows = [r for r in read_metrics(tmp_path) if r.get("kind") != "eval"]
    assert [r["step"] for r in rows if "forecast/change/accuracy" in r] == [3]
    assert len(calls) == 1  # at θ + Δθ only: log π_θ is the rollout's own
