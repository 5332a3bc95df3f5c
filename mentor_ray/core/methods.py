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

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import torch

# torch is imported where a rule runs, not here: the config reads this registry, and a config
# (`pipelines.plan`, a sweep file's check) should load without torch.


class GroupAdvantageRule(Protocol):
    def __call__(self, rewards: torch.Tensor, is_mixed: torch.Tensor, is_expert_trace: torch.Tensor, alpha: float) -> torch.Tensor:
        """One prompt group's advantages, one per sample."""


@dataclass(frozen=True)
class MentorGroupAdvantages:
    """GRPO for on-policy samples, MENTOR's one-sided rule for mixed ones (GRPO when none)."""

    def __call__(self, rewards, is_mixed, is_expert_trace, alpha):
        import torch

        from mentor_ray.core.advantages import mentor_advantages

        return mentor_advantages(rewards, is_mixed, torch.zeros(len(rewards)), alpha=alpha)


@dataclass(frozen=True)
class LuffyGroupAdvantages:
    """Every sample, the expert trace included, against the whole group's mean."""

    divide_by_std: bool = False

    def __call__(self, rewards, is_mixed, is_expert_trace, alpha):
        import torch

        from mentor_ray.core.advantages import luffy_advantages

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


@dataclass(frozen=True)
class MethodEntry:
    """One method of the registry: what the config, the CLI, a sweep's choices, compare and the
    report need to know of it, and how its pieces are made from an `AlgorithmConfig`."""

    name: str  # algorithm.method
    display_name: str  # tables, start lines, run folders
    makes_mixed_samples: bool  # rollout.n_mixed > 0 is allowed (otherwise --method sets it to 0)
    advantages: Callable[[Any], GroupAdvantageRule]  # from the AlgorithmConfig
    expert_traces_per_group: int = 0
    hinted_prompts: bool = False
    # The loss piece of expert-trace tokens is LUFFY's policy shaping; the learner applies it to
    # off-policy rows whoever made them, so a method has it exactly when it adds expert traces.

    @property
    def needs_expert_traces(self) -> bool:
        return self.expert_traces_per_group > 0 or self.hinted_prompts

    def build(self, algorithm: Any) -> Method:
        return Method(self.name, self.advantages(algorithm), self.expert_traces_per_group, self.hinted_prompts)


# The one list of methods (MENTOR.md section 10). A method added here is a choice of
# `algorithm.method`, of `pipelines.train --method`, of a sweep's `algorithm.method` and of
# `pipelines.compare --methods`, with its rules applied everywhere.
METHODS: dict[str, MethodEntry] = {
    entry.name: entry
    for entry in (
        MethodEntry("mentor", "MENTOR", makes_mixed_samples=True, advantages=lambda a: MentorGroupAdvantages()),
        MethodEntry("grpo", "GRPO", makes_mixed_samples=False, advantages=lambda a: MentorGroupAdvantages()),
        MethodEntry("luffy", "LUFFY", makes_mixed_samples=False,
                    advantages=lambda a: LuffyGroupAdvantages(a.luffy_divide_by_std), expert_traces_per_group=1),
        MethodEntry("questa", "QuestA", makes_mixed_samples=False, advantages=lambda a: MentorGroupAdvantages(),
                    hinted_prompts=True),
    )
}


def method_for(algorithm) -> Method:
    """The method an `AlgorithmConfig` names, with its settings."""
    return METHODS[algorithm.method].build(algorithm)


def method_overrides(method: str | None) -> list[str]:
    """The overrides `--method NAME` stands for: the method, and no mixed samples for the
    methods that do not make them."""
    if method is None:
        return []
    return [f"algorithm.method={method}"] + ([] if METHODS[method].makes_mixed_samples else ["rollout.n_mixed=0"])


def algorithm_name(config) -> str:
    """What a run is called on its start line and in its folder name: MENTOR without mixed
    samples (rollout.n_mixed = 0) is GRPO."""
    method = config.algorithm.method
    return METHODS["grpo" if METHODS[method].makes_mixed_samples and not config.guided else method].display_name
