"""Weights by collective (sync.transport=collective): vLLM's weight-transfer API with the
project's gloo backend, into real toy engines (a policy engine, and a mixed engine with a
speculative draft), against the object store path on the same weights; and an engine killed
during a sync. The same path across two nodes, in a whole run, is in tests/test_cluster.py."""

from __future__ import annotations

import os
import signal
import time

import pytest
import ray
import torch
from safetensors.torch import load_file

from mentor_ray.capacity import transfer_buckets
from mentor_ray.config import load_config
from mentor_ray.rollout.requests import SamplingSpec
from pipelines.roles import build_rollout_roles
from pipelines.weight_sync import (
    CollectiveTransport,
    EngineFleetClient,
    WeightSyncError,
    check_engines_agree,
)

BUCKET_MB = 0.2  # the toy policy (0.6 MB) then travels in several buckets
TIMEOUT_S = 30.0


@pytest.fixture(scope="module")
def setup(toy_world, local_ray):
    config = load_config(None, [
        "model.max_model_len=256", "data.max_prompt_tokens=128", "rollout.max_response_tokens=96",
        "rollout.prompts_per_step=8", "optimizer.mini_batch_prompts=8", "rollout.speculative_tokens=2",
        "sync.transport=collective", f"sync.bucket_mb={BUCKET_MB}", f"sync.timeout_s={TIMEOUT_S}",
    ])
    roles = build_rollout_roles(config, str(toy_world.policy_dir), str(toy_world.expert_dir))
    roles.check_engines()
    weights = load_file(str(toy_world.policy_dir / "model.safetensors"))
    yield config, roles, weights
    roles.shutdown()


def _perturbed(weights: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {name: t + 0.02 * torch.randn(t.shape, generator=generator, dtype=t.dtype) for name, t in weights.items()}


def _state(roles, version: int):
    """What each engine holds: vLLM's digests of the policy's weights; greedy continuations of a
    few prompts with their log-probs from both engines, which the linear layers decide (on CPU
    vLLM packs those into oneDNN handles the digests cannot see); and the mixed engine's
    speculation counters on that greedy call, which the draft's weights decide (a draft left
    with other weights than the policy half accepts other tokens)."""
    digests = ray.get([e.policy_weight_digests.remote() for e in roles.policy_engines + roles.mixed_engines])
    prompts = [[1, 5, 9, 13], [2, 4, 6], [7, 7, 3, 11, 2]]
    spec = SamplingSpec(n=1, max_new_tokens=12, temperature=0.0)
    greedy = []
    for engine in (roles.policy_engines[0], roles.mixed_engines[0]):
        results, summary = ray.get(engine.generate_for_step.remote(prompts, spec, version, 0.5))
        greedy.append([(list(r.response_token_ids), [round(x, 5) for x in r.response_log_probs]) for r in results])
        greedy.append({k: summary[k] for k in ("verify_passes", "accepted_draft_tokens", "draft_rejections") if k in summary})
    return digests, greedy


def test_buckets_cover_every_tensor_once_in_order_and_stay_under_the_size():
    sizes = [40, 30, 50, 200, 10, 10, 90]
    buckets = transfer_buckets(sizes, 100)
    assert [list(b) for b in buckets] == [[0, 1], [2], [3], [4, 5], [6]]
    for bucket in buckets:
        assert sum(sizes[i] for i in bucket) <= 100 or len(bucket) == 1  # a larger tensor travels alone
    assert transfer_buckets([], 100) == [] and [list(b) for b in transfer_buckets([5, 5], 10)] == [[0, 1]]
    with pytest.raises(ValueError, match="bucket_bytes"):
        transfer_buckets([1], 0)


def test_a_collective_sync_loads_exactly_what_the_object_store_loads(setup):
    config, roles, weights = setup
    transport = CollectiveTransport(roles, config)
    before, before_greedy = _state(roles, 0)
    new = _perturbed(weights, seed=1)

    metrics = transport.publish(1, new)
    assert metrics["sync/collective"] == 1.0 and metrics["sync/collective_failures"] == 0.0
    assert metrics["sync/engine_weights_version_min"] == metrics["sync/engine_weights_version_max"] == 1
    # Every engine received every byte, bucket by bucket, with the CRC32s the learner sent.
    sent_bytes = sum(t.numel() * t.element_size() for t in new.values())
    assert metrics["transfer/weights_bytes"] == sent_bytes
    assert metrics["transfer/weights_bytes_to_engines"] == 2 * sent_bytes
    assert metrics["sync/buckets"] == len(transfer_buckets([t.numel() * t.element_size() for t in new.values()], int(BUCKET_MB * 2**20))) > 1
    assert metrics["sync/checked_engines"] == 2
    # vLLM's weight checker: both engines (and the mixed engine's draft) hold the same policy.
    assert check_engines_agree(roles, TIMEOUT_S) == 2
    by_collective, greedy_collective = _state(roles, 1)
    assert any("draft." in name for name in by_collective[1]), "the mixed engine should have a draft"
    assert greedy_collective[3]["verify_passes"] > 0 and greedy_collective[3]["accepted_draft_tokens"] > 0
    changed = [name for name in by_collective[0] if by_collective[0][name] != before[0][name]]
    assert changed and greedy_collective != before_greedy

    # The same weights by object store give the same bytes and the same tokens.
    roles.publish_weights(2, new)
    by_store, greedy_store = _state(roles, 2)
    assert by_store == by_collective and greedy_store == greedy_collective

    # Back to the original weights by collective: exactly where the engines started.
    metrics = transport.publish(3, weights)
    assert metrics["sync/collective"] == 1.0 and "sync/handshake_seconds" not in metrics  # the group is reused
    assert _state(roles, 3) == (before, before_greedy)
    transport.close()


class _KillsAnEngineAfterStart(EngineFleetClient):
    """Kills one engine's process between `start_weight_update` and the broadcast, once."""

    victim_pid: int | None = None

    def update_weights(self, update_info):
        if self.victim_pid is not None:
            os.kill(self.victim_pid, signal.SIGKILL)
            type(self).victim_pid = None
        super().update_weights(update_info)


def test_an_engine_killed_during_a_sync_is_replaced_and_gets_whole_weights(setup):
    config, roles, weights = setup
    said: list[str] = []
    transport = CollectiveTransport(roles, config, say=said.append)
    transport.publish(1, weights)  # a group to break
    victim = roles.mixed_engines[0]
    _, pid = ray.get(victim.weights_version_and_pid.remote())
    transport.group.client.__class__ = _KillsAnEngineAfterStart
    _KillsAnEngineAfterStart.victim_pid = pid

    new = _perturbed(weights, seed=2)
    started = time.perf_counter()
    metrics = transport.publish(2, new)
    seconds = time.perf_counter() - started
    # No hang: the broken group errs, that version goes by object store, every engine serves it
    # (the replacement read the standby copy when it started, then took the sync).
    assert metrics["sync/collective"] == 0.0 and metrics["sync/collective_failures"] == 1.0
    assert metrics["sync/engine_weights_version_min"] == metrics["sync/engine_weights_version_max"] == 2
    assert seconds < 3 * TIMEOUT_S, seconds
    assert any("by collective failed" in line and "mixed engine 0" in line for line in said), said
    version, new_pid = ray.get(victim.weights_version_and_pid.remote())
    assert new_pid != pid and version == 2
    assert check_engines_agree(roles, TIMEOUT_S) == 2

    # The next sync makes a new group with the replacement, and goes by collective again.
    metrics = transport.publish(3, new)
    assert metrics["sync/collective"] == 1.0 and "sync/handshake_seconds" in metrics
    assert metrics["sync/engine_weights_version_min"] == 3 and metrics["sync/checked_engines"] == 2
    by_collective = _state(roles, 3)
    roles.publish_weights(4, new)
    assert _state(roles, 4) == by_collective
    transport.close()


def test_an_engine_that_never_answers_is_named_within_the_timeout(local_ray):

    @ray.remote(num_cpus=0)
    class Silent:
        def start_weight_update(self):
            time.sleep(60)

    client = EngineFleetClient([Silent.remote()], ["policy engine 7"], 1, timeout_s=1.0)
    started = time.perf_counter()
    with pytest.raises(WeightSyncError, match=r"policy engine 7 did not finish starting an update within sync.timeout_s=1 s"):
        client.start_weight_update()
    assert time.perf_counter() - started < 10
