"""Seconds and bytes of one weight sync, object store against collective, on real engines.

    .venv/bin/python benchmarks/bench_weight_sync.py [--repeats 3] [--sizes toy,135m-fp32,135m-bf16]

Brings up `pipelines.local_cluster` (head, `engines` node, `learners` node: each its own raylet
and object store). A stand-in for learner rank 0 sits on the learners' node holding a policy's
weights; two real vLLM policy engines (built with the gloo weight-transfer backend) sit on the
engines' node ("across nodes") or on the learners' node ("same node"). Each row syncs the same
weights through `pipelines.weight_sync`'s two transports, alternately, on the same engines:

- object store: rank 0 puts the weights, each engine pulls a copy and loads it;
- collective: rank 0 broadcasts packed buckets by gloo to both engines, which take every bucket
  and then load; after the sync it puts a standby copy into the object store (no engine pulls
  it; in a run this happens beside the next rollout), timed in its own column.

Columns: the whole sync as rank 0 waits for it; the moving of bytes alone (object store: the
put plus the slowest engine's pull; collective: rank 0's broadcasts, which end when the last
engine has each bucket); the slowest engine's load into vLLM (the same loaders on both paths);
and the bytes each engine receives. Sizes: the toy policy, and SmolLM2-135M-Instruct
(`models/smollm2-135m-instruct`, from scripts/get_smollm2.sh) in fp32 and bf16.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SIZES = {
    "toy": ("toy policy (fp32)", "toy://policy", "float32"),
    "135m-fp32": ("SmolLM2-135M (fp32)", str(REPO / "models" / "smollm2-135m-instruct"), "float32"),
    "135m-bf16": ("SmolLM2-135M (bf16)", str(REPO / "models" / "smollm2-135m-instruct"), "bfloat16"),
}


class LearnerStandIn:
    """Learner rank 0's part of a sync: holds the weights, runs a transport's `publish`."""

    def __init__(self, roles, config, weights_dir: str, dtype: str):
        import torch
        from safetensors.torch import load_file

        from mentor_ray.data.run_inputs import resolve_model_dir
        from pipelines.weight_sync import CollectiveTransport, ObjectStoreTransport

        folder = resolve_model_dir(weights_dir, "policy")
        files = sorted(Path(folder).glob("*.safetensors"))
        weights = {}
        for file in files:
            weights.update(load_file(str(file)))
        self.weights = {name: t.to(getattr(torch, dtype)).contiguous() for name, t in weights.items()}
        self.transports = {"object store": ObjectStoreTransport(roles), "collective": CollectiveTransport(roles, config, say=print)}
        self.version = 0

    def sync(self, transport: str) -> dict[str, float]:
        self.version += 1
        started = time.perf_counter()
        metrics = self.transports[transport].publish(self.version, self.weights)
        metrics["wall_seconds"] = time.perf_counter() - started
        # The collective's standby copy: in a run it is put beside the next rollout; here it is
        # let finish before the next sync, and timed on its own.
        collective = self.transports["collective"]
        metrics["standby_seconds"] = 0.0
        if collective.standby is not None:
            waited: dict[str, float] = {}
            collective.standby.wait(waited)
            collective.standby = None
            metrics["standby_seconds"] = waited["sync/standby_put_seconds"]
        return metrics


def _row_numbers(transport: str, metrics: dict[str, float]) -> tuple[float, ...]:
    """(sync s, moving bytes s, slowest load s, bytes per engine, standby put s)."""
    if transport == "object store":
        moving = metrics["sync/put_seconds"] + metrics["sync/engine_fetch_seconds_max"]
    else:
        moving = metrics["sync/sender_broadcast_seconds"]
    per_engine = metrics["transfer/weights_bytes_to_engines"] / 2
    return metrics["wall_seconds"], moving, metrics["sync/engine_load_seconds_max"], per_engine, metrics["standby_seconds"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sizes", default="toy,135m-fp32,135m-bf16")
    parser.add_argument("--bucket-mb", type=float, default=256.0)
    parser.add_argument("--placements", default="same node,across nodes")
    args = parser.parse_args(argv)

    import ray

    from mentor_ray.config import load_config
    from mentor_ray.data.run_inputs import resolve_model_dir
    from pipelines.local_cluster import LABEL_KEY, LocalCluster
    from pipelines.roles import build_rollout_roles

    folder = tempfile.mkdtemp(prefix="mrlc-bench-", dir="/tmp")
    rows = []
    with LocalCluster.up(folder, cpus={"head": 2, "engines": 4, "learners": 4}, object_store_mb=3072) as cluster:
        cluster.connect(include_dashboard=False, log_to_driver=False)
        try:
            for size in args.sizes.split(","):
                label, model, dtype = SIZES[size]
                for placement in args.placements.split(","):
                    engines_on = "learners" if placement == "same node" else "engines"
                    config = load_config(None, [
                        f"model.policy_path={model}", "model.expert_path=null", f"model.dtype={dtype}",
                        "model.max_model_len=512", "data.max_prompt_tokens=256", "rollout.max_response_tokens=64",
                        "rollout.prompts_per_step=2", "optimizer.mini_batch_prompts=2", "rollout.n_mixed=0",
                        "scaling.num_policy_engines=2", "sync.transport=collective", f"sync.bucket_mb={args.bucket_mb}",
                        f"placement.engines={{{LABEL_KEY}: {engines_on}}}", "sync.verify_every_steps=0",
                        f"deepspeed.bf16={str(dtype == 'bfloat16').lower()}",
                    ])
                    roles = build_rollout_roles(config, str(resolve_model_dir(model, "policy")), None)
                    roles.check_engines()
                    learner = ray.remote(LearnerStandIn).options(
                        label_selector={LABEL_KEY: "learners"}, num_cpus=0,
                    ).remote(roles, config, model, dtype)
                    ray.get(learner.sync.remote("collective"))  # the handshake, and first loads, untimed
                    ray.get(learner.sync.remote("object store"))
                    measured: dict[str, list[tuple[float, ...]]] = {"object store": [], "collective": []}
                    for _ in range(args.repeats):
                        for transport in measured:
                            metrics = ray.get(learner.sync.remote(transport))
                            assert metrics["sync/collective"] == (1.0 if transport == "collective" else 0.0), metrics
                            measured[transport].append(_row_numbers(transport, metrics))
                    for transport, values in measured.items():
                        medians = [statistics.median(v[i] for v in values) for i in range(5)]
                        rows.append((label, placement, transport, *medians))
                        print("row:", rows[-1], flush=True)
                    ray.kill(learner)
                    roles.shutdown()
        finally:
            cluster.disconnect()

    print(f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; Ray {ray.__version__}; "
          f"2 policy engines; buckets of {args.bucket_mb:g} MiB; median of {args.repeats} syncs each\n")
    print("| weights | engines | transport | sync, s | moving bytes, s | load, s | MB per engine | standby put, s (beside the rollout) | collective / object store (sync; moving) |")
    print("|---|---|---|---|---|---|---|---|---|")
    by_key = {(r[0], r[1], r[2]): r for r in rows}
    for label, placement, transport, sync, moving, load, per_engine, standby in rows:
        ratio = ""
        if transport == "collective":
            base = by_key[(label, placement, "object store")]
            ratio = f"{sync / base[3]:.2f}; {moving / base[4]:.2f}"
        print(f"| {label} | {placement} | {transport} | {sync:.3f} | {moving:.3f} | {load:.3f} | {per_engine / 1e6:.1f} | "
              f"{standby:.3f} | {ratio} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
