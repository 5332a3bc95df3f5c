"""The short run of the embedded recipe that several test modules share: the one-node,
one-learner reference that multi-learner and multi-node runs of the same seed must equal."""

from __future__ import annotations

from mentor_ray.config import load_config
from pipelines.train import DEFAULT_RECIPE

# 3 steps, validation and a checkpoint at step 2 and 3.
SHORT = [
    "total_steps=3", "rollout.prompts_per_step=8", "optimizer.mini_batch_prompts=4", "rollout.n_on_policy=4",
    "rollout.n_mixed=2", "rollout.max_response_tokens=64", "eval.every_steps=2", "eval.max_problems=16",
    "checkpoint.every_steps=2", "guidance.decay_steps=10", "guidance.tau_init=0.5",
]


def short_config(run_root, *extra):
    return load_config(DEFAULT_RECIPE, SHORT + [f"logging.run_root={run_root}", *extra])
