"""Conciseness: is the completion shorter than the running mean length of training completions? (0/1)

The paper's second reward ("Uncovering Cross-Objective Interference in Multi-Objective Alignment", 2026; as in
its verl reference code, where a ``MeanMetric`` over every training response length is updated with the batch
before the batch is scored): ``r_con = 1[len(y) < mean length of all training completions so far]``, the
current batch included, so the very first training batch is compared with its own mean. The paper *reports*
conciseness as mean response length; this reward is the 0/1 training signal.
"""

from __future__ import annotations

from typing import Any

from morl.rewards.base import RewardConfig, RewardFn


class Conciseness(RewardFn):
    """1.0 if the completion's token length is strictly below the running mean length, else 0.0.

    Rewards answers shorter than what the policy has been writing, a moving target that keeps pushing length
    down as long as the weight on it lasts. Lengths are ``completion_lengths`` (tokens, passed by the pipeline);
    without them, character lengths of the completions are used instead.

    Only training batches (``training=True``, the default for callers such as TRL that do not pass it) move
    the mean, and they are added to it *before* their own completions are compared. Evaluation batches are
    compared with the current mean and leave it unchanged. Before any training length is known (the evaluation
    at step 0), a batch is compared with its own mean, as the first training batch is: scoring every completion
    1.0 there would start each held-out curve at a ceiling no later evaluation can be compared with.

    State: ``count_`` (completions seen) and ``total_`` (sum of their lengths); mean = ``total_ / count_``.

    Example:
        >>> Conciseness()(["p"] * 2, ["a", "b"], completion_lengths=[10, 30], training=False)  # own mean 20
        [1.0, 0.0]
        >>> con = Conciseness()
        >>> con(["p"] * 3, ["a", "b", "c"], completion_lengths=[10, 20, 30])  # mean 20
        [1.0, 0.0, 0.0]
        >>> con(["p"], ["d"], completion_lengths=[40])  # mean (60 + 40) / 4 = 25
        [0.0]
        >>> con(["p"], ["e"], completion_lengths=[24], training=False), con.mean_length
        ([1.0], 25.0)
    """

    name = "conciseness"
    # its held-out value is relative to the training history (to the batch itself before any training length is
    # known), so values at different steps are not comparable: ``morl compare`` scores interference on the mean
    # length instead
    moving_target = True

    class Config(RewardConfig):
        pass

    def __call__(
        self,
        prompts: list[str],
        completions: list[str],
        *,
        completion_lengths: list[int] | None = None,
        training: bool = True,
        **columns: Any,
    ) -> list[float | None]:
        lengths = [len(c) for c in completions] if completion_lengths is None else list(completion_lengths)
        if len(lengths) != len(completions):
            raise ValueError(f"conciseness: {len(lengths)} completion_lengths for {len(completions)} completions")
        if training and lengths:
            self.count_ = getattr(self, "count_", 0) + len(lengths)
            self.total_ = getattr(self, "total_", 0.0) + float(sum(lengths))
        mean = self.mean_length
        if mean is None:
            mean = sum(lengths) / len(lengths) if lengths else 0.0
        return [1.0 if length < mean else 0.0 for length in lengths]

    @property
    def mean_length(self) -> float | None:
        """Running mean length of training completions, or ``None`` before the first training batch."""
        count = getattr(self, "count_", 0)
        return self.total_ / count if count else None
