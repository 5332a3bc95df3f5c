"""Which problems each RL step trains on: a pure function of (seed, step).

Keeping the data order stateless makes resume exact: a run restarted at step k draws the same
prompts a run that never stopped would have drawn, with no iterator state to checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PromptSchedule:
    num_problems: int
    prompts_per_step: int
    seed: int
    shuffle: bool = True

    def __post_init__(self) -> None:
        if self.num_problems < 1:
            raise ValueError("the training set is empty after filtering")
        if self.prompts_per_step > self.num_problems:
            raise ValueError(
                f"rollout.prompts_per_step={self.prompts_per_step} exceeds the {self.num_problems} "
                "usable training problems"
            )

    def _epoch_order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.num_problems)
        return np.random.default_rng([self.seed, epoch]).permutation(self.num_problems)

    def indices_for_step(self, step: int) -> list[int]:
        """Problem indices for step (from 1). Epochs are drop-last, so no problem repeats in a step."""
        if step < 1:
            raise ValueError(f"steps are counted from 1, got {step}")
        steps_per_epoch = self.num_problems // self.prompts_per_step
        epoch, offset = divmod(step - 1, steps_per_epoch)
        start = offset * self.prompts_per_step
        return self._epoch_order(epoch)[start : start + self.prompts_per_step].tolist()
