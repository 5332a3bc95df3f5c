"""Shared fixtures: the toy world (built once per machine, cached) and a local Ray instance."""

from __future__ import annotations

import os

import pytest

# Engines run in-process inside their actors on CPU (see mentor_ray/rollout/engines.py).
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")


@pytest.fixture(scope="session")
def toy_world():
    from mentor_ray.toy_world import build_toy_world

    return build_toy_world(seed=0)


@pytest.fixture(scope="module")
def local_ray():
    import ray

    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=16, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()
