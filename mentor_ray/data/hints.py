"""QuestA's hinted prompts: the problem, then the first part of the expert's final solution.

After QuestA's data script (foreverlasting1202/QuestA, `AReaL/datasets/add_prefix.py`): the
final solution is what follows the last `</think>` of the expert's response; the hint is its
first `hint_fraction` of characters; a problem whose answer string does not appear in that
solution is dropped from training, and one whose hint would be shorter than `min_hint_chars`
keeps its plain prompt. Where this differs from that script, on purpose: the solution is
stripped before it is cut, the hint comes under its own header line (HINT_HEADER), and a plain
prompt is the problem text unchanged (the script appends a blank line). A problem without an
expert trace is dropped too (the script only sees problems that have one), and so is one the
starting policy solves too often (the authors' file holds hard problems only:
mentor_ray.data.hard_problems).

The functions are pure (no torch, no model); `hinted_tokenized_problems` renders the result
through the run's chat template, as `run_inputs.load_tokenized_problems` does.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Literal

from mentor_ray.data.problems import Problem

if TYPE_CHECKING:
    from mentor_ray.config import MentorConfig
    from mentor_ray.data.expert_traces import ExpertTrace
    from mentor_ray.data.run_inputs import RunPaths, TokenizedProblem

HINT_HEADER = "## Hint: Partial Solution"
THINK_END = "</think>"

HintStatus = Literal["hinted", "plain_short_prefix", "dropped_answer_missing", "dropped_no_trace", "dropped_easy"]


def final_solution(text: str) -> str:
    """The text after the last `</think>` (the whole text without one), stripped."""
    return text.rpartition(THINK_END)[2].strip()


def hint_prefix(solution: str, fraction: float) -> str:
    """The first int(len(solution) * fraction) characters."""
    return solution[: int(len(solution) * fraction)]


def _hint(problem_text: str, trace_text: str | None, answer: str, fraction: float, min_chars: int,
          whole_response: bool = False) -> tuple[str | None, HintStatus, str]:
    if trace_text is None:
        return None, "dropped_no_trace", ""
    solution = trace_text.strip() if whole_response else final_solution(trace_text)
    if answer not in solution:
        return None, "dropped_answer_missing", ""
    prefix = hint_prefix(solution, fraction)
    if len(prefix) < min_chars:
        return problem_text, "plain_short_prefix", ""
    return f"{problem_text}\n\n{HINT_HEADER}\n{prefix}", "hinted", prefix


def hinted_problem(
    problem_text: str, trace_text: str | None, answer: str, fraction: float, min_chars: int, whole_response: bool = False
) -> tuple[str | None, HintStatus]:
    """(the prompt text, or None for a problem left out of training; what was done).
    whole_response: cut the hint from the whole response, not only its final solution
    (`algorithm.hint_from`)."""
    text, status, _ = _hint(problem_text, trace_text, answer, fraction, min_chars, whole_response)
    return text, status


@dataclass(frozen=True)
class HintStats:
    """Problems by what was done to them (`hinted_problem`'s statuses), and the hints' length."""

    hinted: int
    plain_short_prefix: int
    dropped_answer_missing: int
    dropped_no_trace: int
    # Hinted prompts over data.max_prompt_tokens that went back to their plain prompt
    # (`hinted_tokenized_problems`; counted among the plain ones, not in `hinted`).
    plain_hint_too_long: int
    hint_chars_total: int
    # Problems the starting policy solved too often (hard_problems; 0 when every problem is kept).
    dropped_easy: int = 0

    @property
    def kept(self) -> int:
        return self.hinted + self.plain_short_prefix + self.plain_hint_too_long

    @property
    def hinted_share(self) -> float:
        return self.hinted / self.kept if self.kept else 0.0

    @property
    def hint_chars_mean(self) -> float:
        return self.hint_chars_total / self.hinted if self.hinted else 0.0


@dataclass(frozen=True)
class _Hinted:
    plain: Problem
    hinted: Problem | None  # None: dropped
    status: HintStatus
    hint_chars: int


def _hint_each(
    problems: list[Problem], traces: Mapping[str, ExpertTrace | str], fraction: float, min_chars: int, whole_response: bool = False,
    selected: Collection[str] | None = None,
) -> list[_Hinted]:
    items = []
    for problem in problems:
        if selected is not None and problem.problem_id not in selected:
            items.append(_Hinted(problem, None, "dropped_easy", 0))
            continue
        trace = traces.get(problem.problem_id)
        trace_text = trace if trace is None or isinstance(trace, str) else trace.text
        text, status, prefix = _hint(problem.problem, trace_text, problem.answer, fraction, min_chars, whole_response)
        items.append(_Hinted(problem, None if text is None else replace(problem, problem=text), status, len(prefix)))
    return items


def _stats(items: list[_Hinted], too_long: Sequence[_Hinted] = ()) -> HintStats:
    counts = Counter(item.status for item in items)
    return HintStats(
        hinted=counts["hinted"] - len(too_long),
        plain_short_prefix=counts["plain_short_prefix"],
        dropped_answer_missing=counts["dropped_answer_missing"],
        dropped_no_trace=counts["dropped_no_trace"],
        plain_hint_too_long=len(too_long),
        hint_chars_total=sum(item.hint_chars for item in items) - sum(item.hint_chars for item in too_long),
        dropped_easy=counts["dropped_easy"],
    )


def apply_hints(
    problems: list[Problem], traces: Mapping[str, ExpertTrace | str], fraction: float, min_chars: int, whole_response: bool = False,
) -> tuple[list[Problem], HintStats]:
    """The problems QuestA trains on, in order (hinted or plain; dropped ones left out), and
    the counts. traces: by problem id, an ExpertTrace or the response text itself."""
    items = _hint_each(problems, traces, fraction, min_chars, whole_response)
    return [item.hinted for item in items if item.hinted is not None], _stats(items)


def hinted_tokenized_problems(
    config: MentorConfig,
    paths: RunPaths,
    tokenizer,
    traces: Mapping[str, ExpertTrace | str],
    say: Callable[[str], None] = print,
    selected: Collection[str] | None = None,
) -> tuple[list[TokenizedProblem], dict[str, float]]:
    """The training problems as a QuestA run tokenizes them: loaded, hinted, rendered through
    the chat template and length-filtered like `load_tokenized_problems`. A hinted prompt over
    data.max_prompt_tokens goes back to its plain prompt (counted), so a hint never costs a
    problem. selected: the problem ids QuestA may train on (the hard ones); None: all.
    Returns the problems and the data metrics."""
    from mentor_ray.data.problems import filter_long_prompts
    from mentor_ray.data.run_inputs import load_tokenized_problems

    fraction, min_chars = config.algorithm.hint_fraction, config.algorithm.min_hint_chars
    whole_response = config.algorithm.hint_from == "whole_response"
    outcome: dict[str, HintStats] = {}

    def with_hints(problems: list[Problem]) -> list[Problem]:
        items = _hint_each(problems, traces, fraction, min_chars, whole_response, selected)
        hinted = [item.hinted for item in items if item.status == "hinted"]
        fitting, _ = filter_long_prompts(hinted, tokenizer, config.data.max_prompt_tokens, paths.system_prompt)
        fits = {problem.problem_id for problem in fitting}
        too_long = [item for item in items if item.status == "hinted" and item.plain.problem_id not in fits]
        outcome["stats"] = _stats(items, too_long)
        back_to_plain = {item.plain.problem_id for item in too_long}
        return [item.plain if item.plain.problem_id in back_to_plain else item.hinted for item in items if item.hinted is not None]

    tokenized, counts = load_tokenized_problems(
        paths.train_path, config, tokenizer, paths.system_prompt, "train", say=say, transform=with_hints
    )
    stats = outcome["stats"]
    say(
        f"[data] questa: {stats.hinted} of {stats.kept} problems hinted (mean hint {stats.hint_chars_mean:.0f} chars); "
        f"{stats.plain_short_prefix} plain (hint under {min_chars} chars), {stats.plain_hint_too_long} plain (hinted prompt too long); "
        f"dropped: {stats.dropped_answer_missing} answer not in the expert's solution, {stats.dropped_no_trace} without a trace, "
        f"{stats.dropped_easy} solved too often by the starting policy"
    )
    return tokenized, {
        **{key: float(value) for key, value in counts.items()},
        # Every hinted prompt fits, so this is the share of the training prompts with a hint.
        "data/questa_hinted_share": stats.hinted / len(tokenized),
        "data/questa_hint_chars_mean": stats.hint_chars_mean,
        "data/questa_dropped_answer_missing": float(stats.dropped_answer_missing),
        "data/questa_dropped_no_trace": float(stats.dropped_no_trace),
        "data/questa_dropped_easy": float(stats.dropped_easy),
        "data/questa_plain_short_prefix": float(stats.plain_short_prefix),
        "data/questa_plain_hint_too_long": float(stats.plain_hint_too_long),
    }
