import torch

from morl.evaluation import split_examples
from morl.pipeline import Pipeline, TrainConfig
from morl.rollout import TransformersRollout, completion_mask
from morl.tinymath.task import make_split


def test_completion_mask_stops_after_first_eos():
    ids = torch.tensor([[5, 1, 7, 1], [5, 6, 7, 8]])
    assert completion_mask(ids, 1).tolist() == [[1, 1, 0, 0], [1, 1, 1, 1]]


def test_trainer_logprobs_match_generation_logprobs(tiny_policy):
    prompts, columns = split_examples(make_split("train", 2, 0))
    torch.manual_seed(3)
    batch = TransformersRollout(max_new_tokens=8).generate(tiny_policy, prompts, columns, 3)
    torch.manual_seed(3)
    lazy = TransformersRollout(max_new_tokens=8, logprobs="trainer").generate(tiny_policy, prompts, columns, 3)
    assert lazy.old_logprobs is None
    assert torch.equal(lazy.input_ids, batch.input_ids)  # same samples: only where log-probs come from differs
    pipe = Pipeline(policy=tiny_policy, rewards=[lambda p, c, **k: [1.0] * len(c)], config=TrainConfig(progress=False))
    recomputed = pipe.logprobs(tiny_policy, lazy) * lazy.completion_mask
    torch.testing.assert_close(recomputed, batch.old_logprobs, atol=1e-4, rtol=1e-4)


def test_model_generation_defaults_do_not_change_sampling(tiny_policy):
    prompts, columns = split_examples(make_split("train", 2, 0))
    rollout = TransformersRollout(max_new_tokens=8)
    torch.manual_seed(5)
    plain = rollout.generate(tiny_policy, prompts, columns, 2)
    tiny_policy.model.generation_config.repetition_penalty = 3.0
    tiny_policy.model.generation_config.top_k = 2
    torch.manual_seed(5)
    tampered = rollout.generate(tiny_policy, prompts, columns, 2)
    assert torch.equal(plain.input_ids, tampered.input_ids)
