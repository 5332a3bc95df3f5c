"""Validation: greedy (and optionally sampled) accuracy of the current policy on held-out problems.

The same Ray Data stages as training rollouts, on the policy engines, with no advantages.
"""

from __future__ import annotations

from mentor_ray.config import MentorConfig
from mentor_ray.run_inputs import TokenizedProblem
from pipelines.roles import RolloutRoles
from pipelines.rollout import PromptRecord, RolloutPlan, run_rollout


def evaluate_policy(
    problems: list[TokenizedProblem], config: MentorConfig, roles: RolloutRoles, step: int, weights_version: int
) -> dict[str, float]:
    prompts = [PromptRecord(i, p.problem_id, p.answer, p.prompt_token_ids) for i, p in enumerate(problems)]
    max_new_tokens = config.eval.max_response_tokens or config.rollout.max_response_tokens
    metrics: dict[str, float] = {}
    runs = []
    if config.eval.greedy:
        runs.append(("greedy", 1, 0.0))
    if config.eval.sampled_samples > 0:
        runs.append(("sampled", config.eval.sampled_samples, config.eval.sampled_temperature))
    for label, n, temperature in runs:
        plan = RolloutPlan(
            step=step, seed=config.seed + 7919, n_on_policy=n, n_mixed=0, max_new_tokens=max_new_tokens,
            temperature=temperature, top_p=1.0, entropy_threshold=1.0, alpha=0.0,
            weights_version=weights_version, prompts_per_batch=32, compute_advantages=False,
        )
        output = run_rollout(prompts, plan, roles)
        rows = output.rows
        metrics[f"val/{label}_accuracy"] = sum(r["accuracy"] for r in rows) / max(1, len(rows))
        metrics[f"val/{label}_format_rate"] = sum(r["format"] for r in rows) / max(1, len(rows))
        metrics[f"val/{label}_response_length"] = sum(len(r["response_token_ids"]) for r in rows) / max(1, len(rows))
        metrics[f"time/validate_{label}_seconds"] = output.seconds
        # Problems whose reference answer cannot be parsed score 0 for every model: named in the
        # training console, counted here so a validation number can be read with them in mind.
        metrics[f"val/{label}_bad_references"] = float(len(output.bad_reference_problems))
    return metrics
