"""Real training steps of every controller family with the policy on a (pretend) accelerator.

Tensors that meet the model's tensors must live on the model's device; on a CPU-only machine every tensor is on
the CPU, so a reward, score or advantage left on the host passes here and breaks the first GPU step. With the
policy's weights on :mod:`tests.pretend_device`'s accelerator, the same steps raise where a GPU would. The ``cpu``
cases are the control: the same steps, the same harness, no pretend device; they must pass whatever the library
does with devices, so that a ``pretend`` failure is about devices and not about the harness.

The rollout is synthetic (fixed completions, no sampling), built on the policy's device as a real backend builds
it, so the test exercises the training step and not ``generate``.
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from morl import Pipeline, TrainConfig
from morl.batch import Batch
from morl.policy import Policy
from morl.rollout import RolloutBackend
from morl.tinymath.task import make_split
from tests.pretend_device import PretendAccelerator, pretend_accelerator


def completions_for(answer: str) -> list[str]:
    """Four TinyMath-style completions that the three built-in rewards score differently within one group, the
    first best on all three (so no weighting, MGDA's min-norm included, cancels the signal out):
    (accuracy, clarity, conciseness) = (1, 1, 1), (1, 0, 0), (0, 1, 1), (0, 0, 1)."""
    wrong = str(int(answer) + 1)
    return [
        f"1.\n2.\n\\boxed{{{answer}}}",
        f"Let me think. So it is \\boxed{{{answer}}}",
        f"1.\n2.\n\\boxed{{{wrong}}}",
        f"\\boxed{{{wrong}}}",
    ]


class SyntheticRollout(RolloutBackend):
    """Fixed completions instead of sampling: token ids, masks and texts on the policy's device, in the layout
    of ``TransformersRollout.generate`` (left-padded prompts, completions ending at EOS then padding), with no
    old log-probs, so the pipeline computes them with the trainer's own forward pass."""

    def generate(
        self, policy: Policy, prompts: list[str], columns: dict[str, list[Any]], k: int, *, greedy: bool = False
    ) -> Batch:
        tok = policy.tokenizer
        device = policy.device
        texts = [text for answer in columns["answer"] for text in (completions_for(answer) * k)[:k]]
        enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        prompt_ids = enc["input_ids"].to(device).repeat_interleave(k, dim=0)
        prompt_mask = enc["attention_mask"].to(device).repeat_interleave(k, dim=0)
        rows = [[*ids, tok.eos_token_id] for ids in tok(texts, add_special_tokens=False)["input_ids"]]
        width = max(len(r) for r in rows)
        completion = torch.full((len(rows), width), tok.pad_token_id, dtype=torch.long, device=device)
        mask = torch.zeros(len(rows), width, dtype=torch.long, device=device)
        for i, row in enumerate(rows):
            completion[i, : len(row)] = torch.tensor(row, device=device)
            mask[i, : len(row)] = 1
        return Batch(
            prompts=[p for p in prompts for _ in range(k)],
            completions=texts,
            columns={key: [v for v in values for _ in range(k)] for key, values in columns.items()},
            group_size=k,
            input_ids=torch.cat([prompt_ids, completion], dim=1),
            attention_mask=torch.cat([prompt_mask, mask], dim=1),
            completion_mask=mask,
            prompt_width=prompt_ids.shape[1],
        )


# every family: reward level (fixed, ctwa), advantage level (lagrangian, gdpo), gradient level (mgda, pama)
CONTROLLERS = {
    "fixed": "fixed",
    "ctwa": {"name": "ctwa", "targets": [0.15, 0.08, 0.08]},
    "lagrangian": {"name": "lagrangian", "primary": "accuracy", "targets": [0.9, 0.9]},
    "gdpo": "gdpo",
    "mgda": "mgda",
    "pama": "pama",
}


def make_pipeline(policy: Policy, controller: str, tmp_path: Path, diagnostics: dict[str, Any] | bool) -> Pipeline:
    """The three paper rewards, GRPO with a KL term (so a reference model too), the synthetic rollout."""
    return Pipeline(
        policy=policy,
        rewards=["accuracy", "conciseness", "clarity"],
        controller=CONTROLLERS[controller],
        algo={"name": "grpo", "kl_coef": 0.01},
        rollout=SyntheticRollout(),
        config=TrainConfig(
            steps=2,
            prompts_per_step=2,
            group_size=4,
            lr=1e-2,
            output_dir=str(tmp_path / "run"),
            progress=False,
            save_model=False,
        ),
        diagnostics=diagnostics,
    )


# "cuda" runs on a real GPU (scripts/gpu_check.sh runs this file there); without one it is skipped
DEVICES = [
    "cpu",
    "pretend",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")),
]


def on_device(device: str) -> contextlib.AbstractContextManager[PretendAccelerator | None]:
    return pretend_accelerator() if device == "pretend" else contextlib.nullcontext()


def place(policy, device: str, acc: PretendAccelerator | None) -> None:
    if acc is not None:
        acc.place(policy.model)
        assert policy.device == acc.device
    elif device == "cuda":
        policy.model.to("cuda")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("controller", list(CONTROLLERS))
def test_training_steps_keep_tensors_on_the_policy_device(controller, device, tiny_policy, tmp_path):
    policy = tiny_policy
    examples = make_split("train", 2, 0)
    with on_device(device) as acc:
        place(policy, device, acc)
        pipe = make_pipeline(policy, controller, tmp_path, diagnostics=True)
        before = [p.detach().clone() for p in policy.model.parameters()]
        for _ in range(2):
            batch, metrics = pipe.step(examples)
            assert math.isfinite(metrics["loss"]) and metrics.get("skipped_nonfinite", 0.0) == 0.0
            assert batch.rewards.shape == (8, 3) and not torch.all(batch.advantages == 0)
        if controller == "ctwa":  # CTWA's forward pass of the updated policy ran, and its weights moved
            assert batch.clipped_weights is not None and batch.clipped_weights.shape == (8,)
        moved = [not torch.equal(a, b) for a, b in zip(before, policy.model.parameters())]
        assert any(moved), "no parameter changed: no real update happened"
        if acc is not None:
            check_still_on_the_device(acc, pipe)
        elif device == "cuda":
            assert all(p.device.type == "cuda" for p in pipe.policy.model.parameters())


@pytest.mark.parametrize("device", DEVICES)
def test_clipped_weight_diagnostics_on_the_policy_device(device, tiny_policy, tmp_path):
    """The diagnostics' own forward pass of the updated policy and its covariances (``clipped_weights: true``,
    with a controller that does not compute them itself), through ``fit``, which is where callbacks run."""
    policy = tiny_policy
    with on_device(device) as acc:
        place(policy, device, acc)
        pipe = make_pipeline(policy, "fixed", tmp_path, diagnostics={"clipped_weights": True})
        before = [p.detach().clone() for p in policy.model.parameters()]
        result = pipe.fit(make_split("train", 4, 0))
        rows = [row for row in result.history_ if row.get("kind") == "train"]
        assert len(rows) == 2
        for row in rows:
            assert math.isfinite(row["cov/clipped_weight/accuracy"]) and "clip/removed_mass" in row
        assert any(not torch.equal(a, b) for a, b in zip(before, policy.model.parameters()))
        if acc is not None:
            check_still_on_the_device(acc, pipe)
        elif device == "cuda":
            assert all(p.device.type == "cuda" for p in pipe.policy.model.parameters())


def check_still_on_the_device(acc: PretendAccelerator, pipe: Pipeline) -> None:
    """Parameters, optimiser state and the reference model are all still on the accelerator."""
    for p in pipe.policy.model.parameters():
        assert acc.is_marked(p) and p.device == acc.device
    for state in pipe.optimizer.state.values():
        for value in state.values():
            if isinstance(value, torch.Tensor) and value.dim() > 0:
                assert value.device == acc.device
    assert pipe.reference is not None
    assert all(p.device == acc.device for p in pipe.reference.model.parameters())
