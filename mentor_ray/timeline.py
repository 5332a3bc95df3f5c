"""Where a step's wall time goes, per role: busy intervals, busy shares, the overlap, and the
run's timeline as a Chrome trace (the format of `ray.timeline()`; Perfetto opens it).

Ray's own timeline carries the engines' and graders' actor calls, but the learners' phases run
inside one long Ray Train task, so the loop records every role's intervals itself, with the
same wall clock (time.time()) in every process. Pure; no Ray.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field

# The roles of a step, in the order the timeline draws their lanes.
ROLES = ("policy_engines", "mixed_engines", "graders", "learners")
# The roles that hold a device (a GPU on a cluster): the summary names the idlest of these.
DEVICE_ROLES = ("policy_engines", "mixed_engines", "learners")
# The roles that make rollouts: the overlap is time in which one of these and the learners work.
ROLLOUT_ROLES = ("policy_engines", "mixed_engines", "graders")
TIMELINE_FILE = "timeline.json"

Interval = tuple[float, float]


def union(intervals: Iterable[Interval]) -> list[Interval]:
    """Sorted, disjoint intervals covering the same time."""
    merged: list[list[float]] = []
    for start, end in sorted(intervals):
        if end <= start:
            continue
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [(a, b) for a, b in merged]


def clipped(intervals: Iterable[Interval], start: float, end: float) -> list[Interval]:
    return [(max(a, start), min(b, end)) for a, b in intervals if b > start and a < end]


def covered_seconds(intervals: Iterable[Interval]) -> float:
    return sum(b - a for a, b in union(intervals))


def intersection(first: Iterable[Interval], second: Iterable[Interval]) -> list[Interval]:
    left, right = union(first), union(second)
    out, i, j = [], 0, 0
    while i < len(left) and j < len(right):
        start, end = max(left[i][0], right[j][0]), min(left[i][1], right[j][1])
        if start < end:
            out.append((start, end))
        if left[i][1] < right[j][1]:
            i += 1
        else:
            j += 1
    return out


def busy_shares(busy: dict[str, list[Interval]], start: float, end: float) -> dict[str, float]:
    """`busy/<role>_share`: the share of [start, end) in which the role worked (any of its
    actors), and `busy/overlap_share`: the share in which a rollout role and the learners both
    worked. Roles the run does not have are left out."""
    wall = end - start
    if wall <= 0:
        return {}
    shares = {f"busy/{role}_share": covered_seconds(clipped(busy[role], start, end)) / wall for role in ROLES if role in busy}
    rollout = [i for role in ROLLOUT_ROLES for i in clipped(busy.get(role, []), start, end)]
    learners = clipped(busy.get("learners", []), start, end)
    shares["busy/overlap_share"] = covered_seconds(intersection(rollout, learners)) / wall
    return shares


def mean_busy_shares(history: list[dict[str, float]]) -> dict[str, float]:
    """Each role's (and the overlap's) busy share, averaged over the steps that report it."""
    means = {}
    for name in (*ROLES, "overlap"):
        values = [row[f"busy/{name}_share"] for row in history if f"busy/{name}_share" in row]
        if values:
            means[name] = sum(values) / len(values)
    return means


def idlest_role(history: list[dict[str, float]]) -> tuple[str, float] | None:
    """The device-holding role with the lowest mean busy share over the run's steps, and that
    share (graders are CPU tasks beside them: their share is in the metrics and the timeline)."""
    means = {role: share for role, share in mean_busy_shares(history).items() if role in DEVICE_ROLES}
    if not means:
        return None
    role = min(means, key=means.get)
    return role, means[role]


@dataclass
class RoleTimeline:
    """Every role's busy intervals and each step's window, kept by the loop's chief rank."""

    origin: float
    roles: tuple[str, ...] = ROLES  # the roles this run has (GRPO has no mixed engines)
    busy: dict[str, list[Interval]] = field(default_factory=dict)
    steps: list[tuple[int, float, float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        for role in self.roles:
            self.busy.setdefault(role, [])

    def add(self, role: str, intervals: Iterable[Interval]) -> None:
        self.busy.setdefault(role, []).extend(intervals)

    def step_shares(self, step: int, start: float, end: float) -> dict[str, float]:
        self.steps.append((step, start, end))
        return busy_shares(self.busy, start, end)

    def chrome_trace(self) -> str:
        """The intervals as Chrome trace events (microseconds from the run's start)."""
        events = []
        for lane, role in enumerate(self.roles):
            events.append({"name": "thread_name", "ph": "M", "pid": 0, "tid": lane, "args": {"name": role}})
            for start, end in union(self.busy.get(role, [])):
                events.append({"name": role, "ph": "X", "pid": 0, "tid": lane,
                               "ts": (start - self.origin) * 1e6, "dur": (end - start) * 1e6})
        for step, start, end in self.steps:
            events.append({"name": f"step {step}", "ph": "X", "pid": 1, "tid": 0,
                           "ts": (start - self.origin) * 1e6, "dur": (end - start) * 1e6})
        return json.dumps({"traceEvents": events, "displayTimeUnit": "ms"})


def read_chrome_trace(text: str) -> tuple[dict[str, list[Interval]], list[tuple[int, float, float]]]:
    """Role intervals and step windows (seconds from the run's start) back from `chrome_trace`."""
    events = json.loads(text)["traceEvents"]
    lanes = {e["tid"]: e["args"]["name"] for e in events if e.get("ph") == "M"}
    busy: dict[str, list[Interval]] = {role: [] for role in ROLES}
    steps = []
    for event in events:
        if event.get("ph") != "X":
            continue
        start, end = event["ts"] / 1e6, (event["ts"] + event["dur"]) / 1e6
        if event["pid"] == 0:
            busy.setdefault(lanes[event["tid"]], []).append((start, end))
        else:
            steps.append((int(event["name"].split()[-1]), start, end))
    return busy, steps
