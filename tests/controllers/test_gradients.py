import numpy as np
import pytest
import torch

from morl.algos import GRPO
from morl.components import RecipeError, build
from morl.controllers import GradientLevel, objective_gram, objective_losses
from morl.stages import Need
from morl.statistics import select_parameters

OBJ = ["accuracy", "conciseness", "clarity"]
GRAM_METHODS = ["mgda", "pcgrad", "cagrad", "gradnorm", "dynamic_gradient"]


def _independent_gradients(policy, batch, algo, params):
    """g_m from a fresh forward pass with an unregularised GRPO, and the regulariser's own gradient."""
    plain = GRPO(clip_low=algo.config.clip_low, clip_high=algo.config.clip_high, kl_coef=0.0, entropy_coef=0.0)
    grads = []
    for m in range(batch.objective_advantages.shape[1]):
        logp, _ = policy.token_logprobs(batch.input_ids, batch.attention_mask, batch.prompt_width)
        loss = plain.loss(logp, batch, batch.objective_advantages[:, m]).loss
        grads.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)]))
    logp, entropy = policy.token_logprobs(batch.input_ids, batch.attention_mask, batch.prompt_width, with_entropy=True)
    reg = algo.loss(logp, batch, torch.zeros(batch.size), entropy).loss  # zero advantages: the regularisers only
    reg_grad = torch.cat([g.reshape(-1) for g in torch.autograd.grad(reg, params)])
    return torch.stack(grads).double(), reg_grad.double()


@pytest.mark.parametrize("params", ["all", "last_layers:1"])
@pytest.mark.parametrize("name", GRAM_METHODS)
def test_combined_loss_gives_weighted_sum_of_objective_gradients(policy_batch, name, params, normalized):
    # exact whatever the Gram matrix was measured on: the combined loss is backpropagated through everything
    policy, batch = policy_batch
    algo = GRPO(kl_coef=0.1, entropy_coef=0.01)
    controller = build("controller", {"name": name, "params": params})
    controller.start(OBJ)
    assert isinstance(controller, GradientLevel) and Need.OBJECTIVE_ADVANTAGES in controller.needs
    seen = {}
    solve = controller.weights_from_gram

    def spy(gram, losses, gaps):
        seen["gram"], seen["weights"] = gram, np.array(solve(gram, losses, gaps))
        return seen["weights"]

    controller.weights_from_gram = spy
    params = list(policy.model.parameters())
    loss, stats = controller.combine_losses(policy, batch, algo)
    combined = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)]).double()
    grads, reg_grad = _independent_gradients(policy, batch, algo, params)
    if params == "all":
        np.testing.assert_allclose(seen["gram"], (grads @ grads.T).numpy(), rtol=1e-4, atol=1e-9)
    expected = torch.as_tensor(seen["weights"]) @ grads + reg_grad
    torch.testing.assert_close(combined, expected, rtol=1e-4, atol=1e-7)
    assert "kl" in stats and "entropy" in stats
    normalized(controller)


def test_batched_and_separate_backward_agree(policy_batch):
    policy, batch = policy_batch
    losses = objective_losses(policy, batch, GRPO())
    params = list(policy.model.parameters())
    gram_loop, grads_loop = objective_gram(losses, params, batched=False)
    gram_vmap, grads_vmap = objective_gram(losses, params, batched=True)
    torch.testing.assert_close(grads_vmap, grads_loop, rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(gram_vmap, gram_loop, rtol=1e-5, atol=1e-10)
    assert gram_loop.shape == (3, 3) and gram_loop.dtype == torch.float64
    torch.testing.assert_close(gram_loop, gram_loop.T)


def test_subset_gram_is_the_gram_of_the_subset(policy_batch):
    policy, batch = policy_batch
    losses = objective_losses(policy, batch, GRPO())
    all_params = list(policy.model.parameters())
    subset = select_parameters(policy.model, "last_layers:1")
    _, grads = objective_gram(losses, all_params)
    index = torch.cat([torch.full((p.numel(),), any(p is q for q in subset)) for p in all_params])
    gram_subset, _ = objective_gram(losses, subset)
    torch.testing.assert_close(gram_subset, (grads[:, index] @ grads[:, index].T).double(), rtol=1e-5, atol=1e-10)


def test_parameter_selection(tiny_policy):
    model = tiny_policy.model
    names = {id(p): n for n, p in model.named_parameters()}
    assert len(select_parameters(model, "all")) == len(list(model.parameters()))
    last = select_parameters(model, "last_layers:1")
    assert last and all(".layers.0." in names[id(p)] for p in last)
    assert [names[id(p)] for p in select_parameters(model, r"lm_head")] == ["lm_head.weight"]
    with pytest.raises(ValueError, match="matches no trainable parameter"):
        select_parameters(model, "no_such_layer")
    with pytest.raises(RecipeError, match="params"):
        build("controller", {"name": "mgda", "params": "last_layers:0"})
    with pytest.raises(RecipeError, match="params"):
        build("controller", {"name": "mgda", "params": "layers.(["})
