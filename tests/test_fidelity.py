"""Where the project follows the paper's official code (MENTOR.md sections 5, 7 and 8): the
system prompt, mini-batches counted in samples, the official format rule, and answers a
careless grader would get wrong (full-width digits, unparseable references, a BOM)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from mentor_ray.config import ConfigError, load_config
from mentor_ray.data import load_problems
from mentor_ray.data.prompts import DEFAULT_SYSTEM_PROMPT, PAPER_SYSTEM_PROMPT, SYSTEM_PROMPTS
from mentor_ray.rewards import (
    FORMAT_RULES,
    RewardGrader,
    format_reward,
    grade_accuracy,
    grade_plain_integers,
    official_format_reward,
)

REPO = Path(__file__).resolve().parents[1]
SPEC = REPO.parent / "shared" / "docs" / "MENTOR.md"


def test_the_paper_prompt_is_the_papers_text_and_the_default_for_real_data(tmp_path):
    if SPEC.is_file():  # the spec quotes it; the quote wraps lines
        quoted = SPEC.read_text().split('"You are a helpful AI Assistant', 1)[1].split('" (one line', 1)[0]
        assert PAPER_SYSTEM_PROMPT == " ".join(("You are a helpful AI Assistant" + quoted).split())
    assert PAPER_SYSTEM_PROMPT.endswith("put in \\boxed{}.") and "<think> </think>" in PAPER_SYSTEM_PROMPT
    assert DEFAULT_SYSTEM_PROMPT == PAPER_SYSTEM_PROMPT == SYSTEM_PROMPTS["paper"]
    for recipe in (REPO / "configs").glob("*.yaml"):
        assert load_config(recipe).data.system_prompt_preset == "paper", recipe.name
    with pytest.raises(ConfigError, match=r"data\.system_prompt_preset='careful': must be null when data\.system_prompt"):
        load_config(None, ["data.system_prompt=Be brief.", "data.system_prompt_preset=careful"])
    with pytest.raises(ConfigError, match=r"data\.system_prompt_preset='papers': must be one of \['paper', 'careful'\]"):
        load_config(None, ["data.system_prompt_preset=papers"])


def test_the_preset_reaches_the_run(tmp_path, toy_world):
    from mentor_ray.data.run_inputs import resolve_run_paths

    config = load_config(None, [f"logging.run_root={tmp_path}", "data.system_prompt_preset=careful"])
    assert resolve_run_paths(config, tmp_path).system_prompt == SYSTEM_PROMPTS["careful"]
    config = load_config(None, [f"logging.run_root={tmp_path}"])  # toy data, no preset: the toy prompt
    from mentor_ray.toy_world import TOY_SYSTEM_PROMPT

    assert resolve_run_paths(config, tmp_path).system_prompt == TOY_SYSTEM_PROMPT


@pytest.mark.parametrize(
    ("samples", "prompts", "expected"),
    [(128 * 12, 128, 3), (128 * 8, 128, 2), (100 * 12, 100, 3), (513, 128, 2), (512, 128, 1), (40, 3, 1)],
)
def test_mini_batches_in_samples_make_the_official_count_of_optimizer_steps(samples, prompts, expected):
    config = load_config(None, ["optimizer.mini_batch_samples=512"])
    assert config.mini_batch_count(samples, prompts) == expected
    # Counted in prompts (this project's default): 128 / 64 = 2 whatever the samples.
    assert load_config(None).mini_batch_count(samples, 128) == 2


def test_paper_recipes_follow_the_official_code():
    # The paper's runs; configs/ also holds the CPU-sized SmolLM2 recipe, which is not one.
    paper = ["llama3.1-8b.yaml", "qwen2.5-3b.yaml", "qwen2.5-7b.yaml"]
    names = sorted(p.name for p in (REPO / "configs").glob("*.yaml"))
    assert set(paper) <= set(names), names
    for recipe in (REPO / "configs" / name for name in paper):
        twin = load_config(recipe, ["rollout.n_mixed=0"])  # what --grpo runs: the on-policy twin
        assert not twin.guided and twin.mini_batch_count(128 * 8, 128) == 2
        config = load_config(recipe)
        assert config.optimizer.mini_batch_samples == 512, recipe.name
        assert config.reward.format_rule == "official", recipe.name
        guided = config.rollout.prompts_per_step * (config.rollout.n_on_policy + config.rollout.n_mixed)
        assert config.mini_batch_count(guided, config.rollout.prompts_per_step) == 3


@pytest.mark.parametrize(
    ("response", "official", "strict"),
    [
        ("<think>a</think> so \\boxed{4}", 1.0, 1.0),
        (" < think >a< / think >\\boxed{4}", 1.0, 0.0),  # whitespace around < > / is stripped
        ("<think></think>\\boxed{4}", 1.0, 0.0),  # empty think block
        ("<think>a</think><think>b</think>\\boxed{4}", 1.0, 0.0),  # repeated think block
        ("<think>a</think>\\boxed{}", 1.0, 0.0),  # empty box
        ("<think>a</think> no box", 0.0, 0.0),
        ("x<think>a</think>\\boxed{4}", 0.0, 0.0),  # text before <think>
        ("<think>a \\boxed{4}</think>", 0.0, 0.0),  # the box must follow </think>
        ("<think>a</think>\\boxed{4", 0.0, 0.0),
    ],
)
def test_official_format_rule_against_its_regex(response, official, strict):
    assert official_format_reward(response) == official
    assert format_reward(response) == strict
    # The official code's own regex, on its own normalisation: the fast check agrees.
    normalised = re.sub(r"\s*([<>/])\s*", r"\1", response)
    assert bool(re.fullmatch(r"<think>.*</think>.*\\boxed\{.*\}.*", normalised, re.DOTALL)) == bool(official)
    assert FORMAT_RULES["official"] is official_format_reward


@pytest.mark.timeout(60)
def test_official_format_rule_decides_hostile_input():
    """Inputs on which the official regex backtracks: decided (the guard is only against a hang)."""
    assert official_format_reward("<think>" + "</think>" * 200_000 + "\\boxed{" * 200_000) == 0.0
    assert official_format_reward("<think>" + "</think>" * 200_000 + "\\boxed{" * 200_000 + "}") == 1.0
    assert official_format_reward(" " * 500_000 + "<" * 100_000) == 0.0


def test_the_grader_uses_the_configured_rule():
    with RewardGrader(num_processes=1, format_rule="official") as grader:
        parts, _ = grader.grade(["<think></think>\\boxed{4}"], ["4"])
    assert parts[0].format == 1.0 and parts[0].accuracy == 1.0
    with pytest.raises(ValueError, match="format_rule must be one of"):
        RewardGrader(format_rule="lenient")


@pytest.mark.parametrize(
    ("response", "reference"),
    [("\\boxed{２}", "2"), ("\\boxed{１２}", "12"), ("\\boxed{2}", "２"), ("\\boxed{\\frac{１}{２}}", "\\frac{1}{2}"), ("\\boxed{－3}", "-3")],
)
def test_full_width_answers_are_read_as_what_they_show(response, reference):
    assert grade_accuracy(response, reference) == (1.0, "ok")
    fast = grade_plain_integers(response, reference)
    assert fast is None or fast == (1.0, "ok")


@pytest.mark.parametrize("reference", ["", "}{", "\\boxed{}"])
def test_an_unparseable_reference_is_its_own_status(reference):
    assert grade_accuracy("\\boxed{1}", reference) == (0.0, "bad_reference")


def test_a_jsonl_file_with_a_byte_order_mark_loads(tmp_path):
    path = tmp_path / "bom.jsonl"
    rows = [{"problem": "Compute 1+1", "answer": "2"}, {"problem": "Compute 2+2", "answer": "4"}]
    path.write_bytes(b"\xef\xbb\xbf" + "\n".join(json.dumps(r) for r in rows).encode("utf-8") + b"\n")
    report = load_problems(path)
    assert [p.answer for p in report.problems] == ["2", "4"] and report.skipped == 0
