"""The μ-PL probe on a tiny random Llama built in memory."""

import math

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from morl.theory import probe_pl

PROMPT = [1, 2, 3]
CANDIDATES = [[4, 5, 6, 7], [6, 7, 8, 9], [8, 9, 10, 11], [12, 13, 14, 15]]
SCORES = [0.2, 1.0, 0.0, 0.5]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=20,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
    )
    return LlamaForCausalLM(cfg)


@pytest.fixture(scope="module")
def probe(model):
    return probe_pl(model, PROMPT, CANDIDATES, SCORES)


def test_quantities_are_finite_and_in_range(model, probe):
    values = [probe.p_best, probe.epsilon, probe.alignment, probe.sigma_max, probe.sigma_min, probe.mu, probe.gap]
    assert all(math.isfinite(v) and v > 0 for v in values)
    assert 0 < probe.p_best <= 1 and 0 < probe.epsilon <= 1 and 0 < probe.alignment <= 1
    assert probe.sigma_max >= probe.sigma_min > 0
    assert probe.score_bound == 1.0 and probe.margin == 0.5
    assert probe.n_tokens == 4 and probe.n_params == sum(p.numel() for p in model.parameters())
    assert probe.mu == pytest.approx(math.prod(probe.factors.values()) * probe.n_tokens)
    assert probe.bottleneck in probe.factors and probe.bottleneck in probe.summary()


def test_matches_direct_computation(model, probe):
    with torch.no_grad():
        log_pi = []
        for c in CANDIDATES:
            logits = model(input_ids=torch.tensor([PROMPT + c])).logits[0].double()
            logp = torch.log_softmax(logits[len(PROMPT) - 1 : -1], dim=-1)
            log_pi.append(float(logp[torch.arange(len(c)), torch.tensor(c)].sum()))
        q = np.exp(np.array(log_pi) - np.logaddexp.reduce(log_pi))
    assert probe.p_best == pytest.approx(q[1], rel=1e-6)
    assert probe.gap == pytest.approx(1.0 - q @ np.array(SCORES), rel=1e-6)
    # Per-token gradients straight from autograd give the same alignment c and ε.
    params = [p for p in model.parameters() if p.requires_grad]
    logits = model(input_ids=torch.tensor([PROMPT + CANDIDATES[1]])).logits[0]
    logp = torch.log_softmax(logits[len(PROMPT) - 1 : -1], dim=-1)
    grads = []
    for t, token in enumerate(CANDIDATES[1]):
        g = torch.autograd.grad(logp[t, token], params, retain_graph=True)
        grads.append(torch.cat([x.reshape(-1) for x in g]).double().numpy())
    g = np.stack(grads)
    assert probe.alignment == pytest.approx(np.sum(g.sum(0) ** 2) / (len(g) * np.sum(g**2)), rel=1e-4)
    token_p = logp.exp()[torch.arange(4), torch.tensor(CANDIDATES[1])].detach().double().numpy()
    assert probe.epsilon == pytest.approx(float(np.min(1 - token_p)), rel=1e-6)


def test_parameter_subset_and_vocab_rows(model, probe):
    head = probe_pl(model, PROMPT, CANDIDATES, SCORES, params=["lm_head"])
    assert head.n_params == 20 * 16
    assert head.sigma_min <= probe.sigma_min + 1e-6  # fewer parameters: a smaller Gram matrix J Jᵀ
    few = probe_pl(model, PROMPT, CANDIDATES, SCORES, max_vocab=3)
    assert few.sigma_max <= probe.sigma_max + 1e-6 and few.sigma_min >= probe.sigma_min - 1e-6  # interlacing


def test_invalid_arguments(model):
    with pytest.raises(ValueError, match="selects no trainable parameter"):
        probe_pl(model, PROMPT, CANDIDATES, SCORES, params=["nope"])
    with pytest.raises(ValueError, match="K ≥ 2"):
        probe_pl(model, PROMPT, CANDIDATES[:1], SCORES[:1])
