"""The policy loss, axis by axis, against examples worked out by hand."""

import math

import pytest
import torch

from morl.algos import GRPO, PolicyLoss, Reinforce, sequence_kl
from morl.algos.loss import aggregate, loss_normaliser, token_kl
from morl.components import RecipeError
from tests.batches import token_batch as _batch

# two completions of lengths 1 and 3 (width L = 3), advantages +2 and -1, on-policy (ρ = 1):
# token losses -A·ρ are  [-2 | pad pad]  and  [+1 +1 +1]
MASK = torch.tensor([[1, 0, 0], [1, 1, 1]])
ADV = torch.tensor([2.0, -1.0])


@pytest.mark.parametrize(
    ("loss_type", "max_len", "value", "normaliser", "grad_first", "grad_second"),
    [
        # mean over sequences of each one's token mean: mean(-2/1, 3/3) = -0.5; d/dlogp = -A / len / N
        ("grpo", None, -0.5, 2.0, -2 / 1 / 2, 1 / 3 / 2),
        # token mean over the batch: (-2 + 3) / 4 tokens; d/dlogp = -A / 4
        ("bnpo", None, 0.25, 4.0, -2 / 4, 1 / 4),
        ("dapo", None, 0.25, 4.0, -2 / 4, 1 / 4),
        # token sum over N · L_max: (-2 + 3) / (2 · 3), or / (2 · 4) with max_completion_length 4
        ("dr_grpo", None, 1 / 6, 6.0, -2 / 6, 1 / 6),
        ("dr_grpo", 4, 1 / 8, 8.0, -2 / 8, 1 / 8),
    ],
)
def test_loss_types_hand_worked(loss_type, max_len, value, normaliser, grad_first, grad_second):
    logp = torch.zeros(2, 3, requires_grad=True)
    out = PolicyLoss(loss_type=loss_type, max_completion_length=max_len)(logp, ADV, MASK)
    assert out.loss.item() == pytest.approx(value)
    assert out.normaliser == normaliser == loss_normaliser(MASK, loss_type, max_len)
    out.loss.backward()
    expected = torch.tensor([[grad_first, 0.0, 0.0], [grad_second] * 3])
    torch.testing.assert_close(logp.grad, expected)
    assert out.unclipped.all() and torch.equal(out.ratio, torch.ones(2, 3))  # unclipped loss, on-policy


def test_normaliser_weighted_rows_add_up_to_the_whole():
    # rows' losses weighted by their share of the normaliser give the loss of all the rows, for every loss type
    values = torch.tensor([[-2.0, 5.0, 5.0], [1.0, 1.0, 1.0], [0.5, -3.0, 7.0]])
    mask = torch.tensor([[1, 0, 0], [1, 1, 1], [1, 1, 0]])
    for loss_type in ("grpo", "bnpo", "dapo", "dr_grpo"):
        parts = [slice(0, 1), slice(1, 3)]
        norms = [loss_normaliser(mask[p], loss_type) for p in parts]
        pieces = sum(n / sum(norms) * aggregate(values[p], mask[p], loss_type) for n, p in zip(norms, parts))
        assert float(pieces) == pytest.approx(float(aggregate(values, mask, loss_type)), abs=1e-6), loss_type


def test_sequence_level_ratio_hand_worked():
    # log-ratios: sequence 1 [-0.4 | pad], sequence 2 [0.1, 0.2, 0.6] -> means -0.4 and 0.3
    # GSPO: s = [e^-0.4, e^0.3], one value for all of a sequence's tokens
    old = torch.zeros(2, 3)
    delta = torch.tensor([[-0.4, 9.0, 9.0], [0.1, 0.2, 0.6]])  # padding's value must not matter
    logp = delta.clone().requires_grad_()
    s1, s2 = math.exp(-0.4), math.exp(0.3)
    loss = PolicyLoss(loss_type="grpo", importance_sampling_level="sequence")
    out = loss(logp, torch.tensor([1.0, 1.0]), MASK, old_logp=old)
    torch.testing.assert_close(out.ratio, torch.tensor([[s1] * 3, [s2] * 3]))
    # unclipped, A = 1: each sequence's tokens all lose -s_i; grpo: -(s1 + s2) / 2
    assert out.loss.item() == pytest.approx(-(s1 + s2) / 2)
    out.loss.backward()
    # the gradient flows through the mean: d s_i / d logp_t = s_i / len_i, times -1/N
    torch.testing.assert_close(logp.grad, torch.tensor([[-s1 / 2, 0.0, 0.0], [-s2 / 6] * 3]))
    # token level for comparison: -(e^-0.4 + (e^0.1 + e^0.2 + e^0.6) / 3) / 2
    token = PolicyLoss(loss_type="grpo")(delta, torch.tensor([1.0, 1.0]), MASK, old_logp=old)
    assert token.loss.item() == pytest.approx(-(s1 + (math.exp(0.1) + math.exp(0.2) + math.exp(0.6)) / 3) / 2)


def test_sequence_level_clip_uses_the_sequence_ratio():
    # GSPO's range [1 - 3e-4, 1 + 4e-4]: s1 = e^-0.4 with A = -1 is clipped low, s2 = e^0.3 with A = +1 clipped high
    logp = torch.tensor([[-0.4, 0.0, 0.0], [0.1, 0.2, 0.6]], requires_grad=True)
    loss = PolicyLoss(loss_type="grpo", importance_sampling_level="sequence", clip=(3e-4, 4e-4))
    out = loss(logp, torch.tensor([-1.0, 1.0]), MASK, old_logp=torch.zeros(2, 3))
    assert not out.unclipped.any()
    # min(-s1, -(1 - 3e-4)) = -(1 - 3e-4); min(s2, 1 + 4e-4) = 1 + 4e-4
    assert out.loss.item() == pytest.approx(-(-(1 - 3e-4) + (1 + 4e-4)) / 2, abs=1e-6)
    assert float(out.stats["clip_ratio/region_mean"]) == 1.0
    assert float(out.stats["clip_ratio/low_mean"]) == pytest.approx(1 / 4)  # 1 of 4 completion tokens
    assert float(out.stats["clip_ratio/high_mean"]) == pytest.approx(3 / 4)
    out.loss.backward()
    assert float(logp.grad.abs().max()) == 0.0  # everything clipped: no gradient


@pytest.mark.parametrize(
    ("clip_high", "objective", "unclipped", "high"),
    [
        # ratios 1.25 (A=+1), 0.75 (A=-1), 1.3 (A=+1), one token each; ε_low = 0.2 clips 0.75 -> -0.8
        (0.28, [1.25, -0.8, 1.28], [True, False, False], 1 / 3),  # clip-higher: 1.25 passes, 1.3 -> 1.28
        (0.2, [1.2, -0.8, 1.2], [False, False, False], 2 / 3),  # symmetric: both positive ones clipped at 1.2
    ],
)
def test_clip_higher_asymmetric(clip_high, objective, unclipped, high):
    logp = torch.log(torch.tensor([[1.25], [0.75], [1.3]]))
    out = PolicyLoss(clip=(0.2, clip_high))(
        logp, torch.tensor([1.0, -1.0, 1.0]), torch.ones(3, 1), old_logp=torch.zeros(3, 1)
    )
    assert out.loss.item() == pytest.approx(-sum(objective) / 3, abs=1e-6)
    assert out.unclipped.squeeze(1).tolist() == unclipped
    assert float(out.stats["clip_ratio/high_mean"]) == pytest.approx(high)
    assert float(out.stats["clip_ratio/low_mean"]) == pytest.approx(1 / 3)


@pytest.mark.parametrize(
    ("estimator", "kl", "grad"),
    [
        # r = log π_ref - log π = -log 2: k3 = e^r - r - 1 = 0.5 + log 2 - 1, d/dlogp = 1 - e^r = 0.5
        ("k3", 0.5 + math.log(2) - 1, 0.5),
    ],
)
def test_kl_estimators(estimator, kl, grad):
    logp = torch.full((1, 2), math.log(0.5), requires_grad=True)
    ref = torch.full((1, 2), math.log(0.25))
    # log π = log 0.5, log π_ref = log 0.25: k1 = log π - log π_ref = log 2 (an estimate to log, not to train on)
    torch.testing.assert_close(token_kl(logp, ref, "k1").detach(), torch.full((1, 2), math.log(2)))
    loss = PolicyLoss(kl_coef=0.1, kl_estimator=estimator)
    out = loss(logp, torch.zeros(1), torch.ones(1, 2), ref_logp=ref)  # zero advantage: the KL term alone
    assert out.loss.item() == pytest.approx(0.1 * kl)
    assert float(out.stats["kl"]) == pytest.approx(kl)
    assert out.regularizer.item() == pytest.approx(0.1 * kl) and out.policy_loss.item() == 0.0
    out.loss.backward()
    torch.testing.assert_close(logp.grad, torch.full((1, 2), 0.1 * grad / 2))  # token mean over 2 tokens


@pytest.mark.parametrize(
    "make",
    [
        lambda: GRPO(kl_coef=0.01, kl_estimator="k1"),
        lambda: Reinforce(kl_coef=0.01, kl_estimator="k1", kl_in="loss"),
        lambda: PolicyLoss(kl_coef=0.01, kl_estimator="k1"),
    ],
)
def test_k1_in_the_loss_is_refused_naming_the_fields_and_the_fix(make):
    with pytest.raises(
        ValueError, match=r"kl_estimator: k1 with kl_in: loss .*no-op.*k3 in the loss, or kl_in: reward"
    ):
        make()


def test_k1_is_allowed_where_it_means_something():
    GRPO(kl_coef=0.01, kl_estimator="k1", kl_in="reward")  # a reward penalty: multiplies the score function
    GRPO(kl_coef=0.0, kl_estimator="k1")  # no KL at all
    GRPO(kl_coef=0.01, kl_estimator="k3")


def test_why_k1_in_the_loss_is_refused_exact_expectations_on_a_categorical():
    """Exact on-policy expectations over a 4-outcome softmax policy ``p = softmax(θ)`` and a reference ``q``: each
    estimator's per-sample loss is differentiated at fixed samples and averaged with weights ``p`` (detached)."""
    theta = torch.tensor([0.3, -1.2, 0.8, 0.1], dtype=torch.float64, requires_grad=True)
    q = torch.tensor([0.1, 0.4, 0.2, 0.3], dtype=torch.float64)
    logp, p = torch.log_softmax(theta, 0), torch.softmax(theta, 0).detach()

    def expected_grad(per_sample_loss: torch.Tensor) -> torch.Tensor:
        return torch.autograd.grad((p * per_sample_loss).sum(), theta, retain_graph=True)[0]

    forward_kl = torch.autograd.grad((torch.softmax(theta, 0) * (logp - q.log())).sum(), theta, retain_graph=True)[0]
    reverse_kl = torch.autograd.grad((q * (q.log() - logp)).sum(), theta, retain_graph=True)[0]
    assert forward_kl.abs().max() > 0.1
    # k1 in the loss: E_p[∇ log p] = ∇ Σ p = 0, whatever q
    torch.testing.assert_close(expected_grad(token_kl(logp, q.log(), "k1")), torch.zeros(4, dtype=torch.float64))
    # k1 in the reward: the REINFORCE term k1 · log p (k1 a constant) gives E_p[k1 ∇log p] = ∇ KL(p || q)
    torch.testing.assert_close(expected_grad(token_kl(logp, q.log(), "k1").detach() * logp), forward_kl)
    # k3 in the loss: E_p[(1 - q/p) ∇log p] = -Σ q ∇log p = ∇ KL(q || p), the reverse KL: not 0, same minimiser p = q
    torch.testing.assert_close(expected_grad(token_kl(logp, q.log(), "k3")), reverse_kl)


def test_kl_in_reward_leaves_the_loss_and_sums_per_sequence():
    logp = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, 0.0, 0.0]])
    ref = torch.tensor([[-1.5, -1.0, 0.0], [-1.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    adv = torch.tensor([1.0, -1.0])
    in_reward = PolicyLoss(kl_coef=0.5, kl_in="reward")(logp, adv, mask, old_logp=logp - 0.1, ref_logp=ref)
    no_kl = PolicyLoss()(logp, adv, mask, old_logp=logp - 0.1)
    assert in_reward.loss.item() == no_kl.loss.item() and in_reward.regularizer.item() == 0.0
    assert "kl" in in_reward.stats  # still logged
    # k1 per sequence: (-1 + 1.5) + (-2 + 1) = -0.5 ; (-0.5 + 1) = 0.5 (the third token and padding excluded)
    torch.testing.assert_close(sequence_kl(logp, ref, mask, "k1"), torch.tensor([-0.5, 0.5]))
    # k3 with r = ref - logp: e^-0.5 + 0.5 - 1 and e^1 - 1 - 1 ; e^-0.5 + 0.5 - 1
    k3_a, k3_b = math.exp(-0.5) - 0.5, math.exp(1.0) - 2.0
    torch.testing.assert_close(sequence_kl(logp, ref, mask, "k3"), torch.tensor([k3_a + k3_b, k3_a]))
    # the algorithm's score penalty: β · sequence_kl of the sampling policy
    algo = GRPO(kl_coef=0.5, kl_in="reward", kl_estimator="k1")
    torch.testing.assert_close(algo.kl_reward_penalty(_batch(logp, adv, mask, ref)), torch.tensor([-0.25, 0.25]))
    assert GRPO(kl_coef=0.5).kl_reward_penalty(_batch(logp, adv, mask, ref)) is None  # kl_in: loss


def test_entropy_bonus_and_parts_add_up():
    logp = torch.tensor([[0.2, -0.1], [0.0, 0.3]], requires_grad=True)
    ref, entropy = logp.detach() - 0.2, torch.tensor([[1.0, 2.0], [3.0, 0.5]])
    mask = torch.tensor([[1, 1], [1, 0]])
    for loss_type in ("grpo", "bnpo", "dr_grpo"):
        loss = PolicyLoss(loss_type=loss_type, clip=(0.2, 0.28), kl_coef=0.1, entropy_coef=0.01)
        out = loss(logp, torch.tensor([1.0, -0.5]), mask, old_logp=torch.zeros(2, 2), ref_logp=ref, entropy=entropy)
        assert out.loss.item() == pytest.approx((out.policy_loss + out.regularizer).item(), abs=1e-7)
        assert float(out.stats["entropy"]) == pytest.approx((1 + 2 + 3) / 3)
        plain = PolicyLoss(loss_type=loss_type, clip=(0.2, 0.28))(
            logp, torch.tensor([1.0, -0.5]), mask, old_logp=torch.zeros(2, 2)
        )
        assert out.policy_loss.item() == pytest.approx(plain.loss.item())


def test_kl_in_the_loss_needs_the_reference():
    with pytest.raises(ValueError, match="ref_logp"):
        PolicyLoss(kl_coef=0.1)(torch.zeros(1, 2), torch.ones(1), torch.ones(1, 2))


def test_invalid_axes_are_refused():
    with pytest.raises(ValueError, match="loss_type"):
        PolicyLoss(loss_type="token_mean")
    with pytest.raises(ValueError, match="importance_sampling_level"):
        PolicyLoss(importance_sampling_level="group")
    with pytest.raises(RecipeError, match="loss_type"):
        GRPO(loss_type="token_mean")
    with pytest.raises(RecipeError, match="kl_in"):
        Reinforce(kl_in="advantage")


def test_algorithms_keep_their_defaults():
    # today's GRPO: token mean over the mini-batch (bnpo), token-level ratio, k3 KL in the loss, ε = 0.2
    loss = GRPO().policy_loss
    assert (loss.loss_type, loss.importance_sampling_level, loss.kl_estimator, loss.kl_in) == (
        "bnpo",
        "token",
        "k3",
        "loss",
    )
    assert loss.clip == (0.2, 0.2) and Reinforce().policy_loss.clip is None
    assert GRPO(clip_high=0.28, loss_type="dapo").policy_loss.clip == (0.2, 0.28)


def test_clipped_advantage_weight_reads_the_loss_statistics():
    # one completion of two tokens with log-ratios 0.1 and 0.3, A = 2
    old, new = torch.zeros(1, 2), torch.tensor([[0.1, 0.3]])
    batch = _batch(old, torch.tensor([2.0]))
    out = GRPO().loss(new, batch)
    expected = (batch.advantages.unsqueeze(1) * out.ratio * out.unclipped).mean(dim=1)
    torch.testing.assert_close(GRPO().clipped_advantage_weight(new, batch), expected)
    torch.testing.assert_close(GRPO().clipped_advantage_weight(new, batch, out), expected)  # the loss given once
    # token level: e^0.3 = 1.35 > 1.2 is clipped, e^0.1 is not -> w = 2·e^0.1 / 2
    torch.testing.assert_close(GRPO().clipped_advantage_weight(new, batch), torch.tensor([math.exp(0.1)]))
    # sequence level: s = e^0.2 = 1.2214 > 1.2, clipped on both tokens; with clip-higher 0.28 it passes
    gspo = {"importance_sampling_level": "sequence"}
    assert float(GRPO(**gspo).clipped_advantage_weight(new, batch)) == 0.0
    w = GRPO(clip_high=0.28, **gspo).clipped_advantage_weight(new, batch)
    torch.testing.assert_close(w, torch.tensor([2 * math.exp(0.2)]))


def test_surrogate_is_the_loss_and_its_statistics():
    old, logp = torch.zeros(1, 2), torch.tensor([[0.5, -0.5]])
    batch = _batch(old, torch.tensor([1.0]))
    loss, stats = GRPO().surrogate(logp, batch, torch.tensor([1.0]))
    out = GRPO().loss(logp, batch)
    assert float(loss) == out.loss.item() and stats.keys() == out.stats.keys()
