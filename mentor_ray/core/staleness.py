"""One step of overlap, the pure rules (MENTOR.md section 12): which rows a step may train on,
and which learner pass sets a rollout's entropy threshold.

Versions count optimizer updates in RL steps: the weights after step k's update are version k,
so the learner trains step k holding version k - 1. A row's lag is that version minus the version
of the engine that generated it: 0 in lockstep, 1 for a rollout made while the previous step
was learning. Rows with a lag above `max_staleness` are dropped and counted, never trained on.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

Sample = TypeVar("Sample")


@dataclass(frozen=True)
class Admission(Generic[Sample]):
    """A step's samples split by staleness; `kept` carry their `behaviour_lag`."""

    kept: list[Sample]
    dropped: int
    largest_lag: int


def admit_by_staleness(samples: Sequence[Sample], learner_version: int, max_staleness: int) -> Admission[Sample]:
    """Keeps the samples made at most `max_staleness` versions before `learner_version`.

    A stored expert trace was made by no policy weights: it always stays, with lag 0. A row
    from a version later than the learner's cannot happen in a correct loop and is an error.
    """
    kept, dropped, largest = [], 0, 0
    for sample in samples:
        if getattr(sample, "is_expert_trace", False):
            kept.append(dataclasses.replace(sample, behaviour_lag=0))
            continue
        lag = learner_version - int(sample.weights_version)
        if lag < 0:
            raise ValueError(f"a row from weights v{sample.weights_version} reached a learner holding v{learner_version}")
        if lag > max_staleness:
            dropped += 1
            continue
        largest = max(largest, lag)
        kept.append(dataclasses.replace(sample, behaviour_lag=lag))
    return Admission(kept, dropped, largest)


def threshold_source_step(step: int, max_staleness: int) -> int:
    """The RL step whose learner pass sets tau for `step`'s mixed rollouts (0: none, tau_init).

    A rollout starts when the latest finished learner pass is that of step - 1 - max_staleness:
    in lockstep the previous step's (MENTOR.md section 2); with one step in flight, the one
    before, since step - 1 is still learning while step's rollout is generated. The quantile
    itself stays the exact global one over every rank's on-policy tokens of that step.
    """
    return max(0, step - 1 - max_staleness)
