"""The token-level mixture pi_mix = (1 - w) * pi_theta + w * pi_E, with w = min(1, H / tau).

All functions work on the last dimension (the vocabulary) and broadcast over leading ones.
"""

from __future__ import annotations

import torch


def policy_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Full-vocabulary entropy H = -sum p log p of softmax(logits), in nats, over the last dim."""
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    # p * log p with p = 0 is 0; exp(-inf) * -inf would be nan, so mask those terms.
    terms = torch.where(torch.isfinite(log_probs), log_probs.exp() * log_probs, 0.0)
    return -terms.sum(dim=-1)


def mixture_weight(entropy: torch.Tensor, entropy_threshold: float | torch.Tensor) -> torch.Tensor:
    """w_t = min(1, H_t / tau): how much of the next token the expert decides."""
    if torch.is_tensor(entropy_threshold):
        if bool((entropy_threshold <= 0).any()):
            raise ValueError("entropy_threshold must be > 0")
    elif not entropy_threshold > 0:
        raise ValueError(f"entropy_threshold must be > 0, got {entropy_threshold}")
    return torch.clamp(entropy / entropy_threshold, max=1.0)


def mixture_log_probs(
    policy_logits: torch.Tensor,
    expert_logits: torch.Tensor,
    weight: torch.Tensor,
) -> torch.Tensor:
    """log pi_mix for given per-position weights (shape = logits.shape[:-1]).

    Computed in log space with logsumexp so a token one model gives ~0 probability does not
    underflow to -inf while the other model still supports it.
    """
    if policy_logits.shape[-1] != expert_logits.shape[-1]:
        raise ValueError(
            f"policy and expert vocabularies differ ({policy_logits.shape[-1]} vs "
            f"{expert_logits.shape[-1]}); MENTOR mixes token ids, so they must share a tokenizer"
        )
    policy_log_probs = torch.log_softmax(policy_logits.float(), dim=-1)
    expert_log_probs = torch.log_softmax(expert_logits.float(), dim=-1)
    w = weight.float().unsqueeze(-1)
    # log((1-w) p + w q); log(0) = -inf is fine inside logsumexp.
    stacked = torch.stack(
        [torch.log1p(-w.clamp(max=1.0)) + policy_log_probs, torch.log(w) + expert_log_probs], dim=0
    )
    return torch.logsumexp(stacked, dim=0)


def mixed_policy_log_probs(
    policy_logits: torch.Tensor,
    expert_logits: torch.Tensor,
    entropy_threshold: float | torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """log pi_mix with MENTOR's entropy-gated weight. Returns (log_probs, weight)."""
    weight = mixture_weight(policy_entropy(policy_logits), entropy_threshold)
    return mixture_log_probs(policy_logits, expert_logits, weight), weight
