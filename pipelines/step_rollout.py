"""A training step's rollout, made in the loop's own process (lockstep) or, for the step in
flight, as a Ray task of its own beside the graders: the learner's process (and its core or
GPU) then only learns while the next step's rollout runs, and the Ray Data execution that
drives the engines does not wait on the learner's Python for its turns.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from typing import Any

import ray

from mentor_ray.config import MentorConfig
from mentor_ray.core.guidance import guidance_alpha
from mentor_ray.core.methods import Method
from mentor_ray.data.prompt_schedule import PromptSchedule
from mentor_ray.data.run_inputs import TokenizedProblem
from mentor_ray.learner import TrainingSample
from mentor_ray.metrics import expert_signal_metrics, mixture_metrics, rollout_metrics
from pipelines.resources import (
    OUTSIDE_CALLER_PLACEMENT_GROUP,
    STAGE_TASK_CPUS,
    placement_options,
)
from pipelines.roles import RolloutRoles
from pipelines.rollout import PromptRecord, RolloutPlan, run_rollout


@dataclass
class PreparedRollout:
    """One step's graded, scored samples, with the numbers that describe them."""

    step: int
    samples: list[TrainingSample]
    metrics: dict[str, float]
    started: float  # wall clock (time.time()), to place it on the roles' timeline
    ended: float
    bad_reference_problems: list[str] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))  # asdict recurses into the samples

    @classmethod
    def from_json(cls, text: str) -> PreparedRollout:
        data = json.loads(text)
        return cls(**{**data, "samples": [TrainingSample(**s) for s in data["samples"]]})


@dataclass(frozen=True)
class StepRolloutMaker:
    """Everything a step's rollout needs but the step, its tau and the engines' weights version."""

    config: MentorConfig
    method: Method
    roles: RolloutRoles
    schedule: PromptSchedule
    problems: list[TokenizedProblem]
    # problem id -> (response token ids, text) of its stored expert trace (LUFFY); else empty.
    expert_traces: dict[str, tuple[list[int], str]]
    prompts_per_batch: int
    # (first step, problems) of a later stage (QuestA's curriculum), else None.
    later_problems: tuple[int, list[TokenizedProblem]] | None = None

    def problems_for_step(self, step: int) -> list[TokenizedProblem]:
        if self.later_problems is not None and step >= self.later_problems[0]:
            return self.later_problems[1]
        return self.problems

    def __call__(self, step: int, entropy_threshold: float, weights_version: int) -> PreparedRollout:
        """Generates, grades and scores `step`'s samples on the engines holding `weights_version`."""
        config, problems = self.config, self.problems_for_step(step)
        alpha = guidance_alpha(step, config.guidance.alpha_0, config.guidance.decay_steps)
        prompts = [
            PromptRecord(position, problems[i].problem_id, problems[i].answer, problems[i].prompt_token_ids,
                         *self.expert_traces.get(problems[i].problem_id, (None, None)))
            for position, i in enumerate(self.schedule.indices_for_step(step))
        ]
        plan = RolloutPlan(
            step=step, seed=config.seed, n_on_policy=config.rollout.n_on_policy - self.method.expert_traces_per_group,
            n_mixed=config.rollout.n_mixed if alpha > 0 else 0, advantages=self.method.advantages,
            expert_traces_per_group=self.method.expert_traces_per_group, max_new_tokens=config.rollout.max_response_tokens,
            temperature=config.rollout.temperature, top_p=config.rollout.top_p, entropy_threshold=entropy_threshold,
            alpha=alpha, weights_version=weights_version, prompts_per_batch=self.prompts_per_batch,
        )
        started = time.time()
        rollout = run_rollout(prompts, plan, self.roles)
        metrics = {"guidance/alpha": alpha, "guidance/entropy_threshold": entropy_threshold,
                   "rollout/weights_version": float(weights_version)}
        metrics.update(rollout_metrics(rollout.rows))
        metrics.update(mixture_metrics(rollout.mixture))
        metrics.update(expert_signal_metrics(rollout.rows, rollout.mixture))
        metrics["rollout/dropped_prompts"] = float(rollout.dropped_prompts)
        for status, count in rollout.grading.items():
            metrics[f"reward/grading_{status}"] = float(count)
        metrics["time/rollout_seconds"] = rollout.seconds
        metrics["time/rollout_tokens_per_second"] = rollout.generated_tokens / max(rollout.seconds, 1e-9)
        samples = [TrainingSample.from_rollout_row(row) for row in rollout.rows]
        return PreparedRollout(step, samples, metrics, started, time.time(), rollout.bad_reference_problems)


def _make_step_rollout(maker: StepRolloutMaker, step: int, entropy_threshold: float, weights_version: int) -> PreparedRollout:
    import ray.data

    # As in the loop: no progress bars or per-execution stats from a worker.
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.enable_auto_log_stats = False
    return maker(step, entropy_threshold, weights_version)


class RolloutInFlight:
    """The next step's rollout while the learners train: a running task, or one already
    finished (read back from a checkpoint)."""

    def __init__(self, running: ray.ObjectRef | None = None, finished: PreparedRollout | None = None) -> None:
        self._running, self._finished = running, finished

    def done(self) -> bool:
        return self._finished is not None or not ray.wait([self._running], timeout=0)[1]

    def result(self) -> PreparedRollout:
        if self._finished is None:
            self._finished = ray.get(self._running)
        return self._finished


def start_step_rollout(maker_ref: Any, config: MentorConfig, step: int, entropy_threshold: float, weights_version: int) -> RolloutInFlight:
    """The step's rollout as a Ray task where the graders run (`placement.graders`), outside
    the learners' placement group; `maker_ref` is a `StepRolloutMaker` put once per run."""
    # A retry is safe: the engines keep the weights of this rollout until it is collected, and
    # its seeds depend on the step only, so a second try makes the same samples.
    task = ray.remote(_make_step_rollout).options(
        num_cpus=STAGE_TASK_CPUS, scheduling_strategy=OUTSIDE_CALLER_PLACEMENT_GROUP, max_retries=2,
        **placement_options(config.placement.graders),
    )
    return RolloutInFlight(running=task.remote(maker_ref, step, entropy_threshold, weights_version))
