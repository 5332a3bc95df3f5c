"""A Ray cluster of several nodes on this one machine: `python -m pipelines.local_cluster CMD`.

    up                  a head and two worker nodes (`engines`, `learners`), each a `ray start`
    down                kill exactly this cluster's processes, remove its state
    status              the nodes Ray sees: alive/dead, labels, resources
    kill-node NAME      kill -9 that node's raylet (the lost-node experiment)
    add-node NAME       start a node of NAME's type (new name, new ports)

Every node is its own raylet and object store, so objects really travel between stores, and
carries the label `mentor-ray/node-type=<type>` (head, engines, learners) for label selectors.
Every node's IP is 127.0.0.1, so every Ray server (GCS, raylet, agents, dashboard, workers)
listens on 127.0.0.1 only, on ports of the node's own block from 20000-32767 (below the
kernel's ephemeral range, above the default `ray start` ports), reserved under
/tmp/mentor-ray-local-cluster-ports/ so that two local clusters never pick the same block.
A driver needs RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (see LOOPBACK_CLIENT_ENV; `connect()` and
`client_env()` give it) and, as for any Ray 2.60 cluster, RAY_AUTH_MODE=token.

Which processes are a node's: `ray start` runs in a session of its own (setsid), and every
process Ray starts for that node (GCS, raylet, dashboard, agents, workers, their children)
stays in that session even after its parent dies, so `down` finds a node by its session id,
never by name and never with `ray stop` (which ends every Ray process on the machine).
Details: `node_processes`. (Node processes also carry MENTOR_RAY_LOCAL_CLUSTER_NODE=
<folder>:<node> for people reading `ps e`; workers rename themselves with setproctitle, which
overwrites their /proc environ, so nothing here relies on it.)

Library use (tests):

    with LocalCluster.up("/tmp/mrlc-t", env={"AWS_ENDPOINT_URL": url}) as cluster:
        cluster.connect()                      # ray.init(address=cluster.address), loopback-safe
        Actor.options(label_selector={"mentor-ray/node-type": "engines"}).remote()
        cluster.kill_node("engines"); cluster.add_node("engines")     # -> node "engines-2"
        cluster.disconnect()
    # leaving the block runs cluster.down()
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

LABEL_KEY = "mentor-ray/node-type"
HEAD = "head"
DEFAULT_FOLDER = "/tmp/mrlc"
FOLDER_ENV = "MENTOR_RAY_LOCAL_CLUSTER"
STATE_FILE = "cluster.json"
DEFAULT_CPUS = {HEAD: 4, "engines": 8, "learners": 4}
DEFAULT_OBJECT_STORE_MB = 256
HOST = "127.0.0.1"

# Ports: one block of BLOCK_SIZE ports per node, taken from [PORT_LOW, PORT_HIGH).
PORT_LOW = 20000
PORT_HIGH = 32768
BLOCK_SIZE = 128
FIRST_WORKER_PORT = 16  # offsets 16..127 of a block: the node's worker processes
PORT_OFFSETS = {
    "node_manager": 0,
    "object_manager": 1,
    "dashboard_agent_http": 2,
    "dashboard_agent_grpc": 3,
    "runtime_env_agent": 4,
    "metrics_export": 5,
}
HEAD_PORT_OFFSETS = {"gcs": 6, "dashboard": 7, "client_server": 8, "autoscaler_metrics": 9, "dashboard_metrics": 10}
PORT_REGISTRY = Path(tempfile.gettempdir()) / "mentor-ray-local-cluster-ports"

# Unix socket paths (<temp dir>/session_<date>_<pid>/sockets/plasma_store) must stay under
# 107 bytes: node temp dirs go under a short root when the cluster's folder is long.
SOCKET_PATH_LIMIT = 107
SESSION_SUFFIX_LEN = len("/session_2026-12-04_04-43-59_771384_1234567/sockets/plasma_store")

# The head's GCS declares a node dead after failure_threshold missed checks, period_ms apart:
# about 5 s here instead of Ray's 15 s, so the lost-node experiment does not wait. A caller's
# env overrides them.
HEAD_ENV_DEFAULTS = {
    "RAY_health_check_period_ms": "1000",
    "RAY_health_check_failure_threshold": "5",
    # `ray start --head` gives the dashboard 60 s to come up, which a loaded machine can miss.
    "RAY_DASHBOARD_STARTUP_TIMEOUT_S": "180",
}
NODE_ENV_DEFAULTS = {"RAY_USAGE_STATS_ENABLED": "0"}

# Loopback: Ray rewrites 127.0.0.1 (in --node-ip-address, --address and ray.init(address=...))
# to the machine's address, where nothing of this cluster listens (with node IP 127.0.0.1 every
# Ray server binds 127.0.0.1 only). Ray skips the rewrite where it believes multi-node clusters
# are off (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0), except that `ray start` then refuses to start a
# worker node. So: `ray start` runs with the rewrite turned into the identity and the refusal
# off (RAY_START below: Ray's own `ray start`, two Ray helpers replaced in that process), and
# every node process and every driver gets RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
# (`LocalCluster.connect`, `LocalCluster.client_env`).
LOOPBACK_CLIENT_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
RAY_START = (
    "import ray._private.ray_constants as constants, ray._private.services as services\n"
    "constants.ENABLE_RAY_CLUSTER = True\n"
    "services.resolve_ip_for_localhost = lambda host: host\n"
    "from ray.scripts.scripts import main\n"
    "main()\n"
)
MARKER_ENV = "MENTOR_RAY_LOCAL_CLUSTER_NODE"
STARTUP_TIMEOUT = "timed out during startup"  # Ray's own message (ray/_private/node.py)


class LocalClusterError(RuntimeError):
    pass


# --------------------------------------------------------------------------------------------
# Processes (Linux /proc)


@dataclass(frozen=True)
class Proc:
    pid: int
    ppid: int
    sid: int
    start: int  # start time in clock ticks since boot: with the pid, identifies a process
    state: str
    name: str


def _read_proc(pid: int) -> Proc | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    name = raw[raw.index("(") + 1 : raw.rindex(")")]
    rest = raw[raw.rindex(")") + 2 :].split()
    # fields after the name: state ppid pgrp session ... starttime is field 22 (index 19 here)
    return Proc(pid=pid, ppid=int(rest[1]), sid=int(rest[3]), start=int(rest[19]), state=rest[0], name=name)


def process_table() -> dict[int, Proc]:
    table = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            proc = _read_proc(int(entry))
            if proc is not None:
                table[proc.pid] = proc
    return table


def _alive(table: dict[int, Proc], pid: int, start: int | None = None) -> bool:
    proc = table.get(pid)
    return proc is not None and proc.state not in ("Z", "X") and (start is None or proc.start == start)


def _fd_targets(pid: int, fds: Iterable[str] | None = None) -> Iterator[str]:
    base = f"/proc/{pid}/fd"
    try:
        names = list(fds) if fds is not None else os.listdir(base)
    except OSError:
        return
    for fd in names:
        try:
            yield os.readlink(f"{base}/{fd}")
        except OSError:
            continue


def _under(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def _own_lineage(table: dict[int, Proc]) -> set[int]:
    """This process and its ancestors: never killed, whatever they hold open."""
    lineage, pid = set(), os.getpid()
    while pid and pid not in lineage:
        lineage.add(pid)
        proc = table.get(pid)
        pid = proc.ppid if proc else 0
    return lineage


def _role(pid: int, name: str) -> str:
    if name in ("gcs_server", "raylet"):
        return name
    cmd = _cmdline(pid)
    for needle, role in (
        ("dashboard/dashboard.py", "dashboard"),
        ("log_monitor.py", "log_monitor"),
        ("monitor.py", "monitor"),
        ("ray.util.client.server", "client_server"),
        ("ray::DashboardAgent", "dashboard_agent"),
        ("ray::RuntimeEnvAgent", "runtime_env_agent"),
        ("ray-dashboard-", "dashboard_module"),
        ("ray::", "worker"),
    ):
        if needle in cmd:
            return role
    return "other"


# --------------------------------------------------------------------------------------------
# Ports


def _port_free(port: int) -> bool:
    """Nothing bound on `port` (no SO_REUSEADDR/SO_REUSEPORT: gRPC servers set SO_REUSEPORT, so
    a second Ray server could silently share a port that a plain bind shows is taken)."""
    for host in ("0.0.0.0", HOST):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                return False
    return True


def _port_range() -> tuple[int, int]:
    high = PORT_HIGH
    with contextlib.suppress(OSError, ValueError):
        ephemeral_low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
        if ephemeral_low > PORT_LOW + 4 * BLOCK_SIZE:
            high = min(high, ephemeral_low)
    return PORT_LOW, high


def _block_owner_gone(block_file: Path, table: dict[int, Proc]) -> bool:
    """A reservation is stale when its cluster has been taken down (its state file is gone or
    no longer lists the block) or died without `down` (the node holding the block has no
    process left; a node still starting counts as alive for ten minutes)."""
    try:
        owner = json.loads(block_file.read_text())
        state = json.loads(Path(owner["state_file"]).read_text())
        age = time.time() - block_file.stat().st_mtime
    except (OSError, ValueError, KeyError):
        # A reservation being written right now is not stale: only old unreadable ones are.
        with contextlib.suppress(OSError):
            return time.time() - block_file.stat().st_mtime > 120
        return False
    for record in state.get("nodes", {}).values():
        if record.get("port_block") == owner.get("block") and record.get("state") != "down":
            with contextlib.suppress(TypeError):
                node = NodeRecord(**record)
                return (node.state != "starting" or age > 600) and not node_processes(node, table)
            return False
    return True


def reserve_port_block(state_file: Path, node_name: str) -> int:
    """The first port of a free block of BLOCK_SIZE ports, reserved for this node."""
    PORT_REGISTRY.mkdir(exist_ok=True)
    low, high = _port_range()
    blocks = list(range(low, high - BLOCK_SIZE + 1, BLOCK_SIZE))
    random.shuffle(blocks)
    table: dict[int, Proc] | None = None
    for base in blocks:
        block_file = PORT_REGISTRY / str(base)
        if block_file.exists() and _block_owner_gone(block_file, table := table or process_table()):
            with contextlib.suppress(OSError):
                block_file.unlink()
        try:
            fd = os.open(block_file, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            continue
        with os.fdopen(fd, "w") as handle:
            json.dump({"block": base, "state_file": str(state_file), "node": node_name}, handle)
        if all(_port_free(port) for port in range(base, base + BLOCK_SIZE)):
            return base
        block_file.unlink()
    raise LocalClusterError(f"no free block of {BLOCK_SIZE} ports in {low}-{high - 1} (ports busy or reserved in {PORT_REGISTRY})")


def release_port_block(base: int | None, state_file: Path) -> None:
    if base is None:
        return
    block_file = PORT_REGISTRY / str(base)
    with contextlib.suppress(OSError, ValueError, KeyError):
        if json.loads(block_file.read_text())["state_file"] == str(state_file):
            block_file.unlink()


def node_ports(base: int, head: bool) -> dict[str, int]:
    offsets = dict(PORT_OFFSETS, **(HEAD_PORT_OFFSETS if head else {}))
    ports = {name: base + offset for name, offset in offsets.items()}
    ports["min_worker"] = base + FIRST_WORKER_PORT
    ports["max_worker"] = base + BLOCK_SIZE - 1
    return ports


# --------------------------------------------------------------------------------------------
# GCS queries


AUTH_ENV = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")


def ensure_auth_token(env: dict[str, str]) -> None:
    """Ray 2.60 clusters use token authentication: a head started while a token exists (by
    default ~/.ray/auth_token, which a first local `ray.init()` writes) turns it on, and a worker
    node or client without RAY_AUTH_MODE=token is refused. This cluster turns it on for every
    node (unless the caller's env sets RAY_AUTH_MODE) with Ray's default token, made if missing,
    so that `ray.init(address=...)` and `ray job submit` find it as they would for any cluster."""
    if "RAY_AUTH_MODE" in env:
        return
    env["RAY_AUTH_MODE"] = "token"
    if not any(key in env or key in os.environ for key in AUTH_ENV[1:]):
        from ray._private.authentication.authentication_token_setup import (
            _get_default_token_path,
            generate_and_save_token,
        )

        if not _get_default_token_path().exists():
            generate_and_save_token()


def client_auth(env: dict[str, str]) -> None:
    """Authenticate this process to the cluster as `ray.init` does (same token, same mode)."""
    changed = False
    for key in AUTH_ENV:
        if key in env and key not in os.environ:
            os.environ[key] = env[key]
            changed = True
    if changed:
        from ray._raylet import AuthenticationTokenLoader, Config

        Config.initialize("")
        AuthenticationTokenLoader.instance().reset_cache()


def gcs_nodes(address: str, env: dict[str, str] | None = None, timeout_s: float = 5.0) -> list[dict[str, Any]]:
    """Every node the GCS knows (alive and dead), as plain dicts."""
    from ray._raylet import GcsClient

    client_auth(env or {})
    client = GcsClient(address=address)
    infos = client.get_all_node_info(timeout=timeout_s)
    nodes = []
    for node_id, info in infos.items():
        nodes.append(
            {
                "node_id": node_id.hex() if hasattr(node_id, "hex") else str(node_id),
                "alive": info.state == 0,  # GcsNodeInfo.GcsNodeState.ALIVE
                "node_name": info.node_name,
                "node_manager_port": info.node_manager_port,
                "labels": dict(info.labels),
                "resources": dict(info.resources_total),
            }
        )
    return nodes


# --------------------------------------------------------------------------------------------
# The cluster


@dataclass
class NodeRecord:
    name: str
    node_type: str
    num_cpus: int
    num_gpus: int
    object_store_memory: int
    labels: dict[str, str]
    ports: dict[str, int]
    port_block: int
    temp_dir: str
    start_log: str
    sid: int = 0  # session id: the pid of this node's `ray start` (the session leader)
    launcher_start: int = 0  # start ticks of that `ray start` process
    node_id: str = ""
    state: str = "starting"  # starting | alive | killed | down
    processes: list[dict[str, Any]] = field(default_factory=list)  # pid, start, role
    started_s: float = 0.0
    killed_at: float | None = None
    # CPU cores the node and every process it starts may run on (None: all). Affinity passes
    # to child processes, so two nodes on separate cores stand in for two devices.
    cores: list[int] | None = None

    @property
    def head(self) -> bool:
        return self.node_type == HEAD

    def pid_of(self, role: str) -> int | None:
        return next((proc["pid"] for proc in self.processes if proc["role"] == role), None)


def node_processes(node: NodeRecord, table: dict[int, Proc] | None = None) -> set[int]:
    """The live processes of one node.

    A process is the node's when it is
      1. in the node's session (every process Ray starts for the node inherits the session of
         its `ray start`, and keeps it when orphaned, e.g. workers of a killed raylet), provided
         the session is still this node's: its leader pid is not a different, newer process,
         and some member holds a file open in the node's own temp dir or is a recorded process;
      2. a recorded process (same pid and start time);
      3. a process whose stdout or stderr is a file in the node's temp dir: Ray sends the output
         of what it starts there and children inherit it, so this finds a child that started a
         session of its own (a job's driver does) and then outlived its parent;
      4. a descendant of any of these (a child that started a session of its own).
    A driver that merely connects to the cluster (it opens a log file there, but its stdout is
    its own) is none of these, nor is this process or its ancestors.
    """
    table = process_table() if table is None else table
    temp_dir = node.temp_dir
    recorded = {proc["pid"]: proc["start"] for proc in node.processes}
    seeds = {pid for pid, start in recorded.items() if _alive(table, pid, start)}

    if node.sid:
        leader = table.get(node.sid)
        if leader is None or leader.start == node.launcher_start:
            members = [pid for pid, proc in table.items() if proc.sid == node.sid and _alive(table, pid)]
            evidence = any(pid in seeds or pid == node.sid for pid in members) or any(
                _under(target, temp_dir) for pid in members for target in _fd_targets(pid)
            )
            if evidence:
                seeds.update(members)

    for pid in table:
        if pid not in seeds and _alive(table, pid) and any(_under(t, temp_dir) for t in _fd_targets(pid, ("1", "2"))):
            seeds.add(pid)

    children: dict[int, list[int]] = {}
    for proc in table.values():
        children.setdefault(proc.ppid, []).append(proc.pid)
    found, stack = set(), list(seeds)
    while stack:
        pid = stack.pop()
        if pid in found:
            continue
        found.add(pid)
        stack.extend(children.get(pid, ()))
    return {pid for pid in found if _alive(table, pid)} - _own_lineage(table)


def terminate(nodes: list[NodeRecord], grace_s: float = 2.0, timeout_s: float = 30.0) -> int:
    """SIGTERM every process of `nodes`, SIGKILL what is left after `grace_s`, until none is
    left; returns how many processes there were. Raises after `timeout_s`."""
    tracked: dict[int, int] = {}  # pid -> start ticks: a pid reused meanwhile is not ours
    termed: set[int] = set()
    began = time.monotonic()
    while True:
        table = process_table()
        for node in nodes:
            for pid in node_processes(node, table):
                tracked.setdefault(pid, table[pid].start)
        alive = [pid for pid, start in tracked.items() if _alive(table, pid, start)]
        if not alive:
            return len(tracked)
        elapsed = time.monotonic() - began
        if elapsed > timeout_s:
            raise LocalClusterError(f"processes still alive after {timeout_s:g} s (SIGKILL sent): {sorted(alive)}")
        for pid in alive:
            if elapsed < grace_s and pid in termed:
                continue
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL if elapsed >= grace_s else signal.SIGTERM)
            termed.add(pid)
        time.sleep(0.1)


@dataclass
class LocalCluster:
    folder: str
    nodes: dict[str, NodeRecord]
    env: dict[str, str]
    temp_root: str
    owns_temp_root: bool
    created: float

    # ---- properties

    @property
    def state_file(self) -> Path:
        return Path(self.folder) / STATE_FILE

    @property
    def head(self) -> NodeRecord:
        return next(node for node in self.nodes.values() if node.head)

    @property
    def address(self) -> str:
        return f"{HOST}:{self.head.ports['gcs']}"

    @property
    def dashboard_url(self) -> str:
        return f"http://{HOST}:{self.head.ports['dashboard']}"

    def node(self, name: str) -> NodeRecord:
        if name not in self.nodes:
            raise LocalClusterError(f"no node {name!r} in {self.folder} (nodes: {', '.join(self.nodes)})")
        return self.nodes[name]

    def client_env(self) -> dict[str, str]:
        """The environment a driver process (a script, `ray job submit`) needs for this cluster."""
        env = dict(LOOPBACK_CLIENT_ENV, RAY_ADDRESS=self.address)
        env.update({key: value for key, value in self.env.items() if key in AUTH_ENV})
        return env

    def connect(self, **init_kwargs: Any) -> Any:
        """`ray.init(address=self.address, **init_kwargs)` from this process, after making this
        process keep 127.0.0.1 as it is (see LOOPBACK_CLIENT_ENV); `disconnect` undoes both."""
        import ray
        import ray._private.ray_constants as constants

        self._saved_client = (constants.ENABLE_RAY_CLUSTER, {key: os.environ.get(key) for key in LOOPBACK_CLIENT_ENV})
        os.environ.update(LOOPBACK_CLIENT_ENV)
        constants.ENABLE_RAY_CLUSTER = False
        client_auth(self.env)
        return ray.init(address=self.address, **init_kwargs)

    def disconnect(self) -> None:
        import ray
        import ray._private.ray_constants as constants

        ray.shutdown()
        saved = getattr(self, "_saved_client", None)
        if saved is not None:
            constants.ENABLE_RAY_CLUSTER = saved[0]
            for key, value in saved[1].items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
            self._saved_client = None

    def processes(self, name: str) -> set[int]:
        """The live process ids of node `name` (see `node_processes`)."""
        return node_processes(self.node(name))

    # ---- persistence

    def save(self) -> None:
        data = {
            "folder": self.folder,
            "env": self.env,
            "temp_root": self.temp_root,
            "owns_temp_root": self.owns_temp_root,
            "created": self.created,
            "address": self.address if any(n.head for n in self.nodes.values()) else None,
            "nodes": {name: asdict(node) for name, node in self.nodes.items()},
        }
        tmp = self.state_file.with_suffix(".tmp")
        fd = os.open(tmp, os.O_CREAT | os.O_TRUNC | os.O_WRONLY, 0o600)  # env may hold credentials
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle, indent=2)
        tmp.replace(self.state_file)

    @classmethod
    def load(cls, folder: str | os.PathLike | None = None) -> LocalCluster:
        folder = os.path.abspath(folder or os.environ.get(FOLDER_ENV, DEFAULT_FOLDER))
        try:
            data = json.loads((Path(folder) / STATE_FILE).read_text())
        except FileNotFoundError:
            raise LocalClusterError(f"no local cluster in {folder} (no {STATE_FILE}); start one with `up`") from None
        nodes = {name: NodeRecord(**node) for name, node in data["nodes"].items()}
        return cls(
            folder=folder,
            nodes=nodes,
            env=data["env"],
            temp_root=data["temp_root"],
            owns_temp_root=data["owns_temp_root"],
            created=data["created"],
        )

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with open(Path(self.folder) / "cluster.lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield

    # ---- up

    @classmethod
    def up(
        cls,
        folder: str | os.PathLike | None = None,
        env: dict[str, str] | None = None,
        cpus: dict[str, int] | None = None,
        object_store_mb: dict[str, int] | int | None = None,
        gpus: dict[str, int] | None = None,
        timeout_s: float = 300.0,
        cores: dict[str, list[int]] | None = None,
    ) -> LocalCluster:
        """Start a head and one worker node per other key of `cpus` (default: engines and
        learners); returns when the GCS sees every node alive. `env` goes to every node's
        processes (workers inherit it). On failure everything started is taken down again."""
        folder = os.path.abspath(folder or os.environ.get(FOLDER_ENV, DEFAULT_FOLDER))
        cpus = dict(DEFAULT_CPUS if cpus is None else cpus)
        if HEAD not in cpus:
            raise LocalClusterError(f"cpus needs a {HEAD!r} entry: {cpus}")
        cores = dict(cores or {})
        available = sorted(os.sched_getaffinity(0))
        for node_type, listed in cores.items():
            if node_type not in cpus:
                raise LocalClusterError(f"--cores names node type {node_type!r}, which the cluster does not have ({', '.join(cpus)})")
            if not listed or not set(listed) <= set(available):
                raise LocalClusterError(f"--cores {node_type}: cores {listed} are not among this machine's {available}")
        Path(folder).mkdir(parents=True, exist_ok=True)
        if (Path(folder) / STATE_FILE).exists():
            existing = cls.load(folder)
            live = [name for name, node in existing.nodes.items() if node_processes(node)]
            if live:
                raise LocalClusterError(
                    f"a local cluster is already up in {folder} (GCS {existing.address}, nodes {', '.join(live)}): "
                    f"run `python -m pipelines.local_cluster down --folder {folder}` first"
                )
            existing.down()
            Path(folder).mkdir(parents=True, exist_ok=True)

        if len(folder) + 1 + 12 + SESSION_SUFFIX_LEN < SOCKET_PATH_LIMIT:
            temp_root, owns = folder, False
        else:
            temp_root, owns = tempfile.mkdtemp(prefix="mrlc-", dir="/tmp"), True
        env = dict(env or {})
        ensure_auth_token(env)
        cluster = cls(folder=folder, nodes={}, env=env, temp_root=temp_root, owns_temp_root=owns, created=time.time())

        def store_mb(node_type: str) -> int:
            if isinstance(object_store_mb, dict):
                return object_store_mb.get(node_type, DEFAULT_OBJECT_STORE_MB)
            return object_store_mb or DEFAULT_OBJECT_STORE_MB

        try:
            with cluster._locked():
                began = time.monotonic()
                head = cluster._new_node(HEAD, HEAD, cpus[HEAD], (gpus or {}).get(HEAD, 0), store_mb(HEAD), cores.get(HEAD))
                cluster._launch([head], timeout_s)
                workers = [
                    cluster._new_node(node_type, node_type, count, (gpus or {}).get(node_type, 0), store_mb(node_type),
                                      cores.get(node_type))
                    for node_type, count in cpus.items()
                    if node_type != HEAD
                ]
                cluster._launch(workers, max(10.0, timeout_s - (time.monotonic() - began)))
        except LocalClusterError as error:
            with contextlib.suppress(Exception):
                cluster.down(keep_logs=True)
            raise LocalClusterError(f"{error}\n(Ray's logs of this start are kept under {cluster.temp_root})") from None
        except BaseException:
            with contextlib.suppress(Exception):
                cluster.down()
            raise
        return cluster

    def _new_node(
        self, name: str, node_type: str, num_cpus: int, num_gpus: int, object_store_mb: int, cores: list[int] | None = None,
    ) -> NodeRecord:
        base = reserve_port_block(self.state_file, name)
        node = NodeRecord(
            name=name,
            node_type=node_type,
            num_cpus=int(num_cpus),
            num_gpus=int(num_gpus),
            object_store_memory=int(object_store_mb) * 1024 * 1024,
            labels={LABEL_KEY: node_type},
            ports=node_ports(base, head=node_type == HEAD),
            port_block=base,
            temp_dir=os.path.join(self.temp_root, name),
            start_log=os.path.join(self.folder, f"{name}.start.log"),
            cores=list(cores) if cores else None,
        )
        self.nodes[name] = node
        self.save()  # the reservation is only stale once this cluster no longer lists it
        return node

    def _ray_start_command(self, node: NodeRecord) -> list[str]:
        command = [sys.executable, "-c", RAY_START, "start"]
        ports = node.ports
        labels = ",".join(f"{key}={value}" for key, value in node.labels.items())
        command += [
            f"--node-name={node.name}",
            f"--num-cpus={node.num_cpus}",
            f"--num-gpus={node.num_gpus}",
            f"--object-store-memory={node.object_store_memory}",
            f"--temp-dir={node.temp_dir}",
            f"--labels={labels}",
            f"--node-manager-port={ports['node_manager']}",
            f"--object-manager-port={ports['object_manager']}",
            f"--min-worker-port={ports['min_worker']}",
            f"--max-worker-port={ports['max_worker']}",
            f"--dashboard-agent-listen-port={ports['dashboard_agent_http']}",
            f"--dashboard-agent-grpc-port={ports['dashboard_agent_grpc']}",
            f"--runtime-env-agent-port={ports['runtime_env_agent']}",
            f"--metrics-export-port={ports['metrics_export']}",
            "--disable-usage-stats",
        ]
        if node.head:
            command += [
                "--head",
                f"--node-ip-address={HOST}",
                f"--port={ports['gcs']}",
                "--include-dashboard=true",
                f"--dashboard-host={HOST}",
                f"--dashboard-port={ports['dashboard']}",
                f"--ray-client-server-port={ports['client_server']}",
            ]
        else:
            command += [f"--address={self.address}", f"--node-ip-address={HOST}"]
        return command

    def _node_env(self, node: NodeRecord) -> dict[str, str]:
        env = {key: value for key, value in os.environ.items() if key not in ("RAY_ADDRESS",)}
        env.update(NODE_ENV_DEFAULTS)
        # `python` in a job's entrypoint is this interpreter, as it is for the nodes themselves.
        bin_dir = str(Path(sys.executable).parent)
        if env.get("PATH", "").split(os.pathsep)[0] != bin_dir:
            env["PATH"] = os.pathsep.join(filter(None, [bin_dir, env.get("PATH", "")]))
        env.update(LOOPBACK_CLIENT_ENV)  # drivers started in the cluster (job entrypoints) connect
        if node.head:
            env.update(HEAD_ENV_DEFAULTS)
            env.update(
                {
                    "AUTOSCALER_METRIC_PORT": str(node.ports["autoscaler_metrics"]),
                    "DASHBOARD_METRIC_PORT": str(node.ports["dashboard_metrics"]),
                }
            )
        env.update(self.env)
        env[MARKER_ENV] = f"{self.folder}:{node.name}"
        return env

    def _spawn(self, node: NodeRecord, append: bool) -> subprocess.Popen:
        Path(node.temp_dir).mkdir(parents=True, exist_ok=True)
        with open(node.start_log, "ab" if append else "wb") as log:
            if append:
                log.write(b"\n--- retry: the first `ray start` timed out during startup ---\n")
                log.flush()
            process = subprocess.Popen(
                self._ray_start_command(node),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self._node_env(node),
                cwd=node.temp_dir,
                start_new_session=True,
                # Set in the child before `ray start` runs; every process of the node inherits it.
                preexec_fn=(lambda: os.sched_setaffinity(0, node.cores)) if node.cores else None,
            )
        proc = _read_proc(process.pid)
        node.sid, node.launcher_start = process.pid, proc.start if proc else 0
        node.started_s = time.time()
        node.processes = []
        return process

    def _launch(self, nodes: list[NodeRecord], timeout_s: float, attempts: int = 2) -> None:
        """`ray start` each node (in parallel), each in a session of its own; wait until the GCS
        sees them alive. A node whose `ray start` gave up with Ray's own (fixed, 30 s) startup
        timeout, which a loaded machine can hit, is started once more while time is left."""
        began = time.monotonic()
        pending = list(nodes)
        for attempt in range(attempts):
            launched = [(node, self._spawn(node, append=attempt > 0)) for node in pending]
            self.save()
            pending = []
            for node, process in launched:
                left = timeout_s - (time.monotonic() - began)
                try:
                    code = process.wait(timeout=max(1.0, left))
                except subprocess.TimeoutExpired:
                    raise LocalClusterError(f"`ray start` of node {node.name} did not finish in {timeout_s:g} s\n{self._log_tail(node)}") from None
                if code == 0:
                    continue
                retry = attempt + 1 < attempts and left > 45 and STARTUP_TIMEOUT in self._log_tail(node)
                if not retry:
                    raise LocalClusterError(f"`ray start` of node {node.name} failed (exit {code})\n{self._log_tail(node)}")
                terminate([node], grace_s=0)
                pending.append(node)
            if not pending:
                break
        for node in nodes:
            self._wait_for(node, alive=True, timeout_s=max(5.0, timeout_s - (time.monotonic() - began)))
            node.state = "alive"
            self._record_processes(node)
        self.save()

    def _log_tail(self, node: NodeRecord, lines: int = 25) -> str:
        text = ""
        with contextlib.suppress(OSError):
            text = Path(node.start_log).read_text(errors="replace")
        tail = "\n".join(text.splitlines()[-lines:])
        hint = ""
        busy = [f"{name}={port}" for name, port in node.ports.items() if name not in ("min_worker", "max_worker") and not _port_free(port)]
        if ("already in use" in text or "address in use" in text.lower()) and busy:
            hint = f"\nports busy: {', '.join(busy)}"
        return f"--- {node.start_log} (last {lines} lines) ---\n{tail}{hint}"

    def _record_processes(self, node: NodeRecord) -> None:
        table = process_table()
        node.processes = [
            {"pid": pid, "start": table[pid].start, "role": _role(pid, table[pid].name)}
            for pid in sorted(node_processes(node, table))
        ]

    def _gcs_node(self, node: NodeRecord) -> dict[str, Any] | None:
        """The GCS's view of `node` (its latest registration on the node's node-manager port)."""
        matches = [info for info in gcs_nodes(self.address, self.env) if info["node_manager_port"] == node.ports["node_manager"]]
        if node.node_id:
            matches = [info for info in matches if info["node_id"] == node.node_id]
        # A retried start may have left a dead registration on the same port: the live one wins.
        return max(matches, key=lambda info: info["alive"], default=None)

    def _wait_for(self, node: NodeRecord, alive: bool, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            try:
                info = self._gcs_node(node)
            except Exception as error:  # noqa: BLE001 - the GCS not reachable yet: retried
                info, last_error = None, error
            if info is not None and info["alive"] == alive:
                node.node_id = info["node_id"]
                return
            if alive and node.sid and not node_processes(node):
                raise LocalClusterError(f"node {node.name}: its processes exited before it joined\n{self._log_tail(node)}")
            time.sleep(0.25)
        want = "alive" if alive else "dead"
        detail = f" (last GCS error: {last_error})" if last_error else ""
        raise LocalClusterError(f"node {node.name} not seen {want} by the GCS at {self.address} within {timeout_s:g} s{detail}\n{self._log_tail(node)}")

    # ---- kill-node / add-node

    def kill_node(self, name: str, timeout_s: float = 60.0, everything: bool = False) -> NodeRecord:
        """`kill -9` node `name`'s raylet (with `everything`, every process of the node: a machine
        lost); waits until the GCS sees the node dead. Its workers, orphaned, exit on their own;
        `down` ends what is left."""
        with self._locked():
            node = self.node(name)
            raylet = next((proc for proc in node.processes if proc["role"] == "raylet"), None)
            table = process_table()
            if raylet is None or not _alive(table, raylet["pid"], raylet["start"]):
                raise LocalClusterError(f"node {name}: its raylet is not running (state {node.state})")
            targets = node_processes(node, table) if everything else {raylet["pid"]}
            for pid in targets:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            node.state, node.killed_at = "killed", time.time()
            self.save()
            self._wait_for(node, alive=False, timeout_s=timeout_s)
            self.save()
            return node

    def add_node(self, name: str, timeout_s: float = 180.0, num_cpus: int | None = None) -> NodeRecord:
        """Start a new node of the type of node `name` (or of type `name`): a new name
        (`<type>-2`, ...), new ports; waits until the GCS sees it alive."""
        with self._locked():
            template = self.nodes.get(name) or next((n for n in self.nodes.values() if n.node_type == name), None)
            if template is None:
                raise LocalClusterError(f"no node or node type {name!r} (nodes: {', '.join(self.nodes)})")
            if template.head:
                raise LocalClusterError("a second head cannot be added; add a worker type (engines, learners)")
            index = 2
            while f"{template.node_type}-{index}" in self.nodes:
                index += 1
            node = self._new_node(
                f"{template.node_type}-{index}",
                template.node_type,
                template.num_cpus if num_cpus is None else num_cpus,
                template.num_gpus,
                template.object_store_memory // (1024 * 1024),
                template.cores,
            )
            try:
                self._launch([node], timeout_s)
            except BaseException:
                with contextlib.suppress(Exception):
                    terminate([node], grace_s=0)
                node.state = "down"
                release_port_block(node.port_block, self.state_file)
                self.save()
                raise
            return node

    # ---- down

    def down(self, grace_s: float = 2.0, timeout_s: float = 30.0, keep_logs: bool = False) -> int:
        """Kill every process of this cluster's nodes (and only those: see `node_processes`),
        release their ports, remove the state and the nodes' temp dirs (with `keep_logs`, keep
        them). Returns how many processes were ended."""
        if not self.state_file.exists():
            return 0
        with self._locked():
            count = terminate(list(self.nodes.values()), grace_s=grace_s, timeout_s=timeout_s)
            for node in self.nodes.values():
                node.state = "down"
                release_port_block(node.port_block, self.state_file)
                if not keep_logs:
                    shutil.rmtree(node.temp_dir, ignore_errors=True)
            if self.owns_temp_root and not keep_logs:
                shutil.rmtree(self.temp_root, ignore_errors=True)
            self.state_file.unlink(missing_ok=True)
            return count

    def __enter__(self) -> LocalCluster:  # noqa: PYI034
        return self

    def __exit__(self, *exc_info) -> None:
        self.down()

    # ---- status

    def status(self) -> list[dict[str, Any]]:
        """One row per node the GCS knows (named after this cluster's records where they match)."""
        by_id = {node.node_id: node for node in self.nodes.values() if node.node_id}
        rows = []
        try:
            infos = gcs_nodes(self.address, self.env)
        except Exception as error:  # noqa: BLE001 - any RPC failure means the same to the caller
            raise LocalClusterError(f"GCS at {self.address} not reachable: {error}") from None
        for info in infos:
            record = by_id.get(info["node_id"])
            resources = info["resources"]
            rows.append(
                {
                    "name": record.name if record else info["node_name"],
                    "alive": info["alive"],
                    "node_id": info["node_id"],
                    "labels": {k: v for k, v in info["labels"].items() if not k.startswith("ray.io/")},
                    "CPU": resources.get("CPU", 0.0),
                    "object_store_mb": resources.get("object_store_memory", 0.0) / 2**20,
                    "processes": len(node_processes(record)) if record else None,
                }
            )
        return sorted(rows, key=lambda row: (not row["alive"], row["name"]))


def format_status(cluster: LocalCluster, rows: list[dict[str, Any]]) -> str:
    header = f"cluster {cluster.folder}: GCS {cluster.address}, dashboard {cluster.dashboard_url}"
    table = [("node", "state", "node id", "labels", "CPU", "store MB", "procs")]
    for row in rows:
        labels = ",".join(f"{k}={v}" for k, v in row["labels"].items()) or "-"
        procs = "-" if row["processes"] is None else str(row["processes"])
        table.append((row["name"], "alive" if row["alive"] else "dead", row["node_id"][:12], labels, f"{row['CPU']:g}", f"{row['object_store_mb']:.0f}", procs))
    widths = [max(len(line[i]) for line in table) for i in range(len(table[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in table]
    return "\n".join([header, *lines])


# --------------------------------------------------------------------------------------------
# CLI


def _pairs(items: list[str], what: str) -> dict[str, str]:
    pairs = {}
    for item in items:
        for part in item.split(","):
            if "=" not in part:
                raise SystemExit(f"{what}: expected KEY=VALUE, got {part!r}")
            key, value = part.split("=", 1)
            pairs[key.strip()] = value
    return pairs


def _core_list(text: str) -> list[int]:
    """`0`, `0-3` or `0-1+4` (`+` joins ranges: `,` already separates node types)."""
    cores: list[int] = []
    try:
        for part in text.split("+"):
            first, _, last = part.partition("-")
            cores += list(range(int(first), int(last or first) + 1))
    except ValueError:
        raise SystemExit(f"--cores: expected core numbers like 0, 0-3 or 0-1+4, got {text!r}") from None
    return cores


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.local_cluster", description=__doc__.split("\n\n")[0])
    parser.add_argument("--folder", default=None, help=f"the cluster's folder (state, start logs); default ${FOLDER_ENV} or {DEFAULT_FOLDER}")
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("up", help="start a head and the worker nodes")
    up.add_argument("--cpus", action="append", default=[], help=f"logical CPUs per node type, e.g. head=4,engines=8,learners=4 (default {DEFAULT_CPUS}); a new type adds a node")
    up.add_argument("--object-store-mb", type=int, default=DEFAULT_OBJECT_STORE_MB, help="object store per node (MB)")
    up.add_argument("--env", action="append", default=[], help="KEY=VALUE for every node's processes (repeatable)")
    up.add_argument("--cores", action="append", default=[], help="pin a node type to CPU cores, e.g. engines=0,learners=1 "
                    "or engines=0-3 (what `taskset -c` takes); every process of the node inherits it")
    up.add_argument("--timeout", type=float, default=300.0)
    down = commands.add_parser("down", help="kill this cluster's processes (only those) and remove its state")
    down.add_argument("--keep-logs", action="store_true", help="keep the nodes' temp dirs (Ray's logs)")
    commands.add_parser("status", help="the nodes Ray sees")
    kill = commands.add_parser("kill-node", help="kill -9 a node's raylet; wait until the cluster sees it dead")
    kill.add_argument("name")
    kill.add_argument("--everything", action="store_true", help="kill every process of the node, not only its raylet")
    kill.add_argument("--timeout", type=float, default=60.0)
    add = commands.add_parser("add-node", help="start a new node of NAME's type (a node name or a type)")
    add.add_argument("name")
    add.add_argument("--timeout", type=float, default=180.0)
    args = parser.parse_args(argv)

    try:
        if args.command == "up":
            cpus = dict(DEFAULT_CPUS)
            cpus.update({key: int(value) for key, value in _pairs(args.cpus, "--cpus").items()})
            began = time.monotonic()
            cores = {key: _core_list(value) for key, value in _pairs(args.cores, "--cores").items()}
            cluster = LocalCluster.up(args.folder, env=_pairs(args.env, "--env"), cpus=cpus, object_store_mb=args.object_store_mb,
                                      timeout_s=args.timeout, cores=cores)
            print(f"up in {time.monotonic() - began:.1f} s")
            print(format_status(cluster, cluster.status()))
            exports = " ".join(f"{key}={value}" for key, value in cluster.client_env().items() if key != "RAY_AUTH_TOKEN")
            print(f"\ndrivers: export {exports}   (then ray.init() or ray.init(address={cluster.address!r}))")
            print(f"jobs:    ray job submit --address {cluster.dashboard_url} -- python my_script.py")
        elif args.command == "down":
            cluster = LocalCluster.load(args.folder)
            began = time.monotonic()
            count = cluster.down(keep_logs=args.keep_logs)
            print(f"down: {count} processes ended in {time.monotonic() - began:.1f} s")
        elif args.command == "status":
            cluster = LocalCluster.load(args.folder)
            print(format_status(cluster, cluster.status()))
        elif args.command == "kill-node":
            cluster = LocalCluster.load(args.folder)
            began = time.monotonic()
            node = cluster.kill_node(args.name, timeout_s=args.timeout, everything=args.everything)
            print(f"killed {node.name} (node {node.node_id[:12]}); the cluster saw it dead after {time.monotonic() - began:.1f} s")
        elif args.command == "add-node":
            cluster = LocalCluster.load(args.folder)
            began = time.monotonic()
            node = cluster.add_node(args.name, timeout_s=args.timeout)
            print(f"added {node.name} (node {node.node_id[:12]}, ports {node.port_block}-{node.port_block + BLOCK_SIZE - 1}) in {time.monotonic() - began:.1f} s")
    except LocalClusterError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
