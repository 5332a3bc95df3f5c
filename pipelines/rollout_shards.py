"""How a step's rollout reaches every learner rank: rank 0 cuts it into one shard per rank,
puts each shard in the object store, and every rank fetches only its own.

Why not `torch.distributed.broadcast_object_list` of an `ObjectRef`: torch pickles with the
standard pickler, which reduces an `ObjectRef` to its id alone. Ray's own reducer (used when a
ref travels inside a Ray call) also carries the owner's address and registers the receiver as a
borrower; without it, `ray.get` on another rank cannot find the object and waits forever (the
multi-learner hang). So the refs travel through Ray Train's rank-zero broadcast, a Ray call.

Why one object per rank: across nodes only a rank's own bytes leave rank 0's object store.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import ray
import ray.train.collective
from ray.experimental import get_object_locations

from mentor_ray.learner import TrainingSample, shard_for_rank


@dataclass(frozen=True)
class StepShards:
    """What rank 0 tells every rank about one step's rollout."""

    shard_refs: list[ray.ObjectRef]  # rank r's local mini-batches, in the object store
    mini_batch_count: int
    shard_bytes: list[int]  # size of each rank's shard in the object store
    error: str | None = None  # a reason every rank stops for (raised on all of them)


def share_rollout(samples: list[TrainingSample], world_size: int, mini_batch_count: int | None, error: str | None) -> StepShards:
    """Rank 0: one shard per rank of every global mini-batch (`shard_for_rank`), in the store."""
    if error is not None or mini_batch_count is None:
        return StepShards([], 0, [], error or "no mini-batches")
    shards = [shard_for_rank(samples, rank, world_size, mini_batch_count) for rank in range(world_size)]
    refs = [ray.put(shard) for shard in shards]
    locations = get_object_locations(refs)
    sizes = [int(locations[ref].get("object_size") or 0) for ref in refs]
    return StepShards(refs, mini_batch_count, sizes)


def exchange(shards: StepShards | None) -> StepShards:
    """Every rank calls this once per step; rank 0 passes its `StepShards`, the others None.
    The shards ride inside one outer object, so the broadcast message stays a few hundred bytes
    whatever the number of ranks."""
    outer = [ray.put(shards)] if shards is not None else None
    received = ray.train.collective.broadcast_from_rank_zero(outer)
    return ray.get(received[0])


def fetch_shard(shards: StepShards, rank: int) -> tuple[list[list[TrainingSample]], float]:
    """This rank's local mini-batches and the seconds its fetch took (across nodes: a transfer)."""
    if shards.error is not None:
        raise RuntimeError(shards.error)
    started = time.perf_counter()
    local = ray.get(shards.shard_refs[rank])
    return local, time.perf_counter() - started
