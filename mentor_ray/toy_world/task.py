"""The toy task: short integer expressions with + - * and operator precedence.

A problem reads ``Compute 7+5*3-2``; its intended response works the expression out one
binary operation at a time, multiplications first, then left to right::

    <think>5*3=15;7+15=22;22-2=20</think> \\boxed{20}

Why this task: every answer is checkable exactly, a response is 20-50 characters (so a
character-level model keeps RL on CPU cheap), and the models' SFT data can be given habits
that RL should change or keep: stopping one step early (``stop_one_step_early``, a wrong
decision at one uncertain token) and writing ``b+a`` for ``a+b`` (``swap_operands``, a
free choice of style where diversity is worth keeping). The habits world's models write
their working with ``write_with_habits``: a product sometimes slipped by one, a ``check`` step
that repeats each product and repairs the slip, and ``okay`` / ``wait`` filler between steps.

Constraints that keep it learnable by a tiny model: operands are 1-9, a ``*`` never chains
(each product is single digit times single digit), and every intermediate value stays in
0..99 (problems breaking this are redrawn).
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping
from dataclasses import dataclass

OPERATORS = ("+", "-", "*")
MIN_OPERAND, MAX_OPERAND = 1, 9
MAX_VALUE = 99
PROBLEM_PREFIX = "Compute "
# Bounded retries per problem: with the default weights a draw is accepted ~60% of the time,
# so this only trips on degenerate op_weights (e.g. only "-" with many steps).
_MAX_DRAWS_PER_PROBLEM = 10_000
_SOLUTION = re.compile(r"<think>(.+)</think> \\boxed\{(-?\d+)\}")
# Marks that may separate two steps of the working. All are equally right: a model that uses
# them evenly has a choice with more than one correct answer at every step boundary.
STEP_SEPARATORS = (";", ",", " ")
_STEP_SEPARATOR = re.compile("[" + "".join(STEP_SEPARATORS) + "]")
# Single-digit operands only: their facts are the same table read either way, so a swap
# changes the style and not the arithmetic a tiny model has to know.
ONE_DIGIT_COMMUTATIVE_STEP = re.compile(r"(\d)([+*])(\d)=(\d+)")


# The habits world (write_with_habits): its boundaries are marked by ";" or "," only, so the
# space before a habit word can never be read as a separator.
HABIT_SEPARATORS = (";", ",")
CHECK_WORD = "check"
FILLER_WORDS = ("okay", "wait")
_CHECK_STEP = re.compile(rf"\s*{CHECK_WORD}\s*\d+[+\-*]\d+=-?\d+")
_FILLER = re.compile(rf"\s*\b({'|'.join(FILLER_WORDS)})\b")
_PROBLEM_TOKENS = re.compile(r"\d+|[+\-*]")


@dataclass(frozen=True)
class WorkedExpression:
    """An expression, the steps that evaluate it, and its value."""

    text: str
    steps: tuple[str, ...]
    value: int


def evaluate_stepwise(operands: list[int], operators: list[str]) -> WorkedExpression | None:
    """Evaluates with precedence, recording one ``a?b=c`` step per operation.

    Returns None when an intermediate value leaves 0..MAX_VALUE (the problem is then redrawn).
    """
    text = "".join(f"{a}{op}" for a, op in zip(operands, operators)) + str(operands[-1])
    values, ops = list(operands), list(operators)
    steps: list[str] = []
    # Multiplications first, leftmost first; the generator never puts two "*" side by side,
    # so each product is of two original single-digit operands.
    while "*" in ops:
        i = ops.index("*")
        result = values[i] * values[i + 1]
        steps.append(f"{values[i]}*{values[i + 1]}={result}")
        values[i : i + 2] = [result]
        del ops[i]
    if not _add_and_subtract(values, ops, steps):
        return None
    return WorkedExpression(text=text, steps=tuple(steps), value=values[0])


def _add_and_subtract(values: list[int], ops: list[str], steps: list[str]) -> bool:
    """Works the remaining + and - left to right, appending one step each; False when a value
    leaves 0..MAX_VALUE. `values` ends as the one result."""
    while ops:
        a, op, b = values[0], ops[0], values[1]
        result = a + b if op == "+" else a - b
        if not 0 <= result <= MAX_VALUE:
            return False
        steps.append(f"{a}{op}{b}={result}")
        values[0:2] = [result]
        del ops[0]
    return True


def format_solution(steps: tuple[str, ...], answer: int, separators: tuple[str, ...] = ()) -> str:
    """The intended response: the working inside <think>, then the boxed answer.

    separators: the mark after each step but the last (default ``;`` everywhere).
    """
    marks = separators or (";",) * (len(steps) - 1)
    working = steps[0] + "".join(mark + step for mark, step in zip(marks, steps[1:], strict=True))
    return f"<think>{working}</think> \\boxed{{{answer}}}"


def strip_habits(working: str) -> str:
    """The working without its check steps and filler words (the habits world's), so the steps
    that remain are the ones that carry the computation."""
    return _FILLER.sub("", _CHECK_STEP.sub("", working))


def split_steps(working: str) -> list[str]:
    """The ``a?b=c`` steps of a working, whichever STEP_SEPARATORS join them (check steps and
    filler left out)."""
    return _STEP_SEPARATOR.split(strip_habits(working))


def parse_problem(problem: str) -> tuple[list[int], list[str]]:
    """Operands and operators of a problem text (``Compute 7+5*3``)."""
    tokens = _PROBLEM_TOKENS.findall(problem.removeprefix(PROBLEM_PREFIX))
    return [int(t) for t in tokens[::2]], tokens[1::2]


def write_with_habits(problem: str, rng: random.Random, slip_rate: float, checks_products: bool, filler_rate: float) -> str:
    """A response to ``problem`` in the habits world's style: products first, then left to right.

    - slip_rate: the typical slip both habits-world models share: each product is written one
      off (up or down, evenly) with this chance, and the working goes on from the wrong value.
      A slip that would take a later value out of 0..MAX_VALUE is not made.
    - checks_products: after each product, `` check a*b=c`` with the right value, and the
      working goes on from the checked value: the useful habit, it repairs the slip.
    - filler_rate: at each boundary between two steps, `` okay`` or `` wait`` (evenly) with
      this chance: filler that changes nothing.
    Steps are joined by HABIT_SEPARATORS, drawn evenly.
    """
    operands, operators = parse_problem(problem)
    slips = [rng.random() < slip_rate for _ in operators if _ == "*"]
    ups = [rng.random() < 0.5 for _ in slips]
    worked = _worked_with_slips(operands, operators, slips, ups, checks_products)
    if worked is None:  # a slip left the range: the products are written right
        worked = _worked_with_slips(operands, operators, [False] * len(slips), ups, checks_products)
    pieces, value = worked
    working = pieces[0]
    for piece in pieces[1:]:
        if rng.random() < filler_rate:
            working += " " + rng.choice(FILLER_WORDS)
        working += rng.choice(HABIT_SEPARATORS) + piece
    return f"<think>{working}</think> \\boxed{{{value}}}"


def _worked_with_slips(operands: list[int], operators: list[str], slips: list[bool], ups: list[bool],
                       checks_products: bool) -> tuple[list[str], int] | None:
    values, ops = list(operands), list(operators)
    pieces: list[str] = []
    product = 0
    while "*" in ops:
        i = ops.index("*")
        a, b = values[i], values[i + 1]
        right = a * b
        written = right + (1 if ups[product] or right == 0 else -1) if slips[product] else right
        piece = f"{a}*{b}={written}"
        if checks_products:
            piece += f" {CHECK_WORD} {a}*{b}={right}"
            written = right
        pieces.append(piece)
        values[i : i + 2] = [written]
        del ops[i]
        product += 1
    if not _add_and_subtract(values, ops, pieces) or not 0 <= values[0] <= MAX_VALUE:
        return None
    return pieces, values[0]


def _parse_solution(solution: str) -> tuple[list[str], int]:
    match = _SOLUTION.fullmatch(solution)
    if match is None:
        raise ValueError(f"not a toy solution: {solution!r}")
    return split_steps(match.group(1)), int(match.group(2))


def swapped(operation: re.Match) -> str:
    """``b?a=c`` for a match of ONE_DIGIT_COMMUTATIVE_STEP on ``a?b=c``."""
    left, operator, right, result = operation.groups()
    return f"{right}{operator}{left}={result}"


def swap_operands(solution: str, rng: random.Random, rate: float) -> str:
    """The working with each one-digit ``a+b`` / ``a*b`` step written ``b+a`` / ``b*a`` with probability ``rate``.

    Both orders are correct, so this is pure style: the first character of every such step is a
    fork with more than one right answer. A diverse expert (rate 0.5) and a policy that only
    sometimes swaps (its entropy there is moderate) let guidance keep an alternative alive that
    on-policy RL, which only reinforces what the policy already samples, lets fade.
    """
    steps, answer = _parse_solution(solution)
    written = []
    for step in steps:
        operation = ONE_DIGIT_COMMUTATIVE_STEP.fullmatch(step)
        if operation and rng.random() < rate:
            step = swapped(operation)
        written.append(step)
    return format_solution(tuple(written), answer)


def stop_one_step_early(solution: str) -> str:
    """The same working with its last step dropped and the previous result boxed as the answer.

    This is the toy policy's bad habit: answering before the working is done. Its decision is
    one token (``;`` to go on, ``</think>`` to stop) at the last step boundary: the uncertain
    fork where expert guidance and RL both have something to teach. A one-step solution is
    returned unchanged (there is no earlier result to box).
    """
    steps, _ = _parse_solution(solution)
    if len(steps) < 2:
        return solution
    kept = tuple(steps[:-1])
    return format_solution(kept, int(kept[-1].rsplit("=", 1)[1]))


def stop_at_a_boundary(solution: str, rng: random.Random, rate: float) -> str:
    """The working cut at the first step boundary where a draw falls below ``rate``, with the
    result so far boxed; unchanged when no draw does.

    A model trained on this hesitates at every boundary, so a solution of n steps is finished
    with probability (1 - rate) ** (n - 1): several forks, each of which must go right.
    """
    steps, answer = _parse_solution(solution)
    for kept in range(1, len(steps)):
        if rng.random() < rate:
            return format_solution(tuple(steps[:kept]), int(steps[kept - 1].rsplit("=", 1)[1]))
    return solution


def vary_separators(solution: str, rng: random.Random) -> str:
    """The same solution with each step boundary marked by one of STEP_SEPARATORS, drawn evenly."""
    steps, answer = _parse_solution(solution)
    return format_solution(tuple(steps), answer, tuple(rng.choice(STEP_SEPARATORS) for _ in steps[1:]))


def _difficulty_range(difficulty: int | tuple[int, int]) -> tuple[int, int]:
    low, high = (difficulty, difficulty) if isinstance(difficulty, int) else tuple(difficulty)
    if not (isinstance(low, int) and isinstance(high, int) and 1 <= low <= high <= 6):
        raise ValueError(
            f"difficulty must be an int or (min, max) pair of operation counts in 1..6, got {difficulty!r}"
        )
    return low, high


def _operator_weights(op_weights: Mapping[str, float] | None) -> list[float]:
    if op_weights is None:
        return [1.0] * len(OPERATORS)
    unknown = set(op_weights) - set(OPERATORS)
    if unknown:
        raise ValueError(f"op_weights has unknown operators {sorted(unknown)}; allowed {OPERATORS}")
    weights = [float(op_weights.get(op, 0.0)) for op in OPERATORS]
    if any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(f"op_weights must be >= 0 with a positive sum, got {dict(op_weights)}")
    return weights


def _draw_operators(rng: random.Random, count: int, weights: list[float]) -> list[str]:
    operators: list[str] = []
    for _ in range(count):
        # No "*" right after "*": keeps every product single digit times single digit.
        allowed = [
            (op, w) for op, w in zip(OPERATORS, weights) if not (op == "*" and operators[-1:] == ["*"])
        ]
        ops, ws = zip(*allowed)
        operators.append(rng.choices(ops, weights=ws)[0] if sum(ws) > 0 else rng.choice(ops))
    return operators


def generate_problems(
    n: int,
    seed: int,
    difficulty: int | tuple[int, int] = (2, 3),
    op_weights: Mapping[str, float] | None = None,
    id_prefix: str = "toy",
) -> list[dict]:
    """``n`` problems as dicts ``{problem_id, problem, answer, solution}``; same seed, same list.

    difficulty: number of operations per problem, an int or an inclusive (min, max) range.
    op_weights: relative frequency of "+", "-", "*" (default equal). A small "*" weight makes
    data that under-represents multiplication.
    ``answer`` is the value as a string; ``solution`` is the full intended response text.
    """
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative int, got {n!r}")
    low, high = _difficulty_range(difficulty)
    weights = _operator_weights(op_weights)
    rng = random.Random(seed)
    problems = []
    for index in range(n):
        for _ in range(_MAX_DRAWS_PER_PROBLEM):
            count = rng.randint(low, high)
            operators = _draw_operators(rng, count, weights)
            operands = [rng.randint(MIN_OPERAND, MAX_OPERAND) for _ in range(count + 1)]
            worked = evaluate_stepwise(operands, operators)
            if worked is not None:
                break
        else:
            raise ValueError(
                f"could not draw a problem with values in 0..{MAX_VALUE} for difficulty={difficulty!r}, "
                f"op_weights={op_weights!r}"
            )
        problems.append(
            {
                "problem_id": f"{id_prefix}-{seed}-{index}",
                "problem": PROBLEM_PREFIX + worked.text,
                "answer": str(worked.value),
                "solution": format_solution(worked.steps, worked.value),
            }
        )
    return problems
