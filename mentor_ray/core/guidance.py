"""How much guidance each step gets: the entropy threshold tau and the alpha schedule."""

from __future__ import annotations

import math

import torch


def next_entropy_threshold(
    on_policy_token_entropies: torch.Tensor, quantile: float, floor: float
) -> float:
    """tau_s = max(quantile_p(H over step s-1's on-policy response tokens), tau_floor).

    Takes the tokens of ALL ranks (an exact global quantile, not an average of per-rank
    quantiles as the official code does). With no tokens (e.g. every response empty) the
    floor is returned: the least guidance-hungry choice that is still defined.
    """
    if not 0.0 < quantile < 1.0:
        raise ValueError(f"quantile must be in (0, 1), got {quantile}")
    entropies = on_policy_token_entropies.detach().flatten().float()
    if entropies.numel() == 0:
        return float(floor)
    # torch.quantile refuses inputs above 16M elements; sorting is exact at any size.
    ordered, _ = torch.sort(entropies)
    position = quantile * (ordered.numel() - 1)
    lower = int(math.floor(position))
    upper = min(lower + 1, ordered.numel() - 1)
    fraction = position - lower
    value = ordered[lower] + (ordered[upper] - ordered[lower]) * fraction  # linear, as numpy
    return max(float(value), float(floor))


def guidance_alpha(step: int, alpha_0: float, decay_steps: int) -> float:
    """alpha_s = alpha_0 * (1 + cos(pi * s / S_decay)) / 2 for s < S_decay, else 0 (s from 1)."""
    if step < 1:
        raise ValueError(f"steps are counted from 1, got {step}")
    if decay_steps <= 0 or step >= decay_steps:
        return 0.0
    return alpha_0 * 0.5 * (1.0 + math.cos(math.pi * step / decay_steps))


def guidance_active(step: int, alpha_0: float, decay_steps: int) -> bool:
    """Mixed-policy samples are generated only while alpha is positive."""
    return guidance_alpha(step, alpha_0, decay_steps) > 0.0
