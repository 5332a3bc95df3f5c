"""One RL step's rollouts as a Ray Data pipeline.

    prompts -> [per batch of prompts: on-policy generation (N1/prompt, policy engine)
                                      + mixed generation (N2/prompt, mixed engine), concurrently
                                      -> reward -> group advantages] -> rows

One stage, a small Ray task per batch of whole prompts, forwards the batch to the run's
long-lived actors (`pipelines.roles`): nothing heavy is built per step. A prompt's whole group
(N1 + N2 samples) stays in one batch, so its advantages need no shuffle (`groupby`); where a
pipeline has more batches than engines (validation), one batch is graded while the engine
generates the next.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import ray
import torch

from mentor_ray.core.methods import GroupAdvantageRule, MentorGroupAdvantages
from mentor_ray.rollout.requests import PROMPT_TOO_LONG, SamplingSpec
from mentor_ray.rollout.rows import CALL_TOTAL_COLUMNS, RolloutRow, generated_row
from pipelines.resources import STAGE_TASK_CPUS

if TYPE_CHECKING:
    from pipelines.roles import RolloutRoles


@dataclass(frozen=True)
class PromptRecord:
    prompt_index: int  # position in this step's batch, 0..P-1 (contiguous)
    problem_id: str
    answer: str
    prompt_token_ids: list[int]
    # The problem's stored expert trace (LUFFY puts it in the group), when the method uses one.
    expert_trace_token_ids: list[int] | None = None
    expert_trace_text: str | None = None


@dataclass(frozen=True)
class RolloutPlan:
    """What one step's rollouts ask for."""

    step: int
    seed: int
    n_on_policy: int
    n_mixed: int
    max_new_tokens: int
    temperature: float
    top_p: float
    entropy_threshold: float
    alpha: float
    weights_version: int
    prompts_per_batch: int = 8
    compute_advantages: bool = True
    advantages: GroupAdvantageRule = field(default_factory=MentorGroupAdvantages)
    # Group slots filled by the prompt's stored expert trace (LUFFY), after the n_on_policy samples.
    expert_traces_per_group: int = 0

    @property
    def guided(self) -> bool:
        """Whether this step makes mixed-policy samples (zero once guidance has ended)."""
        return self.n_mixed > 0


@dataclass
class RolloutOutput:
    rows: list[RolloutRow]
    dropped_prompts: int
    grading: dict[str, int]
    mixture: dict[str, float]
    seconds: float
    generated_tokens: int = 0
    stats: dict[str, float] = field(default_factory=dict)
    # Problems whose reference answer could not be parsed (graded 0, status bad_reference).
    bad_reference_problems: list[str] = field(default_factory=list)


def _stage_seed(seed: int, step: int, kind: str) -> int:
    digest = hashlib.sha256(f"{seed}:{step}:{kind}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def _contiguous_runs(indices: list[int]) -> list[tuple[int, int]]:
    """(start, end) positions of runs of consecutive prompt indices within a batch."""
    runs, start = [], 0
    for position in range(1, len(indices) + 1):
        if position == len(indices) or indices[position] != indices[position - 1] + 1:
            runs.append((start, position))
            start = position
    return runs


def _request_generation(batch: pd.DataFrame, engines: list[Any], kind: str, plan: RolloutPlan) -> list[tuple[int, Any]]:
    """Sends the batch's prompts to one engine; returns (first row, pending call) pairs."""
    n = plan.n_on_policy if kind == "on_policy" else plan.n_mixed
    indices = [int(i) for i in batch["prompt_index"]]
    engine = engines[(indices[0] // max(1, plan.prompts_per_batch)) % len(engines)]
    tau = plan.entropy_threshold if kind == "mixed" else None
    calls = []
    for start, end in _contiguous_runs(indices):
        # Seeds must not depend on how Ray Data cut the batches: the engine gives prompt i of
        # a call seeds base + i * n + j, so the base is offset by the run's first prompt index.
        spec = SamplingSpec(
            n=n,
            max_new_tokens=plan.max_new_tokens,
            temperature=plan.temperature,
            top_p=plan.top_p,
            seed=_stage_seed(plan.seed, plan.step, kind) + indices[start] * n,
        )
        prompts = [list(map(int, ids)) for ids in batch["prompt_token_ids"].iloc[start:end]]
        calls.append((start, engine.generate_for_step.remote(prompts, spec, plan.weights_version, tau)))
    return calls


def _collect_generation(batch: pd.DataFrame, kind: str, calls: list[tuple[int, Any]]) -> list[dict[str, Any]]:
    records = []
    for start, call in calls:
        results, summary = ray.get(call)
        served_version = int(summary["weights_version"])
        for position, result in enumerate(results):
            record = generated_row(
                batch.iloc[start + result.prompt_index], sample_index=result.sample_index, is_mixed=kind == "mixed",
                is_expert_trace=False, prompt_token_ids=result.prompt_token_ids,
                response_token_ids=result.response_token_ids, response_text=result.response_text,
                behaviour_log_probs=result.response_log_probs, finish_reason=result.finish_reason,
                weights_version=served_version, call_totals=summary if position == 0 else None,
            )
            records.append({**record, "dropped": result.finish_reason == PROMPT_TOO_LONG})
    return records


def _expert_trace_records(batch: pd.DataFrame, plan: RolloutPlan) -> list[dict[str, Any]]:
    """Each prompt's stored expert trace as a row of its group, scored like the samples. Its
    behaviour log-probs are 0: LUFFY takes the behaviour probability of expert tokens as 1."""
    records = []
    for _, source in batch.iterrows():
        if source.get("expert_trace_token_ids") is None:
            continue
        response = source["expert_trace_token_ids"]
        record = generated_row(
            source, sample_index=plan.n_on_policy, is_mixed=False, is_expert_trace=True,
            prompt_token_ids=source["prompt_token_ids"], response_token_ids=response,
            response_text=source["expert_trace_text"], behaviour_log_probs=np.zeros(len(response)), finish_reason="stop",
            weights_version=plan.weights_version,
        )
        records.append({**record, "dropped": False})
    return records


def _rollout_batch(
    batch: pd.DataFrame, policy_engines: list[Any], mixed_engines: list[Any], reward_actors: list[Any], plan: RolloutPlan
) -> pd.DataFrame:
    """Generate both kinds for a batch of prompts, grade, and score each prompt's group."""
    kinds = [("on_policy", policy_engines)] + ([("mixed", mixed_engines)] if plan.guided else [])
    # Both engines work at once: the calls are sent before any result is awaited.
    pending = [(kind, _request_generation(batch, engines, kind, plan)) for kind, engines in kinds]
    records = [record for kind, calls in pending for record in _collect_generation(batch, kind, calls)]
    if plan.expert_traces_per_group:
        records += _expert_trace_records(batch, plan)
    graded = _grade_batch(pd.DataFrame.from_records(records), reward_actors)
    if not plan.compute_advantages:
        return graded
    return pd.concat([_group_advantages(group, plan) for _, group in graded.groupby("prompt_index", sort=False)])


def _grade_batch(batch: pd.DataFrame, reward_actors: list[Any]) -> pd.DataFrame:
    batch = batch.copy()
    live = ~batch["dropped"].to_numpy(dtype=bool)
    accuracy = np.zeros(len(batch))
    format_score = np.zeros(len(batch))
    total = np.zeros(len(batch))
    status = np.array(["dropped"] * len(batch), dtype=object)
    if live.any():
        actor = reward_actors[int(batch["prompt_index"].iloc[0]) % len(reward_actors)]
        parts, _ = ray.get(
            actor.grade.remote(batch.loc[live, "response_text"].tolist(), batch.loc[live, "answer"].tolist())
        )
        accuracy[live] = [p.accuracy for p in parts]
        format_score[live] = [p.format for p in parts]
        total[live] = [p.total for p in parts]
        status[live] = [p.status for p in parts]
    batch["accuracy"] = accuracy
    batch["format"] = format_score
    batch["reward"] = total
    batch["grading_status"] = status
    return batch


def _group_advantages(group: pd.DataFrame, plan: RolloutPlan) -> pd.DataFrame:
    group = group.copy()
    live = ~group["dropped"].to_numpy(dtype=bool)
    advantages = np.zeros(len(group), dtype=np.float32)
    if live.any():
        rewards = torch.tensor(group.loc[live, "reward"].to_numpy(dtype=np.float64))
        is_mixed = torch.tensor(group.loc[live, "is_mixed"].to_numpy(dtype=bool))
        is_trace = torch.tensor(group.loc[live, "is_expert_trace"].to_numpy(dtype=bool))
        advantages[live] = plan.advantages(rewards, is_mixed, is_trace, plan.alpha).numpy()
    group["advantage"] = advantages
    return group


def _pass_through(batch: pd.DataFrame) -> pd.DataFrame:
    return batch


def warm_up_stage_workers() -> None:
    """Pays Ray Data's first-use costs (its stats actor, a task worker that has imported this
    module) while the engines and learners start, not inside the first step (4.8 s of it)."""
    ray.data.from_items([{"prompt_index": 0}]).map_batches(
        _pass_through, batch_format="pandas", num_cpus=STAGE_TASK_CPUS
    ).materialize()


def run_rollout(prompts: list[PromptRecord], plan: RolloutPlan, roles: RolloutRoles) -> RolloutOutput:
    """Generate, grade and score one step's samples. Rows are sorted by (prompt, mixed, sample)."""
    started = time.perf_counter()
    items = [
        {"prompt_index": p.prompt_index, "problem_id": p.problem_id, "answer": p.answer, "prompt_token_ids": p.prompt_token_ids,
         **({"expert_trace_token_ids": p.expert_trace_token_ids, "expert_trace_text": p.expert_trace_text}
            if plan.expert_traces_per_group else {})}
        for p in prompts
    ]
    if [item["prompt_index"] for item in items] != list(range(len(items))):
        raise ValueError("prompt_index must run 0..P-1 in order")
    if plan.guided and not roles.mixed_engines:
        raise ValueError("n_mixed > 0 but the run has no mixed engines")
    # Stage tasks only forward batches to actors: two per engine keep each engine busy while
    # the other task grades; more would only start (and, between steps, reap) worker processes.
    engines = max(len(roles.policy_engines), len(roles.mixed_engines) if plan.guided else 0)
    frame = (
        # One input block: from_items' default puts every prompt in a block of its own
        # (32 object-store puts, 70 ms a step on the toy), to be re-bundled into the batches.
        ray.data.from_items(items, override_num_blocks=max(1, len(items) // plan.prompts_per_batch))
        .map_batches(
            _rollout_batch, fn_args=(roles.policy_engines, roles.mixed_engines, roles.reward_actors, plan),
            batch_size=plan.prompts_per_batch, batch_format="pandas", num_cpus=STAGE_TASK_CPUS,
            compute=ray.data.TaskPoolStrategy(size=2 * engines),
        )
        .to_pandas()
    )
    frame = frame.sort_values(["prompt_index", "is_mixed", "sample_index"], kind="stable").reset_index(drop=True)

    dropped_prompts = int(frame.loc[frame["dropped"], "prompt_index"].nunique())
    rows = frame.loc[~frame["dropped"]].drop(columns=["dropped"]).to_dict("records")
    grading = {str(k): int(v) for k, v in frame["grading_status"].value_counts().items()}
    mixture = {name: float(frame[name].sum()) for name in CALL_TOTAL_COLUMNS}
    generated = int(sum(len(r["response_token_ids"]) for r in rows))
    bad_references = sorted({str(v) for v in frame.loc[frame["grading_status"] == "bad_reference", "problem_id"]})
    return RolloutOutput(
        rows, dropped_prompts, grading, mixture, time.perf_counter() - started, generated,
        bad_reference_problems=bad_references,
    )
