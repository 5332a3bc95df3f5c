"""Sample-based accuracy estimators of the paper's evaluation protocol (MENTOR.md section 9).

Pure functions on counts: n samples of one problem, c of them correct.
"""

from __future__ import annotations

from collections.abc import Sequence


def pass_at_k(n: int, c: int, k: int) -> float:
    """The unbiased pass@k of one problem: the chance that k samples drawn without replacement
    from the n (c correct) hold at least one correct, 1 - C(n-c, k) / C(n, k), computed as a
    running product so large n cannot overflow."""
    if not 0 <= c <= n:
        raise ValueError(f"pass_at_k: need 0 <= c <= n, got n={n}, c={c}")
    if not 1 <= k <= n:
        raise ValueError(f"pass_at_k: need 1 <= k <= n, got k={k}, n={n}")
    if n - c < k:
        return 1.0
    all_wrong = 1.0
    for i in range(n - c + 1, n + 1):
        all_wrong *= 1.0 - k / i
    return 1.0 - all_wrong


def mean_pass_at_k(counts: Sequence[tuple[int, int]], k: int) -> float:
    """pass@k over problems: the mean of each problem's pass@k; counts are (n, c) pairs."""
    if not counts:
        raise ValueError("mean_pass_at_k: no problems")
    return sum(pass_at_k(n, c, k) for n, c in counts) / len(counts)


def avg_at_k(counts: Sequence[tuple[int, int]]) -> float:
    """avg@k (the paper's avg@32): the mean over problems of the fraction of their samples that
    are correct; pass@1 with one greedy sample per problem is the same formula."""
    if not counts:
        raise ValueError("avg_at_k: no problems")
    return sum(c / n for n, c in counts) / len(counts)
