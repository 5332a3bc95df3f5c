"""How the learner's weights reach the engines after each update: `sync.transport`.

- `object_store`: learner rank 0 puts the weights into Ray's object store once and every
  engine pulls a copy (`RolloutRoles.publish_weights`). Simple, and what a restarted engine
  always reads: the `WeightStore` holds the latest version.
- `collective`: rank 0 broadcasts packed buckets to every engine through vLLM's weight-transfer
  API (`mentor_ray.rollout.weight_transfer`): NCCL when the run is on GPUs, gloo otherwise,
  through the same calls. Each engine gets the bytes once, with no copy into an object store
  on the way; across nodes that is the difference (benchmarks/RESULTS.md).

The collective keeps the object store as its fallback, and says so on the console:
- rank 0 still puts a standby copy into the store (a local put, no engine pulls it) after the
  broadcast, beside the next rollout, so an engine Ray restarts between syncs, or one whose
  update failed, loads whole weights before it generates (it waits for that copy);
- a sync that fails (an engine died, a call ran past `sync.timeout_s`, a checksum differs)
  drops the group and sends that version by object store instead; the next sync makes a new
  group with whatever engines are alive, replacements included. No wait is unbounded: every
  call to an engine and every broadcast carries `sync.timeout_s`.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

import ray
import torch

from mentor_ray.config import MentorConfig
from mentor_ray.distributed import free_port
from pipelines.roles import RolloutRoles, engine_names

# A transport that fails this many syncs in a row (a backend that cannot work on this cluster,
# not a lost engine) stops being tried: each try costs up to a few sync.timeout_s.
MAX_FAILED_IN_A_ROW = 3


class WeightSyncError(RuntimeError):
    """A collective sync that could not finish: which engines, what they were doing, why."""


class ObjectStoreTransport:
    name = "object_store"

    def __init__(self, roles: RolloutRoles) -> None:
        self.roles = roles

    def publish(self, version: int, weights: dict[str, torch.Tensor]) -> dict[str, float]:
        return {**self.roles.publish_weights(version, weights), "sync/collective": 0.0}

    def close(self) -> None:
        pass


def wait_for_engines(refs: list[ray.ObjectRef], names: list[str], timeout_s: float, doing: str) -> list[Any]:
    """Every engine's answer, waited on at most `timeout_s`; raises naming the engines that
    were late or failed, and what they were doing."""
    ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
    late = [name for name, ref in zip(names, refs) if ref not in ready]
    if late:
        raise WeightSyncError(f"{', '.join(late)} did not finish {doing} within sync.timeout_s={timeout_s:g} s")
    results = []
    for name, ref in zip(names, refs):
        try:
            results.append(ray.get(ref))
        except Exception as error:
            raise WeightSyncError(f"{name} failed while {doing}: {_first_line(error)}") from error
    return results


class EngineFleetClient:
    """vLLM's `VLLMWeightSyncClient` protocol over the run's engine actors: each call fans out
    to every engine and waits at most `timeout_s`. Each engine is given its own rank in the
    transfer group (the protocol hands every engine the same init info)."""

    def __init__(self, engines: list[Any], names: list[str], ranks_per_engine: int, timeout_s: float) -> None:
        self.engines, self.names = engines, names
        self.ranks_per_engine, self.timeout_s = ranks_per_engine, timeout_s
        self.version = "0"
        self.receipts: list[dict[str, Any]] = []

    def _wait(self, refs: list[ray.ObjectRef], doing: str) -> list[Any]:
        return wait_for_engines(refs, self.names, self.timeout_s, doing)

    def init_weight_transfer_engine(self, init_info: dict[str, Any]) -> None:
        calls = []
        for index, engine in enumerate(self.engines):
            rank_key = "rank" if "rank" in init_info else "rank_offset"  # gloo's, or vLLM NCCL's
            calls.append(engine.join_weight_transfer.remote({**init_info, rank_key: 1 + index * self.ranks_per_engine}))
        self._wait(calls, "joining the transfer group")

    def start_weight_update(self) -> None:
        self._wait([engine.start_weight_update.remote() for engine in self.engines], "starting an update")

    def update_weights(self, update_info: dict[str, Any]) -> None:
        self._wait([engine.update_weights.remote(update_info) for engine in self.engines], "receiving weights")

    def finish_weight_update(self, weight_version: str | None = None) -> None:
        version = weight_version or self.version
        self.receipts = self._wait(
            [engine.finish_weight_update.remote(version) for engine in self.engines], "finishing an update"
        )


@dataclass
class _Group:
    sender: Any  # vLLM's TrainerWeightTransferEngine
    client: EngineFleetClient
    source: Any
    pids: list[int]


class CollectiveTransport:
    name = "collective"

    def __init__(self, roles: RolloutRoles, config: MentorConfig, say=print) -> None:
        from mentor_ray.rollout import weight_transfer

        weight_transfer.register()
        self.roles = roles
        self.on_gpu = config.scaling.use_gpu
        self.backend = "nccl" if self.on_gpu else weight_transfer.GLOO_BACKEND
        self.bucket_bytes = int(config.sync.bucket_mb * 2**20)
        self.timeout_s = config.sync.timeout_s
        self.ranks_per_engine = config.scaling.gpus_per_engine if self.on_gpu else 1
        self.verify_every = config.sync.verify_every_steps
        self.say = say
        self.engines = roles.policy_engines + roles.mixed_engines
        self.names = engine_names(roles)
        self.group: _Group | None = None
        self.fallback = ObjectStoreTransport(roles)
        self.failed_in_a_row = 0
        self.standby: _Standby | None = None

    # --- the group ------------------------------------------------------------------------------

    def _engine_pids(self) -> list[int]:
        refs = [engine.weights_version_and_pid.remote() for engine in self.engines]
        return [pid for _, pid in wait_for_engines(refs, self.names, self.timeout_s, "answering before a sync")]

    def _open_group(self, pids: list[int]) -> _Group:
        from vllm.distributed.weight_transfer import WeightTransferTrainerFactory

        from mentor_ray.rollout import weight_transfer

        client = EngineFleetClient(self.engines, self.names, self.ranks_per_engine, self.timeout_s)
        source = weight_transfer.LatestWeights(device=torch.device("cuda") if self.on_gpu else None)
        address, port = ray.util.get_node_ip_address(), free_port("")
        world_size = 1 + len(self.engines) * self.ranks_per_engine
        if self.on_gpu:  # untested here (needs CUDA): vLLM's own NCCL sender
            from vllm.distributed.weight_transfer.nccl_engine import NCCLTrainerInitInfo

            init_info: Any = NCCLTrainerInitInfo(
                master_address=address, master_port=port, world_size=world_size,
                packed_buffer_size_bytes=self.bucket_bytes, rank=0,
            )
        else:
            init_info = weight_transfer.GlooTrainerInitInfo(
                master_address=address, master_port=port, world_size=world_size,
                bucket_bytes=self.bucket_bytes, timeout_s=self.timeout_s, rank=0,
            )
        sender = _bounded(
            lambda: WeightTransferTrainerFactory.trainer_init(init_info, client=client, source=source),
            self.timeout_s * 2, "opening the transfer group",
        )
        return _Group(sender, client, source, pids)

    def _lost_engines(self) -> str:
        """Which engines the group lost (a gloo error names a socket, not an engine)."""
        if self.group is None:
            return ""
        refs = [engine.weights_version_and_pid.remote() for engine in self.engines]
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=min(5.0, self.timeout_s))
        lost = []
        for name, ref, pid in zip(self.names, refs, self.group.pids):
            if ref not in ready:
                lost.append(f"{name} (not answering)")
                continue
            try:
                if ray.get(ref)[1] != pid:
                    lost.append(f"{name} (died; Ray restarted it)")
            except Exception:  # noqa: BLE001 - an engine that cannot answer is lost
                lost.append(f"{name} (dead)")
        return f"; lost: {', '.join(lost)}" if lost else ""

    def _drop_group(self) -> None:
        if self.group is not None:
            self.group.sender.shutdown()
            self.group = None

    # --- one sync -------------------------------------------------------------------------------

    def publish(self, version: int, weights: dict[str, torch.Tensor]) -> dict[str, float]:
        if self.failed_in_a_row >= MAX_FAILED_IN_A_ROW:
            return self.fallback.publish(version, weights)
        metrics: dict[str, float] = {}
        if self.standby is not None:  # the last sync's copy, put beside the rollout since
            self.standby.wait(metrics)
            self.standby = None
        try:
            metrics.update(self._send(version, weights))
            self.failed_in_a_row = 0
        except WeightSyncError as error:
            weights_ref = _Standby(self.roles.weight_store, version, weights).wait(metrics)
            lost = self._lost_engines()
            self._drop_group()
            self.failed_in_a_row += 1
            then = ("the next sync makes a new transfer group" if self.failed_in_a_row < MAX_FAILED_IN_A_ROW else
                    f"after {MAX_FAILED_IN_A_ROW} failures in a row the rest of the run uses the object store")
            self.say(f"[sync] weights v{version} by collective failed: {error}{lost}. They go by object store; {then}.")
            metrics.update(self.roles.publish_weights(version, weights, weights_ref=weights_ref))
            metrics["sync/collective"] = 0.0
            metrics["sync/collective_failures"] = 1.0
            return metrics
        # The standby copy goes into the object store after the broadcast, beside the next
        # rollout, not on the sync's path: whoever cannot take a broadcast (an engine Ray
        # restarts) reads it, and such an engine waits for it (RolloutEngineActor._stored_version).
        ray.get(self.roles.weight_store.expect.remote(version))
        self.standby = _Standby(self.roles.weight_store, version, weights)
        return metrics

    def _send(self, version: int, weights: dict[str, torch.Tensor]) -> dict[str, float]:
        metrics: dict[str, float] = {"sync/collective": 1.0, "sync/collective_failures": 0.0}
        checking = time.perf_counter()
        pids = self._engine_pids()
        if self.group is not None and self.group.pids != pids:
            self.say(f"[sync] an engine was replaced since the last sync: a new transfer group for v{version}")
            self._drop_group()
        if self.group is None:
            started = time.perf_counter()
            self.group = self._open_group(pids)
            metrics["sync/handshake_seconds"] = time.perf_counter() - started
        group = self.group
        group.source.weights = weights
        group.client.version = str(version)
        verify = self.verify_every > 0 and version % self.verify_every == 0
        if hasattr(group.sender, "checksums"):
            group.sender.checksums = verify
        started = time.perf_counter()
        _bounded(group.sender.send_weights, self.timeout_s * 3, f"sending weights v{version}")
        metrics["sync/transfer_seconds"] = time.perf_counter() - started
        metrics["sync/check_seconds"] = started - checking
        receipts = group.client.receipts
        sent = getattr(group.sender, "sent", None)
        if sent is not None:
            for name, receipt in zip(self.names, receipts):
                if receipt["bytes"] != sent.bytes or receipt["bucket_checksums"] != sent.bucket_checksums:
                    raise WeightSyncError(
                        f"{name} received {receipt['bytes']} bytes in {receipt['buckets']} buckets, checksums "
                        f"{receipt['bucket_checksums']}; sent {sent.bytes} bytes, checksums {sent.bucket_checksums}"
                    )
            metrics["sync/buckets"] = float(sent.buckets)
            metrics["sync/sender_broadcast_seconds"] = sent.transfer_seconds
            metrics["sync/sender_pack_seconds"] = sent.pack_seconds
            metrics["sync/sender_wait_for_loads_seconds"] = sent.receivers_seconds
            metrics["transfer/weights_bytes"] = float(sent.bytes)
            metrics["transfer/weights_bytes_to_engines"] = float(sum(r["bytes"] for r in receipts))
        if receipts:
            metrics["sync/engine_transfer_seconds_max"] = max(r.get("transfer_seconds", 0.0) for r in receipts)
            metrics["sync/engine_load_seconds_max"] = max(r.get("load_seconds", 0.0) for r in receipts)
            versions = [float(r["weights_version"]) for r in receipts]
            metrics["sync/engine_weights_version_min"] = min(versions)
            metrics["sync/engine_weights_version_max"] = max(versions)
        if verify:
            metrics["sync/checked_engines"] = float(len(receipts))
        return metrics

    def close(self) -> None:
        self._drop_group()


class _Standby:
    """The weights put into the object store and published to the `WeightStore`, in a thread."""

    def __init__(self, weight_store: Any, version: int, weights: dict[str, torch.Tensor]) -> None:
        self.outcome: dict[str, Any] = {}

        def put() -> None:
            started = time.perf_counter()
            try:
                ref = ray.put(weights)
                ray.get(weight_store.publish.remote(version, [ref]))
                self.outcome["ref"] = ref
            except BaseException as error:  # noqa: BLE001 - raised by wait()
                self.outcome["error"] = error
            self.outcome["seconds"] = time.perf_counter() - started

        self.thread = threading.Thread(target=put, name="weight-sync: standby copy", daemon=True)
        self.thread.start()

    def wait(self, metrics: dict[str, float]) -> ray.ObjectRef:
        """Its reference once stored; `sync/standby_put_seconds` goes into `metrics`."""
        self.thread.join()
        if "error" in self.outcome:
            raise self.outcome["error"]
        metrics["sync/standby_put_seconds"] = self.outcome["seconds"]
        return self.outcome["ref"]


def make_weight_transport(config: MentorConfig, roles: RolloutRoles, say=print):
    """The transport `sync.transport` names (see the module docstring for when to pick which)."""
    if config.sync.transport == "collective":
        return CollectiveTransport(roles, config, say)
    return ObjectStoreTransport(roles)


def check_engines_agree(roles: RolloutRoles, timeout_s: float) -> int:
    """vLLM's weight checker on every engine: the policy's weights, as each engine loaded and
    processed them, must be byte-identical across engines, and a mixed engine's draft must
    equal its policy half. Returns the number of engines checked; raises naming the first
    engine and tensor that differ."""
    engines = roles.policy_engines + roles.mixed_engines
    if not engines:
        return 0
    names = engine_names(roles)
    digests = wait_for_engines(
        [engine.policy_weight_digests.remote() for engine in engines], names, timeout_s, "computing weight digests"
    )
    reference = {k: v for k, v in digests[0].items() if not k.startswith("draft.")}
    for name, engine_digests in zip(names, digests):
        policy = {k: v for k, v in engine_digests.items() if not k.startswith("draft.")}
        draft = {k.removeprefix("draft."): v for k, v in engine_digests.items() if k.startswith("draft.")}
        for label, held in ((name, policy), (f"{name}'s draft", draft or reference)):
            differing = sorted(k for k in reference.keys() | held.keys() if reference.get(k) != held.get(k))
            if differing:
                raise WeightSyncError(
                    f"{label} holds policy weights that differ from {names[0]}'s: {differing[:5]}"
                    f"{' ...' if len(differing) > 5 else ''} ({len(differing)} tensors)"
                )
    return len(engines)


def _bounded(call, timeout_s: float, doing: str):
    """`call()` in a thread, waited on at most `timeout_s` (a collective stuck on a lost peer
    can ignore its own timeout on some backends; the caller moves on and drops the group)."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = call()
        except BaseException as error:  # noqa: BLE001 - handed to the caller below
            outcome["error"] = error

    thread = threading.Thread(target=run, name=f"weight-sync: {doing}", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        raise WeightSyncError(f"{doing} did not finish within {timeout_s:g} s")
    if "error" in outcome:
        error = outcome["error"]
        if isinstance(error, WeightSyncError):
            raise error
        raise WeightSyncError(f"{doing}: {_first_line(error)}") from error
    return outcome.get("value")


def _first_line(error: BaseException) -> str:
    cause = getattr(error, "cause", None)  # a RayTaskError's own error, without the traceback
    if isinstance(cause, BaseException):
        error = cause
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:500]

