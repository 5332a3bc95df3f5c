"""Accuracy with math-verify, and the reward it makes with the format score.

reward = weights.accuracy * accuracy + weights.format * format   (MENTOR.md section 5)

This is the only module that imports math_verify.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Literal

from mentor_ray.rewards.answers import BOXED_SCAN_WINDOW_CHARS, extract_last_boxed

GradingStatus = Literal["ok", "no_answer", "timeout", "error", "bad_reference"]
# bad_reference: the dataset's answer itself cannot be parsed; counted apart from the model's
# failures, and the problem is named to the user (the data needs fixing, not the policy).
GRADING_STATUSES: tuple[str, ...] = ("ok", "no_answer", "timeout", "error", "bad_reference")


# ----------------------------------------------------------------------------------------------
# Accuracy with math-verify (in-process; unbounded time: use RewardGrader for untrusted text)
# ----------------------------------------------------------------------------------------------
def _braces_balance(text: str) -> bool:
    """Whether every unescaped `{` is closed in order: math-verify reads `\\frac{` as some
    string and reports it parsed, so a cut-off reference would grade every answer as wrong."""
    depth, escaped = 0, False
    for char in text:
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth < 0:
                return False
    return depth == 0


def _parseable(reference: str) -> bool:
    # A boxed reference is read through its last box, which the box scanner closes itself.
    return extract_last_boxed(reference) is not None or _braces_balance(reference)


def _reference_as_latex(reference: str) -> str:
    # A reference that already carries its own \boxed (a MATH solution) is parsed as is;
    # a bare answer ("\frac{1}{2}", "0.5", "(3, \pi/2)") is boxed so the LaTeX extractor
    # treats all of it as one answer.
    if extract_last_boxed(reference) is not None:
        return reference
    return "\\boxed{" + reference.strip() + "}"


def grade_accuracy(response: str, reference: str) -> tuple[float, str]:
    """(1.0 or 0.0, status) for the last boxed answer of response against reference.

    status is "ok" when both sides parsed (score says whether they match), "no_answer" when
    the response has no usable boxed answer, "bad_reference" when the reference cannot be
    parsed. Both answers are read in Unicode compatibility form (NFKC): a full-width
    `\boxed{２}` is the 2 it displays.
    Runs math-verify with its signal-based timeouts off: call it where time is bounded
    from outside (RewardGrader's worker processes).
    """
    # The only math_verify import in the project. LaTeX extraction only: the plain-expression
    # extractor hands text to sympy's parse_expr, which is built on eval().
    from math_verify import LatexExtractionConfig, parse, verify

    latex_only = [LatexExtractionConfig()]

    if not isinstance(response, str) or not isinstance(reference, str):
        raise TypeError(
            "grade_accuracy expects (str, str), got "
            f"({type(response).__name__}, {type(reference).__name__})"
        )
    answer = extract_last_boxed(response)
    if answer is None or not answer.strip():
        return 0.0, "no_answer"
    answer = unicodedata.normalize("NFKC", answer)
    reference = unicodedata.normalize("NFKC", reference[-BOXED_SCAN_WINDOW_CHARS:])
    predicted = parse(
        "\\boxed{" + answer + "}", extraction_config=latex_only, parsing_timeout=None
    )
    if not predicted:
        return 0.0, "no_answer"
    gold = parse(_reference_as_latex(reference), extraction_config=latex_only, parsing_timeout=None) if _parseable(reference) else None
    if not gold:
        return 0.0, "bad_reference"
    matched = verify(gold, predicted, timeout_seconds=None)
    return (1.0 if matched else 0.0), "ok"


# A plain integer, at most 64 digits: what most toy and many MATH/GSM8K answers are.
_PLAIN_INTEGER = re.compile(r"[+-]?[0-9]{1,64}")


def grade_plain_integers(response: str, reference: str) -> tuple[float, str] | None:
    """`grade_accuracy`'s verdict without math-verify when it is certain: the response has no
    boxed answer, or both its boxed answer and the reference are plain integers (equal as
    integers, as math-verify also judges them). None otherwise. Linear time, bounded input."""
    answer = extract_last_boxed(response)
    if answer is None or not answer.strip():
        return 0.0, "no_answer"
    answer, gold = unicodedata.normalize("NFKC", answer).strip(), unicodedata.normalize("NFKC", reference[-BOXED_SCAN_WINDOW_CHARS:]).strip()
    if _PLAIN_INTEGER.fullmatch(answer) and _PLAIN_INTEGER.fullmatch(gold):
        return (1.0 if int(answer) == int(gold) else 0.0), "ok"
    return None


def accuracy_reward(response: str, reference: str) -> float:
    """1.0 if the last boxed answer in response is equivalent to reference, else 0.0.

    In-process and NOT time-bounded: for trusted inputs and tests. Grade model output through
    RewardGrader, which kills gradings that hang.
    """
    score, _ = grade_accuracy(response, reference)
    return score


# ----------------------------------------------------------------------------------------------
# Result types
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RewardWeights:
    accuracy: float = 0.9
    format: float = 0.1

    def __post_init__(self) -> None:
        for name in ("accuracy", "format"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"RewardWeights.{name} must be a number >= 0, got {value!r}")


@dataclass(frozen=True)
class RewardParts:
    accuracy: float
    format: float
    total: float
    status: str  # one of GRADING_STATUSES


def combine_reward(
    accuracy: float, format_score: float, status: str, weights: RewardWeights
) -> RewardParts:
    total = weights.accuracy * accuracy + weights.format * format_score
    return RewardParts(accuracy=accuracy, format=format_score, total=total, status=status)


