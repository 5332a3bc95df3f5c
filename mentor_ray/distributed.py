"""Collectives between learner ranks, with the one rule for where their tensors live.

NCCL moves only CUDA tensors and gloo only CPU tensors, so a collective that works on gloo can
fail on a GPU cluster if a tensor is left on the wrong device. Every collective the project
makes goes through this module: it moves its inputs to `collective_device()`, the device the
process group's backend requires, and hands results back on the CPU. The tests run the same
functions on gloo.

Every collective (all ranks call it, in the same order) is a no-op without a process group or
with one rank. `ensure_process_group` checks the group a launcher made, or makes a lone
process its own.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def collective_device() -> torch.device:
    """The device the process group's backend moves tensors on: this rank's GPU for NCCL
    (the one `torch.cuda.set_device` chose, as Ray Train and DeepSpeed set it), else the CPU."""
    if dist.is_available() and dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_values(values: Sequence[float], op: dist.ReduceOp = dist.ReduceOp.SUM) -> list[float]:
    """Element-wise reduction of a few Python numbers over ranks (float64, exact for counts)."""
    tensor = torch.tensor([float(v) for v in values], dtype=torch.float64)
    if not _distributed():
        return tensor.tolist()
    tensor = tensor.to(collective_device())
    dist.all_reduce(tensor, op=op)
    return tensor.cpu().tolist()


def all_gather_variable_length(local: torch.Tensor) -> torch.Tensor:
    """Every rank's 1-D tensor concatenated in rank order (lengths may differ), on the CPU."""
    local = local.detach().flatten()
    if not _distributed():
        return local.cpu()
    device = collective_device()
    local = local.to(device)
    world_size = dist.get_world_size()
    length = torch.tensor([local.numel()], dtype=torch.long, device=device)
    lengths = [torch.zeros_like(length) for _ in range(world_size)]
    dist.all_gather(lengths, length)
    counts = [int(n) for n in lengths]
    padded = torch.zeros(max(counts), dtype=local.dtype, device=device)
    padded[: local.numel()] = local
    pieces = [torch.zeros_like(padded) for _ in range(world_size)]
    dist.all_gather(pieces, padded)
    return torch.cat([piece[:count] for piece, count in zip(pieces, counts)]).cpu()


def all_gather_objects(value: Any) -> list[Any]:
    """Every rank's picklable object, in rank order. Plain data only: see `broadcast_object`."""
    if not _distributed():
        return [value]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def broadcast_object(value: Any, src: int = 0) -> Any:
    """Rank `src`'s picklable object on every rank. Plain data only: torch pickles a Ray
    `ObjectRef` without its owner's address, and `ray.get` of it on another rank waits forever
    (pipelines/rollout_shards.py sends refs through Ray instead)."""
    if not _distributed():
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=src, device=collective_device())
    return holder[0]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on `host` now ("" for every interface: a port other nodes connect to)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def ensure_process_group(world_size: int, rank: int) -> None:
    """Reuse the group Ray Train made; a lone process (world_size 1) gets its own gloo group."""
    if dist.is_initialized():
        if dist.get_world_size() != world_size or dist.get_rank() != rank:
            raise ValueError(
                f"PolicyLearner(world_size={world_size}, rank={rank}) does not match the initialised "
                f"process group (world_size={dist.get_world_size()}, rank={dist.get_rank()})"
            )
        if "LOCAL_RANK" not in os.environ:
            raise RuntimeError(
                "LOCAL_RANK is not set; DeepSpeed needs it (Ray Train's TorchTrainer and torchrun set it)"
            )
        return
    if world_size != 1:
        raise RuntimeError(
            f"world_size={world_size} but torch.distributed is not initialised; run the learner inside "
            "Ray Train's TorchTrainer (or another launcher that creates the process group)"
        )
    for name, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1")):
        os.environ.setdefault(name, value)
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
