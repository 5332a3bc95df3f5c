"""Expert traces (mentor_ray.data.expert_traces) on the toy world, with the real vLLM engine:
every stored trace is correct, the problems without one are counted, a second build reuses the
file and a changed setting makes a new one; the CLI refuses a bad key in one line.

24 toy problems (one with an answer no sample can match), 4 samples each; two engine starts
in all (the first build and the changed setting's)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mentor_ray.config import load_config
from mentor_ray.data.expert_traces import (
    ExpertTrace,
    build_expert_traces,
    traces_location,
)
from mentor_ray.rewards import RewardGrader
from mentor_ray.data.run_inputs import resolve_run_paths

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "pipelines" / "recipes" / "toy_mentor.yaml"
PROBLEMS = 24
UNSOLVABLE = "toy-unsolvable"


def _config(root: Path, train: Path, *overrides: str):
    from mentor_ray.toy_world import TOY_SYSTEM_PROMPT

    return load_config(
        RECIPE,
        [f"logging.run_root={root}", "algorithm.method=luffy", "rollout.n_mixed=0", *overrides],
        values={"data.train_path": str(train), "data.id_field": "problem_id", "data.system_prompt": TOY_SYSTEM_PROMPT},
    )


@pytest.fixture(scope="module")
def first_build(toy_world, tmp_path_factory):
    root = tmp_path_factory.mktemp("traces")
    rows = [json.loads(line) for line in Path(toy_world.train_path).read_text().splitlines()[: PROBLEMS - 1]]
    rows.append({"problem_id": UNSOLVABLE, "problem": rows[0]["problem"], "answer": "-12345"})
    train = root / "train.jsonl"
    train.write_text("".join(json.dumps(row) + "\n" for row in rows))
    config = _config(root, train)
    paths = resolve_run_paths(config, str(root))
    said: list[str] = []
    traces = build_expert_traces(config, paths, say=said.append)
    return root, train, config, paths, traces, said, rows


def test_every_stored_trace_is_correct_and_the_rest_are_counted(first_build):
    from transformers import AutoTokenizer

    root, _, config, paths, built, said, rows = first_build
    assert built.reused is False
    assert built.location == traces_location(config, paths)
    assert Path(built.location).parent == root / "expert_traces" and len(Path(built.location).stem) == 16
    assert built.problems == PROBLEMS
    assert UNSOLVABLE not in built.traces
    assert 1 <= built.without_trace == PROBLEMS - len(built.traces)
    assert len(built.traces) >= PROBLEMS // 2  # the toy expert solves most problems
    answers = {row["problem_id"]: row["answer"] for row in rows}
    ids = list(built.traces)
    with RewardGrader(timeout_s=5.0) as grader:
        parts, _ = grader.grade([built.traces[i].text for i in ids], [answers[i] for i in ids])
    assert all(part.accuracy == 1.0 for part in parts)
    tokenizer = AutoTokenizer.from_pretrained(paths.policy_dir)
    for problem_id, trace in built.traces.items():
        assert trace.problem_id == problem_id and trace.token_ids
        assert tokenizer.decode(trace.token_ids, skip_special_tokens=True) == trace.text
    summary = f"expert traces: {len(built.traces)} of {PROBLEMS} problems have a correct trace ({built.without_trace} without), stored in {built.location}"
    assert said[-1] == summary
    stored = [json.loads(line) for line in Path(built.location).read_text().splitlines()]
    assert [set(row) for row in stored] == [{"problem_id", "text", "token_ids"}] * len(built.traces)
    meta = json.loads(Path(built.location).with_suffix(".meta.json").read_text())
    assert (meta["problems"], meta["with_trace"], meta["without_trace"]) == (PROBLEMS, len(built.traces), built.without_trace)
    assert meta["covers"]["samples"] == 4 and meta["covers"]["seed"] == config.algorithm.expert_trace_seed
    assert meta["covers"]["expert"]["toy"] == "toy://expert"


def test_a_second_build_reuses_the_file(first_build):
    _, _, config, paths, built, _, _ = first_build
    modified = os.stat(built.location).st_mtime_ns
    said: list[str] = []
    again = build_expert_traces(config, paths, say=said.append)
    assert again.reused is True
    assert (again.traces, again.problems, again.without_trace, again.location) == (
        built.traces, built.problems, built.without_trace, built.location)
    assert all(isinstance(trace, ExpertTrace) for trace in again.traces.values())
    assert os.stat(built.location).st_mtime_ns == modified
    assert len(said) == 1 and "reused from" in said[0]


def test_a_changed_setting_makes_a_new_file(first_build):
    root, train, _, _, built, _, _ = first_build
    config = _config(root, train, "algorithm.expert_trace_seed=7", "algorithm.expert_trace_samples=1")
    paths = resolve_run_paths(config, str(root))
    # A stand-in engine (the real one built the first file): a new setting means a new build.
    other = build_expert_traces(config, paths, say=lambda _: None, engine=_BoxedThree())
    assert other.reused is False and other.location != built.location
    assert Path(built.location).exists() and Path(other.location).exists()
    assert other.problems == PROBLEMS and UNSOLVABLE not in other.traces
    assert traces_location(_config(root, train, "rollout.temperature=0.7"), paths) not in (built.location, other.location)
    # The run's own seed is not a trace setting: every RL seed of a comparison shares the traces.
    assert traces_location(_config(root, train, "seed=7"), paths) == built.location


def test_cli_refuses_a_bad_key_in_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "mentor_ray.data.expert_traces", f"logging.run_root={tmp_path}", "algorithm.expert_trace_sample=2"],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "algorithm.expert_trace_sample" in lines[0] and lines[0].startswith("error:")
    assert result.stdout == ""


def test_questa_prompts_from_the_built_traces(first_build):
    from transformers import AutoTokenizer

    from mentor_ray.data.hints import hinted_tokenized_problems

    root, train, _, _, built, _, _ = first_build
    # The toy expert's final solution is "\boxed{N}": its first half is a hint of 4-5 characters.
    config = _config(root, train, "algorithm.method=questa", "algorithm.min_hint_chars=4", "algorithm.hint_from=final_solution")
    paths = resolve_run_paths(config, str(root))
    tokenizer = AutoTokenizer.from_pretrained(paths.policy_dir)
    problems, metrics = hinted_tokenized_problems(config, paths, tokenizer, built.traces, say=lambda _: None)
    assert sorted(p.problem_id for p in problems) == sorted(built.traces)
    assert metrics["data/questa_dropped_no_trace"] == built.without_trace
    assert metrics["data/questa_hinted_share"] == 1.0 and metrics["data/train_problems"] == len(built.traces)
    assert "Hint: Partial Solution\n\\box" in tokenizer.decode(problems[0].prompt_token_ids)


class _BoxedThree:
    """An engine stand-in that answers 3 to everything (`build_expert_traces(engine=...)`)."""

    def generate(self, prompt_token_ids, spec):
        from mentor_ray.rollout.requests import GenerationResult

        return [GenerationResult(i, j, list(prompt), [5, 6, j], "<think>3</think> \\boxed{3}", [0.0] * 3, "stop")
                for i, prompt in enumerate(prompt_token_ids) for j in range(spec.n)]


def test_a_file_cut_short_is_made_again_with_a_given_engine(first_build, tmp_path):
    _, train, _, _, _, _, rows = first_build
    config = _config(tmp_path, train)
    paths = resolve_run_paths(config, str(tmp_path))
    built = build_expert_traces(config, paths, say=lambda _: None, engine=_BoxedThree())
    threes = sorted(row["problem_id"] for row in rows if row["answer"] == "3")
    assert sorted(built.traces) == threes and built.without_trace == PROBLEMS - len(threes) and threes
    assert {tuple(trace.token_ids) for trace in built.traces.values()} == {(5, 6, 0)}  # the first correct sample
    location = Path(built.location)
    location.write_text("".join(location.read_text().splitlines(keepends=True)[:-1]))  # a crash mid-write
    said: list[str] = []
    again = build_expert_traces(config, paths, say=said.append, engine=_BoxedThree())
    assert again.reused is False and again.traces == built.traces
    assert "cannot be used (" in said[0] and len(location.read_text().splitlines()) == len(threes)


def test_questa_keeps_only_the_problems_the_starting_policy_seldom_solves(first_build):
    """QuestA's selection (mentor_ray.data.hard_problems), with the real toy policy on the real
    engine: 8 samples of each of the 24 problems, graded; the unsolvable one is never solved; a
    problem solved more than once is dropped from QuestA's prompts and counted; a second call
    reads the stored counts."""
    from transformers import AutoTokenizer

    from mentor_ray.data.hard_problems import counts_location, policy_pass_counts
    from mentor_ray.data.hints import hinted_tokenized_problems

    root, train, _, _, built, _, _ = first_build
    config = _config(root, train, "algorithm.method=questa", "algorithm.hint_from=whole_response")
    paths = resolve_run_paths(config, str(root))
    said: list[str] = []
    counts = policy_pass_counts(config, paths, say=said.append)
    assert counts.reused is False and counts.samples == 8 and len(counts.correct) == PROBLEMS
    assert all(0 <= n <= 8 for n in counts.correct.values()) and counts.correct[UNSOLVABLE] == 0
    # The toy policy's sampled accuracy is 0.30 (its world's report): the mean over 192 samples
    # lies within 0.12-0.50 (more than 5 standard deviations of a binomial either side).
    assert 0.12 <= sum(counts.correct.values()) / (8 * PROBLEMS) <= 0.50, counts.correct
    hard = counts.hard(1)
    assert UNSOLVABLE in hard and hard == {p for p, n in counts.correct.items() if n <= 1} and len(hard) < PROBLEMS
    again = policy_pass_counts(config, paths, say=said.append)
    assert again.reused is True and again.correct == counts.correct and again.location == counts_location(config, paths)
    tokenizer = AutoTokenizer.from_pretrained(paths.policy_dir)
    problems, metrics = hinted_tokenized_problems(config, paths, tokenizer, built.traces, lambda _: None, hard)
    assert {p.problem_id for p in problems} == hard & set(built.traces)
    assert metrics["data/questa_dropped_easy"] == PROBLEMS - len(hard)
