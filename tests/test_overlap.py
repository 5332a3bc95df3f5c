"""One step of overlap, the pure pieces: the decoupled objective of stale on-policy tokens
against a hand computation, which rows a step may train on, which pass sets tau, the roles'
busy shares, and a finished rollout saved with a checkpoint."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from mentor_ray.config import ConfigError, load_config
from mentor_ray.core.losses import (
    BehaviourCorrection,
    ClipSettings,
    LossWeights,
    PolicyLossInputs,
    policy_loss,
    truncated_behaviour_weight,
)
from mentor_ray.core.staleness import admit_by_staleness, threshold_source_step
from mentor_ray.learner import TrainingSample
from mentor_ray.learner.batching import collate
from mentor_ray.timeline import (
    RoleTimeline,
    busy_shares,
    idlest_role,
    intersection,
    read_chrome_trace,
    union,
)
from pipelines.train import DEFAULT_RECIPE

CLIP = ClipSettings(eps_low=0.2, eps_high=0.28, dual_clip=3.0)


def _inputs(**extra):
    # Two rows of two tokens; row 0 stale on-policy, row 1 not corrected.
    return PolicyLossInputs(
        log_probs=torch.log(torch.tensor([[0.5, 0.2], [0.4, 0.3]])).requires_grad_(True),
        old_log_probs=torch.log(torch.tensor([[0.4, 0.2], [0.4, 0.25]])),
        advantages=torch.tensor([1.0, -0.5]),
        response_mask=torch.ones(2, 2),
        **extra,
    )


def test_truncated_behaviour_weight_is_min_of_the_ratio_and_the_cap():
    proximal = torch.log(torch.tensor([0.4, 0.2, 0.9, 0.1]))
    behaviour = torch.log(torch.tensor([0.2, 0.4, 0.3, 0.1]))
    weight = truncated_behaviour_weight(proximal, behaviour, cap=2.0)
    # 0.4/0.2 = 2 (at the cap), 0.2/0.4 = 0.5, 0.9/0.3 = 3 -> 2, 0.1/0.1 = 1.
    assert weight.tolist() == pytest.approx([2.0, 0.5, 2.0, 1.0], abs=1e-6)
    assert not weight.requires_grad


def test_stale_on_policy_tokens_are_weighted_by_prox_over_behaviour_and_clipped_against_prox():
    """Decoupled PPO by hand: row 0 is stale, behaviour probabilities 0.2 and 0.4 against prox
    0.4 and 0.2 (weights 2.0 and 0.5); its ratios pi_theta / pi_prox are 1.25 (inside the clip
    range) and 1.0. Row 1 is the paper's PPO-clip, untouched."""
    inputs = _inputs(behaviour_log_probs=torch.log(torch.tensor([[0.2, 0.4], [0.01, 0.01]])),  # row 1's must not matter
                     behaviour_corrected=torch.tensor([True, False]))
    output = policy_loss(inputs, CLIP, LossWeights(), correction=BehaviourCorrection(cap=2.0))
    # Row 0, A = 1: tokens -1.25 * 2.0 and -1.0 * 0.5. Row 1, A = -0.5: ratio 1.0 -> 0.5,
    # ratio 1.2 -> max(0.6, 0.5 * 1.2 clipped at 1.2) = 0.6.
    hand = (-1.25 * 2.0 - 1.0 * 0.5 + 0.5 + 0.6) / 4
    assert float(output.loss.detach()) == pytest.approx(hand, abs=1e-6)
    assert output.metrics["sum/behaviour_corrected_tokens"] == 2.0
    assert output.metrics["sum/behaviour_weight"] == pytest.approx(2.5, abs=1e-6)
    assert output.metrics["sum/behaviour_weight_truncated_tokens"] == 1.0
    # The weight carries no gradient: d/dlogp of -A * w * ratio / N is -A * w * ratio / N.
    output.loss.backward()
    assert inputs.log_probs.grad[0].tolist() == pytest.approx([-1.0 * 2.0 * 1.25 / 4, -1.0 * 0.5 * 1.0 / 4], abs=1e-6)


def test_a_cap_truncates_and_a_clipped_token_stays_clipped():
    # Ratio 0.5/0.3 = 1.67 > 1.28 with A > 0: the clip holds the token at 1.28, times the
    # weight min(0.3/0.05, 3) = 3.
    inputs = PolicyLossInputs(
        log_probs=torch.log(torch.tensor([[0.5]])), old_log_probs=torch.log(torch.tensor([[0.3]])),
        advantages=torch.tensor([2.0]), response_mask=torch.ones(1, 1),
        behaviour_log_probs=torch.log(torch.tensor([[0.05]])), behaviour_corrected=torch.tensor([True]),
    )
    output = policy_loss(inputs, CLIP, LossWeights(), correction=BehaviourCorrection(cap=3.0))
    assert float(output.loss) == pytest.approx(-2.0 * 1.28 * 3.0, abs=1e-5)


def test_no_stale_row_is_exactly_todays_objective():
    """Lockstep: rows marked not stale (or no behaviour inputs at all) give the paper's loss and
    gradient bit for bit, whatever the engine's log-probs say."""
    plain = _inputs()
    plain_out = policy_loss(plain, CLIP, LossWeights())
    plain_out.loss.backward()
    marked = _inputs(behaviour_log_probs=torch.full((2, 2), -7.0), behaviour_corrected=torch.tensor([False, False]))
    marked_out = policy_loss(marked, CLIP, LossWeights(), correction=BehaviourCorrection(cap=2.0))
    marked_out.loss.backward()
    assert torch.equal(plain_out.loss.detach(), marked_out.loss.detach())
    assert torch.equal(plain.log_probs.grad, marked.log_probs.grad)


def _sample(version: int, *, mixed: bool = False, trace: bool = False) -> TrainingSample:
    return TrainingSample([1, 2], [3, 4], 0.5, mixed, 0, behaviour_log_probs=[-0.1, -0.2], is_expert_trace=trace,
                          weights_version=version)


def test_rows_older_than_the_allowed_staleness_are_dropped_and_counted():
    samples = [_sample(4), _sample(3), _sample(2), _sample(2, mixed=True), _sample(0, trace=True)]
    admitted = admit_by_staleness(samples, learner_version=4, max_staleness=1)
    assert [s.weights_version for s in admitted.kept] == [4, 3, 0]
    assert [s.behaviour_lag for s in admitted.kept] == [0, 1, 0]  # the trace was made by no weights
    assert admitted.dropped == 2 and admitted.largest_lag == 1
    lockstep = admit_by_staleness(samples, learner_version=4, max_staleness=0)
    assert lockstep.dropped == 3 and lockstep.largest_lag == 0
    with pytest.raises(ValueError, match="v5 reached a learner holding v4"):
        admit_by_staleness([_sample(5)], learner_version=4, max_staleness=1)


def test_only_stale_on_policy_rows_get_the_behaviour_correction():
    kept = admit_by_staleness(
        [_sample(3), _sample(2), _sample(2, mixed=True), _sample(3, trace=True)], learner_version=3, max_staleness=1).kept
    # Mixed samples keep the paper's rule, traces their shaping loss, fresh rows need none.
    assert [s.behaviour_corrected for s in kept] == [False, True, False, False]
    assert collate(kept, pad_token_id=0)["behaviour_corrected"].tolist() == [False, True, False, False]


def test_tau_comes_from_the_latest_finished_learner_pass():
    assert [threshold_source_step(s, 0) for s in (1, 2, 3, 10)] == [0, 1, 2, 9]
    assert [threshold_source_step(s, 1) for s in (1, 2, 3, 10)] == [0, 0, 1, 8]


def test_busy_shares_and_the_overlap_of_rollout_roles_with_learners():
    busy = {
        "policy_engines": [(0.0, 2.0)], "mixed_engines": [(0.0, 1.0), (0.5, 3.0)], "graders": [(3.0, 3.5)],
        "learners": [(2.5, 6.0), (9.0, 12.0)],  # the second interval is outside the window
    }
    shares = busy_shares(busy, 0.0, 8.0)
    assert shares["busy/policy_engines_share"] == pytest.approx(2 / 8)
    assert shares["busy/mixed_engines_share"] == pytest.approx(3 / 8)
    assert shares["busy/graders_share"] == pytest.approx(0.5 / 8)
    assert shares["busy/learners_share"] == pytest.approx(3.5 / 8)
    assert shares["busy/overlap_share"] == pytest.approx(1.0 / 8)  # [2.5, 3.5)
    assert union([(0, 1), (0.5, 2), (3, 4)]) == [(0, 2), (3, 4)]
    assert intersection([(0, 2), (3, 5)], [(1, 4)]) == [(1, 2), (3, 4)]
    history = [{"busy/learners_share": 0.9, "busy/policy_engines_share": 0.3, "busy/graders_share": 0.01},
               {"busy/learners_share": 0.7, "busy/policy_engines_share": 0.5}]
    # Graders are CPU tasks beside the devices: the idlest device role is named.
    assert idlest_role(history) == ("policy_engines", pytest.approx(0.4))


def test_the_timeline_round_trips_through_a_chrome_trace():
    timeline = RoleTimeline(origin=100.0, roles=("policy_engines", "learners"))
    timeline.add("policy_engines", [(100.0, 101.0), (100.5, 102.0)])
    timeline.add("learners", [(102.0, 103.0)])
    shares = timeline.step_shares(1, 100.0, 104.0)
    assert shares["busy/learners_share"] == pytest.approx(0.25) and shares["busy/overlap_share"] == 0.0
    busy, steps = read_chrome_trace(timeline.chrome_trace())
    assert busy["policy_engines"] == [pytest.approx((0.0, 2.0))] and busy["learners"] == [pytest.approx((2.0, 3.0))]
    assert steps == [(1, pytest.approx(0.0), pytest.approx(4.0))]
    assert json.loads(timeline.chrome_trace())["traceEvents"][0]["ph"] == "M"  # lanes named for Perfetto


def test_a_finished_rollout_in_flight_is_saved_and_read_back_exactly():
    from pipelines.step_rollout import PreparedRollout

    prepared = PreparedRollout(3, [dataclasses.replace(_sample(1), behaviour_lag=1), _sample(2, mixed=True)],
                               {"rollout/on_policy_reward": 0.25, "guidance/entropy_threshold": 0.7}, 10.0, 12.5, ["p7"])
    again = PreparedRollout.from_json(prepared.to_json())
    assert again == prepared


def test_staleness_and_cap_are_checked_at_load_time():
    config = load_config(DEFAULT_RECIPE, ["rollout.max_staleness=1"])
    assert config.rollout.max_staleness == 1 and config.loss.behaviour_weight_cap == 2.0
    with pytest.raises(ConfigError, match=r"rollout.max_staleness.*must be 0 \(lockstep\) or 1"):
        load_config(DEFAULT_RECIPE, ["rollout.max_staleness=2"])
    with pytest.raises(ConfigError, match="loss.behaviour_weight_cap"):
        load_config(DEFAULT_RECIPE, ["loss.behaviour_weight_cap=0.5"])
    assert math.isfinite(config.loss.behaviour_weight_cap)
