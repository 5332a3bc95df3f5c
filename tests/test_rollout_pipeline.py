"""The Ray Data rollout pipeline on the toy world, with real vLLM engines and graders."""

from __future__ import annotations

import threading
import time

import pytest
import torch
from transformers import AutoTokenizer

from mentor_ray.config import load_config
from mentor_ray.core.advantages import mentor_advantages
from mentor_ray.data.run_inputs import load_tokenized_problems
from mentor_ray.toy_world import TOY_SYSTEM_PROMPT
from pipelines.roles import build_rollout_roles
from pipelines.rollout import PromptRecord, RolloutPlan, run_rollout

N_ON, N_MIXED = 4, 2


@pytest.fixture(scope="module")
def setup(toy_world, local_ray):
    config = load_config(
        None,
        [
            "model.max_model_len=256", "data.max_prompt_tokens=128", "rollout.max_response_tokens=96",
            "rollout.prompts_per_step=8", "optimizer.mini_batch_prompts=8",
            f"rollout.n_on_policy={N_ON}", f"rollout.n_mixed={N_MIXED}",
        ],
    )
    tokenizer = AutoTokenizer.from_pretrained(toy_world.policy_dir)
    problems, _ = load_tokenized_problems(str(toy_world.train_path), config, tokenizer, TOY_SYSTEM_PROMPT, "train", limit=48)
    roles = build_rollout_roles(config, str(toy_world.policy_dir), str(toy_world.expert_dir))
    yield config, problems, roles
    roles.shutdown()


def _plan(step=1, prompts_per_batch=4, weights_version=0, **overrides):
    values = dict(
        step=step, seed=3, n_on_policy=N_ON, n_mixed=N_MIXED, max_new_tokens=96, temperature=1.0, top_p=1.0,
        entropy_threshold=0.5, alpha=0.7, weights_version=weights_version, prompts_per_batch=prompts_per_batch,
    )
    values.update(overrides)
    return RolloutPlan(**values)


def _prompts(problems, count):
    return [PromptRecord(i, p.problem_id, p.answer, p.prompt_token_ids) for i, p in enumerate(problems[:count])]


def test_rows_groups_rewards_and_advantages(setup):
    config, problems, roles = setup
    output = run_rollout(_prompts(problems, 8), _plan(), roles)
    rows = output.rows
    assert len(rows) == 8 * (N_ON + N_MIXED)
    keys = {(r["prompt_index"], r["is_mixed"], r["sample_index"]) for r in rows}
    assert len(keys) == len(rows)  # nothing duplicated
    for row in rows:
        assert len(row["behaviour_log_probs"]) == len(row["response_token_ids"]) > 0
        assert all(lp <= 1e-4 for lp in row["behaviour_log_probs"])
        assert 0.0 <= row["reward"] <= 1.0
        assert row["reward"] == pytest.approx(0.9 * row["accuracy"] + 0.1 * row["format"])
    # Advantages follow MENTOR's rule, recomputed per group from the rows' rewards.
    for prompt_index in range(8):
        group = [r for r in rows if r["prompt_index"] == prompt_index]
        expected = mentor_advantages(
            torch.tensor([r["reward"] for r in group]), torch.tensor([r["is_mixed"] for r in group]),
            torch.zeros(len(group)), alpha=0.7,
        )
        assert [r["advantage"] for r in group] == pytest.approx(expected.tolist(), abs=1e-5)
    # The toy policy answers in format, and the mixed engine reports its mixture weights.
    assert sum(r["format"] for r in rows) / len(rows) > 0.5
    assert output.mixture["scored_positions"] > 0
    assert 0.0 <= output.mixture["mixture_weight_sum"] / output.mixture["scored_positions"] <= 1.0
    assert output.grading.get("ok", 0) + output.grading.get("no_answer", 0) == len(rows)


def test_seeded_rollout_is_reproducible_and_batching_independent(setup):
    _, problems, roles = setup
    first = run_rollout(_prompts(problems, 6), _plan(step=2, prompts_per_batch=2), roles).rows
    second = run_rollout(_prompts(problems, 6), _plan(step=2, prompts_per_batch=3), roles).rows
    assert [list(r["response_token_ids"]) for r in first] == [list(r["response_token_ids"]) for r in second]
    third = run_rollout(_prompts(problems, 6), _plan(step=3, prompts_per_batch=2), roles).rows
    assert [list(r["response_token_ids"]) for r in first] != [list(r["response_token_ids"]) for r in third]


def test_over_long_prompt_is_dropped_and_counted(setup):
    _, problems, roles = setup
    prompts = _prompts(problems, 4)
    too_long = PromptRecord(4, "long", "1", [prompts[0].prompt_token_ids[0]] * 400)
    output = run_rollout(prompts + [too_long], _plan(), roles)
    assert output.dropped_prompts == 1
    assert {r["prompt_index"] for r in output.rows} == {0, 1, 2, 3}
    assert output.grading.get("dropped") == N_ON + N_MIXED


def test_a_broken_reference_answer_is_named_and_counted_not_blamed_on_the_model(setup):
    _, problems, roles = setup
    prompts = _prompts(problems, 3)
    broken = PromptRecord(3, "broken-7", "}{", prompts[0].prompt_token_ids)
    output = run_rollout(prompts + [broken], _plan(), roles)
    assert output.bad_reference_problems == ["broken-7"]
    rows = [r for r in output.rows if r["problem_id"] == "broken-7"]
    assert len(rows) == N_ON + N_MIXED and all(r["accuracy"] == 0.0 for r in rows)
    # Samples with a boxed answer meet the broken reference; the rest have no answer to grade.
    boxed = sum(r["grading_status"] == "bad_reference" for r in rows)
    assert boxed >= 1 and boxed + sum(r["grading_status"] == "no_answer" for r in rows) == len(rows)
    assert output.grading["bad_reference"] == boxed
    assert all(r["grading_status"] != "bad_reference" for r in output.rows if r["problem_id"] != "broken-7")


def test_engine_killed_mid_run_loses_and_duplicates_nothing(setup, toy_world):
    import ray
    from safetensors.torch import load_file

    _, problems, roles = setup
    # Publish weights as version 1: the restarted engine must come back serving exactly these.
    weights = load_file(str(toy_world.policy_dir / "model.safetensors"))
    roles.publish_weights(1, weights)
    victim = roles.policy_engines[0]
    version, pid_before = ray.get(victim.weights_version_and_pid.remote())
    assert version == 1

    kill_after_seconds = 1.0

    def kill_soon():
        time.sleep(kill_after_seconds)
        ray.kill(victim, no_restart=False)

    killer = threading.Thread(target=kill_soon)
    killer.start()
    started = time.perf_counter()
    output = run_rollout(_prompts(problems, 48), _plan(step=5, prompts_per_batch=2, weights_version=1), roles)
    finished = time.perf_counter()
    killer.join()
    assert finished - started > kill_after_seconds + 0.5, "the rollout finished before the kill: make it longer"
    rows = output.rows
    assert len(rows) == 48 * (N_ON + N_MIXED)
    assert len({(r["prompt_index"], r["is_mixed"], r["sample_index"]) for r in rows}) == len(rows)
    version, pid_after = ray.get(victim.weights_version_and_pid.remote())
    assert pid_after != pid_before  # really restarted
    assert version == 1  # caught up with the published weights


@pytest.mark.parametrize("divide_by_std", [False, True])
def test_a_luffy_group_holds_the_expert_trace_graded_and_advantaged_with_its_samples(setup, toy_world, divide_by_std):
    """LUFFY's group: N1 - 1 policy samples and the problem's stored expert trace, graded with
    the same reward; advantages over the whole group (mean only, or also / std); the trace's
    behaviour log-probs are 0 (probability 1)."""
    import ray

    from mentor_ray.core.advantages import luffy_advantages
    from mentor_ray.core.methods import LuffyGroupAdvantages

    _, problems, roles = setup
    tokenizer = AutoTokenizer.from_pretrained(toy_world.policy_dir)
    prompts = []
    for i, p in enumerate(problems[:8]):
        # Half the traces right, half wrong: the grader, not the row's origin, decides the reward.
        text = f"<think>x</think> \\boxed{{{p.answer if i % 2 == 0 else int(p.answer) + 1}}}"
        ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        prompts.append(PromptRecord(i, p.problem_id, p.answer, p.prompt_token_ids, ids, text))
    # The weights an earlier test of this module may have published (the engines refuse others).
    version, _ = ray.get(roles.policy_engines[0].weights_version_and_pid.remote())
    plan = _plan(n_on_policy=N_ON - 1, n_mixed=0, alpha=0.0, expert_traces_per_group=1, weights_version=version,
                 advantages=LuffyGroupAdvantages(divide_by_std))
    rows = run_rollout(prompts, plan, roles).rows
    assert len(rows) == 8 * N_ON
    for record in prompts:
        group = [r for r in rows if r["prompt_index"] == record.prompt_index]
        traces = [r for r in group if r["is_expert_trace"]]
        assert len(group) == N_ON and len(traces) == 1
        (trace,) = traces
        assert list(trace["response_token_ids"]) == record.expert_trace_token_ids and not trace["is_mixed"]
        assert trace["accuracy"] == (1.0 if record.prompt_index % 2 == 0 else 0.0)
        assert list(trace["behaviour_log_probs"]) == [0.0] * len(record.expert_trace_token_ids)
        expected = luffy_advantages(torch.tensor([r["reward"] for r in group]), torch.zeros(N_ON), divide_by_std)
        assert [r["advantage"] for r in group] == pytest.approx(expected.tolist(), abs=1e-5)
    assert any(r["advantage"] != 0 for r in rows)
