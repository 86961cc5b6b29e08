"""Loading a policy: what transformers is asked for."""

from __future__ import annotations

import pytest

from morl.policy import Policy, PolicyConfig, load_options


def test_models_load_without_hub_kernels_by_default(tiny_model_dir):
    """transformers >= 5.25 kernelizes a loaded model from the Hugging Face Hub unless told not to, and again on every
    train()/eval(); on a GPU without internet that fails, on a pretend device it asks for CUDA. morl opts out."""
    assert PolicyConfig().use_kernels is False
    assert load_options() == {"use_kernels": False}
    policy = Policy.from_pretrained(str(tiny_model_dir))
    for mode in (True, False, True):
        policy.model.train(mode)
        assert not getattr(policy.model, "use_kernels", False)


def test_hub_kernels_are_an_explicit_choice():
    assert load_options(True) == {"use_kernels": True}
    assert PolicyConfig(use_kernels=True).use_kernels is True
    with pytest.raises(ValueError, match="use_kernels"):
        PolicyConfig(use_kernels="sometimes")
