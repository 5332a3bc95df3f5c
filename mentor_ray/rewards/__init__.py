"""Rewards for math reasoning: answer accuracy (math-verify) and output format.

reward = weights.accuracy * accuracy + weights.format * format   (MENTOR.md section 5)

Three parts, each with one job:
- `answers`: the last boxed answer and the format rules, pure string scans;
- `scoring`: accuracy with math-verify (its only importer) and the combined reward;
- `grader`: `RewardGrader`, which runs the accuracy grading in worker processes.

The grader runs on untrusted model text: nothing here evaluates it (math-verify parses LaTeX
into sympy; no eval/exec), every string scan is a single linear pass over a bounded window,
and accuracy grading, which can hang or blow up inside sympy (`9^{9^{9^9}}`), runs in worker
processes that are killed and replaced when they exceed their time budget.
"""

from mentor_ray.rewards.answers import (
    BOXED_SCAN_WINDOW_CHARS,
    FORMAT_RULES,
    MAX_BOXED_NESTING,
    extract_last_boxed,
    format_reward,
    official_format_reward,
)
from mentor_ray.rewards.grader import (
    DEFAULT_GRADING_FUNCTION,
    GradingStats,
    RewardGrader,
    resolve_grading_function,
)
from mentor_ray.rewards.scoring import (
    GRADING_STATUSES,
    GradingStatus,
    RewardParts,
    RewardWeights,
    accuracy_reward,
    combine_reward,
    grade_accuracy,
    grade_plain_integers,
)

__all__ = [
    "BOXED_SCAN_WINDOW_CHARS",
    "DEFAULT_GRADING_FUNCTION",
    "FORMAT_RULES",
    "GRADING_STATUSES",
    "MAX_BOXED_NESTING",
    "GradingStats",
    "GradingStatus",
    "RewardGrader",
    "RewardParts",
    "RewardWeights",
    "accuracy_reward",
    "combine_reward",
    "extract_last_boxed",
    "format_reward",
    "grade_accuracy",
    "grade_plain_integers",
    "official_format_reward",
    "resolve_grading_function",
]
