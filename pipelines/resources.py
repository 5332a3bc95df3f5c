"""What one run occupies on a Ray cluster: the one place that counts it.

A run's driver starts engines, reward graders and DeepSpeed learners as separate actors, so a
scheduler that sees only the driver (Ray Tune sees a trial's driver function) undercounts it.
The preflight check of a single run and the sweep's concurrency limit both read `run_needs`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

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
