"""Rollout samples as the learner takes them: the sample type, micro-batch tensors, and each
rank's share of every global mini-batch. Pure torch; no DeepSpeed, no process group."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from mentor_ray.rollout.rows import RolloutRow


@dataclass
class TrainingSample:
    """One rollout: prompt and response token ids, and the scalar advantage of the response."""

    prompt_token_ids: list[int]
    response_token_ids: list[int]
    advantage: float
    is_mixed: bool
    group_id: int  # the prompt this sample answers; mini-batches are made of whole prompts
    # Log-probs the rollout engine reported. In lockstep only a diagnostic (the loss uses the
    # learner's own old log-probs, as the paper does); for a stale on-policy sample, pi_behaviour
    # of the decoupled objective (`behaviour_corrected`).
    behaviour_log_probs: list[float] | None = None
    # A stored expert trace in the group (LUFFY): trained with the shaping loss, not PPO, and
    # neither the policy's own sample nor a mixed one.
    is_expert_trace: bool = False
    # The policy weights version (optimizer updates counted in RL steps) that generated it, and
    # how many versions older that is than the learner's weights when it trains on it: 0 in
    # lockstep, 1 for a rollout made while the previous step was learning (rollout.max_staleness).
    weights_version: int = 0
    behaviour_lag: int = 0

    @property
    def behaviour_corrected(self) -> bool:
        """Trained with the decoupled objective's weight pi_prox / pi_behaviour (MENTOR.md
        section 12): the policy's own samples from older weights. Mixed samples keep the paper's
        rule (no behaviour correction), expert traces their shaping loss."""
        return self.is_on_policy and self.behaviour_lag > 0 and bool(self.behaviour_log_probs)

    @property
    def is_on_policy(self) -> bool:
        """Sampled by the policy itself: what tau's entropies and the engine-sync check read."""
        return not self.is_mixed and not self.is_expert_trace

    @classmethod
    def from_rollout_row(cls, row: RolloutRow) -> TrainingSample:
        """The sample of one row of `pipelines.rollout.run_rollout`'s output."""
        return cls(
            prompt_token_ids=[int(t) for t in row["prompt_token_ids"]],
            response_token_ids=[int(t) for t in row["response_token_ids"]],
            advantage=float(row["advantage"]),
            is_mixed=bool(row["is_mixed"]),
            group_id=int(row["prompt_index"]),
            behaviour_log_probs=[float(v) for v in row["behaviour_log_probs"]],
            is_expert_trace=bool(row.get("is_expert_trace", False)),
            weights_version=int(row.get("weights_version", 0)),
        )



def check_sample(sample: TrainingSample, index: int, vocab_size: int | None) -> None:
    where = f"sample {index} (group_id={sample.group_id})"
    if len(sample.prompt_token_ids) == 0:
        raise ValueError(f"{where}: prompt_token_ids is empty; the first response token needs a prompt to condition on")
    if vocab_size is not None:
        for field_name in ("prompt_token_ids", "response_token_ids"):
            ids = getattr(sample, field_name)
            bad = [t for t in ids if not 0 <= int(t) < vocab_size]
            if bad:
                raise ValueError(f"{where}: {field_name} holds ids outside [0, {vocab_size}): {bad[:5]}")
    if sample.behaviour_log_probs is not None and len(sample.behaviour_log_probs) != len(sample.response_token_ids):
        raise ValueError(
            f"{where}: behaviour_log_probs has {len(sample.behaviour_log_probs)} values for "
            f"{len(sample.response_token_ids)} response tokens"
        )


def collate(samples: Sequence[TrainingSample], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-padded tensors for one micro-batch.

    `response_mask[b, t]` is 1 where token t+1 of row b is a response token, so it lines up
    with the next-token log-probs of `TokenScorer` (shape [B, L-1]).
    """
    if len(samples) == 0:
        raise ValueError("collate needs at least one sample")
    for index, sample in enumerate(samples):
        check_sample(sample, index, None)
    lengths = [len(s.prompt_token_ids) + len(s.response_token_ids) for s in samples]
    # At least two tokens, so a one-token prompt with an empty response still has one position.
    width = max(2, max(lengths))
    input_ids = torch.full((len(samples), width), int(pad_token_id), dtype=torch.long)
    attention_mask = torch.zeros((len(samples), width), dtype=torch.long)
    response_mask = torch.zeros((len(samples), width - 1), dtype=torch.float32)
    for row, sample in enumerate(samples):
        tokens = list(sample.prompt_token_ids) + list(sample.response_token_ids)
        input_ids[row, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
        attention_mask[row, : len(tokens)] = 1
        prompt_length = len(sample.prompt_token_ids)
        response_mask[row, prompt_length - 1 : prompt_length - 1 + len(sample.response_token_ids)] = 1.0
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "response_mask": response_mask,
        "advantages": torch.tensor([float(s.advantage) for s in samples], dtype=torch.float32),
        "is_mixed": torch.tensor([bool(s.is_mixed) for s in samples], dtype=torch.bool),
        "off_policy": torch.tensor([bool(s.is_expert_trace) for s in samples], dtype=torch.bool),
        "behaviour_corrected": torch.tensor([s.behaviour_corrected for s in samples], dtype=torch.bool),
    }


def align_to_response(
    per_sample_values: Sequence[torch.Tensor | Sequence[float]],
    samples: Sequence[TrainingSample],
    width: int,
) -> torch.Tensor:
    """Per-sample response values -> a [B, width] tensor laid out like `response_mask`."""
    if len(per_sample_values) != len(samples):
        raise ValueError(f"got {len(per_sample_values)} value lists for {len(samples)} samples")
    out = torch.zeros((len(samples), width), dtype=torch.float32)
    for row, (values, sample) in enumerate(zip(per_sample_values, samples)):
        values = torch.as_tensor(values, dtype=torch.float32).flatten()
        if values.numel() != len(sample.response_token_ids):
            raise ValueError(
                f"sample {row} (group_id={sample.group_id}): {values.numel()} values for "
                f"{len(sample.response_token_ids)} response tokens"
            )
        start = len(sample.prompt_token_ids) - 1
        out[row, start : start + values.numel()] = values
    return out


def split_response_values(values: torch.Tensor, samples: Sequence[TrainingSample]) -> list[torch.Tensor]:
    """The inverse of `align_to_response`: [B, L-1] -> one 1-D tensor per sample."""
    out = []
    for row, sample in enumerate(samples):
        start = len(sample.prompt_token_ids) - 1
        out.append(values[row, start : start + len(sample.response_token_ids)].detach().clone())
    return out


def _contiguous_split(count: int, parts: int) -> list[tuple[int, int]]:
    """[start, end) of `parts` near-equal contiguous pieces (the first ones one longer)."""
    base, extra = divmod(count, parts)
    bounds, start = [], 0
    for part in range(parts):
        end = start + base + (1 if part < extra else 0)
        bounds.append((start, end))
        start = end
    return bounds


def shard_for_rank(
    samples: Sequence[TrainingSample], rank: int, world_size: int, mini_batch_count: int
) -> list[list[TrainingSample]]:
    """This rank's part of each global mini-batch: a list of `mini_batch_count` local mini-batches.

    Prompts (group_ids, in order of first appearance) are split into `mini_batch_count`
    contiguous chunks; each chunk's samples are split into `world_size` contiguous, near-equal
    pieces and rank r takes piece r. So global mini-batch k is the union over ranks of their
    k-th local mini-batch, and every rank holds the same number of mini-batches (some may be
    empty when a chunk has fewer samples than ranks; the learner handles that).
    """
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
    if mini_batch_count < 1:
        raise ValueError(f"mini_batch_count must be >= 1, got {mini_batch_count}")
    groups: dict[int, list[TrainingSample]] = {}
    for sample in samples:
        groups.setdefault(sample.group_id, []).append(sample)
    group_ids = list(groups)
    if len(group_ids) < mini_batch_count:
        raise ValueError(
            f"{len(group_ids)} prompts cannot fill {mini_batch_count} mini-batches; "
            "mini_batch_count must be <= the number of distinct group_ids"
        )
    local_mini_batches = []
    for start, end in _contiguous_split(len(group_ids), mini_batch_count):
        chunk = [s for gid in group_ids[start:end] for s in groups[gid]]
        piece_start, piece_end = _contiguous_split(len(chunk), world_size)[rank]
        local_mini_batches.append(chunk[piece_start:piece_end])
    return local_mini_batches


def chunked(items: Sequence[Any], size: int) -> list[list[Any]]:
    return [list(items[i : i + size]) for i in range(0, len(items), size)]
