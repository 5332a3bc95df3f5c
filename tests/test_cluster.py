"""The cluster path on one machine: `ray job submit` to a local cluster of a head and two worker
nodes (pipelines.local_cluster; each node its own raylet and object store), engines and learners
placed on different nodes by label, the run folder in an S3 bucket served on loopback (moto).

The job is the short run of tests/short_runs.py; its one-node twin (`short_run`) is the reference
its numbers must equal."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mentor_ray import storage
from pipelines.local_cluster import LABEL_KEY, LocalCluster
from short_runs import SHORT

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PLACED = [
    f"placement.engines={{{LABEL_KEY}: engines}}",
    f"placement.learners={{{LABEL_KEY}: learners}}",
    f"placement.graders={{{LABEL_KEY}: head}}",
]


@pytest.fixture(scope="module")
def cluster(local_cluster):
    return local_cluster


@pytest.fixture
def own_cluster(tmp_path, s3_bucket):
    """A cluster for this test alone: it loses nodes on purpose, and the session's must stay whole."""
    from conftest import start_local_cluster

    with start_local_cluster(tmp_path / "cluster", s3_bucket) as cluster:
        yield cluster


def submit_job(cluster: LocalCluster, entrypoint: list[str], timeout: float = 900) -> subprocess.CompletedProcess:
    """`ray job submit --working-dir .` to the cluster's head, as a user would; waits for the job."""
    env = {**os.environ, **cluster.client_env(), "PATH": f"{BIN}:{os.environ.get('PATH', '')}"}
    command = [str(BIN / "ray"), "job", "submit", f"--address={cluster.dashboard_url}", "--working-dir", ".", "--", *entrypoint]
    for _ in range(6):
        result = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)
        # A loaded head may not have its job agent up yet; Ray says to try again later.
        if "No available agent to submit job" not in result.stdout + result.stderr:
            return result
        time.sleep(5)
    return result


def _node_type(entry: dict) -> str:
    return entry["labels"].get(LABEL_KEY, "?")


def test_a_job_across_nodes_equals_the_one_node_run(cluster, s3_bucket, short_run, monkeypatch):
    """Two ZeRO-3 learners on the learners' node (rank 0 gathers the partitioned weights, then
    broadcasts them by gloo) to a policy and a mixed engine on the engines' node: the numbers of
    the one-node, one-learner run, whose weights go by object store."""
    for key, value in s3_bucket.env.items():
        monkeypatch.setenv(key, value)
    run_dir = s3_bucket.uri("cluster-runs", "job")
    result = submit_job(cluster, [
        "python", "-m", "pipelines.train", *SHORT, "total_steps=2", *PLACED, "sync.transport=collective",
        "deepspeed.zero_stage=3", "scaling.num_learner_workers=2",
        f"logging.run_root={s3_bucket.uri('cluster-runs')}", "logging.run_name=job",
    ])
    logs = result.stdout + result.stderr
    # `ray job submit` exits non-zero unless the job SUCCEEDED.
    assert result.returncode == 0, logs[-6000:]
    # One console line per step: the driver alone prints them.
    assert logs.count("step 1/2 |") == 1 and logs.count("step 2/2 |") == 1, logs[-4000:]

    # Every artifact in the bucket...
    stored = storage.list_files(run_dir, recursive=True)
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "run.log", "placement.json", "plots/val_accuracy.png",
                 "final_model/config.json", "final_model/model.safetensors"):
        assert name in stored, (name, stored)
    assert any(name.startswith("ray_train/checkpoint_") and name.endswith("loop_state.json") for name in stored), stored
    assert json.loads(storage.read_text(storage.join(run_dir, "summary.json")))["steps"] == 2
    # ... and none in a local folder: not in the repository, not in any node's copy of it.
    for root in (REPO, Path(cluster.temp_root)):
        assert not [p for p in root.rglob("metrics.jsonl") if "cluster-runs" in str(p) or p.parent.name == "job"], root

    # Placement: engines on the engines node, learners on the learners node, driver and grader
    # on the head; no process on a worker node read a folder of the driver's.
    placement = json.loads(storage.read_text(storage.join(run_dir, "placement.json")))
    assert _node_type(placement["driver"]) == "head"
    engines = [e for e in placement["rollout"] if e["role"].endswith("engine")]
    graders = [e for e in placement["rollout"] if e["role"] == "grader"]
    assert sorted(e["role"] for e in engines) == ["mixed engine", "policy engine"]
    assert {_node_type(e) for e in engines} == {"engines"} and {_node_type(e) for e in graders} == {"head"}
    assert [_node_type(e) for e in placement["learners"]] == ["learners", "learners"]
    driver_folder = placement["driver"]["cwd"]
    for entry in engines + placement["learners"]:
        assert entry["model_dirs"], entry
        for folder in entry["model_dirs"].values():
            assert not folder.startswith(driver_folder), (entry["role"], folder, driver_folder)

    history, alone = _assert_steps_equal_the_one_node_run(run_dir, short_run)
    assert sorted(history) == [0, 1, 2]
    assert "weights by gloo broadcast" in logs
    for step in (1, 2):
        assert history[step]["transfer/weights_bytes"] > 0 and history[step]["transfer/rollout_bytes"] > 0
        _assert_synced_by_collective(history[step], engines=2)
    assert history[2]["val/greedy_accuracy"] == alone[2]["val/greedy_accuracy"]


def _assert_steps_equal_the_one_node_run(run_dir: str, short_run) -> tuple[dict, dict]:
    """Steps 1-2 of the run at `run_dir` against the one-node, one-learner run of the same seed
    (float noise); every engine serves the step's weights after its sync. Returns both histories."""
    history = {r["step"]: r for r in _read_jsonl(storage.join(run_dir, "metrics.jsonl"))}
    alone = {r["step"]: r for r in _read_jsonl(Path(short_run.run_dir) / "metrics.jsonl")}
    for step in (1, 2):
        for key in ("rollout/on_policy_reward", "rollout/mixed_reward", "rollout/response_length", "train/tokens"):
            assert history[step][key] == pytest.approx(alone[step][key], abs=1e-6), (step, key)
        for key in ("train/loss", "train/grad_norm", "rollout/entropy_mean", "guidance/entropy_threshold"):
            assert history[step][key] == pytest.approx(alone[step][key], rel=1e-4, abs=1e-6), (step, key)
        assert history[step]["sync/engine_weights_version_min"] == history[step]["sync/engine_weights_version_max"] == step
    return history, alone


def _assert_synced_by_collective(record: dict, engines: int) -> None:
    """The step's weights went by broadcast, every engine's CRC32s matched the learner's, and
    vLLM's weight checker found the engines' policy weights identical."""
    assert record["sync/collective"] == 1.0 and record["sync/collective_failures"] == 0.0, record
    assert record["sync/checked_engines"] == engines and record["sync/engines_agree"] == engines, record
    assert record["transfer/weights_bytes_to_engines"] == engines * record["transfer/weights_bytes"], record
    from mentor_ray.metrics import is_step_metric

    unknown = sorted(key for key in record if key != "step" and not is_step_metric(key))
    assert not unknown, f"add these to mentor_ray.metrics.STEP_METRICS: {unknown}"


def _read_jsonl(location) -> list[dict]:
    return [json.loads(line) for line in storage.read_text(location).splitlines() if line.strip()]


@pytest.mark.slow
def test_a_run_survives_losing_the_engine_node_then_the_learner_node(own_cluster, s3_bucket, monkeypatch, capsys):
    """kill -9 the raylet of the engines' node during the run, then start a replacement: engines
    restart there (weights from the store) and the run goes on. Then the same for the learners'
    node: Ray Train restores the workers from the last checkpoint (in the bucket). Each step is in
    metrics.jsonl once, and the final model serves in vLLM. Prints the recovery times."""
    import threading

    from mentor_ray.config import load_config
    from pipelines.train import DEFAULT_RECIPE, run_training

    cluster = own_cluster

    for key, value in s3_bucket.env.items():
        monkeypatch.setenv(key, value)
    run_dir = s3_bucket.uri("lost-node", "run")
    metrics_file = storage.join(run_dir, "metrics.jsonl")
    config = load_config(DEFAULT_RECIPE, [
        "total_steps=8", "eval.every_steps=4", "eval.max_problems=32", "checkpoint.every_steps=2", "checkpoint.keep_last=4",
        *PLACED, f"logging.run_root={s3_bucket.uri('lost-node')}", "logging.run_name=run",
    ])
    events: dict[str, float] = {}

    def logged_steps() -> list[int]:
        try:
            return [r["step"] for r in _read_jsonl(metrics_file)]
        except storage.StorageError:
            return []

    def checkpoints() -> int:
        try:
            return sum(name.endswith("loop_state.json") for name in storage.list_files(storage.join(run_dir, "ray_train"), recursive=True))
        except storage.StorageError:
            return 0

    def lose_nodes() -> None:
        try:
            for node, after_step, wanted_checkpoints in (("engines", 2, 1), ("learners", 5, 2)):
                deadline = time.time() + 900
                while not (max(logged_steps(), default=-1) >= after_step and checkpoints() >= wanted_checkpoints):
                    if time.time() > deadline:
                        events["error"] = f"step {after_step} never came"
                        return
                    time.sleep(0.2)
                events[f"{node}_killed"] = time.time()
                events[f"{node}_last_step_before"] = float(max(logged_steps()))
                cluster.kill_node(node)
                events[f"{node}_seen_dead"] = time.time()
                cluster.add_node(node)
                events[f"{node}_replaced"] = time.time()
                while max(logged_steps(), default=-1) <= events[f"{node}_last_step_before"]:
                    time.sleep(0.2)
                events[f"{node}_next_step_logged"] = time.time()
        except Exception as error:  # noqa: BLE001 - reported through the asserts below
            events["error"] = repr(error)

    cluster.connect()
    try:
        killer = threading.Thread(target=lose_nodes, daemon=True)
        started = time.time()
        killer.start()
        summary = run_training(config)
        killer.join(timeout=60)
        events["finished"] = time.time()
    finally:
        cluster.disconnect()
    assert "error" not in events, events
    assert summary.steps == 8 and summary.stopped is None
    lines = [r["step"] for r in _read_jsonl(metrics_file)]
    assert lines == list(range(0, 9)), lines  # each step once, none lost
    timings = {
        "run_seconds": events["finished"] - started,
        **{f"{node}_{what}": events[f"{node}_{end}"] - events[f"{node}_killed"]
           for node in ("engines", "learners") for what, end in (("dead_after", "seen_dead"), ("replaced_after", "replaced"),
                                                                 ("next_step_after", "next_step_logged"))},
    }
    with capsys.disabled():
        print("\nlost-node recovery (s):", json.dumps({k: round(v, 1) for k, v in timings.items()}))
    storage.write_text(storage.join(run_dir, "recovery.json"), json.dumps(timings))

    from mentor_ray.rollout.engines import EngineSettings, PolicyEngine
    from mentor_ray.rollout.requests import SamplingSpec

    with storage.local_copy(storage.join(run_dir, "final_model")) as folder:
        engine = PolicyEngine(str(folder), EngineSettings(max_model_len=256, seed=0))
        try:
            (result,) = engine.generate([[1, 2, 3]], SamplingSpec(n=1, max_new_tokens=8, temperature=0.0))
        finally:
            engine.close()
    assert len(result.response_token_ids) >= 1


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_a_sweep_job_across_nodes_keeps_everything_in_the_bucket(cluster, s3_bucket, monkeypatch, capsys):
    """`python -m tuning.sweep` submitted with `ray job submit --working-dir .`, its storage in
    the bucket (tuning/sweeps/toy_cluster.yaml: 4 trials of 6 steps, ASHA from step 2): every
    trial's engines land on the engines node and its learner on the learners node; Tune's state,
    the trials' run folders and the sweep's own files are in the bucket and nowhere local; the
    report is written from the bucket into it."""
    for key, value in s3_bucket.env.items():
        monkeypatch.setenv(key, value)
    root = s3_bucket.uri("cluster-sweeps")
    experiment = storage.join(root, "toy-cluster-sweep")
    started = time.time()
    result = submit_job(cluster, ["python", "-m", "tuning.sweep", "--config", "tuning/sweeps/toy_cluster.yaml", "--storage", root],
                        timeout=3600)
    seconds = time.time() - started
    logs = result.stdout + result.stderr
    assert result.returncode == 0, logs[-6000:]
    assert f"starting in {experiment} |" in logs and "sweep done: 4 trials" in logs, logs[-4000:]

    top = storage.list_files(experiment)
    ledger = json.loads(storage.read_text(storage.join(experiment, "trials.json")))
    assert len(ledger) == 4 and {row["status"] for row in ledger} <= {"finished", "stopped by ASHA"}, [(r["trial_id"], r["status"], r["error"]) for r in ledger]
    assert {"sweep.yaml", "trials.json", "asha_rungs.json", "sweep_summary.json", "run.log"} <= set(top), top
    assert any(name.startswith("experiment_state") for name in storage.list_files(storage.join(experiment, "tune"))), "Tune's state"
    # Not asserted (not this test's subject): what the sweep found left on the cluster at its end.
    leftovers = json.loads(storage.read_text(storage.join(experiment, "sweep_summary.json")))["leftovers"]
    for row in ledger:
        run_dir = row["run_dir"]
        assert run_dir == storage.join(experiment, "runs", f"trial-{row['trial_id']}")
        # The run's driver uploads its run.log when the run ends; a trial ASHA stopped never got there.
        written = {"config.yaml", "metrics.jsonl", "placement.json"} | ({"run.log", "summary.json"} if row["status"] == "finished" else set())
        assert written <= set(storage.list_files(run_dir)), (run_dir, row["status"])
        placement = json.loads(storage.read_text(storage.join(run_dir, "placement.json")))
        engines = [e for e in placement["rollout"] if e["role"].endswith("engine")]
        assert engines and {_node_type(e) for e in engines} == {"engines"}, (row["trial_id"], engines)
        assert placement["learners"] and {_node_type(e) for e in placement["learners"]} == {"learners"}, row["trial_id"]
        assert {_node_type(e) for e in placement["rollout"] if e["role"] == "grader"} == {"head"}

    report = subprocess.run([sys.executable, "-m", "tuning.report", experiment], cwd=REPO, capture_output=True, text=True,
                            timeout=600, check=False)
    assert report.returncode == 0, report.stderr
    assert {"report.html", "report.md", "val_accuracy.png"} <= set(storage.list_files(storage.join(experiment, "report")))
    # Nothing in a local folder: not in the repository, not in any node's copy of it.
    assert not (REPO / "sweeps" / "toy-cluster-sweep").exists()
    for folder in (REPO, Path(cluster.temp_root)):
        assert not [p for p in folder.rglob("trials.json") if "toy-cluster-sweep" in str(p)], folder
    with capsys.disabled():
        print(f"\nsweep job across nodes: {seconds / 60:.1f} min; trials (status, steps, placement groups released): "
              f"{[(row['status'], row['steps'], row['released_placement_groups']) for row in ledger]}; left over: {leftovers}")


@pytest.mark.slow
def test_the_full_form_across_nodes_two_of_each_role(cluster, s3_bucket, short_run, monkeypatch):
    """The toy cluster recipe's shape (2 policy engines, 2 mixed engines, 2 learners) through
    `ray job submit`: same numbers as the one-node, one-engine-each, one-learner run (sampling
    seeds are per prompt, so the engine count does not change a sample)."""
    for key, value in s3_bucket.env.items():
        monkeypatch.setenv(key, value)
    run_dir = s3_bucket.uri("cluster-runs", "full")
    result = submit_job(cluster, [
        "python", "-m", "pipelines.train", *SHORT, "total_steps=2", *PLACED, "scaling.num_policy_engines=2",
        "scaling.num_mixed_engines=2", "scaling.num_learner_workers=2",
        f"logging.run_root={s3_bucket.uri('cluster-runs')}", "logging.run_name=full",
    ])
    assert result.returncode == 0, (result.stdout + result.stderr)[-6000:]
    placement = json.loads(storage.read_text(storage.join(run_dir, "placement.json")))
    engines = [e for e in placement["rollout"] if e["role"].endswith("engine")]
    assert sorted(e["role"] for e in engines) == ["mixed engine"] * 2 + ["policy engine"] * 2
    assert {_node_type(e) for e in engines} == {"engines"}
    assert [_node_type(e) for e in placement["learners"]] == ["learners", "learners"]
    _assert_steps_equal_the_one_node_run(run_dir, short_run)


def test_placement_is_checked_against_the_alive_nodes_before_anything_starts():
    from mentor_ray.config import ConfigError, load_config
    from pipelines.resources import check_placement, label_matches, placement_options

    assert label_matches({"t": "a"}, {"t": "a"}) and not label_matches({"t": "a"}, {"t": "b"})
    assert label_matches({"t": "!a"}, {"t": "b"}) and label_matches({"t": "!a"}, {})
    assert label_matches({"t": "in(a,b)"}, {"t": "b"}) and not label_matches({"t": "!in(a,b)"}, {"t": "b"})
    assert placement_options({}) == {} and placement_options({"t": "a"}) == {"label_selector": {"t": "a"}}

    def node(kind, cpus, alive=True):
        return {"Alive": alive, "Labels": {LABEL_KEY: kind, "ray.io/node-id": kind}, "Resources": {"CPU": cpus}}

    config = load_config(None, PLACED + ["scaling.num_policy_engines=2", "scaling.num_mixed_engines=2", "scaling.num_learner_workers=2"])
    check_placement(config, [node("head", 4), node("engines", 4), node("learners", 2)])
    with pytest.raises(ConfigError, match=r"placement.engines=.*no alive node has these labels.*mentor-ray/node-type=learners"):
        check_placement(config, [node("head", 4), node("engines", 8, alive=False), node("learners", 2)])
    with pytest.raises(ConfigError, match=r"placement.learners=.*need 2 CPUs .* have 1 CPUs"):
        check_placement(config, [node("head", 4), node("engines", 4), node("learners", 1)])
    check_placement(load_config(None, []), [node("head", 1)])  # no placement: nothing to check
