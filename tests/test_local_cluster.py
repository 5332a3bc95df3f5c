"""The local multi-node cluster (pipelines/local_cluster.py): three `ray start` nodes on this
machine. The session's cluster (conftest `local_cluster`, which tests/test_cluster.py has
already used for jobs) is checked here, loses and regains a node, and is taken down by the last
test."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

ray = pytest.importorskip("ray")

from conftest import CLUSTER_ENV_MARK
from pipelines.local_cluster import (
    DEFAULT_CPUS,
    LABEL_KEY,
    PORT_REGISTRY,
    _alive,
    _fd_targets,
    _under,
    main,
    node_processes,
    process_table,
)

CPUS = DEFAULT_CPUS

# An unrelated local Ray instance, started by this test process (not by the cluster): `down`
# must leave it alive and working. It answers "pong" to each line on stdin.
UNRELATED = textwrap.dedent(
    """
    import os, sys, ray
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)

    @ray.remote
    def ping():
        return os.getpid()

    print("ready", ray.get(ping.remote()), flush=True)
    for line in sys.stdin:
        print("pong", ray.get(ping.remote()), flush=True)
    """
)


def _descendants(pid: int, table) -> set[int]:
    children: dict[int, list[int]] = {}
    for proc in table.values():
        children.setdefault(proc.ppid, []).append(proc.pid)
    found, stack = set(), [pid]
    while stack:
        current = stack.pop()
        if current not in found:
            found.add(current)
            stack.extend(children.get(current, ()))
    return {p for p in found if _alive(table, p)}


def _holding_files_under(folders: list[str], table) -> set[int]:
    """Every live process (but this one) with a file open under one of `folders`."""
    return {
        pid
        for pid in table
        if pid != os.getpid() and _alive(table, pid) and any(_under(t, f) for t in _fd_targets(pid) for f in folders)
    }


def _listening(pids: set[int]) -> dict[tuple[str, int], int]:
    """(local address, port) -> pid for the TCP sockets `pids` listen on."""
    inodes = {}
    for pid in pids:
        for target in _fd_targets(pid):
            if target.startswith("socket:["):
                inodes[target[8:-1]] = pid
    found = {}
    for table_file in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table_file).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A" or fields[9] not in inodes:  # 0A: LISTEN
                continue
            address, port = fields[1].split(":")
            raw = bytes.fromhex(address[-8:])[::-1]  # IPv4, or the tail of an IPv4-mapped IPv6
            host = ".".join(str(b) for b in raw)
            if len(address) == 32 and address[:24] != "0000000000000000FFFF0000":
                host = "ipv6:" + address
            found[(host, int(port, 16))] = inodes[fields[9]]
    return found


@pytest.fixture(scope="module")
def unrelated():
    env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
    proc = subprocess.Popen(
        [sys.executable, "-c", UNRELATED], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env
    )
    yield proc
    with contextlib.suppress(Exception):
        proc.stdin.close()  # its loop ends, ray.shutdown() at exit ends its instance
        proc.wait(timeout=60)
    if proc.poll() is None:
        proc.kill()


@pytest.fixture(scope="module")
def cluster(local_cluster, unrelated):
    local_cluster.connect(log_to_driver=False)
    try:
        yield local_cluster
    finally:
        local_cluster.disconnect()


@ray.remote(num_cpus=0)
class Probe:
    def where(self):
        (key,) = CLUSTER_ENV_MARK
        return ray.get_runtime_context().get_node_id(), os.getpid(), os.environ.get(key)

    def escape(self):
        """A child in a session of its own, as an engine or grader subprocess may start."""
        return subprocess.Popen(["sleep", "600"], start_new_session=True).pid

    def put(self, size: int):
        import numpy as np

        self.ref = ray.put(np.arange(size, dtype=np.int64))  # kept: this actor owns it
        return [self.ref]


@ray.remote(num_cpus=0)
def read(refs):
    array = ray.get(refs[0])
    return ray.get_runtime_context().get_node_id(), int(array.sum())


def _on(node_type: str):
    return Probe.options(label_selector={LABEL_KEY: node_type}).remote()


def test_three_nodes_alive_with_labels_on_loopback(cluster):
    assert len(cluster.temp_root) < 30 and cluster.owns_temp_root
    nodes = {node["NodeID"]: node for node in ray.nodes()}
    assert len(nodes) == 3
    for name, cpus in CPUS.items():
        record = cluster.node(name)
        node = nodes[record.node_id]
        assert node["Alive"] and node["NodeName"] == name
        assert node["NodeManagerAddress"] == "127.0.0.1"
        assert node["Labels"][LABEL_KEY] == name
        assert node["Resources"]["CPU"] == cpus
        # Every server of the node listens on 127.0.0.1, on a port of the node's own block.
        listening = _listening(node_processes(record))
        assert {("127.0.0.1", record.ports["gcs" if name == "head" else "node_manager"])} <= set(listening)
        for host, port in listening:
            assert host == "127.0.0.1", (name, host, port)
            assert record.port_block <= port < record.port_block + 128, (name, port)
    blocks = [node.port_block for node in cluster.nodes.values()]
    assert len(set(blocks)) == 3 and all((PORT_REGISTRY / str(block)).exists() for block in blocks)

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["--folder", cluster.folder, "status"]) == 0
    table = out.getvalue()
    for name in CPUS:
        assert any(line.split()[:2] == [name, "alive"] and f"{LABEL_KEY}={name}" in line for line in table.splitlines()), table


def test_label_selector_places_actors_and_env_reaches_workers(cluster):
    engines, learners = _on("engines"), _on("learners")
    (engines_node, _, engines_env), (learners_node, _, _) = ray.get([engines.where.remote(), learners.where.remote()], timeout=120)
    assert engines_node == cluster.node("engines").node_id
    assert learners_node == cluster.node("learners").node_id
    assert engines_env == next(iter(CLUSTER_ENV_MARK.values()))


def test_object_crosses_object_stores(cluster):
    producer = _on("engines")
    refs = ray.get(producer.put.remote(2**18), timeout=120)  # 2 MiB: in the object store, not inlined
    engines, learners = cluster.node("engines").node_id, cluster.node("learners").node_id
    assert ray.experimental.get_object_locations(refs)[refs[0]]["node_ids"] == [engines]
    reader_node, total = ray.get(read.options(label_selector={LABEL_KEY: "learners"}).remote(refs), timeout=120)
    assert reader_node == learners != engines
    assert total == (2**18) * (2**18 - 1) // 2
    assert set(ray.experimental.get_object_locations(refs)[refs[0]]["node_ids"]) == {engines, learners}


@pytest.mark.slow
def test_train_scaling_config_label_selector(cluster, tmp_path):
    """Ray Train (V2) places its workers by ScalingConfig(label_selector=...): one selector per
    worker here, so that a placement ignoring them (PACK: both on one node) fails (about 30 s)."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    def where(config):
        rank = ray.train.get_context().get_world_rank()
        Path(config["folder"], f"rank-{rank}").write_text(ray.get_runtime_context().get_node_id())

    TorchTrainer(
        where,
        train_loop_config={"folder": str(tmp_path)},
        scaling_config=ScalingConfig(
            num_workers=2,
            resources_per_worker={"CPU": 1},
            label_selector=[{LABEL_KEY: "engines"}, {LABEL_KEY: "learners"}],
        ),
        run_config=RunConfig(storage_path=str(tmp_path / "runs"), name="where"),
    ).fit()
    nodes = [(tmp_path / f"rank-{rank}").read_text() for rank in range(2)]
    assert sorted(nodes) == sorted([cluster.node("engines").node_id, cluster.node("learners").node_id])


def test_kill_node_then_add_node(cluster):
    """A lost node and its replacement; a run waiting for nodes (scaling.wait_for_nodes_s, as on
    an autoscaling cluster) starts once the replacement is up, and refuses at once without it."""
    import threading

    from mentor_ray.config import ConfigError, load_config
    from pipelines.resources import wait_for_room

    learners = cluster.node("learners")
    raylet = learners.pid_of("raylet")
    assert raylet and _alive(process_table(), raylet)
    cluster.kill_node("learners", timeout_s=60)
    assert not _alive(process_table(), raylet)
    assert learners.state == "killed"
    assert not {n["NodeID"]: n for n in ray.nodes()}[learners.node_id]["Alive"]

    placed = [f"placement.learners={{{LABEL_KEY}: learners}}", "scaling.local_num_cpus=null"]
    with pytest.raises(ConfigError, match=r"placement.learners=.*no alive node has these labels"):
        wait_for_room(load_config(None, placed), ray, print)
    lines: list[str] = []
    with pytest.raises(ConfigError, match=r"no alive node has these labels.*still, after waiting 1 s"):
        wait_for_room(load_config(None, [*placed, "scaling.wait_for_nodes_s=1"]), ray, lines.append, poll_s=0.2)
    assert lines and lines[0].startswith("waiting up to 1 s for nodes")
    waited: dict = {"lines": []}

    def wait_for_learners():
        try:
            wait_for_room(load_config(None, [*placed, "scaling.wait_for_nodes_s=180"]), ray, waited["lines"].append, poll_s=0.5)
            waited["ok"] = True
        except Exception as error:  # noqa: BLE001 - reported by the asserts below
            waited["error"] = error

    waiter = threading.Thread(target=wait_for_learners, daemon=True)
    waiter.start()
    time.sleep(2)
    assert waiter.is_alive(), waited  # still waiting: no learners node yet

    new = cluster.add_node("learners", timeout_s=120)
    waiter.join(timeout=60)
    assert waited.get("ok"), waited
    assert waited["lines"][-1] == "nodes are up"
    assert new.name == "learners-2" and new.labels == {LABEL_KEY: "learners"}
    assert new.port_block != learners.port_block and new.node_id != learners.node_id
    alive = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    assert new.node_id in alive and learners.node_id not in alive
    node, _, _ = ray.get(_on("learners").where.remote(), timeout=120)
    assert node == new.node_id


def test_down_kills_every_cluster_process_and_nothing_else(cluster, unrelated):
    # Workers on every live node (detached: they outlive this driver), their pids as Ray reports them.
    actors = [
        Probe.options(label_selector={LABEL_KEY: node_type}, lifetime="detached").remote()
        for node_type in ("head", "engines", "learners")
    ]
    worker_pids = {pid for _, pid, _ in ray.get([actor.where.remote() for actor in actors], timeout=120)}
    escaped = ray.get(actors[1].escape.remote(), timeout=120)
    assert unrelated.stdout.readline().startswith("ready")
    cluster.disconnect()
    table = process_table()
    assert all(_alive(table, pid) for pid in worker_pids | {escaped})
    assert table[escaped].sid not in {node.sid for node in cluster.nodes.values()}
    others = _descendants(unrelated.pid, table)
    assert {"gcs_server", "raylet"} <= {table[pid].name for pid in others}, "the unrelated Ray instance is not up"

    temp_dirs = [node.temp_dir for node in cluster.nodes.values()]
    holding = _holding_files_under(temp_dirs, table)  # every Ray process of the cluster, by its files
    raylets = {node.pid_of("raylet") for node in cluster.nodes.values() if node.state == "alive"}
    ours = set().union(*(node_processes(node, table) for node in cluster.nodes.values()))
    assert len(raylets) == 3 and raylets | worker_pids | {escaped} <= holding
    assert ours >= holding and not ours & others and os.getpid() not in ours
    blocks = [node.port_block for node in cluster.nodes.values()]

    ended = cluster.down()

    table = process_table()
    assert ended >= len(ours)
    assert not [pid for pid in ours if _alive(table, pid)]
    assert not _holding_files_under(temp_dirs, table)
    assert others <= {pid for pid in table if _alive(table, pid)}, "down touched the unrelated Ray instance"
    unrelated.stdin.write("ping\n")
    unrelated.stdin.flush()
    assert unrelated.stdout.readline().startswith("pong")
    assert not cluster.state_file.exists() and not Path(cluster.temp_root).exists()
    assert not any((PORT_REGISTRY / str(block)).exists() for block in blocks)
