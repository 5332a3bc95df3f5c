"""The whole RL loop on the toy world: real engines, real DeepSpeed learners, real Ray Train."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from mentor_ray.config import ConfigError, load_config
from mentor_ray.metrics import read_metrics
from pipelines.train import DEFAULT_RECIPE, run_training

REPO = Path(__file__).resolve().parents[1]
# A short run of the embedded recipe: 3 steps, validation and a checkpoint at step 2 and 3.
SHORT = [
    "total_steps=3", "rollout.prompts_per_step=8", "optimizer.mini_batch_prompts=4", "rollout.n_on_policy=4",
    "rollout.n_mixed=2", "rollout.max_response_tokens=64", "eval.every_steps=2", "eval.max_problems=16",
    "checkpoint.every_steps=2", "guidance.decay_steps=10", "guidance.tau_init=0.5",
]


def _config(tmp_path, *extra):
    return load_config(DEFAULT_RECIPE, SHORT + [f"logging.run_root={tmp_path}", *extra])


@pytest.fixture(scope="module")
def short_run(toy_world, tmp_path_factory):
    import ray

    root = tmp_path_factory.mktemp("runs")
    summary = run_training(_config(root, "logging.run_name=short"))
    ray.shutdown()
    return summary


def test_short_run_writes_everything(short_run):
    run_dir = Path(short_run.run_dir)
    history = read_metrics(run_dir / "metrics.jsonl")
    assert [r["step"] for r in history] == [1, 2, 3]
    first = history[0]
    for key in ("rollout/on_policy_reward", "rollout/mixed_reward", "rollout/entropy_mean", "rollout/entropy_p95",
                "guidance/entropy_threshold", "guidance/alpha", "train/loss", "train/grad_norm",
                "train/clip_high_fraction", "rollout/mixture_weight_mean", "time/rollout_seconds", "time/sync_seconds",
                "rollout/on_policy_keyword_verify"):
        assert key in first and math.isfinite(first[key]), key
    assert first["guidance/entropy_threshold"] == 0.5  # tau_init
    # tau for step 2 is the p95 quantile (floored) of step 1's on-policy entropies.
    assert history[1]["guidance/entropy_threshold"] >= 0.3
    assert "val/greedy_accuracy" in history[1] and "val/greedy_accuracy" in history[2]
    for name in ("val_accuracy.png", "entropy.png", "response_length.png", "reward.png"):
        assert (run_dir / "plots" / name).stat().st_size > 1000
    assert json.loads((run_dir / "summary.json").read_text())["steps"] == 3


def test_exported_model_loads_in_transformers(short_run):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = Path(short_run.final_model)
    model = AutoModelForCausalLM.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert model.config.vocab_size >= len(tokenizer)


def test_config_errors_before_work(tmp_path, toy_world):
    with pytest.raises(ConfigError, match="model.policy_path"):
        run_training(_config(tmp_path, f"model.policy_path={tmp_path}/nothing-here"))
    blocked = tmp_path / "file"
    blocked.write_text("x")
    with pytest.raises(ConfigError, match="not writable"):
        run_training(_config(blocked))
