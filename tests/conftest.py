"""Shared fixtures: the toy world (built once per machine, cached), a local Ray instance, an S3
bucket on loopback, the short run, and one local cluster of three Ray nodes for the session."""

from __future__ import annotations

import os

import pytest

from mentor_ray.rollout.requests import CPU_ENGINE_ENV

# Set by the cluster's `up` in every node's environment; tests check it reached the workers.
CLUSTER_ENV_MARK = {"MENTOR_RAY_LOCAL_CLUSTER_TEST": "from-up"}

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


@pytest.fixture(scope="module")
def warm_runs(s3_bucket):
    """A module's runs in turn on one local Ray instance, started as a run starts its own, and
    one engine and grader set (`pipelines.roles.WarmActors`): pass it to
    `run_training(..., warm_actors=warm_runs)`. A later run then takes about half the time
    (no Ray start, no vLLM import); a run of the same seed still equals a fresh one (the loop's
    first publish loads the run's own starting weights). The workers see the bucket's
    environment, as they would had the user exported it, so a run may keep its folder there."""
    import ray

    from mentor_ray.config import load_config
    from pipelines.roles import WarmActors
    from pipelines.train import DEFAULT_RECIPE, connect_ray

    from s3_server import environ

    if ray.is_initialized():
        ray.shutdown()
    with environ(s3_bucket.env):  # the local instance's processes inherit it
        connect_ray(load_config(DEFAULT_RECIPE), log_to_driver=False)
    warm = WarmActors()
    try:
        yield warm
    finally:
        warm.close()
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
    """The short run (tests/short_runs.py) as a user starts it (`python -m pipelines.train`, a
    local one-node Ray instance, one learner); each sample it trained on is recorded in
    <run root>/shards/rank0.jsonl. Holds run_dir, final_model and the console (stdout, stderr)."""
    import json
    import subprocess
    import sys
    from pathlib import Path
    from types import SimpleNamespace

    from short_runs import SHORT

    root = tmp_path_factory.mktemp("runs")
    (root / "shards").mkdir()
    result = subprocess.run(
        [sys.executable, "-m", "pipelines.train", *SHORT, f"logging.run_root={root}", "logging.run_name=short",
         "--record-shards", str(root / "shards")],
        cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    summary = json.loads((root / "short" / "summary.json").read_text())
    return SimpleNamespace(run_dir=summary["run_dir"], final_model=summary["final_model"], steps=summary["steps"],
                           stdout=result.stdout, stderr=result.stderr)


def start_local_cluster(folder, s3_bucket):
    """A head and two worker nodes (`engines`, `learners`: pipelines.local_cluster's defaults)
    with the bucket's environment and CLUSTER_ENV_MARK on every node."""
    from pipelines.local_cluster import LocalCluster

    # A pytest folder is long: the nodes' temp dirs then go under a short /tmp/mrlc-* root
    # (Unix socket paths under it must stay below 107 bytes).
    return LocalCluster.up(folder, env={**s3_bucket.env, **CLUSTER_ENV_MARK}, timeout_s=300)


@pytest.fixture(scope="session")
def local_cluster(tmp_path_factory, s3_bucket, toy_world):
    """One local cluster for the session (bringing one up costs about half a minute). Modules
    use it in file order: tests/test_cluster.py submits jobs to it, then
    tests/test_local_cluster.py checks it, kills and adds a node, and takes it down last. A test
    that loses nodes on purpose while a run goes on starts a cluster of its own."""
    with start_local_cluster(tmp_path_factory.mktemp("local-cluster"), s3_bucket) as cluster:
        yield cluster
