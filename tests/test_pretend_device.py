"""The pretend accelerator itself: it must catch what a GPU catches and allow what a GPU allows, or a device test
built on it proves nothing (a miss) or fails for nothing (a false alarm)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from tests.pretend_device import pretend_accelerator

MIXED = "Expected all tensors to be on the same device"


def test_marked_tensors_report_the_pretend_device():
    with pretend_accelerator() as acc:
        x = torch.ones(3, device=acc.device)
        assert acc.device == torch.device("cuda", 0)
        assert x.device == acc.device and x.is_cuda and not x.is_cpu and x.get_device() == 0
        assert "device='cuda:0'" in repr(x)
        plain = torch.ones(3)
        assert plain.device.type == "cpu" and not plain.is_cuda and plain.get_device() == -1
    assert x.device.type == "cpu"  # outside the block, a marked tensor is the CPU tensor it always was


def test_mixing_devices_raises_and_names_the_op_and_the_line():
    with pretend_accelerator() as acc:
        x = torch.ones(3, device=acc.device)
        y = torch.ones(3)
        with pytest.raises(RuntimeError, match=MIXED) as info:
            x * y
        assert "Tensor.mul" in str(info.value) and "test_pretend_device.py" in str(info.value)
        with pytest.raises(RuntimeError, match=MIXED):
            torch.cat([x, y])
        with pytest.raises(RuntimeError, match=MIXED):
            torch.stack([x.sum(), torch.tensor(1.0)])  # cat and stack take no CPU scalar either
        with pytest.raises(RuntimeError, match=MIXED):
            y.add_(x)
        with pytest.raises(RuntimeError, match=MIXED):
            torch.tensor(0.0).add_(x.sum())  # a GPU value written into a CPU scalar
        with pytest.raises(RuntimeError, match=MIXED):
            torch.nn.functional.linear(y.view(1, 3), x.view(1, 3))
        with pytest.raises(RuntimeError, match=MIXED):
            y[torch.tensor([0], device=acc.device)]  # a GPU index on a CPU tensor
        with pytest.raises(RuntimeError, match=MIXED):
            x[torch.tensor([0, 1])] = torch.ones(2)  # an advanced-indexing write takes no CPU vector
        with pytest.raises(RuntimeError, match="different"):
            torch.nn.Parameter(torch.ones(3, device=acc.device)).grad = torch.ones(3)


def test_what_a_gpu_allows_is_allowed():
    with pretend_accelerator() as acc:
        x = torch.arange(4.0, device=acc.device)
        assert (x * torch.tensor(2.0)).device == acc.device  # a 0-dim CPU tensor is a scalar
        assert torch.where(x > 1, x, torch.tensor(0.0)).device == acc.device
        picked = x[torch.tensor([0, 2])]  # a CPU index tensor
        assert picked.device == acc.device and picked.tolist() == [0.0, 2.0]
        assert x[torch.tensor([True, False, True, False])].device == acc.device
        x[1:3] = torch.tensor([7.0, 8.0])  # a slice write is a copy, which crosses devices
        host = torch.zeros(4)
        host.copy_(x)
        assert host.device.type == "cpu" and host.tolist() == [0.0, 7.0, 8.0, 3.0]
        assert x.sum().item() == 18.0 and x.tolist() == [0.0, 7.0, 8.0, 3.0] and float(x[1]) == 7.0
        assert int(x[2]) == 8 and bool(x[1] > 0)


def test_numpy_of_a_marked_tensor_raises_as_on_a_gpu():
    with pretend_accelerator() as acc:
        x = torch.ones(2, device=acc.device)
        with pytest.raises(TypeError, match="can't convert cuda:0 device type tensor to numpy"):
            x.numpy()
        with pytest.raises(TypeError, match="Use Tensor.cpu()"):
            np.asarray(x)
        with pytest.raises(TypeError, match="numpy"):
            x.double().sum().numpy()  # results of ops on the device stay there
        assert x.cpu().numpy().tolist() == [1.0, 1.0]
        assert x.detach().cpu().numpy().dtype == np.float32


@pytest.mark.parametrize(
    "make",
    [
        lambda d: torch.zeros(2, device=d),
        lambda d: torch.ones(2, 3, device=d),
        lambda d: torch.full((2,), 3.0, device=d),
        lambda d: torch.empty(2, device=d),
        lambda d: torch.arange(3, device=d),
        lambda d: torch.tensor([1.0, 2.0], device=d),
        lambda d: torch.as_tensor([1, 2], device=d),
        lambda d: torch.as_tensor(torch.ones(2), device=d),
        lambda d: torch.randn(2, device=d),
        lambda d: torch.rand(2, device=d),
        lambda d: torch.eye(2, device=d),
        lambda d: torch.linspace(0, 1, 3, device=d),
        lambda d: torch.ones(2).to(d),
        lambda d: torch.ones(2).to(device=d, dtype=torch.float64),
        lambda d: torch.ones(2).to(str(d)),
        lambda d: torch.ones(2).cuda(),
        lambda d: torch.ones(2).new_zeros(3, device=d),
        lambda d: torch.zeros_like(torch.ones(2), device=d),
    ],
)
def test_factories_and_conversions_put_tensors_on_the_device(make):
    with pretend_accelerator() as acc:
        x = make(acc.device)
        assert x.device == acc.device and acc.is_marked(x)


@pytest.mark.filterwarnings("ignore:To copy construct from a tensor")
def test_derived_tensors_follow_their_source():
    with pretend_accelerator() as acc:
        host = torch.ones(2, 3)
        x = host.to(acc.device)
        assert not acc.is_marked(host) and host.device.type == "cpu"  # moving copies; the source stays
        for derived in (
            torch.zeros_like(x),
            torch.ones_like(x),
            torch.randn_like(x),
            torch.empty_like(x),
            x.new_zeros(4),
            x.new_tensor([1.0]),
            x.new_full((2,), 1.0),
            x.view(3, 2),
            x[0],
            x.T,
            x.data,
            x.detach(),
            x.float(),
            x.double(),
            x.to(torch.float16),
            x.to(x),
            torch.ones(2).type_as(x),
            x.unbind(0)[1],
            torch.cat([x, x]),
            torch.tensor(x),
            torch.as_tensor(x),
            torch.nn.Parameter(x.clone()),
            copy.deepcopy(x),
            x.max(dim=0).values,
        ):
            assert derived.device == acc.device, derived
        assert x.add_(1).device == acc.device  # in-place results are the tensor itself
        for back in (x.cpu(), x.to("cpu"), x.to(torch.device("cpu")), torch.zeros_like(x, device="cpu")):
            assert back.device.type == "cpu" and not acc.is_marked(back)
        assert acc.is_marked(x)  # .cpu() copied it: the device tensor is unchanged
        assert torch.tensor([x.sum(), x.mean()]).device.type == "cpu"  # a list of device scalars: a host tensor


def test_linear_forward_backward_and_adamw_step_on_the_device():
    torch.manual_seed(0)
    layer = torch.nn.Linear(4, 3)
    with pretend_accelerator() as acc:
        acc.place(layer)
        before = [p.detach().clone() for p in layer.parameters()]
        optimizer = torch.optim.AdamW(layer.parameters(), lr=0.1, weight_decay=0.01)
        for _ in range(2):
            optimizer.zero_grad(set_to_none=True)
            loss = layer(torch.randn(5, 4, device=acc.device)).pow(2).mean()
            assert loss.device == acc.device
            loss.backward()
            torch.nn.utils.clip_grad_norm_(layer.parameters(), 0.5)
            optimizer.step()
        for p, b in zip(layer.parameters(), before):
            assert p.device == acc.device and p.grad.device == acc.device
            assert not torch.equal(p, b)
        for state in optimizer.state.values():
            assert state["exp_avg"].device == acc.device and state["exp_avg_sq"].device == acc.device
        with pytest.raises(RuntimeError, match=MIXED):
            layer(torch.randn(5, 4))  # a CPU batch into a model on the device


def test_module_to_the_device_and_deepcopy_keep_parameters_there():
    with pretend_accelerator() as acc:
        moved = torch.nn.Linear(2, 2).to(acc.device)
        twin = copy.deepcopy(moved)
        for p in [*moved.parameters(), *twin.parameters()]:
            assert p.device == acc.device
        back = twin.cpu()
        assert all(p.device.type == "cpu" for p in back.parameters())


def test_marks_belong_to_one_block():
    with pretend_accelerator() as first:
        x = torch.ones(2, device=first.device)
    with pretend_accelerator() as second:
        assert not second.is_marked(x) and x.device.type == "cpu"


def test_tiny_llama_forward_and_backward_on_the_device(tiny_policy):
    """transformers' Llama (rotary embeddings, masks, SDPA, KV cache) runs on marked weights, gives the CPU's
    log-probs, and still catches a CPU batch."""
    policy = tiny_policy
    ids = torch.randint(3, 40, (4, 12))
    ids[1, :6], ids[3, :6] = ids[0, :6], ids[2, :6]  # two groups of two completions sharing a prompt
    mask = torch.ones_like(ids)
    expected, _ = policy.token_logprobs(ids, mask, 6, group_size=2)
    with pretend_accelerator() as acc:
        acc.place(policy.model)
        assert policy.device == acc.device
        logp, entropy = policy.token_logprobs(
            ids.to(acc.device), mask.to(acc.device), 6, with_entropy=True, group_size=2
        )
        assert logp.device == acc.device and entropy.device == acc.device
        torch.testing.assert_close(logp.cpu(), expected, atol=1e-5, rtol=1e-5)
        logp.sum().backward()
        grads = [p.grad for p in policy.model.parameters() if p.grad is not None]
        assert grads and all(g.device == acc.device for g in grads)
        with pytest.raises(RuntimeError, match=MIXED):
            policy.model(input_ids=ids, attention_mask=mask)
