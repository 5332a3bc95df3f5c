"""The rollout row: one sample of a step, as `pipelines.rollout` makes it and the learner, the
metrics and validation read it. Plain dicts at run time (Ray Data moves them as pandas rows);
this schema is the one place that says which columns exist and what each one means.

No vLLM or Ray import: the learner's workers and the metrics read it.
"""

from __future__ import annotations

from typing import Any, NotRequired, TypedDict

import numpy as np

# A mixed engine call's totals (mixture sums and speculative-decoding counts). Each rides on the
# call's first row, 0 on the others, so summing a column over a step's rows gives exact sums.
CALL_TOTAL_COLUMNS = (
    "mixture_weight_sum", "full_expert_positions", "scored_positions",
    "verify_passes", "accepted_draft_tokens", "draft_rejections", "mixed_generated_tokens",
)


class RolloutRow(TypedDict):
    # Which prompt and sample.
    prompt_index: int  # the prompt's place in the step's batch: its group
    problem_id: str
    answer: str  # the reference answer the grader compares with
    sample_index: int
    # Who produced the response: the policy (both False), the mixed engine (pi_mix), or the
    # problem's stored expert trace (LUFFY).
    is_mixed: bool
    is_expert_trace: bool
    # The tokens, and the log-probs of the distribution each response token was sampled from
    # (0 for an expert trace: LUFFY takes the behaviour probability of expert tokens as 1).
    prompt_token_ids: np.ndarray  # int64
    response_token_ids: np.ndarray  # int64
    response_text: str
    behaviour_log_probs: np.ndarray  # float32
    # The policy weights version (RL steps of updates) of the engine that generated the row,
    # as the engine reported it; an expert trace takes the step's version (it has none of its own).
    weights_version: int
    finish_reason: str
    mixture_weight_sum: float
    full_expert_positions: float
    scored_positions: float
    verify_passes: float
    accepted_draft_tokens: float
    draft_rejections: float
    mixed_generated_tokens: float
    # Set by the grader.
    accuracy: float
    format: float
    reward: float
    grading_status: str
    # Set by the method's group advantage rule (absent when a plan asks for no advantages,
    # as validation does).
    advantage: NotRequired[float]


def generated_row(
    source: Any, *, sample_index: int, is_mixed: bool, is_expert_trace: bool, prompt_token_ids: Any,
    response_token_ids: Any, response_text: str, behaviour_log_probs: Any, finish_reason: str, weights_version: int,
    call_totals: dict[str, float] | None = None,
) -> dict[str, Any]:
    """A row before grading, for the prompt `source` (a mapping with prompt_index, problem_id
    and answer); `call_totals` only on an engine call's first row."""
    totals = call_totals or {}
    return {
        "prompt_index": int(source["prompt_index"]), "problem_id": source["problem_id"], "answer": source["answer"],
        "sample_index": int(sample_index), "is_mixed": is_mixed, "is_expert_trace": is_expert_trace,
        "prompt_token_ids": np.asarray(prompt_token_ids, dtype=np.int64),
        "response_token_ids": np.asarray(response_token_ids, dtype=np.int64),
        "response_text": response_text,
        "behaviour_log_probs": np.asarray(behaviour_log_probs, dtype=np.float32),
        "weights_version": int(weights_version),
        "finish_reason": finish_reason,
        **{name: float(totals.get(name, 0.0)) for name in CALL_TOTAL_COLUMNS},
    }
