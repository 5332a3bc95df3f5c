"""What a response carries besides its answer: the habits MENTOR's paper says the policy takes from
the expert, each found by a rule over the response's words.

The paper (MENTOR.md section 11) reads four keywords per response: the useful ones ("verify",
"check") that it says MENTOR picks up, and the filler ("wait", "okay") that it says MENTOR leaves
while LUFFY copies it. The habits toy world (mentor_ray/toy_world, ``toy://habits/...``) writes
exactly these words: its expert checks each product it computes (`` check 7*8=56``, a step that
repairs the slip it shares with the policy) and says ``okay`` / ``wait`` between steps (changing
nothing). A habit is counted per occurrence, as a whole word in any case, so ``checked`` or
``OK`` are not counted; the rates are occurrences per response.

Pure Python (no torch): the metrics, compare and the toy world's evaluation read it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Habit:
    """A word a response may carry; `useful` says whether the paper counts it as substance."""

    name: str
    useful: bool
    pattern: re.Pattern = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "pattern", re.compile(rf"\b{re.escape(self.name)}\b", re.IGNORECASE))

    def count(self, text: str) -> int:
        return len(self.pattern.findall(text))


HABITS: tuple[Habit, ...] = (
    Habit("verify", useful=True),
    Habit("check", useful=True),
    Habit("wait", useful=False),
    Habit("okay", useful=False),
)
# The two totals every report shows beside the single words.
GROUPS = ("useful", "filler")


def habit_counts(text: str) -> dict[str, int]:
    """Occurrences of every habit in one response, and the useful and filler totals."""
    counts = {habit.name: habit.count(text) for habit in HABITS}
    counts["useful"] = sum(counts[h.name] for h in HABITS if h.useful)
    counts["filler"] = sum(counts[h.name] for h in HABITS if not h.useful)
    return counts


def habit_rates(texts: Iterable[str]) -> dict[str, float]:
    """Mean occurrences per response of every habit and of each group; empty for no responses."""
    per_response = [habit_counts(text) for text in texts]
    if not per_response:
        return {}
    return {name: sum(c[name] for c in per_response) / len(per_response) for name in per_response[0]}


def habit_names() -> tuple[str, ...]:
    """Every name habit_counts reports: the single habits, then the groups."""
    return (*(habit.name for habit in HABITS), *GROUPS)
