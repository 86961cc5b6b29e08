"""``train.threads``: 'auto' runs a small CPU policy on one thread, leaves a large or accelerator policy alone."""

import pytest
import torch
from pydantic import ValidationError

from morl.pipeline import TrainConfig
from morl.threads import SMALL_MODEL_PARAMETERS, policy_threads, resolve_threads


def test_auto_is_one_thread_for_a_small_cpu_model_only():
    assert resolve_threads("auto", parameters=138_000, device="cpu") == 1
    assert resolve_threads("auto", parameters=SMALL_MODEL_PARAMETERS - 1, device=torch.device("cpu")) == 1
    assert resolve_threads("auto", parameters=SMALL_MODEL_PARAMETERS, device="cpu") is None  # torch's setting
    assert resolve_threads("auto", parameters=138_000, device=torch.device("cuda", 0)) is None  # the CPU only feeds it
    assert resolve_threads(3, parameters=138_000, device="cpu") == 3  # a number is the user's word
    assert resolve_threads(None, parameters=138_000, device="cpu") is None  # None: leave torch alone
    with pytest.raises(ValueError, match="Found `threads = 'many'`"):
        resolve_threads("many", parameters=1, device="cpu")


def test_the_setting_is_validated_with_the_recipe():
    assert TrainConfig().threads == "auto"
    assert TrainConfig(threads=2).threads == 2 and TrainConfig(threads=None).threads is None
    for bad in (0, "many"):
        with pytest.raises(ValidationError):
            TrainConfig(threads=bad)


def test_fit_applies_it(tiny_policy, tmp_path):
    from morl.pipeline import Pipeline

    assert policy_threads("auto", tiny_policy) == 1  # ~13k parameters on the CPU
    before = torch.get_num_threads()
    config = TrainConfig(steps=1, prompts_per_step=1, group_size=2, eval_every=0, progress=False, save_model=False)
    config = config.model_copy(update={"output_dir": str(tmp_path / "run")})
    pipe = Pipeline(
        policy=tiny_policy,
        rewards=[lambda prompts, completions, **kw: [1.0] * len(completions)],
        config=config,
        rollout={"name": "transformers", "max_new_tokens": 2},
    )
    try:
        torch.set_num_threads(2)
        pipe.fit([{"prompt": "1 + 1 - 0", "answer": "2"}])
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
