"""What crosses nodes in one RL step, measured on a local cluster of three Ray nodes.

    .venv/bin/python benchmarks/bench_transfer.py [--repeats 3]

A step moves two things between nodes through Ray's object store: the learner's weights to
every engine (rank 0 puts them once; each engine pulls a copy), and each learner rank's shard of
the rollout rows (rank 0 puts one object per rank; each rank pulls its own). This benchmark
brings up `pipelines.local_cluster` (head, `engines` node, `learners` node: each its own raylet
and object store), puts objects of those sizes on the learners' node and times an actor on the
engines' node pulling them, against the same pull from an actor on the learners' node itself
(the one-node baseline, same run): the ratio is what crossing a node boundary costs.

Sizes: the toy policy (its real weights), SmolLM2-135M-Instruct (a model of its real shapes,
float32 and bfloat16: weights only travel, values do not matter), and rollout shards of the toy
recipe and of the SmolLM2 GSM8K recipe (configs/smollm2-135m-gsm8k.yaml: 8 prompts x 4 samples,
up to 384 tokens).
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


def smollm2_weights(dtype):
    """A state dict of SmolLM2-135M's shapes (config of HuggingFaceTB/SmolLM2-135M-Instruct)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
        num_key_value_heads=3, max_position_embeddings=2048, tie_word_embeddings=True,
    )
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    # The learner exports the tied head once, as lm_head.weight beside the embeddings.
    return {name: torch.zeros(tensor.shape, dtype=dtype) for name, tensor in model.state_dict().items()}


def toy_weights():
    from transformers import AutoModelForCausalLM

    from mentor_ray.data.run_inputs import resolve_model_dir

    model = AutoModelForCausalLM.from_pretrained(resolve_model_dir("toy://policy", "toy policy"))
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def rollout_shard(prompts: int, samples: int, prompt_tokens: int, response_tokens: int):
    """One learner rank's share as the loop sends it: TrainingSamples with behaviour log-probs."""
    from mentor_ray.learner import TrainingSample

    return [[
        TrainingSample(list(range(prompt_tokens)), list(range(response_tokens)), 0.5, False, p,
                       [-0.1] * response_tokens)
        for p in range(prompts) for _ in range(samples)
    ]]


class Puller:
    """An actor that fetches an object and says how long the fetch took. Imports what the
    objects need up front, so a pull times the transfer, not a first import of torch."""

    def __init__(self):
        import torch  # noqa: F401

        import mentor_ray.learner  # noqa: F401

    def pull(self, refs):
        import ray

        started = time.perf_counter()
        ray.get(refs[0])
        return time.perf_counter() - started

    def node(self):
        import ray

        return ray.get_runtime_context().get_node_id()


class Holder:
    """Puts objects on its own node (the learner rank 0's role)."""

    def __init__(self):
        self.kept = []

    def put(self, payload_factory, args):
        import ray

        value = payload_factory(*args)
        ref = ray.put(value)
        self.kept.append(ref)
        from ray.experimental import get_object_locations

        size = get_object_locations([ref])[ref]["object_size"]
        return [ref], size


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    import ray
    import torch

    from pipelines.local_cluster import LABEL_KEY, LocalCluster

    payloads = [
        ("weights, toy policy (fp32)", toy_weights, ()),
        ("weights, SmolLM2-135M (fp32)", smollm2_weights, (torch.float32,)),
        ("weights, SmolLM2-135M (bf16)", smollm2_weights, (torch.bfloat16,)),
        ("rollout shard, toy recipe (32 prompts x 12, 1 rank)", rollout_shard, (32, 12, 40, 25)),
        ("rollout shard, SmolLM2 GSM8K (8 x 4, 384 tokens)", rollout_shard, (8, 4, 200, 384)),
    ]
    folder = tempfile.mkdtemp(prefix="mrlc-bench-", dir="/tmp")
    rows = []
    with LocalCluster.up(folder, cpus={"head": 2, "engines": 2, "learners": 2},
                         object_store_mb=2048) as cluster:
        cluster.connect(include_dashboard=False, log_to_driver=False)
        try:
            on = lambda kind: {"label_selector": {LABEL_KEY: kind}, "num_cpus": 0}  # noqa: E731
            holder = ray.remote(Holder).options(**on("learners")).remote()
            far = ray.remote(Puller).options(**on("engines")).remote()
            near = ray.remote(Puller).options(**on("learners")).remote()
            warm_up, _ = ray.get(holder.put.remote(rollout_shard, (1, 1, 1, 1)))
            ray.get([far.pull.remote(warm_up), near.pull.remote(warm_up)])
            for label, factory, factory_args in payloads:
                crossing, local = [], []
                for _ in range(args.repeats):
                    # A new object each time: a pulled object stays in the puller's node store.
                    ref, size = ray.get(holder.put.remote(factory, factory_args))
                    local.append(ray.get(near.pull.remote(ref)))
                    crossing.append(ray.get(far.pull.remote(ref)))
                rows.append((label, size, statistics.median(local), statistics.median(crossing)))
        finally:
            cluster.disconnect()

    print(f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"Ray {ray.__version__}; median of {args.repeats} pulls\n")
    print("| payload | MB | same node, s | across nodes, s | across / same | across, MB/s |")
    print("|---|---|---|---|---|---|")
    for label, size, local, crossing in rows:
        mb = size / 1e6
        print(f"| {label} | {mb:.3f} | {local:.4f} | {crossing:.4f} | {crossing / max(local, 1e-9):.1f}x | "
              f"{mb / max(crossing, 1e-9):.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
