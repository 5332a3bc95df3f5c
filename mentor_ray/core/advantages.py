"""Group advantages: GRPO for on-policy samples, MENTOR's one-sided rule for mixed ones.

One scalar per sample; the learner broadcasts it to every response token.
"""

from __future__ import annotations

import torch

STD_EPSILON = 1e-6


def _group_on_policy_stats(
    rewards: torch.Tensor, is_mixed: torch.Tensor, group_ids: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample mean, std (unbiased, as torch.std) and count of its group's ON-POLICY rewards."""
    _, group_index = torch.unique(group_ids, return_inverse=True)
    num_groups = int(group_index.max()) + 1 if group_index.numel() else 0
    on_policy = (~is_mixed.bool()).to(rewards.dtype)
    count = torch.zeros(num_groups, dtype=rewards.dtype).index_add_(0, group_index, on_policy)
    total = torch.zeros(num_groups, dtype=rewards.dtype).index_add_(0, group_index, rewards * on_policy)
    mean = total / count.clamp(min=1)
    squared = ((rewards - mean[group_index]) ** 2) * on_policy
    sum_squared = torch.zeros(num_groups, dtype=rewards.dtype).index_add_(0, group_index, squared)
    std = torch.sqrt(sum_squared / (count - 1).clamp(min=1))
    return mean[group_index], std[group_index], count[group_index], group_index


def grpo_advantages(rewards: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    """A_i = (R_i - mean(R_group)) / (std(R_group) + 1e-6): plain GRPO, every sample on-policy."""
    return mentor_advantages(rewards, torch.zeros_like(rewards, dtype=torch.bool), group_ids, alpha=0.0)


def mentor_advantages(
    rewards: torch.Tensor,
    is_mixed: torch.Tensor,
    group_ids: torch.Tensor,
    alpha: float,
    reward_range: float = 1.0,
) -> torch.Tensor:
    """MENTOR's advantages for a flat batch of samples from several prompt groups.

    On-policy:  (R_i - mean(R_on)) / (std(R_on) + 1e-6), statistics over on-policy samples only.
    Mixed:      alpha * max(R_j - mean(R_on), 0) / R_range: guided samples that beat the
                policy's own average are reinforced; failed guidance is ignored, not punished.

    A group whose on-policy rewards are all equal gets on-policy advantages of 0 (std 0).
    A group with no on-policy samples has no baseline, so its mixed samples get 0 too: there is
    nothing to say they beat.
    """
    if not (rewards.shape == is_mixed.shape == group_ids.shape) or rewards.dim() != 1:
        raise ValueError(
            f"rewards, is_mixed and group_ids must be equal-length 1-D tensors, got "
            f"{tuple(rewards.shape)}, {tuple(is_mixed.shape)}, {tuple(group_ids.shape)}"
        )
    if reward_range <= 0:
        raise ValueError(f"reward_range must be > 0, got {reward_range}")
    rewards = rewards.double()
    mixed = is_mixed.bool()
    mean, std, count, _ = _group_on_policy_stats(rewards, mixed, group_ids)
    on_policy_advantage = (rewards - mean) / (std + STD_EPSILON)
    mixed_advantage = alpha * torch.clamp(rewards - mean, min=0.0) / reward_range
    mixed_advantage = torch.where(count > 0, mixed_advantage, torch.zeros_like(mixed_advantage))
    return torch.where(mixed, mixed_advantage, on_policy_advantage).float()


def luffy_advantages(rewards: torch.Tensor, group_ids: torch.Tensor, divide_by_std: bool) -> torch.Tensor:
    """LUFFY's advantages: every sample of a group, the expert trace included, against the
    whole group's mean reward, A_i = R_i - mean(R_group), divided by the group's std (+1e-6)
    when `divide_by_std` (the paper's formula; LUFFY's own script does not divide)."""
    if rewards.shape != group_ids.shape or rewards.dim() != 1:
        raise ValueError(f"rewards and group_ids must be equal-length 1-D tensors, got {tuple(rewards.shape)}, {tuple(group_ids.shape)}")
    rewards = rewards.double()
    mean, std, _, _ = _group_on_policy_stats(rewards, torch.zeros_like(rewards, dtype=torch.bool), group_ids)
    centred = rewards - mean
    return (centred / (std + STD_EPSILON) if divide_by_std else centred).float()
