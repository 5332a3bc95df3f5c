"""What one run occupies on a Ray cluster, and where each role goes: the one place for both.

A run's driver starts engines, reward graders and DeepSpeed learners as separate actors, so a
scheduler that sees only the driver (Ray Tune sees a trial's driver function) undercounts it.
The preflight check of a single run and the sweep's concurrency limit both read `run_needs`;
the actors and Ray Train's workers take their node labels from `placement_options`, and the
preflight checks that labelled nodes exist with room for their role (`check_placement`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mentor_ray.config import ConfigError, MentorConfig

# Reserved by each long-lived reward actor (pipelines.roles) and by each Ray Data stage task
# in flight (pipelines.rollout): small, but they count against a packed cluster.
GRADER_CPUS = 0.5
STAGE_TASK_CPUS = 0.1
# A run's actors are its own, not its caller's: a driver started inside a placement group (a
# Tune trial's) would otherwise pull every actor it starts into that group, where they do not fit.
OUTSIDE_CALLER_PLACEMENT_GROUP = "DEFAULT"


@dataclass(frozen=True)
class RunNeeds:
    cpus: float
    gpus: float
    engines: int
    learners: int

    def describe(self) -> str:
        gpus = f", {self.gpus:g} GPUs" if self.gpus else ""
        return f"{self.cpus:g} CPUs{gpus} ({self.engines} engines, {self.learners} learners, graders, stage tasks)"

    def copies_that_fit(self, resources: dict[str, float]) -> int:
        """How many runs like this one fit in `resources` (Ray's cluster_resources) at once."""
        fits = [math.floor(resources.get("CPU", 0.0) / self.cpus + 1e-9)] if self.cpus else []
        if self.gpus:
            fits.append(math.floor(resources.get("GPU", 0.0) / self.gpus + 1e-9))
        return min(fits) if fits else 1


def run_needs(config: MentorConfig) -> RunNeeds:
    scaling = config.scaling
    engines = scaling.num_policy_engines + (scaling.num_mixed_engines if config.guided else 0)
    learners = scaling.num_learner_workers
    # One stage task per engine batch can be in flight at once (pipelines.loop.rollout_batch_prompts).
    stage_tasks = max(scaling.num_policy_engines, scaling.num_mixed_engines if config.guided else 0)
    # With a step in flight, its rollout runs as a task of its own (pipelines.step_rollout).
    stage_tasks += 1 if config.rollout.max_staleness > 0 else 0
    cpus = engines * scaling.cpus_per_engine + learners * scaling.cpus_per_learner_worker + GRADER_CPUS + stage_tasks * STAGE_TASK_CPUS
    gpus = (engines * scaling.gpus_per_engine + learners) if scaling.use_gpu else 0
    return RunNeeds(cpus=round(cpus, 6), gpus=gpus, engines=engines, learners=learners)


def check_fits(config: MentorConfig, resources: dict[str, float]) -> RunNeeds:
    """Refuse, before any work, a run the cluster cannot hold; returns what it needs."""
    needs = run_needs(config)
    if needs.copies_that_fit(resources) < 1:
        raise ConfigError(
            f"scaling: this run needs {needs.describe()}; the cluster has "
            f"{resources.get('CPU', 0):g} CPUs and {resources.get('GPU', 0):g} GPUs"
        )
    return needs


def on_this_node():
    """A scheduling strategy for an actor that must live and die with the caller's node (and
    stay out of the caller's placement group, as OUTSIDE_CALLER_PLACEMENT_GROUP)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=False)


def placement_options(selector: dict[str, str]) -> dict[str, Any]:
    """Ray actor options that pin a role to nodes with these labels (none: anywhere)."""
    return {"label_selector": dict(selector)} if selector else {}


def label_matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    """Ray's label-selector rule for one node: `v` equals, `!v` differs, `in(a,b)` is one of,
    `!in(a,b)` is none of (a missing label counts as different)."""
    for key, wanted in selector.items():
        have = labels.get(key)
        negate = wanted.startswith("!")
        body = wanted[1:] if negate else wanted
        choices = [c.strip() for c in body[3:-1].split(",")] if body.startswith("in(") and body.endswith(")") else [body]
        if (have in choices) == negate:
            return False
    return True


def role_demands(config: MentorConfig) -> list[tuple[str, dict[str, str], float, float]]:
    """(role, label selector, CPUs, GPUs) of every role the config pins to labelled nodes."""
    scaling, placement = config.scaling, config.placement
    needs = run_needs(config)
    engine_gpus = needs.engines * scaling.gpus_per_engine if scaling.use_gpu else 0
    learner_gpus = needs.learners if scaling.use_gpu else 0
    demands = [
        ("engines", placement.engines, needs.engines * scaling.cpus_per_engine, engine_gpus),
        ("learners", placement.learners, needs.learners * scaling.cpus_per_learner_worker, learner_gpus),
        ("graders", placement.graders, GRADER_CPUS, 0.0),
    ]
    return [demand for demand in demands if demand[1]]


def check_placement(config: MentorConfig, nodes: list[dict[str, Any]]) -> None:
    """Refuse, before any work, a placement no alive node (as `ray.nodes()` lists them) can
    serve: a selector no node matches, or matching nodes without room for the whole role."""
    alive = [node for node in nodes if node.get("Alive")]
    for role, selector, cpus, gpus in role_demands(config):
        matching = [node for node in alive if label_matches(selector, node.get("Labels") or {})]
        if not matching:
            seen = sorted({f"{k}={v}" for node in alive for k, v in (node.get("Labels") or {}).items() if not k.startswith("ray.io/")})
            raise ConfigError(
                f"placement.{role}={selector}: no alive node has these labels (labels on the cluster: {seen or 'none'})"
            )
        have_cpus = sum(node["Resources"].get("CPU", 0.0) for node in matching)
        have_gpus = sum(node["Resources"].get("GPU", 0.0) for node in matching)
        if have_cpus + 1e-9 < cpus or have_gpus + 1e-9 < gpus:
            raise ConfigError(
                f"placement.{role}={selector}: the {role} need {cpus:g} CPUs and {gpus:g} GPUs; the matching "
                f"{len(matching)} node(s) have {have_cpus:g} CPUs and {have_gpus:g} GPUs"
            )


def resource_bundles(config: MentorConfig) -> tuple[list[dict[str, float]], list[dict[str, str]]]:
    """The resource shapes of the run's engines and learners, with their label selectors, as
    the autoscaler is asked for them."""
    scaling = config.scaling
    needs = run_needs(config)
    engine = {"CPU": scaling.cpus_per_engine, **({"GPU": float(scaling.gpus_per_engine)} if scaling.use_gpu else {})}
    learner = {"CPU": scaling.cpus_per_learner_worker, **({"GPU": 1.0} if scaling.use_gpu else {})}
    bundles = [engine] * needs.engines + [learner] * needs.learners
    selectors = [dict(config.placement.engines)] * needs.engines + [dict(config.placement.learners)] * needs.learners
    return bundles, selectors


def check_cluster(config: MentorConfig, ray_module: Any) -> None:
    check_fits(config, ray_module.cluster_resources())
    check_placement(config, ray_module.nodes())


def wait_for_room(config: MentorConfig, ray_module: Any, say: Callable[[str], None], poll_s: float = 5.0) -> None:
    """Refuse, before any work, a cluster that cannot run the config; with
    `scaling.wait_for_nodes_s`, first ask the autoscaler for the run's resources and wait that
    long for them (a cluster without an autoscaler ignores the request)."""
    try:
        check_cluster(config, ray_module)
        return
    except ConfigError as missing:
        wait_s = config.scaling.wait_for_nodes_s
        if wait_s <= 0:
            raise
        last = missing
    from ray.autoscaler.sdk import request_resources

    bundles, selectors = resource_bundles(config)
    request_resources(bundles=bundles, bundle_label_selectors=selectors if any(selectors) else None)
    say(f"waiting up to {wait_s:.0f} s for nodes (scaling.wait_for_nodes_s): {last}")
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        time.sleep(min(poll_s, max(0.0, deadline - time.monotonic())))
        try:
            check_cluster(config, ray_module)
            say("nodes are up")
            return
        except ConfigError as still:
            last = still
    raise ConfigError(f"{last} (still, after waiting {wait_s:.0f} s: scaling.wait_for_nodes_s)")
