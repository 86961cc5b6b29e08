"""One process of the data-parallel equivalence check in ``test_distributed.py`` (not a test module itself).

Started by the test with torchrun's environment variables (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``,
``MASTER_PORT``) for a 2-process gloo run, or without them for the 1-process reference run. For every method it
fits 2 steps of the same global batch from the shipped TinyMath model and saves this process's parameters,
controller and reward state and history to ``OUT/{world}proc-rank{rank}-{method}.pt``.

Both runs must see the same completions, whichever process samples a prompt: :class:`PerPromptSeededRollout`
samples each prompt's completions under a generator seeded by the prompt and the call, so sharding the prompts
across processes changes no sample (the library's rollouts draw from one stream per process).
"""

from __future__ import annotations

import os
import sys
import zlib
from pathlib import Path
from typing import Any

import torch

from morl.batch import Batch, concat_batches
from morl.policy import Policy
from morl.rollout import TransformersRollout

GRPO = {"name": "grpo", "kl_coef": 0.01, "epochs": 2}  # a reference policy; ratios != 1 in the second epoch
METHODS: dict[str, dict[str, Any]] = {
    # reward level, advantages whitened over the whole batch, micro-batches of 4 rows (2 per process, 4 in one)
    "fixed": {"controller": "fixed", "advantage": "batch_whiten", "algo": {**GRPO, "micro_batch_size": 4}},
    # reward level with state from clipped advantage weights under the updated policy (gathered across processes)
    "ctwa": {
        "controller": {"name": "ctwa", "lr": 0.5, "targets": [0.3, 0.3, 0.3]},
        "advantage": "group_norm",
        "algo": {**GRPO, "micro_batch_size": 4},
    },
    # gradient level: per-objective gradients summed across processes before the Gram matrix, reward gaps over
    # all rows. Its weights are those of one micro-step (all processes' i-th micro-batches together), so the two
    # runs compare without micro-batches
    "gradnorm": {"controller": {"name": "gradnorm", "lr": 0.5}, "advantage": "group_norm", "algo": GRPO},
}


class PerPromptSeededRollout(TransformersRollout):
    """``generate`` one prompt at a time, under a generator seeded by (prompt, call number)."""

    def generate(
        self, policy: Policy, prompts: list[str], columns: dict[str, list[Any]], k: int, *, greedy: bool = False
    ) -> Batch:
        self.calls_ = getattr(self, "calls_", 0) + 1
        parts = []
        for i, prompt in enumerate(prompts):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(zlib.crc32(prompt.encode()) + 1000 * self.calls_)
                row = {key: [values[i]] for key, values in columns.items()}
                parts.append(super().generate(policy, [prompt], row, k, greedy=greedy))
        return concat_batches(parts, policy.tokenizer.pad_token_id)


def main(out: Path) -> None:
    from morl import distributed
    from morl.pipeline import Pipeline, TrainConfig
    from morl.tinymath.task import make_split

    torch.set_num_threads(1)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    data = make_split("train", 16, 0)
    for method, spec in METHODS.items():
        policy = Policy.from_pretrained("tinymath")
        pipe = Pipeline(
            policy,
            ["accuracy", "conciseness", "clarity"],
            rollout=PerPromptSeededRollout(max_new_tokens=48),
            config=TrainConfig(
                steps=2,
                prompts_per_step=4,
                group_size=4,
                lr=5e-4,
                eval_every=0,
                checkpoint_every=0,
                threads=1,
                overlap_after_update=False,  # data-parallel runs keep CTWA's pass inline: rows to compare alike
                progress=False,
                output_dir=str(out / f"run-{world}proc-{method}"),
            ),
            diagnostics=False,
            **spec,
        )
        result = pipe.fit(data)
        assert distributed.world_size() == world
        state = {
            "params": {name: p.detach().clone() for name, p in policy.model.named_parameters()},
            "controller": pipe.parts_.controller.state_dict(),
            "rewards": {name: r.state_dict() for name, r in zip(pipe.objectives, pipe.parts_.rewards)},
            "history": [
                {k: v for k, v in row.items() if not k.startswith(("timing/", "step_time"))} for row in result.history_
            ],
        }
        torch.save(state, out / f"{world}proc-rank{distributed.rank()}-{method}.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
