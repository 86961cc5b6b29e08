import numpy as np
import pytest
import torch

from morl.algos import GRPO, Reinforce
from morl.controllers import PAMA, GradientLevel
from morl.controllers.pama import pama_weights

OBJ = ["accuracy", "conciseness", "clarity"]


@pytest.mark.parametrize(
    ("scalars", "alpha", "shared"),
    [
        ([0.4, 0.1, 0.3], [0, 1, 0], 0.1),  # all positive: the smallest
        ([0.4, 0.0, 0.3], [0, 1, 0], 0.0),  # one objective without positive signal stops the update
        ([-0.5, -0.2], [0, 1], -0.2),  # all negative: the largest
        ([-1.0, 3.0], [0.75, 0.25], 0.0),  # 0 inside the range: the mix that cancels
    ],
)
def test_projection_of_zero_onto_the_range(scalars, alpha, shared):
    got_alpha, got_shared = pama_weights(np.array(scalars))
    np.testing.assert_allclose(got_alpha, alpha)
    assert got_shared == pytest.approx(shared)
    assert got_alpha.sum() == pytest.approx(1.0) and (got_alpha >= 0).all()


def _expected_shared(policy, batch, clip_high):
    logp, _ = policy.token_logprobs(batch.input_ids, batch.attention_mask, batch.prompt_width)
    ratio = torch.exp(logp.detach() - batch.old_logprobs)
    valid = batch.completion_mask.bool()
    if clip_high is not None:
        valid &= ratio <= 1 + clip_high
    values = []
    for m in range(3):
        positive = batch.objective_advantages[:, m].clamp_min(0).unsqueeze(1).expand_as(logp)
        values.append(float(positive[valid].mean()))
    return min(values), values


@pytest.mark.parametrize("algo", [GRPO(), Reinforce()], ids=["grpo", "reinforce"])
def test_shared_advantage_and_gradient(policy_batch, algo, normalized):
    policy, batch = policy_batch
    c = PAMA()
    c.start(OBJ)
    assert isinstance(c, GradientLevel) and c.normalization == "simplex"
    expected, scalars = _expected_shared(policy, batch, algo.clip_range[1] if algo.clip_range else None)
    params = list(policy.model.parameters())
    loss, stats = c.combine_losses(policy, batch, algo)
    assert stats["pama/shared_advantage"] == pytest.approx(expected, rel=1e-5)
    np.testing.assert_allclose(c.scalars_, scalars, rtol=1e-5)
    got = torch.autograd.grad(loss, params)
    logp, _ = policy.token_logprobs(batch.input_ids, batch.attention_mask, batch.prompt_width)
    reference = algo.loss(logp, batch, torch.full((batch.size,), expected)).loss
    for g, r in zip(got, torch.autograd.grad(reference, params)):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-7)
    normalized(c)
    assert c.weights_[int(np.argmin(scalars))] == 1.0
    assert "pama/positive_advantage/clarity" in c.metrics()


def test_no_positive_signal_no_policy_gradient(policy_batch):
    policy, batch = policy_batch
    batch.objective_advantages[:, 1] = -1.0  # objective 1 prefers nothing in this mini-batch
    c = PAMA()
    c.start(OBJ)
    loss, stats = c.combine_losses(policy, batch, GRPO())
    assert stats["pama/shared_advantage"] == 0.0
    assert all(float(g.abs().max()) == 0.0 for g in torch.autograd.grad(loss, list(policy.model.parameters())))
