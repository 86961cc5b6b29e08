import math

import torch

from morl.algos import GRPO, Reinforce, k3_kl, masked_mean, unclipped_mask
from tests.batches import token_batch as _batch


def test_k3_matches_exact_kl_in_expectation():
    # For categorical p (policy) and q (ref): E_p[k3] = KL(p || q).
    p = torch.tensor([0.5, 0.3, 0.2])
    q = torch.tensor([0.2, 0.5, 0.3])
    k3 = k3_kl(p.log(), q.log())
    assert torch.all(k3 >= 0)
    torch.testing.assert_close((p * k3).sum(), (p * (p / q).log()).sum())


def test_unclipped_indicator_cases():
    ratio = torch.tensor([1.5, 1.5, 0.5, 0.5, 1.1, 0.9])
    adv = torch.tensor([1.0, -1.0, 1.0, -1.0, 1.0, -1.0])
    # A>0 & ρ>1.2 clipped; A<0 & ρ<0.8 clipped; others pass gradient
    assert unclipped_mask(ratio, adv, 0.2, 0.2).tolist() == [False, True, True, False, True, True]


def test_grpo_surrogate_hand_worked():
    # two tokens with ratios e^{0.5}≈1.6487 (A=+1, clipped at 1.2) and e^{-0.5}≈0.6065 (A=-1, clipped at 0.8)
    old = torch.tensor([[0.0, 0.0]])
    logp = torch.tensor([[0.5, -0.5]])
    algo = GRPO(clip_low=0.2, clip_high=0.2)
    b1 = _batch(old, torch.tensor([1.0]))
    out = algo.loss(logp, b1, torch.tensor([1.0]))
    loss, stats = out.loss, out.stats
    # token 1: min(1.6487, 1.2) = 1.2 ; token 2: min(0.6065, 0.8) = 0.6065; loss = -mean
    expected = -(1.2 + math.exp(-0.5)) / 2
    assert abs(float(loss) - expected) < 1e-6
    assert float(stats["clip_ratio/high_mean"]) == 0.5


def test_reinforce_gradient_is_advantage_times_score():
    logp = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    b = _batch(logp.detach().clone(), torch.tensor([3.0]))
    loss = Reinforce().loss(logp, b, torch.tensor([3.0])).loss
    loss.backward()
    # d/dlogp of -mean(A·exp(logp - old)) at logp = old: -A / n_tokens
    torch.testing.assert_close(logp.grad, torch.tensor([[-1.5, -1.5]]))


def test_token_mean_respects_mask_and_kl_term():
    old = torch.zeros(2, 3)
    logp = torch.zeros(2, 3)
    ref = torch.full((2, 3), math.log(0.5))
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    algo = Reinforce(kl_coef=0.1)
    out = algo.loss(logp, _batch(old, torch.tensor([1.0, 2.0]), mask, ref))
    loss, stats = out.loss, out.stats
    kl = 0.5 - math.log(0.5) - 1  # k3 with r = log 0.5
    expected = -(1 + 1 + 2) / 3 + 0.1 * kl
    assert abs(float(loss) - expected) < 1e-6
    assert abs(float(stats["kl"]) - kl) < 1e-6


def test_clipped_advantage_weight_drops_clipped_tokens():
    old = torch.zeros(2, 2)
    new = torch.tensor([[0.5, 0.0], [0.0, 0.0]])
    mask = torch.tensor([[1, 1], [1, 0]])
    b = _batch(old, torch.tensor([2.0, -1.0]), mask)
    w = GRPO().clipped_advantage_weight(new, b)
    # row 0: token 0 clipped (ρ=1.65>1.2, A>0) -> 0; token 1: 2·1 -> mean 1.0 ; row 1: -1
    torch.testing.assert_close(w, torch.tensor([1.0, -1.0]))
    w_reinforce = Reinforce().clipped_advantage_weight(new, b)
    torch.testing.assert_close(w_reinforce, torch.tensor([(2 * math.exp(0.5) + 2) / 2, -1.0]))


def test_masked_mean():
    assert float(masked_mean(torch.tensor([1.0, 5.0]), torch.tensor([1, 0]))) == 1.0
