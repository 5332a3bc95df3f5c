"""Algorithm core against hand-computed values (MENTOR.md sections 1, 2, 6, 7)."""

import math

import pytest
import torch

from mentor_ray.core.advantages import grpo_advantages, mentor_advantages
from mentor_ray.core.guidance import (
    guidance_active,
    guidance_alpha,
    next_entropy_threshold,
)
from mentor_ray.core.losses import (
    ClipSettings,
    LossWeights,
    PolicyLossInputs,
    policy_loss,
    ppo_clip_token_loss,
)
from mentor_ray.core.mixture import (
    mixed_policy_log_probs,
    mixture_log_probs,
    mixture_weight,
    policy_entropy,
)

# --- mixture ------------------------------------------------------------------------------------

def test_entropy_of_uniform_and_one_hot():
    assert policy_entropy(torch.zeros(4)).item() == pytest.approx(math.log(4))
    one_hot = torch.tensor([0.0, -float("inf"), -float("inf")])
    assert policy_entropy(one_hot).item() == 0.0


def test_entropy_hand_computed():
    probs = torch.tensor([0.5, 0.25, 0.25])
    expected = -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25))
    assert policy_entropy(probs.log()).item() == pytest.approx(expected, abs=1e-6)


def test_mixture_weight_is_min_one_ratio():
    weights = mixture_weight(torch.tensor([0.0, 0.75, 1.5, 3.0]), 1.5)
    assert weights.tolist() == pytest.approx([0.0, 0.5, 1.0, 1.0])
    # tau_init = 999: step 1 is effectively on-policy.
    assert mixture_weight(torch.tensor(math.log(50_000)), 999.0).item() == pytest.approx(math.log(50_000) / 999)
    with pytest.raises(ValueError):
        mixture_weight(torch.tensor([1.0]), 0.0)


def test_mixture_probabilities_hand_computed():
    policy = torch.tensor([0.7, 0.2, 0.1]).log()
    expert = torch.tensor([0.1, 0.1, 0.8]).log()
    log_mix = mixture_log_probs(policy, expert, torch.tensor(0.25))
    expected = [0.75 * 0.7 + 0.25 * 0.1, 0.75 * 0.2 + 0.25 * 0.1, 0.75 * 0.1 + 0.25 * 0.8]
    assert log_mix.exp().tolist() == pytest.approx(expected, abs=1e-6)
    assert log_mix.exp().sum().item() == pytest.approx(1.0, abs=1e-6)


def test_mixture_endpoints_and_disjoint_support():
    policy = torch.tensor([0.0, -float("inf")])  # all mass on token 0
    expert = torch.tensor([-float("inf"), 0.0])  # all mass on token 1
    assert mixture_log_probs(policy, expert, torch.tensor(0.0)).exp().tolist() == [1.0, 0.0]
    assert mixture_log_probs(policy, expert, torch.tensor(1.0)).exp().tolist() == [0.0, 1.0]
    assert mixture_log_probs(policy, expert, torch.tensor(0.3)).exp().tolist() == pytest.approx([0.7, 0.3])


def test_mixed_policy_uses_policy_entropy():
    policy = torch.zeros(2, 4)  # uniform: H = log 4
    expert = torch.randn(2, 4)
    log_mix, weight = mixed_policy_log_probs(policy, expert, 2 * math.log(4))
    assert weight.tolist() == pytest.approx([0.5, 0.5])
    expected = 0.5 * torch.softmax(policy, -1) + 0.5 * torch.softmax(expert, -1)
    assert torch.allclose(log_mix.exp(), expected, atol=1e-6)


def test_different_vocabularies_are_refused():
    with pytest.raises(ValueError, match="vocabularies differ"):
        mixture_log_probs(torch.zeros(5), torch.zeros(6), torch.tensor(0.5))


# --- tau and alpha ------------------------------------------------------------------------------

def test_threshold_is_global_quantile_with_floor():
    entropies = torch.arange(1, 101, dtype=torch.float32)  # 1..100
    # numpy-style linear quantile: position 0.95 * 99 = 94.05 -> 95 + 0.05 * 1
    assert next_entropy_threshold(entropies, 0.95, 1.5) == pytest.approx(95.05)
    assert next_entropy_threshold(entropies / 100, 0.95, 1.5) == 1.5  # floor binds
    assert next_entropy_threshold(torch.tensor([]), 0.95, 1.5) == 1.5
    assert next_entropy_threshold(torch.tensor([[3.0, 1.0], [2.0, 4.0]]), 0.5, 0.1) == pytest.approx(2.5)
    with pytest.raises(ValueError):
        next_entropy_threshold(entropies, 1.0, 1.5)


def test_threshold_matches_torch_quantile():
    values = torch.rand(1001, generator=torch.Generator().manual_seed(0)) * 4
    assert next_entropy_threshold(values, 0.9, 0.0) == pytest.approx(torch.quantile(values, 0.9).item(), rel=1e-6)


def test_alpha_cosine_schedule():
    assert guidance_alpha(1, 1.0, 120) == pytest.approx(0.5 * (1 + math.cos(math.pi / 120)))
    assert guidance_alpha(60, 1.0, 120) == pytest.approx(0.5)
    assert guidance_alpha(60, 0.5, 120) == pytest.approx(0.25)
    assert guidance_alpha(119, 1.0, 120) == pytest.approx(0.5 * (1 + math.cos(math.pi * 119 / 120)))
    assert guidance_alpha(120, 1.0, 120) == 0.0  # after decay
    assert guidance_alpha(500, 1.0, 120) == 0.0
    assert not guidance_active(120, 1.0, 120) and guidance_active(119, 1.0, 120)
    with pytest.raises(ValueError):
        guidance_alpha(0, 1.0, 120)


# --- advantages -------------------------------------------------------------------------------

def test_grpo_hand_computed():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.5, 0.5])
    groups = torch.tensor([0, 0, 0, 0, 1, 1])
    advantages = grpo_advantages(rewards, groups)
    std = torch.tensor([1.0, 0.0, 0.0, 1.0]).std().item()  # unbiased, as torch.std / verl
    expected = [0.5 / (std + 1e-6), -0.5 / (std + 1e-6), -0.5 / (std + 1e-6), 0.5 / (std + 1e-6), 0.0, 0.0]
    assert advantages.tolist() == pytest.approx(expected, abs=1e-5)


def test_all_equal_rewards_give_zero_advantage():
    advantages = mentor_advantages(torch.ones(6), torch.tensor([0, 0, 0, 0, 1, 1]), torch.zeros(6, dtype=torch.long), alpha=1.0)
    assert advantages.tolist() == [0.0] * 6


def test_mixed_rule_hand_computed():
    # One group: on-policy rewards 0, 0, 1, 0 (mean 0.25); mixed rewards 1, 0.
    rewards = torch.tensor([0.0, 0.0, 1.0, 0.0, 1.0, 0.0])
    is_mixed = torch.tensor([0, 0, 0, 0, 1, 1])
    advantages = mentor_advantages(rewards, is_mixed, torch.full((6,), 7), alpha=0.8)
    std = torch.tensor([0.0, 0.0, 1.0, 0.0]).std().item()
    on = [(r - 0.25) / (std + 1e-6) for r in (0.0, 0.0, 1.0, 0.0)]
    assert advantages[:4].tolist() == pytest.approx(on, abs=1e-5)
    assert advantages[4].item() == pytest.approx(0.8 * 0.75)  # alpha * max(R - mean_on, 0)
    assert advantages[5].item() == 0.0  # failed guidance is ignored, not punished
    # Mixed samples must not move the on-policy baseline.
    assert torch.allclose(advantages[:4], grpo_advantages(rewards[:4], torch.zeros(4)))


def test_group_without_on_policy_samples_gets_zero():
    rewards = torch.tensor([1.0, 0.0, 1.0, 1.0])
    is_mixed = torch.tensor([1, 1, 0, 0])
    groups = torch.tensor([0, 0, 1, 1])
    advantages = mentor_advantages(rewards, is_mixed, groups, alpha=1.0)
    assert advantages.tolist() == [0.0, 0.0, 0.0, 0.0]


def test_mixed_advantage_zero_after_decay_and_reward_range():
    rewards = torch.tensor([0.0, 1.0, 1.0])
    is_mixed = torch.tensor([0, 0, 1])
    groups = torch.zeros(3)
    assert mentor_advantages(rewards, is_mixed, groups, alpha=guidance_alpha(130, 1.0, 120))[2].item() == 0.0
    assert mentor_advantages(rewards, is_mixed, groups, alpha=1.0, reward_range=2.0)[2].item() == pytest.approx(0.25)


def test_advantage_shape_errors():
    with pytest.raises(ValueError, match="equal-length"):
        mentor_advantages(torch.zeros(3), torch.zeros(2), torch.zeros(3), alpha=1.0)


# --- loss ---------------------------------------------------------------------------------------

def _inputs(ratio, advantage, mask=None):
    ratio = torch.tensor(ratio, dtype=torch.float64).reshape(1, -1)
    log_probs = ratio.log()
    mask = torch.ones_like(ratio) if mask is None else torch.tensor(mask, dtype=torch.float64).reshape(1, -1)
    return PolicyLossInputs(log_probs, torch.zeros_like(log_probs), torch.tensor([advantage], dtype=torch.float64), mask)


def test_ppo_clip_higher_and_low_hand_computed():
    clip = ClipSettings(eps_low=0.2, eps_high=0.28, dual_clip=None)
    token_loss, masks = ppo_clip_token_loss(_inputs([0.5, 1.0, 1.1, 1.5], 2.0), clip)
    # A > 0: loss = -A * min(r, 1 + eps_high)
    assert token_loss[0].tolist() == pytest.approx([-1.0, -2.0, -2.2, -2.56])
    assert masks["clip_high"][0].tolist() == [False, False, False, True]
    token_loss, masks = ppo_clip_token_loss(_inputs([0.5, 1.0, 1.5], -1.0), clip)
    # A < 0: loss = max(r, clip(r, 0.8, 1.28))
    assert token_loss[0].tolist() == pytest.approx([0.8, 1.0, 1.5])
    assert masks["clip_low"][0].tolist() == [True, False, False]


def test_dual_clip_caps_negative_advantage_loss():
    clip = ClipSettings(eps_low=0.2, eps_high=0.28, dual_clip=3.0)
    token_loss, masks = ppo_clip_token_loss(_inputs([2.0, 5.0], -1.0), clip)
    assert token_loss[0].tolist() == pytest.approx([2.0, 3.0])
    assert masks["dual_clip"][0].tolist() == [False, True]
    # Positive advantages are untouched by the dual clip.
    token_loss, _ = ppo_clip_token_loss(_inputs([5.0], 1.0), clip)
    assert token_loss[0].tolist() == pytest.approx([-1.28])


def test_token_level_mean_and_fractions():
    inputs = _inputs([1.0, 1.5, 0.5, 1.0], 1.0, mask=[1, 1, 1, 0])
    out = policy_loss(inputs, ClipSettings(dual_clip=None), LossWeights())
    # tokens: -1, -1.28, -0.5 (masked 4th) -> mean over 3 tokens
    assert out.loss.item() == pytest.approx(-(1.0 + 1.28 + 0.5) / 3)
    assert out.metrics["clip/clip_high_fraction"] == pytest.approx(1 / 3)
    assert out.metrics["loss/tokens"] == 3
    # A global normalizer (data parallel) divides the local token sum instead.
    out = policy_loss(inputs, ClipSettings(dual_clip=None), LossWeights(), token_normalizer=6)
    assert out.loss.item() == pytest.approx(-(1.0 + 1.28 + 0.5) / 6)


def test_token_mean_weighs_every_token_equally_across_sequences():
    # Two sequences of 1 and 3 tokens: a token-level mean is NOT the mean of sequence means.
    log_probs = torch.zeros(2, 3)
    inputs = PolicyLossInputs(log_probs, log_probs.clone(), torch.tensor([1.0, -1.0]), torch.tensor([[1.0, 0, 0], [1, 1, 1]]))
    out = policy_loss(inputs, ClipSettings(), LossWeights())
    assert out.loss.item() == pytest.approx((-1 + 3 * 1) / 4)


def test_gradient_at_ratio_one_is_minus_advantage_over_tokens():
    log_probs = torch.zeros(1, 2, requires_grad=True)
    inputs = PolicyLossInputs(log_probs, torch.zeros(1, 2), torch.tensor([3.0]), torch.ones(1, 2))
    policy_loss(inputs, ClipSettings(), LossWeights()).loss.backward()
    assert log_probs.grad[0].tolist() == pytest.approx([-1.5, -1.5])


def test_optional_kl_and_entropy_terms():
    inputs = _inputs([1.0, 1.0], 0.0)
    inputs = PolicyLossInputs(
        inputs.log_probs, inputs.old_log_probs, inputs.advantages, inputs.response_mask,
        entropy=torch.tensor([[2.0, 4.0]], dtype=torch.float64),
        reference_log_probs=torch.tensor([[math.log(0.5), 0.0]], dtype=torch.float64),
    )
    out = policy_loss(inputs, ClipSettings(), LossWeights(kl=0.1, entropy=0.01))
    kl = ((0.5 - math.log(0.5) - 1) + 0.0) / 2
    assert out.metrics["loss/kl"] == pytest.approx(kl)
    assert out.metrics["loss/entropy"] == pytest.approx(-3.0)
    assert out.loss.item() == pytest.approx(0.1 * kl - 0.01 * 3.0)
    # Off by default: the terms are not even computed.
    assert "loss/kl" not in policy_loss(_inputs([1.0], 1.0), ClipSettings(), LossWeights()).metrics
    with pytest.raises(ValueError, match="reference_log_probs"):
        policy_loss(_inputs([1.0], 1.0), ClipSettings(), LossWeights(kl=0.1))


# --- LUFFY: the whole-group advantage and the policy-shaping loss of expert tokens -------------


def test_luffy_advantages_use_the_whole_mixed_group():
    from mentor_ray.core.advantages import luffy_advantages

    # Group 0: 3 on-policy samples and the expert trace (last, reward 1); group 1: all equal.
    rewards = torch.tensor([0.0, 1.0, 0.0, 1.0, 0.5, 0.5])
    groups = torch.tensor([0, 0, 0, 0, 1, 1])
    centred = luffy_advantages(rewards, groups, divide_by_std=False)
    assert centred.tolist() == pytest.approx([-0.5, 0.5, -0.5, 0.5, 0.0, 0.0])
    std = float(torch.tensor([0.0, 1.0, 0.0, 1.0]).std())  # unbiased, as GRPO's
    scaled = luffy_advantages(rewards, groups, divide_by_std=True)
    assert scaled[:4].tolist() == pytest.approx([-0.5 / (std + 1e-6), 0.5 / (std + 1e-6)] * 2)
    assert scaled[4:].tolist() == [0.0, 0.0]
    # Unlike MENTOR's rule, the expert's sample moves the baseline of the on-policy ones.
    from mentor_ray.core.advantages import grpo_advantages

    assert grpo_advantages(rewards[:3], groups[:3]).tolist() != pytest.approx(scaled[:3].tolist())


def test_shaping_loss_value_and_gradient_against_a_hand_computation():
    from mentor_ray.core.losses import (
        ClipSettings,
        LossWeights,
        PolicyLossInputs,
        ShapingSettings,
        policy_loss,
    )

    gamma = 0.1
    # Row 0: an expert trace (off-policy); row 1: the policy's own sample (PPO-clip).
    log_probs = torch.log(torch.tensor([[0.02, 0.5, 0.9], [0.3, 0.4, 0.6]])).requires_grad_(True)
    old = torch.log(torch.tensor([[0.9, 0.9, 0.9], [0.3, 0.2, 0.6]]))  # ignored for the trace
    advantages = torch.tensor([1.5, -0.5])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    inputs = PolicyLossInputs(log_probs=log_probs, old_log_probs=old, advantages=advantages, response_mask=mask,
                              off_policy=torch.tensor([True, False]))
    output = policy_loss(inputs, ClipSettings(0.2, 0.28, None), LossWeights(), shaping=ShapingSettings(gamma))
    output.loss.backward()

    p_trace = torch.tensor([0.02, 0.5, 0.9])
    shaped = -1.5 * p_trace / (p_trace + gamma)
    ratios = torch.tensor([1.0, 2.0])  # row 1's first two tokens: 0.3/0.3, 0.4/0.2
    ppo = torch.maximum(0.5 * ratios, 0.5 * torch.clamp(ratios, 0.8, 1.28))
    expected = (shaped.sum() + ppo.sum()) / 5
    assert float(output.loss) == pytest.approx(float(expected), rel=1e-6)
    # d/dlogp of -A p/(p+g) is -A g p / (p+g)^2; divided by the 5 tokens of the mean.
    expected_grad = -1.5 * gamma * p_trace / (p_trace + gamma) ** 2 / 5
    assert log_probs.grad[0].tolist() == pytest.approx(expected_grad.tolist(), rel=1e-5)
    # The low-probability expert token gets the largest push (policy shaping), unlike -A log p.
    assert float(log_probs.grad[0, 0].abs()) > float(log_probs.grad[0, 2].abs())
    # No clip on the trace: its ratio to the "old" 0.9 would be clipped (0.02 / 0.9), yet its
    # gradient is not zero; and the clip fractions count the policy's own tokens only.
    assert output.metrics["sum/off_policy_tokens"] == 3.0
    assert output.metrics["sum/shaping_weight"] == pytest.approx(float((p_trace / (p_trace + gamma)).sum()), rel=1e-6)
    assert output.metrics["clip/clip_low_fraction"] == 0.0  # row 1 has A < 0, ratios 1 and 2: none below 0.8


def test_off_policy_rows_without_shaping_settings_are_refused():
    from mentor_ray.core.losses import (
        ClipSettings,
        LossWeights,
        PolicyLossInputs,
        policy_loss,
    )

    values = torch.zeros(1, 2)
    inputs = PolicyLossInputs(values, values, torch.ones(1), torch.ones(1, 2), off_policy=torch.tensor([True]))
    with pytest.raises(ValueError, match="ShapingSettings"):
        policy_loss(inputs, ClipSettings(), LossWeights())
