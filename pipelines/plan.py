"""`python -m pipelines.plan --config FILE [--cluster cluster.yaml]`: does a recipe fit, before
`ray up`, before any engine starts.

For each role it prints the devices and CPUs it takes, the memory it needs per device (the sums
are in `mentor_ray/capacity.py`, the models' shapes in `mentor_ray/model_shapes.py`), the node
type it lands on and the bytes of one weight sync; then the GPUs the recipe needs against what
the cluster offers. Exits 2 naming the role that does not fit and by how much.

`pipelines.train` and `tuning.sweep` run the same check first (`check_plan`). GPU recipes are
planned on a cluster file's node types (`--cluster`, default the repository's cluster.yaml);
CPU recipes on this machine, where every role shares the host's memory.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from mentor_ray.capacity import (
    GIB,
    TRANSFER_BUFFERS,
    VLLM_MEMORY_FRACTION,
    EngineMemory,
    LearnerMemory,
    TransferPlan,
    dtype_bytes,
    engine_memory,
    learner_memory,
    transfer_plan,
)
from mentor_ray.config import ConfigError, MentorConfig
from mentor_ray.model_shapes import ModelShape, model_shape
from pipelines.resources import GRADER_CPUS, label_matches

DEFAULT_CLUSTER_FILE = Path(__file__).resolve().parents[1] / "cluster.yaml"
GPU_LABEL = "mentor-ray/gpu"
# Usable memory of the GPU kinds cluster.yaml's `mentor-ray/gpu` label names (MiB, as
# nvidia-smi reports them); another kind is read from its name (`<kind>-<N>gb`: N GB).
GPU_MEMORY_MIB = {"a100-40gb": 40960, "a100-80gb": 81920, "h100-80gb": 81559, "h200-141gb": 143771, "l40s-48gb": 46068}
ENGINE_MAX_NUM_SEQS = 256  # EngineSettings.max_num_seqs
CPU_KV_CACHE_BYTES = GIB  # VLLM_CPU_KVCACHE_SPACE=1 (mentor_ray.rollout.requests.CPU_ENGINE_ENV)


class PlanError(ConfigError):
    """A recipe that does not fit; the message is the plan's line for the role."""


@dataclass(frozen=True)
class NodeType:
    name: str
    cpus: float
    gpus: int
    labels: dict[str, str]
    max_workers: int
    gpu_memory: int | None = None  # bytes per GPU
    memory: int | None = None  # host bytes (this machine only)


@dataclass(frozen=True)
class ClusterSpec:
    source: str
    node_types: list[NodeType]
    max_workers: int

    @classmethod
    def from_yaml(cls, path: str | Path, gpu_memory_gib: float | None = None) -> ClusterSpec:
        import yaml

        path = Path(path)
        if gpu_memory_gib is not None and not gpu_memory_gib > 0:
            raise ConfigError(f"--gpu-memory-gib {gpu_memory_gib:g}: must be a positive number of GiB per GPU")
        try:
            data = yaml.safe_load(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"--cluster {path}: no such file") from None
        except yaml.YAMLError as error:
            # One line: the parser's own message spans several, with the offending text quoted.
            mark = getattr(error, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            problem = getattr(error, "problem", None) or str(error).splitlines()[0]
            raise ConfigError(f"--cluster {path}: not valid YAML{where}: {problem}") from None
        if not isinstance(data, dict) or not isinstance(data.get("available_node_types"), dict):
            raise ConfigError(f"--cluster {path}: no available_node_types (a Ray cluster file has them)")
        head = data.get("head_node_type")
        types = []
        for name, spec in data["available_node_types"].items():
            resources, labels = spec.get("resources") or {}, {str(k): str(v) for k, v in (spec.get("labels") or {}).items()}
            gpus = int(resources.get("GPU", 0))
            memory = None
            if gpus:
                memory = int(gpu_memory_gib * GIB) if gpu_memory_gib else _gpu_memory(labels.get(GPU_LABEL))
                if memory is None:
                    raise ConfigError(
                        f"--cluster {path}: node type {name} has {gpus} GPUs but no `{GPU_LABEL}` label naming their kind "
                        f"(e.g. a100-80gb; known: {sorted(GPU_MEMORY_MIB)}); or pass --gpu-memory-gib"
                    )
            workers = 1 if name == head else int(spec.get("max_workers", data.get("max_workers", 0)))
            types.append(NodeType(name, float(resources.get("CPU", 0)), gpus, labels, workers, memory))
        source = path.name if path.resolve() == DEFAULT_CLUSTER_FILE else str(path)
        return cls(source, types, int(data.get("max_workers", sum(t.max_workers for t in types))))

    @classmethod
    def this_machine(cls, cpus: float | None = None) -> ClusterSpec:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        return cls("this machine", [NodeType("this machine", float(cpus or cores), 0, {}, 1, None, _host_memory())], 0)

    def gpu_capacity(self, types: list[NodeType]) -> int:
        """GPUs the cluster can bring up on `types`, within its own max_workers (largest first)."""
        left, total = self.max_workers, 0
        for node_type in sorted(types, key=lambda t: -t.gpus):
            take = min(node_type.max_workers, left)
            total, left = total + take * node_type.gpus, left - take
        return total


def _gpu_memory(kind: str | None) -> int | None:
    if not kind:
        return None
    if kind in GPU_MEMORY_MIB:
        return GPU_MEMORY_MIB[kind] * 2**20
    found = re.search(r"(\d+)gb$", kind)
    return int(found.group(1)) * 10**9 if found else None


def _host_memory() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


@dataclass
class RolePlan:
    role: str
    count: int
    gpus_each: int
    cpus_each: float
    selector: dict[str, str]
    memory: int = 0  # bytes needed per device (per actor on CPU)
    parts: str = ""
    node_types: list[str] = field(default_factory=list)
    device_memory: int | None = None
    note: str = ""
    problem: str | None = None


@dataclass
class RunPlan:
    config: MentorConfig
    cluster: ClusterSpec
    roles: list[RolePlan]
    sync_bytes: int
    gpus_needed: int
    gpus_offered: int
    problems: list[str]
    transfer: TransferPlan | None = None  # sync.transport=collective

    @property
    def fits(self) -> bool:
        return not self.problems


def _gib(value: int | None) -> str:
    return "-" if value is None else f"{value / GIB:.1f} GiB"


def model_shapes(config: MentorConfig) -> tuple[ModelShape, ModelShape | None]:
    policy = model_shape(config.model.policy_path, "model.policy_path")
    expert = model_shape(config.model.expert_path, "model.expert_path") if config.guided and config.model.expert_path else None
    return policy, expert


def check_model_lengths(config: MentorConfig, shapes: tuple[ModelShape, ModelShape | None] | None = None) -> None:
    """The engines' context must be one the models have positions for (vLLM refuses otherwise,
    after engines have started)."""
    policy, expert = shapes or model_shapes(config)
    for key, reference, shape in (("model.policy_path", config.model.policy_path, policy),
                                  ("model.expert_path", config.model.expert_path, expert)):
        if shape is not None and shape.max_positions and config.model.max_model_len > shape.max_positions:
            raise ConfigError(
                f"model.max_model_len={config.model.max_model_len}: {key}={reference!r} has {shape.max_positions} positions "
                f"(max_position_embeddings); use at most {shape.max_positions}, with data.max_prompt_tokens + "
                f"rollout.max_response_tokens within it"
            )


def plan_run(config: MentorConfig, cluster: ClusterSpec) -> RunPlan:
    policy, expert = model_shapes(config)
    check_model_lengths(config, (policy, expert))
    scaling, on_gpu = config.scaling, config.scaling.use_gpu
    value_bytes = dtype_bytes(config.model.dtype)
    half = config.deepspeed.bf16 or config.model.dtype != "float32"
    samples = config.rollout.prompts_per_step
    roles = [RolePlan("learners", scaling.num_learner_workers, 1 if on_gpu else 0, scaling.cpus_per_learner_worker,
                      dict(config.placement.learners))]
    learner: LearnerMemory = learner_memory(
        policy, stage=config.deepspeed.zero_stage, world=scaling.num_learner_workers, half_precision=half,
        offload_optimizer=config.deepspeed.offload_optimizer, offload_params=config.deepspeed.offload_params,
        micro_batch=config.optimizer.micro_batch_samples,
        sequence_tokens=config.data.max_prompt_tokens + config.rollout.max_response_tokens,
        response_tokens=config.rollout.max_response_tokens, checkpointing=config.optimizer.gradient_checkpointing,
        logit_chunk_tokens=config.optimizer.logit_chunk_tokens, on_gpu=on_gpu,
    )
    roles[0].memory, roles[0].parts = learner.total, learner.parts()
    transfer = transfer_plan(policy, value_bytes, int(config.sync.bucket_mb * 2**20)) if config.sync.transport == "collective" else None
    if transfer is not None:
        # Rank 0 sends; the plan charges every learner alike (they are sized alike). On GPUs
        # vLLM's NCCL sender holds two buckets; on CPU the gloo sender packs the whole update
        # before it broadcasts (mentor_ray/rollout/weight_transfer.py).
        held = transfer.held_per_side if on_gpu else transfer.weights
        roles[0].memory += held
        roles[0].parts += f" + weight-transfer buckets {held / GIB:.2f}"
    engine_kinds = [("policy engines", scaling.num_policy_engines, [policy], samples * config.rollout.n_on_policy)]
    if config.guided and expert is not None:
        # With speculative sampling the mixed engine also holds the policy as its draft.
        drafted = [policy] if config.rollout.speculative_tokens else []
        engine_kinds.append(("mixed engines", scaling.num_mixed_engines, [policy, expert, *drafted], samples * config.rollout.n_mixed))
    engine_plans: list[tuple[RolePlan, list[ModelShape], int]] = []
    for name, count, shapes, sequences in engine_kinds:
        role = RolePlan(name, count, scaling.gpus_per_engine if on_gpu else 0, scaling.cpus_per_engine, dict(config.placement.engines))
        roles.append(role)
        engine_plans.append((role, shapes, math.ceil(sequences / max(1, count))))
    roles.append(RolePlan("graders", config.reward.num_processes, 0, GRADER_CPUS, dict(config.placement.graders)))
    problems: list[str] = []
    gpus_needed = sum(r.count * r.gpus_each for r in roles)
    gpus_offered = 0
    if on_gpu:
        gpu_types = [t for t in cluster.node_types if t.gpus]
        for role in roles:
            candidates = [t for t in (gpu_types if role.gpus_each else cluster.node_types) if label_matches(role.selector, t.labels)]
            candidates = [t for t in candidates if t.gpus >= role.gpus_each]
            role.node_types = [t.name for t in candidates]
            if not candidates:
                where = f" with labels {role.selector}" if role.selector else ""
                role.problem = f"{role.role} do not fit: no node type{where} in {cluster.source} has {role.gpus_each or 'any'} GPUs per node"
                continue
            if role.gpus_each:
                # The smallest GPUs among the types the role may land on decide.
                smallest = min(candidates, key=lambda t: t.gpu_memory)
                role.node_types = [smallest.name] + [t.name for t in candidates if t is not smallest]
                role.device_memory = smallest.gpu_memory
        for role, shapes, in_flight in engine_plans:
            if role.device_memory is None:
                continue
            engine: EngineMemory = engine_memory(
                shapes, device_bytes=role.device_memory, fraction=VLLM_MEMORY_FRACTION, value_bytes=value_bytes,
                tensor_parallel=role.gpus_each, max_model_len=config.model.max_model_len,
                max_num_seqs=ENGINE_MAX_NUM_SEQS, sequences_in_flight=in_flight)
            role.memory = engine.needed
            role.parts = (f"weights {engine.weights / GIB:.1f} + buffers {engine.working / GIB:.1f} + KV for one "
                          f"{config.model.max_model_len}-token sequence {engine.kv_per_sequence / GIB:.2f}")
            if transfer is not None:
                # The buckets come out of what vLLM leaves for the KV cache.
                engine = dataclasses.replace(engine, working=engine.working + transfer.held_per_side)
                role.memory = engine.needed
                role.parts += f" + weight-transfer buckets {transfer.held_per_side / GIB:.2f}"
            role.note = (f"KV room {engine.kv_room / GIB:.1f} GiB of vLLM's {VLLM_MEMORY_FRACTION:.0%}: "
                         f"{engine.full_length_sequences} full-length sequences at once of {engine.sequences_in_flight} "
                         f"in flight (all at full length would take {engine.kv_wanted / GIB:.0f} GiB; vLLM preempts)")
            if engine.full_length_sequences < 1:
                role.problem = (f"{role.role} do not fit: {_gib(role.memory)} per GPU needed ({role.parts}), vLLM may use "
                                f"{_gib(engine.budget)} of {role.node_types[0]}'s {_gib(role.device_memory)}: "
                                f"{_gib(role.memory - engine.budget)} over")
        learners = roles[0]
        if learners.device_memory is not None and learners.memory > learners.device_memory:
            learners.problem = (f"learners do not fit: {_gib(learners.memory)} per GPU needed ({learners.parts}) on "
                                f"{learners.node_types[0]}'s {_gib(learners.device_memory)} GPUs: "
                                f"{_gib(learners.memory - learners.device_memory)} over")
        problems += [r.problem for r in roles if r.problem]
        gpu_roles = [r for r in roles if r.gpus_each and r.node_types]
        usable = [t for t in gpu_types if any(t.name in r.node_types for r in gpu_roles)]
        gpus_offered = cluster.gpu_capacity(usable)
        if not problems and gpus_needed > gpus_offered:
            short = max(gpu_roles, key=lambda r: r.count * r.gpus_each)
            problems.append(
                f"{short.role} do not fit: the recipe needs {gpus_needed} GPUs ("
                + ", ".join(f"{r.role} {r.count} x {r.gpus_each}" for r in gpu_roles)
                + f"), {cluster.source} offers {gpus_offered} on {', '.join(t.name for t in usable)}: {gpus_needed - gpus_offered} short"
            )
    else:
        for role, shapes, _ in engine_plans:
            role.memory = sum(s.parameters() for s in shapes) * value_bytes + CPU_KV_CACHE_BYTES
            role.parts = f"weights {sum(s.parameters() for s in shapes) * value_bytes / GIB:.2f} + KV cache {CPU_KV_CACHE_BYTES / GIB:.0f}"
            if transfer is not None:
                # The gloo receiver takes every bucket before it loads (mentor_ray/rollout/weight_transfer.py).
                role.memory += transfer.weights
                role.parts += f" + weights received by gloo {transfer.weights / GIB:.2f}"
        machine = cluster.node_types[0]
        for role in roles:
            role.node_types = [machine.name]
        host = sum(r.memory * r.count for r in roles)
        if machine.memory is not None and host > machine.memory:
            biggest = max(roles, key=lambda r: r.memory * r.count)
            problems.append(f"{biggest.role} do not fit: the run needs {_gib(host)} of host memory "
                            f"({', '.join(f'{r.role} {r.count} x {_gib(r.memory)}' for r in roles if r.memory)}), "
                            f"{machine.name} has {_gib(machine.memory)}: {_gib(host - machine.memory)} over")
    return RunPlan(config, cluster, roles, policy.parameters() * value_bytes, gpus_needed, gpus_offered, problems, transfer)


def default_cluster(config: MentorConfig, cluster_file: str | Path | None = None, gpu_memory_gib: float | None = None) -> ClusterSpec | None:
    """What a run is planned on: the cluster file for a GPU recipe (default: the repository's
    cluster.yaml, if present), this machine for a CPU one."""
    if not config.scaling.use_gpu:
        return ClusterSpec.this_machine(config.scaling.local_num_cpus)
    path = Path(cluster_file) if cluster_file else DEFAULT_CLUSTER_FILE
    if cluster_file is None and not path.is_file():
        return None
    return ClusterSpec.from_yaml(path, gpu_memory_gib)


def check_plan(config: MentorConfig, cluster_file: str | Path | None = None, gpu_memory_gib: float | None = None) -> RunPlan | None:
    """Refuse, before anything starts, a recipe the plan shows does not fit (PlanError with
    the plan's line), or a context longer than the models' positions (ConfigError)."""
    cluster = default_cluster(config, cluster_file, gpu_memory_gib)
    if cluster is None:
        check_model_lengths(config)
        return None
    plan = plan_run(config, cluster)
    if not plan.fits:
        raise PlanError(plan.problems[0])
    return plan


def weight_route_line(config: MentorConfig, transfer: TransferPlan | None, engines: int) -> str:
    """How the plan's recipe moves its weights, and why that transport (sync.transport)."""
    if transfer is None:
        return (f"by object store (sync.transport=object_store): put once, pulled by each of {engines} engines; "
                "the collective is the choice once engines sit on other nodes than the learners")
    backend = "NCCL" if config.scaling.use_gpu else "gloo"
    return (f"by {backend} broadcast (sync.transport=collective): sent once to {engines} engines in "
            f"{transfer.buckets} buckets of at most {transfer.bucket / 2**20:.0f} MiB, {TRANSFER_BUFFERS} held on each "
            "side; the object store holds a standby copy and takes a sync that fails")


def format_plan(plan: RunPlan) -> str:
    config, lines = plan.config, []
    lines.append(f"plan of {config.model.policy_path}" + (f" + expert {config.model.expert_path}" if config.guided else "")
                 + f" on {plan.cluster.source}: {'GPU' if config.scaling.use_gpu else 'CPU'}, {config.model.dtype}, "
                 f"ZeRO-{config.deepspeed.zero_stage}, max_model_len {config.model.max_model_len}, micro-batch "
                 f"{config.optimizer.micro_batch_samples} x {config.data.max_prompt_tokens + config.rollout.max_response_tokens} tokens, "
                 f"gradient checkpointing {'on' if config.optimizer.gradient_checkpointing else 'off'}")
    per = "per GPU" if config.scaling.use_gpu else "each"
    lines.append(f"| role | count | GPUs each | CPUs each | memory {per} | of | node type |")
    lines.append("|---|---|---|---|---|---|---|")
    for role in plan.roles:
        lines.append(f"| {role.role} | {role.count} | {role.gpus_each} | {role.cpus_each:g} | "
                     f"{_gib(role.memory) if role.memory else '-'} | {_gib(role.device_memory) if role.device_memory else '-'} | "
                     f"{' or '.join(role.node_types) or '-'} |")
    for role in plan.roles:
        if role.parts:
            lines.append(f"- {role.role}: {role.parts}" + (f"; {role.note}" if role.note else ""))
    engines = config.scaling.num_policy_engines + (config.scaling.num_mixed_engines if config.guided else 0)
    lines.append(f"- weight sync: {plan.sync_bytes / GIB:.2f} GiB per step ({config.model.dtype} policy) "
                 + weight_route_line(config, plan.transfer, engines))
    if config.scaling.use_gpu:
        lines.append(f"- GPUs: the recipe needs {plan.gpus_needed}, {plan.cluster.source} offers {plan.gpus_offered}")
    lines += [f"DOES NOT FIT: {p}" for p in plan.problems] or ["fits"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from mentor_ray.config import load_config
    from pipelines.train import DEFAULT_RECIPE

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=DEFAULT_RECIPE, help="YAML recipe (default: the toy-world MENTOR run)")
    parser.add_argument("--cluster", default=None, help="a Ray cluster file (default: cluster.yaml for a GPU recipe)")
    parser.add_argument("--gpu-memory-gib", type=float, default=None, help="memory of each GPU, instead of the node types' labels")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. optimizer.micro_batch_samples=4")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config, args.overrides)
        cluster = default_cluster(config, args.cluster, args.gpu_memory_gib)
        if cluster is None:
            raise ConfigError(f"no cluster file: {DEFAULT_CLUSTER_FILE} is missing; pass --cluster FILE")
        plan = plan_run(config, cluster)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(format_plan(plan))
    return 0 if plan.fits else 2


if __name__ == "__main__":
    sys.exit(main())
