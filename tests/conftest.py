"""Shared fixtures: the toy world (built once per machine, cached) and a local Ray instance."""

from __future__ import annotations

import os

import pytest

from mentor_ray.rollout.requests import CPU_ENGINE_ENV

# Engines built in the test process itself get the same CPU settings as engine actors.
for _key, _value in CPU_ENGINE_ENV.items():
    os.environ.setdefault(_key, _value)


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


@pytest.fixture(scope="session")
def s3_bucket():
    """A moto S3 server in its own process with one bucket (tests/s3_server.py), shared by the
    session. Yields an S3Server: endpoint_url, bucket, uri(*parts), and env (endpoint, fake keys,
    region) to put in os.environ or a Ray runtime_env; the environment is left untouched. Needs
    moto[server] (the dev extra)."""
    from s3_server import s3_server

    with s3_server() as server:
        yield server


@pytest.fixture(scope="session")
def short_run(toy_world, tmp_path_factory):
    """The short run (tests/short_runs.py) on a local one-node Ray instance, one learner; each
    sample it trained on is recorded in <run root>/shards/rank0.jsonl."""
    import ray

    from short_runs import short_config
    from pipelines.train import run_training

    root = tmp_path_factory.mktemp("runs")
    (root / "shards").mkdir()
    summary = run_training(short_config(root, "logging.run_name=short"), shard_record_dir=str(root / "shards"))
    ray.shutdown()
    return summary
