"""Memory per device of each role of a run, in bytes: pure functions of a model's shape and the
run's settings, for the capacity plan (`pipelines/plan.py`).

Learners (one DeepSpeed worker per device):
- model states: DeepSpeed's own estimators' formulas (`estimate_zero2_model_states_mem_needs`,
  `estimate_zero3_model_states_mem_needs`; tests/test_plan.py checks against them), with 16-bit
  weights under bf16, and the same count in 4-byte units for fp32. ZeRO-1 has no estimator in
  DeepSpeed: full 16-bit weights and gradients, optimizer states partitioned.
- DeepSpeed's communication buckets at its default sizes (the learner does not set them).
- activations of one micro-batch at the longest sequence the recipe allows, through the chunked
  scorer (`mentor_ray/token_scoring.py`). Measured on an H200 (benchmarks/RESULTS.md, "The
  capacity plan"): without gradient checkpointing each layer keeps (16 h + 3 I) values per token
  (within 7% at three widths); with it, the estimate is the checkpointed layer inputs (L h per
  token) plus one whole layer's activations, an upper bound (measured 0.52-0.61 of it).
  The vocabulary part is one chunk of 16-bit logits and their fp32 log-probs.
Weights by collective (`sync.transport: collective`): tensors travel in packed buckets
(`transfer_buckets`); on GPUs the sender and every engine hold `TRANSFER_BUFFERS` of them at
once (vLLM's packed NCCL transfer); on CPU the gloo sender packs, and each receiver takes, the
whole update before loading, as the object store path holds a whole copy on each side.
Engines (one vLLM engine per `gpus_per_engine` devices, weights and KV cache split across them):
- weights of the policy, and of the expert too in a mixed engine (it runs both);
- KV cache: room left in vLLM's memory fraction after weights and its working buffers; vLLM
  refuses to start without room for one sequence of max_model_len, and above that the room
  decides how many full-length sequences decode at once (it preempts the rest).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from mentor_ray.model_shapes import ModelShape

GIB = 2**30
# DeepSpeed's defaults for the buckets the learner leaves unset (elements).
ZERO_REDUCE_BUCKET = 500_000_000
ZERO_ALLGATHER_BUCKET = 500_000_000
ZERO3_PREFETCH_BUCKET = 50_000_000
# CUDA context, NCCL and the caching allocator's slack, per process: a flat allowance.
RUNTIME_RESERVE_BYTES = 2 * GIB
# vLLM's share of a device (EngineSettings.gpu_memory_utilization).
VLLM_MEMORY_FRACTION = 0.85
# Tokens of one vLLM forward in its profiling run and in chunked prefill (V1's default batch).
VLLM_BATCH_TOKENS = 8192


# Buckets each side of a NCCL sync holds at once: vLLM's packed transfer double-buffers
# (DEFAULT_PACKED_NUM_BUFFERS).
TRANSFER_BUFFERS = 2


def transfer_buckets(byte_sizes: Sequence[int], bucket_bytes: int) -> list[range]:
    """Consecutive tensors grouped into buckets of at most `bucket_bytes` (a larger tensor
    travels alone). The sender and every receiver call this on the same sizes, so both cut the
    stream alike and only names, dtypes and shapes cross the control plane."""
    if bucket_bytes <= 0:
        raise ValueError(f"bucket_bytes must be > 0, got {bucket_bytes}")
    buckets: list[range] = []
    start, filled = 0, 0
    for index, size in enumerate(byte_sizes):
        if index > start and filled + size > bucket_bytes:
            buckets.append(range(start, index))
            start, filled = index, 0
        filled += size
    if start < len(byte_sizes):
        buckets.append(range(start, len(byte_sizes)))
    return buckets


@dataclass(frozen=True)
class TransferPlan:
    """What a collective sync of the policy moves and holds, from its shape alone."""

    weights: int  # bytes of the policy in the run's dtype
    bucket: int  # the largest bucket: the bucket size, or the largest tensor when it is bigger
    buckets: int

    @property
    def held_per_side(self) -> int:
        return TRANSFER_BUFFERS * self.bucket


def transfer_plan(shape: ModelShape, value_bytes: int, bucket_bytes: int) -> TransferPlan:
    weights = shape.parameters() * value_bytes
    largest_tensor = max(shape.vocab, shape.intermediate) * shape.hidden * value_bytes
    bucket = min(weights, max(bucket_bytes, largest_tensor))
    return TransferPlan(weights=weights, bucket=bucket, buckets=max(1, -(-weights // bucket_bytes)))


def dtype_bytes(dtype: str) -> int:
    return {"float32": 4, "bfloat16": 2, "float16": 2}[dtype]


def zero_model_state_bytes(params: int, largest_layer: int, stage: int, world: int, *, half_precision: bool,
                           offload_optimizer: bool = False, offload_params: bool = False) -> int:
    """Weights, gradients and Adam states on one device. With 16-bit training DeepSpeed keeps a
    16-bit copy (2 bytes) and 16 bytes more per parameter (fp32 master, gradient, two moments),
    its estimators' 18 = 2 + 16 for the partitioned part; fp32 training needs no separate copy."""
    weight = 2 if half_precision else 4
    partitioned = 16 if half_precision else 12  # (fp32 master +) gradient + 2 moments
    if stage == 3:
        gathered = 4 * largest_layer  # the estimator's allowance for one gathered module
        if offload_params:
            return gathered
        if offload_optimizer:
            return gathered + weight * params // world
        return gathered + (weight + partitioned) * params // world
    if offload_optimizer:
        return weight * params
    if stage == 2:
        return weight * params + (weight + partitioned) * params // world
    return 2 * weight * params + partitioned * params // world  # stage 1: gradients whole


def zero_buffer_bytes(stage: int, half_precision: bool) -> int:
    unit = 2 if half_precision else 4
    if stage == 3:
        return (ZERO_REDUCE_BUCKET + ZERO3_PREFETCH_BUCKET) * unit
    return (ZERO_REDUCE_BUCKET + ZERO_ALLGATHER_BUCKET) * unit


def learner_activation_bytes(shape: ModelShape, tokens: int, *, value_bytes: int, checkpointing: bool,
                             logit_chunk_tokens: int | None, scored_tokens: int) -> int:
    """Peak activations of one forward + backward over `tokens` tokens (a micro-batch, padded),
    `scored_tokens` of them responses. See the module docstring for where the terms come from."""
    per_layer = 16 * shape.hidden + 3 * shape.intermediate
    if checkpointing:
        decoder = tokens * (shape.layers * shape.hidden + per_layer) * value_bytes
    else:
        decoder = tokens * shape.layers * per_layer * value_bytes
    chunk = min(scored_tokens, logit_chunk_tokens or scored_tokens)
    vocabulary = chunk * shape.vocab * (value_bytes + 4)
    return decoder + vocabulary


@dataclass(frozen=True)
class LearnerMemory:
    model_states: int
    buffers: int
    activations: int
    runtime: int

    @property
    def total(self) -> int:
        return self.model_states + self.buffers + self.activations + self.runtime

    def parts(self) -> str:
        return (f"model states {self.model_states / GIB:.1f} + activations {self.activations / GIB:.1f} + "
                f"buffers {self.buffers / GIB:.1f} + runtime {self.runtime / GIB:.1f}")


def learner_memory(shape: ModelShape, *, stage: int, world: int, half_precision: bool, offload_optimizer: bool,
                   offload_params: bool, micro_batch: int, sequence_tokens: int, response_tokens: int,
                   checkpointing: bool, logit_chunk_tokens: int | None, on_gpu: bool) -> LearnerMemory:
    value_bytes = 2 if half_precision else 4
    return LearnerMemory(
        model_states=zero_model_state_bytes(shape.parameters(), shape.largest_layer_parameters(), stage, world,
                                            half_precision=half_precision, offload_optimizer=offload_optimizer,
                                            offload_params=offload_params),
        buffers=zero_buffer_bytes(stage, half_precision) if world > 1 else 0,
        activations=learner_activation_bytes(shape, micro_batch * sequence_tokens, value_bytes=value_bytes,
                                             checkpointing=checkpointing, logit_chunk_tokens=logit_chunk_tokens,
                                             scored_tokens=micro_batch * response_tokens),
        runtime=RUNTIME_RESERVE_BYTES if on_gpu else 0,
    )


@dataclass(frozen=True)
class EngineMemory:
    budget: int  # what vLLM may use of one device
    weights: int
    working: int  # activations of one batch and the sampler's logits
    kv_per_sequence: int  # KV cache of one max_model_len sequence, this device's share
    sequences_in_flight: int

    @property
    def kv_room(self) -> int:
        return self.budget - self.weights - self.working

    @property
    def full_length_sequences(self) -> int:
        """Sequences of max_model_len whose KV cache fits at once (0: vLLM refuses to start)."""
        return max(0, self.kv_room // self.kv_per_sequence)

    @property
    def kv_wanted(self) -> int:
        """KV cache for every sequence in flight at max_model_len: the most it could use."""
        return self.kv_per_sequence * self.sequences_in_flight

    @property
    def needed(self) -> int:
        """The least vLLM starts with: weights, buffers, one full-length sequence."""
        return self.weights + self.working + self.kv_per_sequence


def engine_memory(shapes: list[ModelShape], *, device_bytes: int, fraction: float, value_bytes: int,
                  tensor_parallel: int, max_model_len: int, max_num_seqs: int, sequences_in_flight: int) -> EngineMemory:
    """One device of an engine that runs the models in `shapes` (policy; policy and expert)."""
    weights = sum(s.parameters() for s in shapes) * value_bytes // tensor_parallel
    batch = min(VLLM_BATCH_TOKENS, max_model_len * max_num_seqs)
    activations = max(batch * (4 * s.hidden + 2 * s.intermediate) * value_bytes // tensor_parallel for s in shapes)
    # fp32 logits, probabilities and log-probabilities of every sequence of a decoding step.
    sampler = sum(max_num_seqs * s.vocab * 4 * 3 for s in shapes)
    kv = sum(s.kv_bytes_per_token(value_bytes) for s in shapes) * max_model_len // tensor_parallel
    return EngineMemory(budget=int(device_bytes * fraction), weights=weights, working=activations + sampler,
                        kv_per_sequence=kv, sequences_in_flight=min(max_num_seqs, sequences_in_flight))
