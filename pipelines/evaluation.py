"""Scoring a policy on problems: the one code path of periodic validation in training and of
`python -m pipelines.evaluate`.

The same Ray Data stages as training rollouts, on the policy engines, with no advantages; per
problem the (samples, correct) counts give avg@k / pass@1 and the unbiased pass@k.
"""

from __future__ import annotations

from dataclasses import dataclass

from mentor_ray.config import MentorConfig
from mentor_ray.pass_at_k import avg_at_k, mean_pass_at_k
from mentor_ray.data.run_inputs import TokenizedProblem
from pipelines.roles import RolloutRoles
from pipelines.rollout import PromptRecord, RolloutOutput, RolloutPlan, run_rollout


@dataclass
class Scored:
    output: RolloutOutput
    counts: list[tuple[int, int]]  # (samples, correct) per problem that was generated

    @property
    def accuracy(self) -> float:
        return avg_at_k(self.counts) if self.counts else float("nan")

    def pass_at(self, ks: list[int]) -> dict[int, float]:
        n = min((n for n, _ in self.counts), default=0)
        return {k: mean_pass_at_k(self.counts, k) for k in ks if 1 <= k <= n}


def score_problems(
    problems: list[TokenizedProblem], roles: RolloutRoles, *, samples: int, temperature: float, max_new_tokens: int,
    seed: int, step: int = 0, weights_version: int = 0, prompts_per_batch: int = 32,
) -> Scored:
    prompts = [PromptRecord(i, p.problem_id, p.answer, p.prompt_token_ids) for i, p in enumerate(problems)]
    plan = RolloutPlan(
        step=step, seed=seed, n_on_policy=samples, n_mixed=0, max_new_tokens=max_new_tokens,
        temperature=temperature, top_p=1.0, entropy_threshold=1.0, alpha=0.0,
        weights_version=weights_version, prompts_per_batch=prompts_per_batch, compute_advantages=False,
    )
    output = run_rollout(prompts, plan, roles)
    by_prompt: dict[int, list[float]] = {}
    for row in output.rows:
        by_prompt.setdefault(int(row["prompt_index"]), []).append(float(row["accuracy"]))
    counts = [(len(v), int(sum(a >= 1.0 for a in v))) for _, v in sorted(by_prompt.items())]
    return Scored(output, counts)


def evaluate_policy(
    problems: list[TokenizedProblem], config: MentorConfig, roles: RolloutRoles, step: int, weights_version: int
) -> dict[str, float]:
    """Validation during training: greedy (and optionally sampled) accuracy."""
    max_new_tokens = config.eval.max_response_tokens or config.rollout.max_response_tokens
    metrics: dict[str, float] = {}
    runs = []
    if config.eval.greedy:
        runs.append(("greedy", 1, 0.0))
    if config.eval.sampled_samples > 0:
        runs.append(("sampled", config.eval.sampled_samples, config.eval.sampled_temperature))
    for label, n, temperature in runs:
        scored = score_problems(
            problems, roles, samples=n, temperature=temperature, max_new_tokens=max_new_tokens,
            seed=config.seed + 7919, step=step, weights_version=weights_version,
        )
        rows = scored.output.rows
        metrics[f"val/{label}_accuracy"] = sum(r["accuracy"] for r in rows) / max(1, len(rows))
        metrics[f"val/{label}_format_rate"] = sum(r["format"] for r in rows) / max(1, len(rows))
        metrics[f"val/{label}_response_length"] = sum(len(r["response_token_ids"]) for r in rows) / max(1, len(rows))
        metrics[f"time/validate_{label}_seconds"] = scored.output.seconds
        # Problems whose reference answer cannot be parsed score 0 for every model: named in the
        # training console, counted here so a validation number can be read with them in mind.
        metrics[f"val/{label}_bad_references"] = float(len(scored.output.bad_reference_problems))
    return metrics
