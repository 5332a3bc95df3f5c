"""QuestA's hinted prompts (mentor_ray.data.hints): the cut, the template, what is dropped and
what stays plain, and the counts. Pure string work, plus one pass through the toy tokenizer."""

from __future__ import annotations

import json

import pytest

from mentor_ray.data import Problem
from mentor_ray.data.expert_traces import ExpertTrace
from mentor_ray.data.hints import (
    HINT_HEADER,
    HintStats,
    apply_hints,
    final_solution,
    hint_prefix,
    hinted_problem,
    hinted_tokenized_problems,
)

TRACE = "<think>first try </think> wrong <think>2+3=5, then 5*4=20</think>\n  We add, then multiply: 20. So \\boxed{20}  \n"
SOLUTION = "We add, then multiply: 20. So \\boxed{20}"


def test_final_solution_is_after_the_last_think_end_stripped():
    assert final_solution(TRACE) == SOLUTION
    assert final_solution("  no think block \\boxed{1} ") == "no think block \\boxed{1}"
    assert final_solution("<think>all thinking</think>") == ""


def test_hint_is_the_first_half_of_the_final_solution_under_its_header():
    assert hint_prefix("abcdefghij", 0.5) == "abcde"
    assert hint_prefix("abcdefghijk", 0.5) == "abcde"  # int(5.5)
    assert hint_prefix("abc", 1.0) == "abc"
    text, status = hinted_problem("What is (2+3)*4?", TRACE, "20", 0.5, 10)
    assert status == "hinted"
    half = SOLUTION[: len(SOLUTION) // 2]
    assert half == "We add, then multipl"
    assert text == f"What is (2+3)*4?\n\n{HINT_HEADER}\n{half}"
    assert text == "What is (2+3)*4?\n\n## Hint: Partial Solution\nWe add, then multipl"


def test_short_hint_keeps_the_plain_problem():
    trace = "<think>x</think>\\boxed{20}"  # solution 10 chars: a 5-char hint
    assert hinted_problem("P", trace, "20", 0.5, 10) == ("P", "plain_short_prefix")
    assert hinted_problem("P", trace, "20", 0.5, 5) == (f"P\n\n{HINT_HEADER}\n\\boxe", "hinted")
    assert hinted_problem("P", trace, "20", 1.0, 10)[1] == "hinted"  # 10 chars: not shorter


def test_a_toy_trace_is_hinted_from_its_whole_response():
    """algorithm.hint_from=whole_response (the toy recipes): a toy solution's steps are all inside
    <think>, and its final solution, the boxed answer, is too short to hint."""
    trace = "<think>3*9=27;3*4=12;27+12=39</think> \\boxed{39}"
    assert hinted_problem("Compute 3*9+3*4", trace, "39", 0.5, 10) == ("Compute 3*9+3*4", "plain_short_prefix")
    text, status = hinted_problem("Compute 3*9+3*4", trace, "39", 0.5, 10, whole_response=True)
    assert status == "hinted" and text == f"Compute 3*9+3*4\n\n{HINT_HEADER}\n{trace[: len(trace) // 2]}"
    assert text.endswith("<think>3*9=27;3*4=12;27+")


def test_answer_missing_from_the_final_solution_drops_the_problem():
    # The answer only in the thinking, not after </think>: dropped.
    assert hinted_problem("P", "<think>it is 20</think> so \\boxed{21}", "20", 0.5, 0) == (None, "dropped_answer_missing")
    # The answer is checked before the hint's length.
    assert hinted_problem("P", "\\boxed{2}", "3", 0.5, 10) == (None, "dropped_answer_missing")
    assert hinted_problem("P", None, "20", 0.5, 10) == (None, "dropped_no_trace")


def test_apply_hints_keeps_order_and_counts_each_outcome():
    problems = [
        Problem("a", "A?", "20", source="s"),
        Problem("b", "B?", "7"),
        Problem("c", "C?", "1"),
        Problem("d", "D?", "20"),
        Problem("e", "E?", "3"),
    ]
    traces = {
        "a": ExpertTrace("a", TRACE, [1, 2]),
        "b": "<think>7</think>\\boxed{8}",  # answer missing
        "c": "\\boxed{1}",  # hint of 4 chars: plain
        "d": TRACE,  # a plain string works as a trace
    }  # "e": no trace
    kept, stats = apply_hints(problems, traces, 0.5, 10)
    assert [p.problem_id for p in kept] == ["a", "c", "d"]
    assert kept[0].problem.startswith(f"A?\n\n{HINT_HEADER}\n") and kept[0].source == "s" and kept[0].answer == "20"
    assert kept[1] == problems[2]
    assert stats == HintStats(hinted=2, plain_short_prefix=1, dropped_answer_missing=1, dropped_no_trace=1,
                              plain_hint_too_long=0, hint_chars_total=2 * len("We add, then multipl"))
    assert stats.kept == 3
    assert stats.hinted_share == pytest.approx(2 / 3)
    assert stats.hint_chars_mean == len("We add, then multipl")
    _, nothing = apply_hints(problems, {}, 0.5, 10)
    assert (nothing.dropped_no_trace, nothing.kept, nothing.hinted_share, nothing.hint_chars_mean) == (5, 0, 0.0, 0.0)


def test_hinted_tokenized_problems_falls_back_to_plain_when_the_hint_is_too_long(toy_world, tmp_path):
    from transformers import AutoTokenizer

    from mentor_ray.config import load_config
    from mentor_ray.data.run_inputs import load_tokenized_problems, resolve_run_paths
    from mentor_ray.toy_world import TOY_SYSTEM_PROMPT

    train = tmp_path / "train.jsonl"
    rows = [{"problem_id": f"p{i}", "problem": f"Compute {i}+1", "answer": str(i + 1)} for i in range(5)]
    train.write_text("".join(json.dumps(row) + "\n" for row in rows))
    long_solution = "x" * 200 + f" \\boxed{{{2}}}"
    traces = {
        "p0": "<think>0+1=1</think>\\boxed{1} is the answer",  # hinted: '\boxed{1} i' (11 chars)
        "p1": "<think>long</think>" + long_solution,  # hint of 105 chars: over 128 prompt tokens
        "p2": "\\boxed{3}",  # short: plain
        "p3": "\\boxed{5}",  # answer missing
    }
    config = load_config(None, [f"logging.run_root={tmp_path}", "data.max_prompt_tokens=128"],
                         values={"data.train_path": str(train), "data.id_field": "problem_id", "data.system_prompt": TOY_SYSTEM_PROMPT})
    paths = resolve_run_paths(config, str(tmp_path))
    tokenizer = AutoTokenizer.from_pretrained(paths.policy_dir)
    said = []
    tokenized, metrics = hinted_tokenized_problems(config, paths, tokenizer, traces, say=said.append)
    plain, _ = load_tokenized_problems(paths.train_path, config, tokenizer, paths.system_prompt, "train", say=said.append)
    by_id = {p.problem_id: p for p in plain}
    assert [p.problem_id for p in tokenized] == ["p0", "p1", "p2"]
    assert tokenized[0].prompt_token_ids != by_id["p0"].prompt_token_ids  # hinted
    # The toy vocabulary has no "#": the rest of the hint reads back.
    assert "Hint: Partial Solution\n\\boxed{1} i<|end|>" in tokenizer.decode(tokenized[0].prompt_token_ids)
    assert len(tokenized[0].prompt_token_ids) <= 128
    assert tokenized[1] == by_id["p1"] and tokenized[2] == by_id["p2"]  # plain prompts
    assert metrics == {
        "data/train_problems": 3.0,
        "data/train_malformed_skipped": 0.0,
        "data/train_too_long_skipped": 0.0,
        "data/questa_hinted_share": pytest.approx(1 / 3),
        "data/questa_hint_chars_mean": 11.0,
        "data/questa_dropped_answer_missing": 1.0,
        "data/questa_dropped_no_trace": 1.0,
        "data/questa_dropped_easy": 0.0,
        "data/questa_plain_short_prefix": 1.0,
        "data/questa_plain_hint_too_long": 1.0,
    }
    assert any("questa: 1 of 3 problems hinted" in line for line in said)


def test_questa_curriculum_keeps_the_problems_and_shortens_their_hints_from_its_step(toy_world, tmp_path):
    """QuestA's second stage (its authors' 50% then 25%): the same problems in the same order,
    each hint a quarter of the solution instead of half, given from algorithm.later_hint_step on;
    a hint that becomes too short keeps the plain prompt in place."""
    from transformers import AutoTokenizer

    from mentor_ray.config import load_config
    from mentor_ray.data.run_inputs import resolve_run_paths
    from mentor_ray.toy_world import TOY_SYSTEM_PROMPT
    from pipelines.step_rollout import StepRolloutMaker
    from pipelines.train import _later_hinted_problems

    train = tmp_path / "train.jsonl"
    rows = [{"problem_id": f"p{i}", "problem": f"Compute {i}+1", "answer": str(i + 1)} for i in range(3)]
    train.write_text("".join(json.dumps(row) + "\n" for row in rows))
    traces = {"p0": "<think>0+1=1</think> one plus zero is one, so \\boxed{1}",
              "p1": "<think>1+1=2</think> adding one to one gives two, and so \\boxed{2}",
              "p2": "\\boxed{7}"}  # answer missing: dropped in both stages
    config = load_config(None, [f"logging.run_root={tmp_path}", "algorithm.method=questa", "rollout.n_mixed=0",
                                "algorithm.later_hint_step=3"],
                         values={"data.train_path": str(train), "data.id_field": "problem_id", "data.system_prompt": TOY_SYSTEM_PROMPT})
    paths = resolve_run_paths(config, str(tmp_path))
    tokenizer = AutoTokenizer.from_pretrained(paths.policy_dir)
    said = []
    first, _ = hinted_tokenized_problems(config, paths, tokenizer, traces, say=said.append)
    switch_step, later = _later_hinted_problems(config, paths, tokenizer, traces, first, said.append)
    assert switch_step == 3 and [p.problem_id for p in later] == [p.problem_id for p in first] == ["p0", "p1"]
    texts = [[tokenizer.decode(p.prompt_token_ids) for p in stage] for stage in (first, later)]
    halves = [hint_prefix(final_solution(traces[p]), 0.5) for p in ("p0", "p1")]
    quarters = [hint_prefix(final_solution(traces[p]), 0.25) for p in ("p0", "p1")]
    assert len(quarters[0]) < 10 <= len(quarters[1])
    assert f"\n{halves[0]}<|end|>" in texts[0][0] and "Hint" not in texts[1][0]  # too short at 25%: plain
    assert f"\n{halves[1]}<|end|>" in texts[0][1] and f"\n{quarters[1]}<|end|>" in texts[1][1]
    assert "then 25%" in said[-1]
    maker = StepRolloutMaker(config, None, None, None, first, {}, 8, (switch_step, later))
    assert [maker.problems_for_step(step) is later for step in (1, 2, 3, 40)] == [False, False, True, True]
    one_stage = load_config(None, [f"logging.run_root={tmp_path}", "algorithm.method=questa", "rollout.n_mixed=0"],
                            values={"data.train_path": str(train), "data.id_field": "problem_id"})
    assert _later_hinted_problems(one_stage, paths, tokenizer, traces, first, said.append) is None
