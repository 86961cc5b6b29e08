"""morl's decoding loop draws what ``model.generate`` draws: the same completions from the same seed, the same
old log-probs, and torch's generator left in the same state."""

import pytest
import torch

from morl.evaluation import split_examples
from morl.policy import Policy
from morl.rollout import TransformersRollout
from morl.tinymath.task import make_split


@pytest.fixture(scope="module")
def trained_policy():
    """The shipped TinyMath model: it ends completions with EOS, so rows stop at different lengths."""
    return Policy.from_pretrained("tinymath")


def rollouts(policy, settings: dict, k: int = 4, greedy: bool = False):
    """The same prompts sampled twice with each decoder from the same seed, and a draw from the generator after."""
    prompts, columns = split_examples(make_split("train", 5, 0))
    results = {}
    for decoder in ("generate", "auto"):
        rollout = TransformersRollout(decoder=decoder, **settings)
        torch.manual_seed(11)
        batches = [rollout.generate(policy, prompts, columns, k, greedy=greedy) for _ in range(2)]
        results[decoder] = batches, torch.rand(3), rollout.decoder_used
    return results


@pytest.mark.parametrize(
    "settings",
    [
        {"max_new_tokens": 40},
        {"max_new_tokens": 40, "temperature": 0.7, "top_k": 20, "top_p": 0.9},
        {"max_new_tokens": 6},  # every row cut at the cap
    ],
)
def test_same_seed_same_completions_as_generate(trained_policy, settings):
    results = rollouts(trained_policy, settings)
    (reference, after_reference, used_reference), (compact, after_compact, used_compact) = results.values()
    assert (used_reference, used_compact) == ("generate", "compact")
    for a, b in zip(reference, compact):
        assert a.completions == b.completions
        assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.attention_mask, b.attention_mask)
        assert torch.equal(a.completion_mask, b.completion_mask)
        torch.testing.assert_close(a.old_logprobs, b.old_logprobs, atol=1e-5, rtol=0)
    assert torch.equal(after_reference, after_compact)  # the generator advanced exactly as far
    lengths = reference[0].completion_mask.sum(1)
    assert lengths.min() < lengths.max() or settings["max_new_tokens"] == 6  # rows ended at different steps


def test_greedy_is_the_same_as_generate(trained_policy):
    results = rollouts(trained_policy, {"max_new_tokens": 40}, k=1, greedy=True)
    (reference, _, _), (compact, _, used) = results.values()
    assert used == "compact"
    assert [b.completions for b in reference] == [b.completions for b in compact]


def test_logprobs_from_the_trainer_leave_none(tiny_policy):
    prompts, columns = split_examples(make_split("train", 2, 0))
    batch = TransformersRollout(max_new_tokens=5, logprobs="trainer").generate(tiny_policy, prompts, columns, 3)
    assert batch.old_logprobs is None and batch.input_ids.shape[0] == 6


def test_a_model_that_departs_from_its_config_falls_back_to_generate(tiny_policy):
    """The check on first use: a module swapped after loading (GELU where the config says SiLU) is caught by its
    logits, and the rollout samples with generate, as it would have without the compact loop."""
    prompts, columns = split_examples(make_split("train", 2, 0))
    tiny_policy.model.model.layers[0].mlp.act_fn = torch.nn.GELU()
    with torch.no_grad():
        for p in tiny_policy.model.parameters():
            p.mul_(8.0)  # large enough activations that GELU and SiLU differ in the logits
    rollout = TransformersRollout(max_new_tokens=5)
    torch.manual_seed(2)
    with pytest.warns(UserWarning, match="sampling with generate: the compact decoder's logits differ"):
        batch = rollout.generate(tiny_policy, prompts, columns, 2)
    assert rollout.decoder_used == "generate" and "differ" in rollout.decoder_reason
    torch.manual_seed(2)
    expected = TransformersRollout(max_new_tokens=5, decoder="generate").generate(tiny_policy, prompts, columns, 2)
    assert torch.equal(batch.input_ids, expected.input_ids)
    rollout.generate(tiny_policy, prompts, columns, 2)  # no second warning: the model is remembered
    assert rollout.decoder_used == "generate"


def test_decoder_generate_is_always_generate(tiny_policy):
    prompts, columns = split_examples(make_split("train", 2, 0))
    rollout = TransformersRollout(max_new_tokens=3, decoder="generate")
    rollout.generate(tiny_policy, prompts, columns, 2)
    assert rollout.decoder_used == "generate" and rollout.decoder_reason == "rollout.decoder is 'generate'"


def test_a_lora_policy_samples_with_the_compact_loop_and_the_same_draws():
    pytest.importorskip("peft")
    policy = Policy.from_pretrained("tinymath", lora={"r": 4, "target_modules": ["q_proj", "v_proj", "up_proj"]})
    with torch.no_grad():
        for name, p in policy.model.named_parameters():
            if "lora_B" in name:  # trained adapters: B away from its zero start
                p.normal_(0, 0.05)
    policy.model.eval()
    results = rollouts(policy, {"max_new_tokens": 30})
    (reference, _, _), (compact, _, used) = results.values()
    assert used == "compact"
    for a, b in zip(reference, compact):
        assert a.completions == b.completions
        torch.testing.assert_close(a.old_logprobs, b.old_logprobs, atol=1e-5, rtol=0)
