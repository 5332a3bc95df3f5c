"""`pipelines.roles.WarmActors`: which actors a run may take over from the last run, and what
becomes of the rest. The run-level check (a run on taken-over engines starts from its own
weights) is in tests/test_methods.py: QuestA's step-0 validation, on LUFFY's engine."""

from __future__ import annotations

import os
import time

from short_runs import short_config

from pipelines.roles import (
    WarmActors,
    engine_blueprint,
    engine_settings,
    grader_blueprint,
)


def _policy_blueprint(config, model_dir="/models/policy"):
    return engine_blueprint("policy", {"model_dir": model_dir, "settings": engine_settings(config, 0)}, config)


def test_an_engine_is_taken_over_only_by_a_run_that_would_build_it_alike(tmp_path):
    base = short_config(tmp_path)
    assert _policy_blueprint(base) == _policy_blueprint(short_config(tmp_path, "total_steps=9", "optimizer.lr=0.1"))
    # The warm-up's size follows the batch shape; it changes speed only, not what is generated.
    assert _policy_blueprint(base) == _policy_blueprint(short_config(tmp_path, "rollout.prompts_per_step=16"))
    for different in ("seed=7", "model.max_model_len=256", "scaling.cpus_per_engine=2", "sync.transport=collective",
                      "placement.engines={node: gpu}"):
        assert _policy_blueprint(base) != _policy_blueprint(short_config(tmp_path, different)), different
    assert _policy_blueprint(base) != _policy_blueprint(base, "/models/other")
    assert _policy_blueprint(base) != engine_blueprint("mixed", {"model_dir": "/models/policy", "settings": engine_settings(base, 0)}, base)
    assert grader_blueprint(base) == grader_blueprint(short_config(tmp_path, "total_steps=9"))
    assert grader_blueprint(base) != grader_blueprint(short_config(tmp_path, "reward.timeout_s=9"))


def test_warm_actors_hand_back_what_matches_and_stop_what_no_run_takes(local_ray):
    ray = local_ray

    class Worker:  # defined here: Ray ships it by value (the test module is not importable there)
        """A small actor with the one call WarmActors makes of a taken-over actor."""

        def __init__(self) -> None:
            self.intervals = [(0.0, 1.0)]

        def busy_intervals(self) -> list[tuple[float, float]]:
            drained, self.intervals = self.intervals, []
            return drained

        def pid(self) -> int:
            return os.getpid()

    warm = WarmActors()
    started: list[str] = []

    def start(name):
        def make():
            started.append(name)
            return ray.remote(Worker).remote()
        return make

    store = warm.weight_store()
    first_a, first_b = warm.take("a", start("a")), warm.take("b", start("b"))
    assert started == ["a", "b"]
    ray.get(store.publish.remote(5, []))
    warm.give_back([("a", first_a), ("b", first_b)])

    # The next run: "a" again (taken over, its last run's busy time drained), "c" new; "b" idle.
    assert warm.weight_store() is store and ray.get(store.latest.remote()) == (0, [])  # reset for the new run
    again = warm.take("a", start("a"))
    assert again is first_a and ray.get(again.busy_intervals.remote()) == []
    warm.take("c", start("c"))
    assert started == ["a", "b", "c"]
    warm.stop_unclaimed()  # "b" holds resources the run may need
    assert _dies(ray, first_b.pid) and not _dies(ray, again.pid, within_s=2)
    # An idle actor that died meanwhile is not handed out: the run starts a new one.
    dead = warm.take("d", start("d"))
    ray.kill(dead)
    assert _dies(ray, dead.pid)
    warm.give_back([("d", dead)])
    replacement = warm.take("d", start("d"))
    assert replacement is not dead and started == ["a", "b", "c", "d", "d"]
    assert not _dies(ray, replacement.pid, within_s=2)
    warm.give_back([("a", again), ("d", replacement)])
    warm.close()
    assert _dies(ray, again.pid) and _dies(ray, store.latest)


def _dies(ray, method, within_s: float = 60.0) -> bool:
    """Whether calls of the actor's `method` fail as a dead actor's within `within_s` (ray.kill
    is asynchronous: a call made just after it may still be served)."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            ray.get(method.remote(), timeout=within_s)
        except ray.exceptions.RayActorError:
            return True
        time.sleep(0.2)
    return False
