
import json

import pytest
import torch

from mentor_ray import storage
from mentor_ray.metrics import (
    JsonlSink,
    build_sinks,
    busy_seconds,
    entropy_metrics,
    mixture_metrics,
    orchestration_metrics,
    read_metrics,
    rollout_metrics,
    rollout_time_metrics,
)
from mentor_ray.plots import plot_runs
from mentor_ray.data.prompt_schedule import PromptSchedule


def _row(is_mixed, reward, accuracy, fmt, length, text="", finish="stop"):
    return {"is_mixed": is_mixed, "reward": reward, "accuracy": accuracy, "format": fmt,
            "response_token_ids": list(range(length)), "response_text": text, "finish_reason": finish}


def test_rollout_metrics_split_on_policy_and_mixed():
    rows = [
        _row(False, 1.0, 1.0, 1.0, 10, "let me verify. Check: ok"),
        _row(False, 0.1, 0.0, 1.0, 20, "wait"),
        _row(True, 0.9, 1.0, 0.0, 30, "verify verify", finish="length"),
    ]
    m = rollout_metrics(rows)
    assert m["rollout/on_policy_reward"] == pytest.approx(0.55)
    assert m["rollout/mixed_reward"] == pytest.approx(0.9)
    assert m["rollout/on_policy_response_length"] == 15 and m["rollout/mixed_response_length"] == 30
    assert m["habits/on_policy_verify"] == 0.5 and m["habits/on_policy_check"] == 0.5
    assert m["habits/on_policy_wait"] == 0.5 and m["habits/mixed_verify"] == 2.0
    assert m["habits/on_policy_useful"] == 1.0 and m["habits/on_policy_filler"] == 0.5 and m["habits/mixed_filler"] == 0
    assert m["rollout/format_rate"] == pytest.approx(2 / 3) and m["rollout/truncated_rate"] == pytest.approx(1 / 3)
    assert m["rollout/mixed_samples"] == 1


def test_entropy_and_mixture_metrics():
    values = torch.arange(1, 101, dtype=torch.float32)
    m = entropy_metrics(values)
    assert m["rollout/entropy_mean"] == pytest.approx(50.5)
    assert m["rollout/entropy_p95"] == pytest.approx(95.05)
    assert entropy_metrics(torch.zeros(0)) == {}
    mix = mixture_metrics({"scored_positions": 10, "mixture_weight_sum": 4.0, "full_expert_positions": 2})
    assert mix == {"rollout/mixture_weight_mean": 0.4, "rollout/full_expert_share": 0.2}


def test_jsonl_sink_and_resume_deduplication(tmp_path):
    sink = JsonlSink(tmp_path / "metrics.jsonl")
    sink.log(1, {"a": 1.0})
    sink.log(2, {"a": 2.0})
    sink.log(2, {"a": 3.0})  # step 2 again after a resume: the later record wins
    assert [r["a"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [1.0, 3.0]


@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_restarted_run_logs_each_step_once(tmp_path, where, request, monkeypatch):
    """A learner restarted from its step-1 checkpoint logs steps 2.. again: the sink drops
    what was logged after the checkpoint, keeps what came before, and on S3 rewrites the file."""
    if where == "s3":
        server = request.getfixturevalue("s3_bucket")
        for key, value in server.env.items():
            monkeypatch.setenv(key, value)
        location = server.uri("sink-test", "metrics.jsonl")
    else:
        location = str(tmp_path / "metrics.jsonl")
    first = JsonlSink(location)
    for step in (1, 2, 3):
        first.log(step, {"a": float(step)})
    again = JsonlSink(location, resumed_at=1)
    again.log(2, {"a": 20.0})
    lines = [json.loads(line) for line in storage.read_text(location).splitlines()]
    assert [(r["step"], r["a"]) for r in lines] == [(1, 1.0), (2, 20.0)]


def test_missing_logger_package_names_the_extra(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "wandb":
            raise ImportError("No module named 'wandb'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(ImportError, match=r"mentor-ray\[wandb\]"):
        build_sinks(["jsonl", "wandb"], tmp_path, "p", "r", {})


def test_plots_are_written(tmp_path):
    for name, offset in (("a", 0.0), ("b", 0.1)):
        sink = JsonlSink(tmp_path / name / "metrics.jsonl")
        for step in range(1, 4):
            sink.log(step, {"rollout/entropy_mean": 1.0 / step + offset, "val/greedy_accuracy": 0.1 * step})
    written = plot_runs({"a": tmp_path / "a", "b": tmp_path / "b"}, tmp_path / "plots")
    assert {p.name for p in written} == {"val_accuracy.png", "entropy.png", "response_length.png", "reward.png"}
    assert all(p.stat().st_size > 1000 and p.read_bytes()[:4] == b"\x89PNG" for p in written)


def test_prompt_schedule_is_a_function_of_seed_and_step():
    schedule = PromptSchedule(num_problems=10, prompts_per_step=3, seed=1)
    epoch = [schedule.indices_for_step(s) for s in (1, 2, 3)]
    flat = [i for step in epoch for i in step]
    assert len(set(flat)) == 9  # no repeats within an epoch (drop-last)
    assert PromptSchedule(10, 3, 1).indices_for_step(5) == schedule.indices_for_step(5)
    assert PromptSchedule(10, 3, 2).indices_for_step(1) != schedule.indices_for_step(1)
    assert schedule.indices_for_step(4) != schedule.indices_for_step(1)  # new epoch, new order
    assert PromptSchedule(10, 3, 1, shuffle=False).indices_for_step(2) == [3, 4, 5]
    with pytest.raises(ValueError, match="exceeds"):
        PromptSchedule(2, 3, 0)


def test_comparison_numbers():
    from pipelines.compare import comparison

    mentor = [
        {"step": 0, "val/greedy_accuracy": 0.1},
        {"step": 1, "rollout/mixed_samples": 4, "rollout/mixed_reward": 0.6, "rollout/on_policy_reward": 0.2, "rollout/entropy_mean": 0.5},
        {"step": 2, "rollout/mixed_samples": 4, "rollout/mixed_reward": 0.4, "rollout/on_policy_reward": 0.4, "rollout/entropy_mean": 0.7, "val/greedy_accuracy": 0.3},
        {"step": 3, "rollout/mixed_samples": 0, "rollout/on_policy_reward": 0.5, "rollout/entropy_mean": 0.9},
    ]
    grpo = [{"step": s, "rollout/entropy_mean": 0.1 * s} for s in (1, 2, 3)] + [{"step": 3, "val/greedy_accuracy": 0.2}]
    numbers = comparison(mentor, grpo, decay_steps=3)
    assert numbers["guided_steps"] == 2
    assert numbers["mixed_reward_while_guided"] == pytest.approx(0.5)
    assert numbers["on_policy_reward_while_guided"] == pytest.approx(0.3)
    assert (numbers["initial_val_accuracy"], numbers["final_val_accuracy"]) == (0.1, 0.3)
    assert numbers["end_of_guidance_step"] == 2
    assert numbers["mentor_entropy_end_of_guidance"] == pytest.approx(0.6)  # steps 1-2 (window 3 ends at 2)
    assert numbers["grpo_entropy_end_of_guidance"] == pytest.approx(0.15)


def test_busy_seconds_is_the_length_of_the_union():
    assert busy_seconds([]) == 0.0
    assert busy_seconds([(0.0, 1.0), (0.5, 2.0), (3.0, 4.0), (3.5, 3.7)]) == pytest.approx(3.0)
    assert busy_seconds([(5.0, 6.0), (0.0, 1.0)]) == pytest.approx(2.0)


def test_step_time_breakdown_separates_work_from_orchestration():
    busy = {"engines": [(10.0, 11.0), (10.5, 11.5)], "graders": [(11.2, 11.6)]}
    rollout = rollout_time_metrics(2.0, busy)
    assert rollout["time/engine_busy_seconds"] == pytest.approx(1.5)
    assert rollout["time/grading_busy_seconds"] == pytest.approx(0.4)
    assert rollout["time/rollout_work_seconds"] == pytest.approx(1.6)  # grading overlaps generation
    assert rollout["time/rollout_overhead_seconds"] == pytest.approx(0.4)
    step = {**rollout, "time/step_seconds": 4.0, "time/update_seconds": 1.5, "time/old_log_prob_seconds": 0.2,
            "time/export_seconds": 0.1, "sync/engine_load_seconds_max": 0.1}
    result = orchestration_metrics(step)
    assert result["time/orchestration_seconds"] == pytest.approx(0.5)
    assert result["time/orchestration_share"] == pytest.approx(0.125)
