"""Weights from learner rank 0 to the engines by collective, through vLLM's weight-transfer API.

vLLM 0.32 ships the API (`vllm.distributed.weight_transfer`): a trainer-side engine built by
`WeightTransferTrainerFactory.trainer_init` drives `start_weight_update`, `update_weights` and
`finish_weight_update` on the inference side while it broadcasts the tensors, and a worker-side
engine receives them. Its backends are CUDA ones (NCCL, IPC, ...). This module registers, with
both of vLLM's factories, a `gloo` backend that runs the same handshake and the same packed
buckets on CPU, so the path is tested here across the local cluster's nodes, and a `mentor_nccl`
worker engine: vLLM's NCCL engine pointed at the policy's weights (see below).

What is ours and why:
- Targets. vLLM loads an update into the worker's whole model. The mixed engine's model is the
  policy and the expert side by side, and its speculative draft is the policy again, so both
  backends load into the policy half and the draft (`_PolicyTargets`), and never touch the
  expert (as `MentorWorkerExtension.mentor_reload_policy_weights` does for the object store).
- Buckets. Sender and receivers cut the same tensor list into the same buckets
  (`mentor_ray.capacity.transfer_buckets`), so only names, dtypes and shapes cross the control plane.
- A receipt. Each gloo receiver keeps bytes, bucket count and, when asked, a CRC32 of every
  bucket; the sender compares them with what it sent (the loop's check of each sync).
- Bounded waits. The gloo group is made with the sync's timeout: a member that died or hangs
  turns into an error in every other member instead of a wait without end.

The learner's side (`TrainerWeightTransfer`, the client that fans the four calls out to the
engine actors, and the fallback to the object store) is `pipelines/weight_sync.py`.
"""

from __future__ import annotations

import datetime
import math
import time
import zlib
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn
from vllm.distributed.weight_transfer.base import (
    ParamMeta,
    TrainerInitInfo,
    TrainerWeightTransferEngine,
    VLLMWeightSyncClient,
    WeightSource,
    WeightTransferEngine,
    WeightTransferInitInfo,
    WeightTransferUpdateInfo,
)
from vllm.distributed.weight_transfer.factory import (
    WeightTransferEngineFactory,
    WeightTransferTrainerFactory,
)
from vllm.distributed.weight_transfer.nccl_engine import NCCLWeightTransferEngine
from vllm.distributed.weight_transfer.packed_tensor import unpack_tensor

from mentor_ray.capacity import transfer_buckets

GLOO_BACKEND = "gloo"
# The worker side of NCCL: vLLM's engine, loading into the policy half and the draft. The
# trainer side is vLLM's own `nccl` trainer engine (it only broadcasts).
NCCL_WORKER_BACKEND = "mentor_nccl"


def tensor_bytes(shape: Sequence[int], dtype: torch.dtype) -> int:
    return math.prod(shape) * dtype.itemsize


def _crc32(buffer: torch.Tensor) -> int:
    return zlib.crc32(buffer.numpy())


def open_gloo_group(master_address: str, master_port: int, rank: int, world_size: int, timeout_s: float):
    """A gloo process group of its own (torch's default group untouched: the learner's is
    DeepSpeed's, the engine's is vLLM's), rendezvous through a TCPStore on rank 0.

    `ProcessGroupGloo` is used directly: `dist.broadcast` only accepts groups torch's c10d
    registry knows, which a group outside the default world is not."""
    from torch.distributed import PrefixStore, ProcessGroupGloo, TCPStore

    timeout = datetime.timedelta(seconds=timeout_s)
    store = TCPStore(master_address, master_port, world_size, rank == 0, timeout=timeout, wait_for_workers=False)
    return ProcessGroupGloo(PrefixStore("mentor_weights", store), rank, world_size, timeout), store


def gloo_broadcast(group: Any, tensor: torch.Tensor, root: int = 0) -> None:
    import torch.distributed as dist

    options = dist.BroadcastOptions()
    options.rootRank = root
    group.broadcast([tensor], options).wait()


# ---- the engine (worker) side ---------------------------------------------------------------


class _LoadIntoAll:
    """What an engine's `self.model` is during an update: every target loads each chunk."""

    def __init__(self, targets: list[nn.Module]) -> None:
        self.targets = targets

    def load_weights(self, weights) -> set[str]:
        weights = list(weights)
        loaded: set[str] = set()
        for target in self.targets:
            loaded |= set(target.load_weights(iter(weights)) or ())
        return loaded


class _PolicyTargets:
    """Start and finish an update over the policy's copies in this worker: the plain model, or
    the mixed model's policy half, plus the speculative draft where there is one
    (`draft_model`, attached by `MentorWorkerExtension.mentor_prepare_weight_transfer`)."""

    draft_model: nn.Module | None = None
    _targets: tuple[nn.Module, ...] = ()
    _updating = False

    def policy_targets(self) -> list[nn.Module]:
        from mentor_ray.rollout.mixed_model import policy_module

        return [t for t in (policy_module(self._default_model), self.draft_model) if t is not None]

    def start_weight_update(self) -> None:
        from vllm.model_executor.model_loader.reload import initialize_layerwise_reload

        self._targets = tuple(self.policy_targets())
        for target in self._targets:
            initialize_layerwise_reload(target)
        self._updating = True
        self.model = _LoadIntoAll(list(self._targets))

    def finish_weight_update(self) -> None:
        from vllm.model_executor.model_loader.reload import finalize_layerwise_reload

        from mentor_ray.rollout.mixed_model import repack_tied_head

        self._updating = False
        for target in self._targets:
            finalize_layerwise_reload(target, self.model_config)
            repack_tied_head(target)
        self.model = self._default_model

    def abort_weight_update(self) -> None:
        """After a failed transfer: finish the layer-wise reload on what arrived, so the model is
        whole again (a mix of old and new layers, which the caller must replace before it
        generates)."""
        if self._updating:
            self.finish_weight_update()
        self.model = self._default_model


@dataclass(kw_only=True)
class GlooInitInfo(WeightTransferInitInfo):
    """What one receiver needs to join: the rendezvous, its rank, the buckets' size."""

    master_address: str
    master_port: int
    rank: int
    world_size: int
    bucket_bytes: int
    timeout_s: float


@dataclass
class GlooUpdateInfo(WeightTransferUpdateInfo):
    """One update's tensors, in send order; `checksums` asks for a CRC32 per bucket."""

    names: list[str]
    dtype_names: list[str]
    shapes: list[list[int]]
    checksums: bool = False

    def __post_init__(self) -> None:
        if not len(self.names) == len(self.dtype_names) == len(self.shapes):
            raise ValueError(
                f"update info lists differ in length: {len(self.names)} names, "
                f"{len(self.dtype_names)} dtypes, {len(self.shapes)} shapes"
            )

    def metas(self) -> list[tuple[str, torch.Size, torch.dtype]]:
        return [(n, torch.Size(s), getattr(torch, d)) for n, d, s in zip(self.names, self.dtype_names, self.shapes)]


@dataclass
class TransferReceipt:
    """What a receiver got in its last update (or a sender sent)."""

    bytes: int = 0
    buckets: int = 0
    bucket_checksums: list[int] = field(default_factory=list)
    transfer_seconds: float = 0.0  # waiting inside the broadcasts
    load_seconds: float = 0.0  # vLLM's weight loaders on what arrived
    pack_seconds: float = 0.0  # the sender's copying of tensors into buckets
    receivers_seconds: float = 0.0  # the sender's wait, after its last broadcast, for the receivers' loads


class GlooWeightTransferEngine(_PolicyTargets, WeightTransferEngine[GlooInitInfo, GlooUpdateInfo]):
    """Receives packed buckets by gloo broadcast and loads them into the policy's copies."""

    init_info_cls = GlooInitInfo
    update_info_cls = GlooUpdateInfo

    def __init__(self, config, vllm_config, device, model) -> None:
        super().__init__(config, vllm_config, device, model)
        self.group: Any = None
        self._store: Any = None
        self.bucket_bytes = 0
        self.receipt = TransferReceipt()

    def init_transfer_engine(self, init_info: GlooInitInfo) -> None:
        self.shutdown()
        self.bucket_bytes = init_info.bucket_bytes
        self.group, self._store = open_gloo_group(
            init_info.master_address, init_info.master_port, init_info.rank, init_info.world_size, init_info.timeout_s
        )

    def update_weights(self, update_info: dict[str, Any]) -> None:
        # The base class synchronises an accelerator after receiving; on CPU there is none.
        self.receive_weights(self.parse_update_info(update_info))

    def receive_weights(self, update_info: GlooUpdateInfo) -> None:
        """Every bucket first, then the loads: the sender's broadcasts then never wait for vLLM's
        loaders, and on CPU (this backend's only home) a loader running beside gloo's receive
        slows both (measured: benchmarks/RESULTS.md). The engine holds one copy of the weights
        meanwhile, as the object store path does; each bucket is freed once loaded."""
        if self.group is None:
            raise RuntimeError("gloo weight transfer not initialised: init_weight_transfer_engine comes first")
        metas = update_info.metas()
        sizes = [tensor_bytes(shape, dtype) for _, shape, dtype in metas]
        receipt = TransferReceipt()
        arrived: list[tuple[range, torch.Tensor]] = []
        failure = None
        buckets = transfer_buckets(sizes, self.bucket_bytes)
        started = time.perf_counter()
        try:
            for bucket in buckets:
                buffer = torch.empty(sum(sizes[i] for i in bucket), dtype=torch.uint8)
                gloo_broadcast(self.group, buffer)
                arrived.append((bucket, buffer))
        except RuntimeError as error:
            failure = f"receiving bucket {len(arrived) + 1} of {len(buckets)} failed: {str(error).splitlines()[0]}"
        if failure is not None:
            raise RuntimeError(failure)  # out here: gloo's error (and its traceback) let go first
        receipt.transfer_seconds = time.perf_counter() - started
        started = time.perf_counter()
        while arrived:
            bucket, buffer = arrived.pop(0)
            receipt.bytes += buffer.numel()
            receipt.buckets += 1
            if update_info.checksums:
                receipt.bucket_checksums.append(_crc32(buffer))
            self.model.load_weights(unpack_tensor(
                buffer, [metas[i][0] for i in bucket], [list(metas[i][1]) for i in bucket],
                [metas[i][2] for i in bucket], [sizes[i] for i in bucket],
            ))
            del buffer
        receipt.load_seconds = time.perf_counter() - started
        self.receipt = receipt

    def shutdown(self) -> None:
        # A gloo group has no collective teardown; dropping it closes its connections, which
        # any peer still inside a broadcast sees as an error.
        self.group = None
        self._store = None


class MentorNcclWeightTransferEngine(_PolicyTargets, NCCLWeightTransferEngine):
    """vLLM's NCCL receiver, loading into the policy's copies. Untested here (needs CUDA)."""


# ---- the learner (trainer) side ---------------------------------------------------------------


class LatestWeights(WeightSource):
    """The learner's exported weights of the current sync (a full state dict on rank 0), on
    `device` when the backend needs them there (NCCL moves CUDA tensors only)."""

    def __init__(self, device: torch.device | None = None) -> None:
        self.weights: dict[str, torch.Tensor] = {}
        self.device = device

    def metadata(self) -> list[ParamMeta]:
        return [ParamMeta(name, t.dtype, tuple(t.shape)) for name, t in self.weights.items()]

    def __iter__(self) -> Iterator[tuple[str, torch.Tensor]]:
        for name, tensor in self.weights.items():
            yield name, tensor if self.device is None else tensor.to(self.device)


@dataclass
class GlooTrainerInitInfo(TrainerInitInfo):
    backend: ClassVar[str] = GLOO_BACKEND

    master_address: str
    master_port: int
    world_size: int  # the sender and every receiving engine worker
    bucket_bytes: int
    timeout_s: float


class GlooTrainerWeightTransferEngine(TrainerWeightTransferEngine[GlooTrainerInitInfo]):
    """Learner rank 0 broadcasts packed buckets; the client drives the receivers meanwhile.

    The client (`pipelines.weight_sync.EngineFleetClient`) gives each engine its own rank in
    the group from the worker-side init info it is handed, and bounds every call in time."""

    init_info_cls = GlooTrainerInitInfo

    def __init__(self, *, client: VLLMWeightSyncClient, source: WeightSource, is_sender: bool, init_info: GlooTrainerInitInfo):
        super().__init__(client=client, source=source, is_sender=is_sender)
        self.init_info = init_info
        self.group: Any = None
        self._store: Any = None
        self.checksums = False
        self.sent = TransferReceipt()

    @classmethod
    def trainer_init(cls, init_info: GlooTrainerInitInfo, *, client: VLLMWeightSyncClient, source: WeightSource | None = None):
        if source is None:
            raise ValueError("the gloo weight transfer sends a WeightSource; none given")
        engine = cls(client=client, source=source, is_sender=init_info.is_sender, init_info=init_info)
        if not engine.is_sender:
            return engine
        worker_info = GlooInitInfo(
            master_address=init_info.master_address, master_port=init_info.master_port, rank=1,
            world_size=init_info.world_size, bucket_bytes=init_info.bucket_bytes, timeout_s=init_info.timeout_s,
        )
        # Receivers block inside their rendezvous until the sender joins: start theirs first.
        with _one_thread() as thread:
            joining = thread.submit(client.init_weight_transfer_engine, asdict(worker_info))
            engine.group, engine._store = open_gloo_group(
                init_info.master_address, init_info.master_port, 0, init_info.world_size, init_info.timeout_s
            )
            joining.result()
        return engine

    def send_weights(self) -> None:
        source = self.source
        assert source is not None
        metas = source.metadata()
        if not self.is_sender:
            return
        update_info = GlooUpdateInfo(
            names=[m.name for m in metas], dtype_names=[str(m.dtype).removeprefix("torch.") for m in metas],
            shapes=[list(m.shape) for m in metas], checksums=self.checksums,
        )
        sizes = [tensor_bytes(m.shape, m.dtype) for m in metas]
        tensors = [tensor for _, tensor in source]
        self.client.start_weight_update()
        sent = TransferReceipt()
        # The receivers' update_weights returns once they have every bucket: it runs beside the
        # broadcasts. The client bounds it in time, so the thread ends even if a receiver hangs.
        buckets = transfer_buckets(sizes, self.init_info.bucket_bytes)
        # Every bucket is packed before the receivers start waiting: on CPU a receiver waiting
        # inside gloo competes with the packing for the cores (measured: benchmarks/RESULTS.md).
        packing = time.perf_counter()
        packed = [torch.cat([tensors[i].detach().contiguous().view(-1).view(torch.uint8) for i in bucket]) for bucket in buckets]
        sent.pack_seconds = time.perf_counter() - packing
        sent.bucket_checksums = [_crc32(buffer) for buffer in packed] if update_info.checksums else []
        with _one_thread() as thread:
            receiving = thread.submit(self.client.update_weights, asdict(update_info))
            broken = None
            try:
                while packed:
                    buffer = packed.pop(0)
                    started = time.perf_counter()
                    gloo_broadcast(self.group, buffer)
                    sent.transfer_seconds += time.perf_counter() - started
                    sent.bytes += buffer.numel()
                    sent.buckets += 1
                    del buffer
            except RuntimeError as error:
                broken = f"broadcast of bucket {sent.buckets + 1} failed: {str(error).splitlines()[0]}"
            if broken is not None:
                # Raised out here, after the except block has let go of gloo's error: its
                # traceback holds the group, and only the group's last reference going away
                # closes its connections, which is what lets the receivers' waits end now.
                self.shutdown()
                raise RuntimeError(broken)
            waiting = time.perf_counter()
            receiving.result()
            sent.receivers_seconds = time.perf_counter() - waiting
        self.sent = sent
        self.client.finish_weight_update()

    def shutdown(self) -> None:
        self.group = None
        self._store = None


@contextmanager
def _one_thread() -> Iterator[ThreadPoolExecutor]:
    """A helper thread that is not joined on the way out: after a failure it may still be
    inside a call the client bounds in time, and joining would make the error wait for it."""
    thread = ThreadPoolExecutor(max_workers=1)
    try:
        yield thread
    finally:
        thread.shutdown(wait=False)


def register() -> None:
    """Make the backends known to vLLM's factories in this process (idempotent). Called by the
    `vllm.general_plugins` entry point, so every process vLLM starts has them."""
    if GLOO_BACKEND not in WeightTransferEngineFactory._registry:
        WeightTransferEngineFactory.register_engine(GLOO_BACKEND, GlooWeightTransferEngine)
    if NCCL_WORKER_BACKEND not in WeightTransferEngineFactory._registry:
        WeightTransferEngineFactory.register_engine(NCCL_WORKER_BACKEND, MentorNcclWeightTransferEngine)
    if GLOO_BACKEND not in WeightTransferTrainerFactory._registry:
        WeightTransferTrainerFactory.register_engine(GLOO_BACKEND, GlooTrainerWeightTransferEngine)


def worker_backend(on_gpu: bool) -> str:
    """The worker-side backend an engine is built with for the collective transport."""
    return NCCL_WORKER_BACKEND if on_gpu else GLOO_BACKEND
