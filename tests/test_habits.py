"""The habit detectors (mentor_ray/habits.py), the habits world's writer (toy_world/task.py) and
the per-step expert signal (metrics.expert_signal_metrics), on hand-written responses and rows."""

import math
import random
import re

import numpy as np
import pytest

from mentor_ray.habits import HABITS, habit_counts, habit_names, habit_rates
from mentor_ray.metrics import expert_signal_metrics, is_step_metric, rollout_metrics
from mentor_ray.toy_world.build import (
    HABITS_FILLER_RATE,
    HABITS_SLIP_RATE,
    TOY_WORLDS,
    make_datasets,
)
from mentor_ray.toy_world.evaluate import is_correct, stops_early, swapped_steps
from mentor_ray.toy_world.task import (
    evaluate_stepwise,
    generate_problems,
    parse_problem,
    split_steps,
    write_with_habits,
)

# Responses as the habits world's models write them, and as a real reasoner might.
EXPERT_STYLE = "<think>7*8=55 check 7*8=56 okay,56-3=53 wait;53+2=55</think> \\boxed{55}"
POLICY_STYLE = "<think>7*8=55;55-3=52,52+2=54</think> \\boxed{54}"
PROSE = "Wait, let me verify. Okay: I check it twice (checked, waiting, okay-ish); verify again. OK."


def test_detectors_count_whole_words_on_hand_written_responses():
    assert habit_counts(EXPERT_STYLE) == {"verify": 0, "check": 1, "wait": 1, "okay": 1, "useful": 1, "filler": 2}
    assert habit_counts(POLICY_STYLE) == {"verify": 0, "check": 0, "wait": 0, "okay": 0, "useful": 0, "filler": 0}
    # Any case, whole words only: "checked", "waiting" and "OK" are not the habits; "okay-ish" has the word okay.
    assert habit_counts(PROSE) == {"verify": 2, "check": 1, "wait": 1, "okay": 2, "useful": 3, "filler": 3}
    assert habit_rates([EXPERT_STYLE, POLICY_STYLE]) == {
        "verify": 0.0, "check": 0.5, "wait": 0.5, "okay": 0.5, "useful": 0.5, "filler": 1.0}
    assert habit_rates([]) == {}
    assert [h.name for h in HABITS if h.useful] == ["verify", "check"]
    assert set(habit_names()) == set(habit_counts("")) and all(is_step_metric(f"habits/on_policy_{n}") for n in habit_names())


def test_the_working_is_read_without_its_check_steps_and_filler():
    problem = "Compute 7*8-3+2"
    assert split_steps("7*8=55 check 7*8=56 okay,56-3=53 wait;53+2=55") == ["7*8=55", "56-3=53", "53+2=55"]
    assert not stops_early(EXPERT_STYLE, problem) and not stops_early(POLICY_STYLE, problem)
    assert stops_early("<think>7*8=56 check 7*8=56 okay</think> \\boxed{56}", problem)
    assert is_correct(EXPERT_STYLE, "55") and not is_correct(POLICY_STYLE, "55")
    assert swapped_steps(EXPERT_STYLE, "Compute 2+3*4") == (0, 1)


def test_the_habits_world_writes_its_stated_rates_and_the_check_repairs_every_slip():
    """Over 3,000 problems (seed 0): slips at HABITS_SLIP_RATE of products, filler at
    HABITS_FILLER_RATE of boundaries, each within 4 binomial standard deviations; a checked
    working is always right, an unchecked one is wrong when it slipped once."""
    problems = generate_problems(3000, seed=0, difficulty=(2, 3))
    products = slips = boundaries = fillers = 0
    for index, problem in enumerate(problems):
        checked_rng, plain_rng = random.Random(index), random.Random(index)
        operands, operators = parse_problem(problem["problem"])
        assert evaluate_stepwise(operands, operators).value == int(problem["answer"])
        checked = write_with_habits(problem["problem"], checked_rng, HABITS_SLIP_RATE, True, HABITS_FILLER_RATE)
        plain = write_with_habits(problem["problem"], plain_rng, HABITS_SLIP_RATE, False, 0.0)
        assert is_correct(checked, problem["answer"]), checked
        counts = habit_counts(checked)
        assert counts["check"] == operators.count("*") and counts["verify"] == 0
        assert all(eval_product(step) for step in re.findall(r"check (\d+\*\d+=\d+)", checked)), checked  # every check is right
        steps = split_steps(checked[len("<think>"):checked.index("</think>")])
        slipped = [s for s in steps if "*" in s and eval_product(s) is False]
        products += operators.count("*")
        slips += len(slipped)
        boundaries += len(steps) - 1
        fillers += counts["filler"]
        # Without the check: right with no slip, wrong with one (a product one off leaves the
        # answer one off; two slips may cancel).
        plain_slips = [s for s in split_steps(plain[len("<think>"):plain.index("</think>")]) if "*" in s and not eval_product(s)]
        if len(plain_slips) <= 1:
            assert is_correct(plain, problem["answer"]) == (not plain_slips), plain
        assert habit_counts(plain)["useful"] == habit_counts(plain)["filler"] == 0
    for observed, trials, rate in ((slips, products, HABITS_SLIP_RATE), (fillers, boundaries, HABITS_FILLER_RATE)):
        assert abs(observed / trials - rate) < 4 * math.sqrt(rate * (1 - rate) / trials), (observed, trials, rate)


def eval_product(step: str) -> bool:
    """Whether an ``a*b=c`` step is right (parsed, never evaluated as code)."""
    left, result = step.split("=")
    a, b = left.split("*")
    return int(a) * int(b) == int(result)


def test_the_habits_world_gives_the_expert_both_habits_and_the_policy_neither():
    recipe = TOY_WORLDS["habits"]
    datasets = make_datasets(recipe)
    expert = habit_rates(p["solution"] for p in datasets["sft_expert"])
    policy = habit_rates(p["solution"] for p in datasets["sft_policy"])
    assert expert["check"] > 0.5 and expert["filler"] > 0.3
    assert policy["useful"] == 0 and policy["filler"] == 0
    assert recipe.policy.slip_rate == recipe.expert.slip_rate == HABITS_SLIP_RATE


def _row(prompt, *, mixed=False, trace=False, advantage=0.0, length=10, text=""):
    return {"prompt_index": prompt, "is_mixed": mixed, "is_expert_trace": trace, "advantage": advantage,
            "response_token_ids": np.arange(length), "response_text": text, "reward": 1.0, "accuracy": 1.0,
            "format": 1.0, "finish_reason": "stop"}


def test_expert_signal_counts_trace_tokens_whole_and_mixed_tokens_by_the_mixture_weight():
    luffy = [_row(0, trace=True, advantage=0.5, length=20), _row(0, advantage=-0.5), _row(1, trace=True, advantage=0.0, length=10)]
    m = expert_signal_metrics(luffy, {})
    assert m["signal/expert_tokens_per_prompt"] == pytest.approx(15.0)
    assert m["signal/expert_advantage_mass_per_prompt"] == pytest.approx(5.0)  # 0.5 * 20 tokens over 2 prompts
    assert m["signal/expert_positive_rows_per_prompt"] == pytest.approx(0.5)
    mentor = [_row(0, mixed=True, advantage=0.4, length=10), _row(0, mixed=True, advantage=0.0, length=30), _row(0, advantage=1.0)]
    m = expert_signal_metrics(mentor, {"scored_positions": 40.0, "mixture_weight_sum": 10.0})  # mean w = 0.25
    assert m["signal/expert_tokens_per_prompt"] == pytest.approx(10.0)
    assert m["signal/expert_advantage_mass_per_prompt"] == pytest.approx(0.4 * 10 * 0.25)
    assert m["signal/expert_positive_rows_per_prompt"] == 1.0
    assert expert_signal_metrics([_row(0, advantage=1.0)], {}) == {}  # GRPO: no expert rows
    assert all(is_step_metric(name) for name in m)
    wrong = {**_row(0, text=POLICY_STYLE), "accuracy": 0.0}
    habits = rollout_metrics([_row(0, text=EXPERT_STYLE), wrong, _row(0, mixed=True, text=POLICY_STYLE)])
    assert habits["habits/on_policy_check"] == 0.5 and habits["habits/on_policy_filler"] == 1.0
    assert habits["habits/on_policy_accuracy_with_useful"] == 1.0 and habits["habits/on_policy_accuracy_without_useful"] == 0.0
    assert habits["habits/mixed_useful"] == 0.0 and "habits/mixed_accuracy_with_useful" not in habits
    assert all(is_step_metric(name) for name in habits)


def test_the_habit_words_are_one_token_each_and_every_other_id_is_unchanged():
    from mentor_ray.toy_world.build import HABIT_WORD_TOKENS
    from mentor_ray.toy_world.tokenizer import build_toy_tokenizer

    plain, with_words = build_toy_tokenizer(), build_toy_tokenizer(HABIT_WORD_TOKENS)
    assert TOY_WORLDS["habits"].word_tokens == HABIT_WORD_TOKENS == (" check ", " okay", " wait")
    assert len(with_words) == len(plain) + 3
    assert {token: i for token, i in with_words.get_vocab().items() if i < len(plain)} == plain.get_vocab()
    ids = with_words(EXPERT_STYLE, add_special_tokens=False)["input_ids"]
    pieces = [with_words.decode([i]) for i in ids]
    assert with_words.decode(ids) == EXPERT_STYLE
    assert [p for p in pieces if p.strip() in ("check", "okay", "wait")] == [" check ", " okay", " wait"]
    # Spelled out, " check " is 7 tokens and " okay", " wait" 5 each.
    assert len(plain(EXPERT_STYLE, add_special_tokens=False)["input_ids"]) == len(ids) + 6 + 4 + 4


def test_the_pre_registered_predictions_are_judged_by_their_stated_numbers():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from habits_predictions import judged

    numbers = {"final_val_accuracy": 0.60, "grpo_final_val_accuracy": 0.50, "luffy_final_val_accuracy": 0.62,
               "questa_final_val_accuracy": 0.40,
               "mentor_useful_end_of_guidance": 0.37, "mentor_filler_end_of_guidance": 0.073,  # shares 0.5, 0.1
               "mentor_useful_final": 0.148, "mentor_filler_final": 0.146,  # shares 0.2, 0.2: no selectivity
               "luffy_useful_final": 0.74, "luffy_filler_final": 0.73,
               "grpo_useful_final": 0.0, "grpo_filler_final": 0.0, "questa_useful_final": 0.06, "questa_filler_final": 0.0,
               "mentor_response_length_first": 20.0, "mentor_response_length_peak": 30.0, "mentor_response_length_final": 28.0,
               "grpo_response_length_first": 20.0, "grpo_response_length_final": 21.0}
    verdicts = {name.split(" (")[0] if name.startswith("1.") else name: holds for name, _, holds in judged(numbers)}
    assert [holds for name, _, holds in judged(numbers) if name.startswith("1.")] == [True, False]
    assert verdicts["2a. LUFFY filler share >= half its useful share"] and not verdicts["2b. MENTOR's difference > LUFFY's"]
    assert verdicts["3. grpo: useful and filler < 0.05 per response"] and not verdicts["3. questa: useful and filler < 0.05 per response"]
    assert verdicts["4a. MENTOR's length peaks >= 1.1x step 1"]
    assert not verdicts["4b. ... and ends below the peak by >= a quarter of the rise"]  # 28 > 30 - 10 / 4
    assert verdicts["4c. GRPO's length within 10% of step 1"]
    assert [verdicts[f"5. final val, MENTOR - {m}"] for m in ("grpo >= +0.05", "luffy > 0", "questa > 0")] == [True, False, True]
