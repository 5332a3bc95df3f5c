"""The methods of the paper's comparison (MENTOR.md section 10), each a few named pieces chosen
once from `algorithm.method`; the loop, the rollout and the learner use the pieces and never
ask which method runs.

| method | group make-up | advantages | loss of expert tokens | prompt |
|---|---|---|---|---|
| mentor | N1 on-policy + N2 mixed-policy | GRPO on-policy, one-sided rule for mixed | (none) | plain |
| grpo   | N1 on-policy | GRPO | (none) | plain |
| luffy  | N1 - 1 on-policy + 1 stored expert trace | whole group, mean (optionally / std) | shaping, -A p/(p+gamma) | plain |
| questa | N1 on-policy | GRPO | (none) | hint: first part of the expert's solution |
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from mentor_ray.core.advantages import luffy_advantages, mentor_advantages


class GroupAdvantageRule(Protocol):
    def __call__(self, rewards: torch.Tensor, is_mixed: torch.Tensor, is_expert_trace: torch.Tensor, alpha: float) -> torch.Tensor:
        """One prompt group's advantages, one per sample."""


@dataclass(frozen=True)
class MentorGroupAdvantages:
    """GRPO for on-policy samples, MENTOR's one-sided rule for mixed ones (GRPO when none)."""

    def __call__(self, rewards, is_mixed, is_expert_trace, alpha):
        return mentor_advantages(rewards, is_mixed, torch.zeros(len(rewards)), alpha=alpha)


@dataclass(frozen=True)
class LuffyGroupAdvantages:
    """Every sample, the expert trace included, against the whole group's mean."""

    divide_by_std: bool = False

    def __call__(self, rewards, is_mixed, is_expert_trace, alpha):
        return luffy_advantages(rewards, torch.zeros(len(rewards)), self.divide_by_std)


@dataclass(frozen=True)
class Method:
    name: str
    advantages: GroupAdvantageRule
    # Slots of each group filled by the problem's stored expert trace instead of a sample.
    expert_traces_per_group: int = 0
    # Training prompts carry a hint cut from the expert's solution (validation stays plain).
    hinted_prompts: bool = False

    @property
    def needs_expert_traces(self) -> bool:
        return self.expert_traces_per_group > 0 or self.hinted_prompts


def method_for(algorithm) -> Method:
    """The method an `AlgorithmConfig` names, with its settings."""
    methods = {
        "mentor": Method("mentor", MentorGroupAdvantages()),
        "grpo": Method("grpo", MentorGroupAdvantages()),
        "luffy": Method("luffy", LuffyGroupAdvantages(algorithm.luffy_divide_by_std), expert_traces_per_group=1),
        "questa": Method("questa", MentorGroupAdvantages(), hinted_prompts=True),
    }
    return methods[algorithm.method]


DISPLAY_NAMES = {"mentor": "MENTOR", "grpo": "GRPO", "luffy": "LUFFY", "questa": "QuestA"}


def algorithm_name(config) -> str:
    """What a run is called on its start line and in its folder name: MENTOR without mixed
    samples (rollout.n_mixed = 0) is GRPO."""
    method = config.algorithm.method
    return DISPLAY_NAMES["grpo" if method == "mentor" and not config.guided else method]
