"""The policy objective, assembled from named per-token components.

The learner is blind to the algorithm: it hands a `PolicyLossInputs` to `policy_loss` and
backpropagates the returned scalar. Which components run, and with what weight, is data
(`LossWeights`), not a string switch in the trainer. A new component is one function added
to `TOKEN_LOSS_COMPONENTS`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class PolicyLossInputs:
    """Per-token tensors of shape [batch, response_len] (advantages may be [batch])."""

    log_probs: torch.Tensor
    old_log_probs: torch.Tensor
    advantages: torch.Tensor
    response_mask: torch.Tensor
    entropy: torch.Tensor | None = None
    reference_log_probs: torch.Tensor | None = None
    # [batch] bool: rows that are off-policy expert traces (LUFFY); their tokens take the
    # shaping loss instead of PPO-clip. None: every row is the policy's own sample.
    off_policy: torch.Tensor | None = None
    # One step of overlap (MENTOR.md section 12): the engine's log-prob of each sampled token
    # (pi_behaviour, [batch, response_len]) and the [batch] bool rows whose PPO term is weighted
    # by pi_prox / pi_behaviour: on-policy rows made by older weights than the learner holds.
    # None: no row is corrected (lockstep, the paper's objective).
    behaviour_log_probs: torch.Tensor | None = None
    behaviour_corrected: torch.Tensor | None = None


@dataclass(frozen=True)
class ClipSettings:
    eps_low: float = 0.2
    eps_high: float = 0.28
    dual_clip: float | None = 3.0


@dataclass(frozen=True)
class BehaviourCorrection:
    """Decoupled PPO's weight for stale on-policy tokens, truncated at `cap` (verl's default)."""

    cap: float = 2.0


@dataclass(frozen=True)
class LossWeights:
    policy: float = 1.0
    kl: float = 0.0
    entropy: float = 0.0


@dataclass(frozen=True)
class ShapingSettings:
    """LUFFY's policy shaping of off-policy (expert) tokens: f(p) = p / (p + gamma)."""

    gamma: float = 0.1


@dataclass
class PolicyLossOutput:
    loss: torch.Tensor
    metrics: dict[str, float]


def ppo_clip_token_loss(
    inputs: PolicyLossInputs, clip: ClipSettings
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO-clip with DAPO clip-higher (asymmetric eps) and dual clip on negative advantages.

    Returns the per-token loss and boolean per-token masks of where each clip was active.
    """
    advantages = inputs.advantages
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(-1).expand_as(inputs.log_probs)
    # The log-ratio is clamped only to keep exp finite; the clip below does the real work.
    log_ratio = torch.clamp(inputs.log_probs - inputs.old_log_probs, min=-20.0, max=20.0)
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip.eps_low, 1.0 + clip.eps_high)
    token_loss = torch.maximum(unclipped, clipped)
    masks = {
        "clip_high": (ratio > 1.0 + clip.eps_high) & (advantages > 0),
        "clip_low": (ratio < 1.0 - clip.eps_low) & (advantages < 0),
    }
    if clip.dual_clip is not None:
        # With A < 0 a huge ratio makes the loss unbounded; cap it at -A * c (Ye et al. 2020).
        dual_bound = -advantages * clip.dual_clip
        dual_active = (advantages < 0) & (token_loss > dual_bound)
        token_loss = torch.where(advantages < 0, torch.minimum(token_loss, dual_bound), token_loss)
        masks["dual_clip"] = dual_active
    return token_loss, masks


def kl_token_loss(inputs: PolicyLossInputs) -> torch.Tensor:
    """k3 estimator of KL(pi_theta || pi_ref): exp(ref - logp) - (ref - logp) - 1, >= 0."""
    if inputs.reference_log_probs is None:
        raise ValueError("the KL term needs reference_log_probs; set loss.kl_coef=0 or provide a reference model")
    delta = torch.clamp(inputs.reference_log_probs - inputs.log_probs, min=-20.0, max=20.0)
    return torch.exp(delta) - delta - 1.0


def entropy_token_loss(inputs: PolicyLossInputs) -> torch.Tensor:
    """Negative entropy, so a positive weight is an entropy bonus."""
    if inputs.entropy is None:
        raise ValueError("the entropy term needs per-token entropy; set loss.entropy_coef=0 or compute it")
    return -inputs.entropy


def shaped_token_loss(inputs: PolicyLossInputs, shaping: ShapingSettings) -> tuple[torch.Tensor, torch.Tensor]:
    """LUFFY's loss on expert-trace tokens: -A * f(pi_theta(y_t)), f(p) = p / (p + gamma).

    The behaviour probability is taken as 1 (no ratio to an old policy, no clip): the gradient
    is -A * gamma / (p + gamma)^2 * grad p, which lifts the expert tokens the policy finds
    unlikely more than a plain log-likelihood would. Returns the per-token loss and f.
    """
    advantages = inputs.advantages
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(-1).expand_as(inputs.log_probs)
    probability = torch.exp(torch.clamp(inputs.log_probs, max=0.0))
    weight = probability / (probability + shaping.gamma)
    return -advantages * weight, weight


def truncated_behaviour_weight(
    proximal_log_probs: torch.Tensor, behaviour_log_probs: torch.Tensor, cap: float
) -> torch.Tensor:
    """min(pi_prox / pi_behaviour, cap) per token, with no gradient.

    pi_prox is the learner's recomputed log-prob before the update (the PPO clip's anchor);
    pi_behaviour the engine's, from older weights. The weight moves the sample's expectation
    from the behaviour policy to the proximal one (AReaL's decoupled PPO); truncating it bounds
    the variance that a token the old weights found unlikely would add (verl's TIS).
    """
    log_weight = (proximal_log_probs - behaviour_log_probs).detach()
    return torch.clamp(torch.exp(log_weight), max=float(cap))


TOKEN_LOSS_COMPONENTS: dict[str, Callable[[PolicyLossInputs], torch.Tensor]] = {
    "kl": kl_token_loss,
    "entropy": entropy_token_loss,
}


def masked_token_sum(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (values * mask).sum()


def policy_loss(
    inputs: PolicyLossInputs,
    clip: ClipSettings,
    weights: LossWeights,
    token_normalizer: float | None = None,
    shaping: ShapingSettings | None = None,
    correction: BehaviourCorrection | None = None,
) -> PolicyLossOutput:
    """Token-level mean of the weighted components over the mini-batch.

    `token_normalizer` is the number of response tokens the mean is over. A learner that
    splits one global mini-batch across ranks and micro-batches passes the GLOBAL count here
    (divided by the data-parallel world size when gradients are averaged across ranks), so
    every token weighs the same no matter where it landed. Default: this batch's own count.
    """
    mask = inputs.response_mask.to(inputs.log_probs.dtype)
    local_tokens = mask.sum()
    normalizer = float(token_normalizer) if token_normalizer is not None else float(local_tokens.clamp(min=1))
    if normalizer <= 0:
        raise ValueError(f"token_normalizer must be > 0, got {normalizer}")

    ppo_tokens, clip_masks = ppo_clip_token_loss(inputs, clip)
    corrected = None
    if inputs.behaviour_corrected is not None and bool(inputs.behaviour_corrected.any()):
        if inputs.behaviour_log_probs is None:
            raise ValueError("behaviour-corrected rows need behaviour_log_probs")
        corrected = inputs.behaviour_corrected.bool().unsqueeze(-1).expand_as(ppo_tokens)
        cap = (correction or BehaviourCorrection()).cap
        behaviour_weight = truncated_behaviour_weight(inputs.old_log_probs, inputs.behaviour_log_probs, cap)
        ppo_tokens = torch.where(corrected, behaviour_weight * ppo_tokens, ppo_tokens)
    off_policy = None
    if inputs.off_policy is not None and bool(inputs.off_policy.any()):
        if shaping is None:
            raise ValueError("off-policy rows need ShapingSettings (algorithm.method=luffy)")
        off_policy = inputs.off_policy.bool().unsqueeze(-1).expand_as(ppo_tokens)
        shaped_tokens, shaping_weight = shaped_token_loss(inputs, shaping)
        ppo_tokens = torch.where(off_policy, shaped_tokens, ppo_tokens)
        clip_masks = {name: active & ~off_policy for name, active in clip_masks.items()}
    components = {"policy": ppo_tokens}
    for name, component in TOKEN_LOSS_COMPONENTS.items():
        if getattr(weights, name) != 0.0:
            components[name] = component(inputs)

    loss = torch.zeros((), dtype=inputs.log_probs.dtype, device=inputs.log_probs.device)
    metrics: dict[str, float] = {}
    for name, token_values in components.items():
        term = masked_token_sum(token_values, mask) / normalizer
        loss = loss + getattr(weights, name) * term
        metrics[f"loss/{name}"] = float(term.detach())
    # Clip fractions are over this batch's tokens: sums, so a learner can aggregate exactly.
    count = float(local_tokens.clamp(min=1))
    for name, active in clip_masks.items():
        metrics[f"clip/{name}_fraction"] = float((active.to(mask.dtype) * mask).sum()) / count
    metrics["loss/tokens"] = float(local_tokens)
    # Sums, like the clip counts, and present in every output (ranks all-reduce the same keys):
    # a learner adds them over micro-batches and ranks.
    metrics["sum/off_policy_tokens"] = 0.0
    metrics["sum/shaping_weight"] = 0.0
    metrics["sum/behaviour_corrected_tokens"] = 0.0
    metrics["sum/behaviour_weight"] = 0.0
    metrics["sum/behaviour_weight_truncated_tokens"] = 0.0
    if corrected is not None:
        corrected_mask = corrected.to(mask.dtype) * mask
        metrics["sum/behaviour_corrected_tokens"] = float(corrected_mask.sum())
        metrics["sum/behaviour_weight"] = float((behaviour_weight * corrected_mask).sum())
        metrics["sum/behaviour_weight_truncated_tokens"] = float(((behaviour_weight >= cap).to(mask.dtype) * corrected_mask).sum())
    if off_policy is not None:
        off_mask = off_policy.to(mask.dtype) * mask
        metrics["sum/off_policy_tokens"] = float(off_mask.sum())
        metrics["sum/shaping_weight"] = float((shaping_weight.detach() * off_mask).sum())
    return PolicyLossOutput(loss=loss, metrics=metrics)
