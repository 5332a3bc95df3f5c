"""The toy world: task generator, tokenizer, the build (on a tiny recipe), and the shipped world.

The default world ships in the package, so the tests of its properties test the same models
on every machine; the build itself is tested on a recipe that trains in seconds.
"""

from __future__ import annotations

import json
import re
import time

import pytest

from mentor_ray.toy_world.build import (
    MANIFEST_FILE,
    REPORT_FILE,
    SHIPPED_ROOT,
    ModelRecipe,
    ToyWorldRecipe,
    build_toy_world,
    file_digests,
    make_datasets,
    ship_world,
)
from mentor_ray.toy_world.evaluate import (
    is_correct,
    is_well_formatted,
    last_boxed,
    sampled_habits,
    stops_early,
    swapped_steps,
)
from mentor_ray.toy_world.task import (
    STEP_SEPARATORS,
    generate_problems,
    split_steps,
    stop_at_a_boundary,
    stop_one_step_early,
    swap_operands,
    vary_separators,
)
from mentor_ray.toy_world.tokenizer import (
    MARKER_TOKENS,
    TOY_SYSTEM_PROMPT,
    build_toy_tokenizer,
    chat_prompt,
    save_toy_tokenizer,
)

# --- an evaluator written independently of the generator (no Python eval) -----------------


def _tokenize_expression(text: str) -> list[str]:
    tokens = re.findall(r"\d+|[+\-*]", text)
    if "".join(tokens) != text:
        raise ValueError(f"unexpected characters in {text!r}")
    return tokens


def _evaluate_expression(text: str) -> int:
    """Recursive descent: sum := product (('+'|'-') product)*, product := int ('*' int)*."""
    tokens = _tokenize_expression(text)
    position = 0

    def product() -> int:
        nonlocal position
        value = int(tokens[position])
        position += 1
        while position < len(tokens) and tokens[position] == "*":
            value *= int(tokens[position + 1])
            position += 2
        return value

    total = product()
    while position < len(tokens):
        operator = tokens[position]
        position += 1
        total = total + product() if operator == "+" else total - product()
    return total


def test_independent_evaluator_itself():
    assert _evaluate_expression("7+5*3-2") == 20
    assert _evaluate_expression("2*3*4-1") == 23
    assert _evaluate_expression("9-4-3") == 2


# --- task ---------------------------------------------------------------------------------


def test_generate_problems_is_deterministic_in_seed():
    first = generate_problems(200, seed=5, difficulty=(1, 4))
    assert first == generate_problems(200, seed=5, difficulty=(1, 4))
    assert first != generate_problems(200, seed=6, difficulty=(1, 4))
    assert len({p["problem_id"] for p in first}) == 200


@pytest.mark.parametrize("difficulty", [1, 3, (2, 4)])
def test_answers_and_worked_steps_are_correct(difficulty):
    for p in generate_problems(300, seed=11, difficulty=difficulty):
        assert p["problem"].startswith("Compute ")
        expression = p["problem"].removeprefix("Compute ")
        assert str(_evaluate_expression(expression)) == p["answer"]
        match = re.fullmatch(r"<think>(.+)</think> \\boxed\{(\d+)\}", p["solution"])
        assert match, p["solution"]
        assert match.group(2) == p["answer"]
        steps = match.group(1).split(";")
        operation_count = len(re.findall(r"[+\-*]", expression))
        assert len(steps) == operation_count
        low, high = (difficulty, difficulty) if isinstance(difficulty, int) else difficulty
        assert low <= operation_count <= high
        for step in steps:
            left, right = step.split("=")
            assert _evaluate_expression(left) == int(right), step
        assert steps[-1].endswith("=" + p["answer"])
        assert is_well_formatted(p["solution"]) and is_correct(p["solution"], p["answer"])


def test_multiply_weight_sets_the_share_of_multiplication():
    def multiply_share(weight: float) -> float:
        problems = generate_problems(2000, seed=3, op_weights={"+": 1, "-": 1, "*": weight})
        return sum("*" in p["problem"] for p in problems) / len(problems)

    # Fixed seed; with equal weights ~2/3 of 2-3 operation problems contain "*", at 0.15 ~1/6.
    assert multiply_share(1.0) > 0.5
    assert multiply_share(0.15) < 0.25


def test_stop_one_step_early_boxes_the_previous_result():
    assert stop_one_step_early("<think>4*2=8;8+8=16;16-1=15</think> \\boxed{15}") == "<think>4*2=8;8+8=16</think> \\boxed{16}"
    assert stop_one_step_early("<think>9*4=36</think> \\boxed{36}") == "<think>9*4=36</think> \\boxed{36}"
    with pytest.raises(ValueError, match="not a toy solution"):
        stop_one_step_early("\\boxed{3}")
    for p in generate_problems(200, seed=4, difficulty=(2, 3)):
        early = stop_one_step_early(p["solution"])
        assert stops_early(early, p["problem"]) and not stops_early(p["solution"], p["problem"])
        assert is_well_formatted(early)
    assert stops_early("\\boxed{3}", "Compute 1+2")


def test_stop_at_a_boundary_cuts_at_the_first_boundary_drawn_and_finishes_at_the_rate():
    import random

    three = "<think>4*2=8;8+8=16;16-1=15</think> \\boxed{15}"
    assert stop_at_a_boundary(three, random.Random(0), 0.0) == three
    assert stop_at_a_boundary(three, random.Random(0), 1.0) == "<think>4*2=8</think> \\boxed{8}"
    problems = generate_problems(3000, seed=9, difficulty=3)
    rng = random.Random(2)
    cut = [stop_at_a_boundary(p["solution"], rng, 0.5) for p in problems]
    for p, solution in zip(problems, cut):
        assert is_well_formatted(solution)
        steps = split_steps(re.search("<think>(.*)</think>", solution).group(1))
        assert steps == split_steps(re.search("<think>(.*)</think>", p["solution"]).group(1))[: len(steps)]
        assert last_boxed(solution) == steps[-1].rsplit("=", 1)[1]
    lengths = [len(split_steps(re.search("<think>(.*)</think>", s).group(1))) for s in cut]
    # Fixed seed, 3,000 three-step solutions at rate 0.5: stop after 1 step 1/2, after 2 steps
    # 1/4, finished 1/4. +-0.03 is more than 3 sigma for each share.
    for steps, share in ((1, 0.5), (2, 0.25), (3, 0.25)):
        assert lengths.count(steps) / len(cut) == pytest.approx(share, abs=0.03)
    assert sum(not stops_early(s, p["problem"]) for s, p in zip(cut, problems)) == lengths.count(3)


def test_vary_separators_keeps_the_working_and_uses_every_mark_evenly():
    import random

    problems = generate_problems(1000, seed=10, difficulty=(2, 4))
    rng = random.Random(3)
    marks = []
    for p in problems:
        varied = vary_separators(p["solution"], rng)
        assert is_correct(varied, p["answer"]) and is_well_formatted(varied)
        working = re.search("<think>(.*)</think>", varied).group(1)
        assert split_steps(working) == p["solution"].removeprefix("<think>").split("</think>")[0].split(";")
        assert not stops_early(varied, p["problem"])
        marks += re.findall("[" + "".join(STEP_SEPARATORS) + "]", working)
    # Fixed seed, ~2,000 boundaries: each mark's share is 1/3 +- 0.05 (> 4 sigma).
    for mark in STEP_SEPARATORS:
        assert marks.count(mark) / len(marks) == pytest.approx(1 / 3, abs=0.05)


def test_a_later_recipe_field_enters_the_hash_only_when_set():
    import dataclasses

    recipe = ToyWorldRecipe()
    # Set to its default explicitly: the same world, so worlds shipped before the field existed keep their names.
    same = dataclasses.replace(recipe, policy=dataclasses.replace(recipe.policy, boundary_stop_rate=0.0))
    assert same.digest() == recipe.digest()
    for change in ({"boundary_stop_rate": 0.5}, {"varied_separators": True}):
        assert dataclasses.replace(recipe, policy=dataclasses.replace(recipe.policy, **change)).digest() != recipe.digest()


def test_swap_operands_keeps_every_step_true_and_swaps_at_the_rate():
    import random

    problems = generate_problems(1000, seed=8, difficulty=(1, 3))
    assert all(swap_operands(p["solution"], random.Random(0), 0.0) == p["solution"] for p in problems)
    rng = random.Random(1)
    swapped = commutative = 0
    for p in problems:
        original = p["solution"].removeprefix("<think>").split("</think>")[0].split(";")
        result = swap_operands(p["solution"], rng, 0.5)
        assert is_correct(result, p["answer"]) and is_well_formatted(result)
        steps = result.removeprefix("<think>").split("</think>")[0].split(";")
        for before, after in zip(original, steps, strict=True):
            left, right = after.split("=")
            assert _evaluate_expression(left) == int(right), after
            if "-" in before or max(map(len, re.split(r"[+*\-]", before.split("=")[0]))) > 1:
                assert after == before  # a-b has no other order; 12+3 is left as it is
            elif len(set(operands := re.split(r"[+*]", before.split("=")[0]))) == 2 and max(map(len, operands)) == 1:
                commutative += 1
                swapped += after != before
    # Fixed seed; ~1,100 one-digit steps with distinct operands: 0.5 +- 0.05 is > 3 sigma.
    assert swapped / commutative == pytest.approx(0.5, abs=0.05)


def test_only_the_policy_sft_data_stops_early():
    recipe = ToyWorldRecipe(sft_problems=3000, train_problems=100, eval_problems=100)
    data = make_datasets(recipe)

    def early_share(name):
        multi_step = [p for p in data[name] if re.search(r"[+\-*].*[+\-*]", p["problem"].removeprefix("Compute "))]
        return sum(stops_early(p["solution"], p["problem"]) for p in multi_step) / len(multi_step)

    assert early_share("sft_expert") == 0.0
    # Fixed seed; ~1,900 multi-step draws at rate 0.5: +-0.05 is over 4 standard deviations.
    assert early_share("sft_policy") == pytest.approx(recipe.policy.early_stop_rate, abs=0.05)


def test_bad_generator_input_is_named():
    with pytest.raises(ValueError, match="difficulty"):
        generate_problems(3, seed=0, difficulty=0)
    with pytest.raises(ValueError, match="unknown operators"):
        generate_problems(3, seed=0, op_weights={"/": 1.0})
    with pytest.raises(ValueError, match="n must be"):
        generate_problems(-1, seed=0)


def test_local_grader():
    assert last_boxed("<think>x</think> \\boxed{1} \\boxed{12}") == "12"
    assert is_correct("<think>1+2=3</think> \\boxed{3}", "3")
    assert not is_correct("<think>1+2=3</think> \\boxed{4}", "3")
    assert not is_well_formatted("\\boxed{3}")
    assert not is_well_formatted("<think>1+2=3</think> \\boxed{3} extra")


# --- tokenizer ----------------------------------------------------------------------------


def test_tokenizer_round_trips_task_text_and_is_small():
    tokenizer = build_toy_tokenizer()
    assert len(tokenizer) < 128
    texts = [TOY_SYSTEM_PROMPT] + [p["problem"] + p["solution"] for p in generate_problems(300, seed=2, difficulty=(1, 4))]
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert tokenizer.unk_token_id not in ids, text
        assert tokenizer.decode(ids, skip_special_tokens=True) == text
    for marker in MARKER_TOKENS:
        assert len(tokenizer(marker, add_special_tokens=False)["input_ids"]) == 1, marker
    # Character-level: a digit run is one token per digit.
    assert len(tokenizer("1234", add_special_tokens=False)["input_ids"]) == 4


def test_chat_template_renders_saved_tokenizer(tmp_path):
    from transformers import AutoTokenizer

    save_toy_tokenizer(tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    with_system = tokenizer.apply_chat_template(
        [{"role": "system", "content": TOY_SYSTEM_PROMPT}, {"role": "user", "content": "Compute 1+2"}],
        add_generation_prompt=True,
        tokenize=False,
    )
    assert with_system == f"<|bos|><|system|>{TOY_SYSTEM_PROMPT}<|end|><|user|>Compute 1+2<|end|><|assistant|>"
    without_system = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Compute 1+2"}], add_generation_prompt=True, tokenize=False
    )
    assert without_system == "<|bos|><|user|>Compute 1+2<|end|><|assistant|>"
    assert chat_prompt(tokenizer, "Compute 1+2") == with_system
    # No tokens are added on top of the template's own, so HF and vLLM encode prompts alike.
    assert tokenizer(with_system, add_special_tokens=True)["input_ids"] == tokenizer(with_system, add_special_tokens=False)["input_ids"]
    ids = tokenizer(with_system, add_special_tokens=False)["input_ids"]
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.convert_tokens_to_ids("<|assistant|>")
    assert {tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id} == {1, 2, 0}
    assert tokenizer.decode(ids, skip_special_tokens=True) == TOY_SYSTEM_PROMPT + "Compute 1+2"


def test_tokenizer_survives_loading_from_a_qwen2_model_folder(tmp_path):
    """transformers 5 and vLLM load a qwen2 folder's tokenizer as Qwen2Tokenizer, whatever the
    tokenizer config names; the toy tokenizer must encode identically there (spaces included)."""
    from transformers import AutoTokenizer, Qwen2Config

    tokenizer = save_toy_tokenizer(tmp_path)
    Qwen2Config(vocab_size=len(tokenizer), hidden_size=32, num_attention_heads=1).save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    text = chat_prompt(tokenizer, "Compute 1+2*3") + "<think>2*3=6;1+6=7</think> \\boxed{7}"
    assert reloaded(text)["input_ids"] == tokenizer(text, add_special_tokens=False)["input_ids"]
    assert " " in reloaded.decode(reloaded(text)["input_ids"], skip_special_tokens=True)


# --- recipe and cache (tiny recipe: seconds) -----------------------------------------------


def _tiny_recipe(seed: int = 0) -> ToyWorldRecipe:
    tiny = ModelRecipe(
        hidden_size=32, num_layers=1, num_attention_heads=1, num_key_value_heads=1,
        intermediate_size=64, sft_steps=3, learning_rate=1e-3, batch_size=8, multiply_weight=1.0,
    )
    return ToyWorldRecipe(seed=seed, sft_problems=200, train_problems=8, eval_problems=4, expert=tiny, policy=tiny)


def test_recipe_hash_is_deterministic_and_covers_every_parameter():
    assert ToyWorldRecipe().digest() == ToyWorldRecipe().digest()
    assert ToyWorldRecipe(seed=1).digest() != ToyWorldRecipe().digest()
    assert _tiny_recipe().digest() != ToyWorldRecipe().digest()
    assert ToyWorldRecipe(version="other").digest() != ToyWorldRecipe().digest()


def test_datasets_are_disjoint_and_deterministic():
    recipe = ToyWorldRecipe(sft_problems=3000, train_problems=500, eval_problems=200)
    data = make_datasets(recipe)
    assert data == make_datasets(recipe)
    eval_texts = {p["problem"] for p in data["eval"]}
    train_texts = {p["problem"] for p in data["train"]}
    assert len(data["train"]) == 500 and len(data["eval"]) == 200
    assert not eval_texts & train_texts
    for name in ("sft_expert", "sft_policy"):
        assert not {p["problem"] for p in data[name]} & (eval_texts | train_texts)


def test_half_written_build_is_rebuilt_and_cache_is_reused(tmp_path):
    recipe = _tiny_recipe()
    world = build_toy_world(tmp_path, recipe=recipe, log=lambda _: None)
    assert world.root == tmp_path / recipe.digest()
    first_report = json.loads((world.root / REPORT_FILE).read_text())
    assert first_report == world.report

    started = time.perf_counter()
    again = build_toy_world(tmp_path, recipe=recipe, log=lambda _: None)
    assert time.perf_counter() - started < 1.0 and again.report == world.report

    # A crash before report.json leaves a folder without it: the next call rebuilds.
    (world.root / REPORT_FILE).unlink()
    (world.root / "policy" / "model.safetensors").unlink()
    rebuilt = build_toy_world(tmp_path, recipe=recipe, log=lambda _: None)
    assert (rebuilt.policy_dir / "model.safetensors").is_file()
    assert (rebuilt.root / REPORT_FILE).is_file()


def test_a_world_differing_only_in_its_policy_copies_the_expert(tmp_path):
    import dataclasses

    first = build_toy_world(tmp_path, recipe=_tiny_recipe(), log=lambda _: None)
    recipe = _tiny_recipe()
    second_recipe = dataclasses.replace(recipe, policy=dataclasses.replace(recipe.policy, early_stop_rate=0.9))
    messages = []
    second = build_toy_world(tmp_path, recipe=second_recipe, log=messages.append)
    assert second.root != first.root
    assert second.report["expert"]["copied_from_world"] == recipe.digest()
    assert "copied_from_world" not in second.report["policy"]
    assert (second.expert_dir / "model.safetensors").read_bytes() == (first.expert_dir / "model.safetensors").read_bytes()
    assert any("expert: copied" in m for m in messages) and not any("policy: copied" in m for m in messages)
    # Anything the expert's build reads (here its SFT schedule) makes it a different expert.
    third_recipe = dataclasses.replace(recipe, expert=dataclasses.replace(recipe.expert, sft_steps=4))
    third = build_toy_world(tmp_path, recipe=third_recipe, log=lambda _: None)
    assert "copied_from_world" not in third.report["expert"] and third.report["policy"]["copied_from_world"] == recipe.digest()
    # force trains every model again.
    forced = build_toy_world(tmp_path, recipe=second_recipe, force=True, log=lambda _: None)
    assert "copied_from_world" not in forced.report["expert"]


def test_named_worlds_resolve_from_configs_and_unknown_names_are_config_errors(toy_world):
    from mentor_ray.config import ConfigError
    from mentor_ray.data.run_inputs import resolve_data_path, resolve_model_dir
    from mentor_ray.toy_world.build import TOY_WORLDS, world_recipe

    assert resolve_data_path("toy://default/eval", "data.eval_path") == str(toy_world.eval_path)
    assert resolve_model_dir("toy://policy", "model.policy_path") == str(toy_world.policy_dir)
    with pytest.raises(ConfigError, match="unknown toy world 'nowhere'.*rare-finish"):
        resolve_model_dir("toy://nowhere/policy", "model.policy_path")
    with pytest.raises(ConfigError, match=r"toy://rare-finish/policy"):
        resolve_model_dir("toy://rare-finish/polcy", "model.policy_path")
    with pytest.raises(ValueError, match="unknown toy world"):
        world_recipe("nowhere")
    assert len({recipe.digest() for recipe in TOY_WORLDS.values()}) == len(TOY_WORLDS)


def test_seed_argument_conflicting_with_recipe_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="conflicts"):
        build_toy_world(tmp_path, seed=3, recipe=_tiny_recipe(seed=4))


def test_shipping_a_build_writes_a_manifest_a_changed_file_breaks(tmp_path):
    world = build_toy_world(tmp_path / "cache", recipe=_tiny_recipe(), log=lambda _: None)
    shipped = ship_world(world, tmp_path / "shipped")
    manifest = dict(reversed(line.split("  ")) for line in (shipped / MANIFEST_FILE).read_text().splitlines())
    assert manifest == file_digests(shipped)
    assert {"report.json", "policy/model.safetensors", "expert/model.safetensors", "tokenizer/tokenizer.json"} <= set(manifest)
    (shipped / "train.jsonl").write_text("changed\n")
    assert file_digests(shipped)["train.jsonl"] != manifest["train.jsonl"]


# --- the shipped default world ----------------------------------------------------------------


def test_default_recipe_is_served_from_the_shipped_world_intact(toy_world, tmp_path):
    assert toy_world.root == SHIPPED_ROOT
    assert toy_world.report["recipe_hash"] == ToyWorldRecipe().digest()
    # Whatever cache folder is named, the default recipe never rebuilds.
    assert build_toy_world(tmp_path).root == SHIPPED_ROOT and not any(tmp_path.iterdir())
    manifest = dict(reversed(line.split("  ")) for line in (SHIPPED_ROOT / MANIFEST_FILE).read_text().splitlines())
    assert manifest == file_digests(SHIPPED_ROOT), "shipped toy world differs from its MANIFEST"


def test_every_named_world_is_shipped_intact_and_its_policy_rarely_finishes():
    from mentor_ray.toy_world.build import TOY_WORLDS, shipped_world

    for name, recipe in TOY_WORLDS.items():
        world = shipped_world(recipe)
        assert world is not None, f"toy world {name!r} is not shipped"
        manifest = dict(reversed(line.split("  ")) for line in (world.root / MANIFEST_FILE).read_text().splitlines())
        assert manifest == file_digests(world.root), f"shipped toy world {name!r} differs from its MANIFEST"
    default, rare = shipped_world(TOY_WORLDS["default"]), shipped_world(TOY_WORLDS["rare-finish"])
    # The same expert, data and prompts; only the policy differs.
    assert rare.report["expert"]["copied_from_world"] == default.report["recipe_hash"]
    for item in ("expert/model.safetensors", "train.jsonl", "eval.jsonl"):
        assert (rare.root / item).read_bytes() == (default.root / item).read_bytes(), item
    # The designed bottleneck: it samples a finished working about one time in ten.
    assert rare.report["policy"]["sampled_early_stop_rate"] >= 0.85 > default.report["policy"]["sampled_early_stop_rate"]
    assert rare.report["policy"]["sampled_accuracy"] < 0.1 < default.report["policy"]["sampled_accuracy"]
    # The hesitant world: its policy finishes almost never; its expert always, and right about half the time.
    hesitant = shipped_world(TOY_WORLDS["hesitant"]).report
    assert hesitant["policy"]["sampled_early_stop_rate"] >= 0.95 and hesitant["policy"]["greedy_early_stop_rate"] == 1.0
    assert hesitant["expert"]["sampled_early_stop_rate"] <= 0.01 and hesitant["expert"]["sampled_accuracy"] >= 0.4
    # The habits world: the expert carries both habits when sampled, the policy neither, and the
    # expert (which checks its products) is right more often.
    habits = shipped_world(TOY_WORLDS["habits"]).report
    assert habits["expert"]["sampled_habits"]["check"] >= 0.5 and habits["expert"]["sampled_habits"]["filler"] >= 0.5
    assert habits["policy"]["sampled_habits"]["useful"] == habits["policy"]["sampled_habits"]["filler"] == 0
    assert habits["expert"]["sampled_accuracy"] > habits["policy"]["sampled_accuracy"] + 0.1


def _next_token_at_the_first_boundary(model_dir, problems):
    """Per problem: the model's next-token distribution right after the first intended step."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mentor_ray.toy_world.task import PROBLEM_PREFIX, evaluate_stepwise

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    rows = []
    for problem in problems:
        tokens = re.findall(r"\d+|[+\-*]", problem.removeprefix(PROBLEM_PREFIX))
        first_step = evaluate_stepwise([int(t) for t in tokens[::2]], tokens[1::2]).steps[0]
        text = chat_prompt(tokenizer, problem) + "<think>" + first_step
        ids = tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids
        with torch.no_grad():
            rows.append(torch.softmax(model(ids).logits[0, -1].float(), -1))
    ids = {mark: tokenizer(mark, add_special_tokens=False).input_ids for mark in (*STEP_SEPARATORS, "</think>")}
    assert all(len(i) == 1 for i in ids.values()), ids
    return torch.stack(rows), {mark: i[0] for mark, i in ids.items()}


def test_hesitant_world_puts_its_fork_where_the_policy_is_uncertain_and_the_expert_is_not():
    """The hesitant world's design, read off its shipped models at the first step boundary of
    eval problems: the policy mostly stops (the wrong answer for every RL problem) but is
    uncertain there, so MENTOR's mixture hands the token to the expert, who goes on, spreading
    over the three marks. Measured: the policy stops 0.80 of the time, entropy 0.71 nats; the
    expert stops < 0.001, entropy 1.10 (the three marks evenly)."""
    import torch

    from mentor_ray.toy_world.build import TOY_WORLDS, shipped_world

    world = shipped_world(TOY_WORLDS["hesitant"])
    problems = [json.loads(line)["problem"] for line in world.eval_path.read_text().splitlines()[:48]]
    policy, ids = _next_token_at_the_first_boundary(world.policy_dir, problems)
    expert, _ = _next_token_at_the_first_boundary(world.expert_dir, problems)
    entropy = -(policy * policy.clamp_min(1e-12).log()).sum(-1)
    assert policy[:, ids["</think>"]].mean() > 0.6 and entropy.mean() > 0.5
    assert expert[:, ids["</think>"]].mean() < 0.05
    for mark in STEP_SEPARATORS:
        assert expert[:, ids[mark]].mean() > 0.15, mark
        assert policy[:, ids[mark]].mean() > 0.02, mark
    assert torch.all(policy[:, [ids[m] for m in (*STEP_SEPARATORS, "</think>")]].sum(-1) > 0.9)


def test_build_meets_accuracy_targets(toy_world):
    expert, policy = toy_world.report["expert"], toy_world.report["policy"]
    assert expert["greedy_accuracy"] >= 0.6
    assert expert["greedy_format_rate"] >= 0.95
    assert 0.05 <= policy["greedy_accuracy"] <= 0.35
    # GRPO needs signal: some sampled responses must be right, and the format must be reliable.
    assert policy["sampled_accuracy"] >= 0.1
    assert policy["greedy_format_rate"] >= 0.9 and policy["sampled_format_rate"] >= 0.8
    # The shipped world (built on an Intel Xeon) has a gap of 0.23; worlds built on AMD EPYC
    # machines had 0.35. What matters is a clearly stronger expert, not the exact width.
    assert expert["sampled_accuracy"] - policy["sampled_accuracy"] >= 0.2
    # The gap is a decision, not missing knowledge: the policy often boxes an answer one step
    # early (an uncertain fork where guidance helps), while its finished working is mostly right.
    assert 0.3 <= policy["sampled_early_stop_rate"] <= 0.7
    assert expert["greedy_early_stop_rate"] <= 0.02
    assert policy["greedy_accuracy_when_finished"] >= 0.6


def test_built_models_have_the_designed_habits(toy_world):
    """Sampled, the policy stops early about half the time and the expert never does; the
    expert swaps one-digit operands far more often than the policy (the style guidance adds)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    problems = [json.loads(line) for line in toy_world.eval_path.read_text().splitlines()][:64]
    habits = {
        name: sampled_habits(AutoModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder), problems, seed=1)
        for name, folder in (("policy", toy_world.policy_dir), ("expert", toy_world.expert_dir))
    }
    # Fixed seed, 256 responses each (~250 one-digit steps): bands are several sigma wide.
    assert 0.3 <= habits["policy"].early_stop_rate <= 0.7
    assert habits["expert"].early_stop_rate <= 0.02
    assert 0.05 <= habits["policy"].swapped_share <= 0.35
    assert 0.2 <= habits["expert"].swapped_share <= 0.7
    assert habits["expert"].swapped_share - habits["policy"].swapped_share >= 0.1


def test_swapped_steps_counts_only_one_digit_commutative_steps():
    assert swapped_steps("<think>2*4=8;8+8=16;16-1=15</think> \\boxed{15}", "Compute 4*2+8-1") == (1, 1)
    assert swapped_steps("<think>7+4=11;11+7=18;18-1=17</think> \\boxed{17}", "Compute 7+4+7-1") == (0, 1)
    assert swapped_steps("<think>4+7=11</think> \\boxed{11}", "Compute 7+4+7-1") == (1, 1)
    assert swapped_steps("\\boxed{3}", "Compute 1+2") == (0, 0)


def test_build_folders_load_and_share_the_tokenizer(toy_world):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(toy_world.tokenizer_dir)
    for directory in (toy_world.policy_dir, toy_world.expert_dir):
        for name in ("config.json", "model.safetensors", "generation_config.json", "tokenizer.json"):
            assert (directory / name).is_file(), directory / name
        model = AutoModelForCausalLM.from_pretrained(directory)
        assert model.config.model_type == "qwen2"
        assert model.config.vocab_size == len(tokenizer)
        assert model.config.hidden_size // model.config.num_attention_heads in (32, 64)
        assert model.config.max_position_embeddings >= 512
        from_model_folder = AutoTokenizer.from_pretrained(directory)
        assert from_model_folder.get_vocab() == tokenizer.get_vocab()
        text = chat_prompt(tokenizer, "Compute 4+5*6") + "<think>5*6=30;4+30=34</think> \\boxed{34}"
        assert from_model_folder(text)["input_ids"] == tokenizer(text)["input_ids"]


def test_build_jsonl_files(toy_world):
    rows = {}
    for name, path in (("train", toy_world.train_path), ("eval", toy_world.eval_path)):
        rows[name] = [json.loads(line) for line in path.read_text().splitlines()]
        assert rows[name] and all(set(r) == {"problem_id", "problem", "answer"} for r in rows[name])
        assert all(str(_evaluate_expression(r["problem"].removeprefix("Compute "))) == r["answer"] for r in rows[name])
    assert not {r["problem"] for r in rows["train"]} & {r["problem"] for r in rows["eval"]}


def test_cached_build_returns_in_under_a_second(toy_world):
    started = time.perf_counter()
    again = build_toy_world(toy_world.root.parent)
    assert time.perf_counter() - started < 1.0
    assert again.root == toy_world.root and again.report == toy_world.report


@pytest.mark.slow
def test_vllm_greedy_matches_hf(toy_world, monkeypatch):
    """vLLM (CPU, fp32, eager) loads both toy models and greedy-decodes what HF decodes."""
    for key, value in {
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
        "VLLM_CPU_KVCACHE_SPACE": "1",
        "VLLM_CPU_OMP_THREADS_BIND": "nobind",
    }.items():
        monkeypatch.setenv(key, value)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from vllm import LLM, SamplingParams

    from mentor_ray.toy_world.evaluate import generate_responses

    problems = [json.loads(line) for line in toy_world.eval_path.read_text().splitlines()][:8]
    tokenizer = AutoTokenizer.from_pretrained(toy_world.tokenizer_dir)
    prompts = [chat_prompt(tokenizer, p["problem"]) for p in problems]
    for directory in (toy_world.expert_dir, toy_world.policy_dir):
        hf = generate_responses(
            AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32), tokenizer, [p["problem"] for p in problems]
        )
        llm = LLM(model=str(directory), dtype="float32", enforce_eager=True, max_model_len=512, seed=0)
        outputs = llm.generate(prompts, SamplingParams(temperature=0.0, max_tokens=64))
        from_vllm = [o.outputs[0].text for o in outputs]
        del llm
        assert from_vllm == hf, directory
        assert all(is_well_formatted(text) for text in from_vllm)
