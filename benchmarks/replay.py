"""What the CTWA benchmarks share: the quickstart job, loaded once, and fixed weights that replay a CTWA run's."""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from morl.controllers.base import RewardLevel
from morl.policy import Policy
from morl.recipe import load_data, load_recipe
from morl.stages import Updated


class ReplayWeights(RewardLevel):
    """Fixed weights that follow a recorded CTWA run's, step by step: the same training without any controller work.

    The weights live on the class, so the copies a pipeline makes of its controller read the same list, which may grow
    while they replay it (a run recorded block by block)."""

    name = "replay_weights_benchmark"
    recorded: ClassVar[list[list[float]]] = []  # each step's weights, in objective order

    def initial_state(self, objectives: list[str]) -> None:
        self.step_ = 0

    def weights(self) -> torch.Tensor:
        return torch.tensor(self.recorded[min(self.step_, len(self.recorded) - 1)], dtype=torch.float32)

    def after_update(self, updated: Updated) -> None:
        self.step_ += 1


def load_job(recipe_path: str, steps: int) -> tuple[Any, list[str], list[dict], Policy]:
    """The recipe (for ``steps`` steps), its objectives, its training prompts and its starting policy."""
    recipe = load_recipe(recipe_path, [f"train.steps={steps}"])
    objectives = [r if isinstance(r, str) else r["name"] for r in recipe.rewards]
    train_data, _ = load_data(recipe)
    return recipe, objectives, train_data, Policy.from_pretrained(**recipe.policy.model_dump())
