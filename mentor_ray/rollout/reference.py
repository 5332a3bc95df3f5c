"""The tests' torch oracle for the mixed engine: pi_mix sampled token by token.

`naive_mixed_sample` forwards the policy and the expert (`transformers` models, with KV caches)
on every token, mixes their next-token distributions into pi_mix (`core.mixture`) and samples.
It is slow and plain on purpose: tests/test_engines.py checks the vLLM engines against it, and
tests/test_reference.py checks it against exact pi_mix. It does not import vLLM, so it works
wherever torch and transformers do.

Both models must be `transformers` causal LMs that take `input_ids`, `attention_mask`,
`position_ids`, `past_key_values` (a full-attention `DynamicCache`) and `use_cache`, e.g. Qwen2,
and share a vocabulary. Batching: prompts are a [batch, prompt_len] tensor; rows of different
lengths must be LEFT-padded and come with an `attention_mask` (0 on padding). Each row is
sampled independently; the shared `generator` makes a call reproducible, not row-for-row
identical to a batch-of-one call.

KV-cache bookkeeping: each model's cache holds the committed sequence minus its last token,
which is fed at the start of the next step; padding slots are masked out in the 2-D attention
mask, and positions are explicit per row.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import DynamicCache

from mentor_ray.core.mixture import mixed_policy_log_probs


@dataclass
class MixedSamples:
    """Sequences sampled from pi_mix, one row per prompt."""

    token_ids: torch.Tensor  # [batch, max_new_tokens] long; pad_token_id after the end
    lengths: torch.Tensor  # [batch] long; generated tokens, EOS included
    mixture_weights: (
        torch.Tensor
    )  # [batch, max_new_tokens] w_t of each token; 0 on padding
    log_probs: (
        torch.Tensor
    )  # [batch, max_new_tokens] log pi_mix of each token; 0 on padding


@dataclass
class _DecodeState:
    """KV caches of both models plus the per-row bookkeeping of a left-padded batch.

    `attention_mask[b, j]` says whether cache slot j is part of row b's committed sequence;
    `next_position[b]` is the rotary position of row b's next fed token (= its valid slots);
    `pending_token[b]` is row b's last committed token, not yet in either cache.
    """

    policy_cache: DynamicCache
    expert_cache: DynamicCache
    attention_mask: torch.Tensor  # [batch, cache_len] long
    next_position: torch.Tensor  # [batch] long
    pending_token: torch.Tensor  # [batch] long


def _validate_inputs(
    policy,
    expert,
    prompt_ids: torch.Tensor,
    max_new_tokens: int,
    entropy_threshold: float,
    attention_mask: torch.Tensor | None,
) -> torch.Tensor:
    """Check arguments; return the prompt attention mask (all ones when none was given)."""
    if (
        not torch.is_tensor(prompt_ids)
        or prompt_ids.dim() != 2
        or prompt_ids.shape[1] < 1
    ):
        shape = (
            tuple(prompt_ids.shape) if torch.is_tensor(prompt_ids) else type(prompt_ids)
        )
        raise ValueError(
            f"prompt_ids must be a [batch, prompt_len >= 1] tensor, got {shape}"
        )
    if prompt_ids.dtype not in (torch.int32, torch.int64):
        raise ValueError(
            f"prompt_ids must hold integer token ids, got dtype {prompt_ids.dtype}"
        )
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if not entropy_threshold > 0:
        raise ValueError(f"entropy_threshold must be > 0, got {entropy_threshold}")
    policy_vocab = policy.get_output_embeddings().weight.shape[0]
    expert_vocab = expert.get_output_embeddings().weight.shape[0]
    if policy_vocab != expert_vocab:
        raise ValueError(
            f"policy and expert vocabularies differ ({policy_vocab} vs {expert_vocab}); "
            "pi_mix mixes token ids, so both models must share a tokenizer"
        )
    if attention_mask is None:
        return torch.ones_like(prompt_ids, dtype=torch.long)
    if attention_mask.shape != prompt_ids.shape:
        raise ValueError(
            f"attention_mask shape {tuple(attention_mask.shape)} != prompt_ids shape "
            f"{tuple(prompt_ids.shape)}"
        )
    attention_mask = attention_mask.to(dtype=torch.long)
    if bool((attention_mask[:, -1] == 0).any()):
        rows = torch.nonzero(attention_mask[:, -1] == 0).flatten().tolist()
        raise ValueError(
            f"prompt rows {rows} end in padding; the sampler needs LEFT-padded prompts "
            "(attention_mask[:, -1] == 1)"
        )
    # Left padding: once a row has a real token every later column must be real too.
    if bool((attention_mask[:, 1:] < attention_mask[:, :-1]).any()):
        raise ValueError(
            "attention_mask has padding after a real token; pad prompts on the left"
        )
    return attention_mask


def _forward(
    model,
    cache: DynamicCache,
    input_ids: torch.Tensor,
    state_mask: torch.Tensor,
    positions,
) -> torch.Tensor:
    """Feed `input_ids` [batch, n] after the cache; return float logits [batch, n, vocab].

    `state_mask` is the attention mask over the cache slots plus the n new ones.
    """
    output = model(
        input_ids=input_ids,
        attention_mask=state_mask,
        position_ids=positions,
        past_key_values=cache,
        use_cache=True,
    )
    return output.logits.float()


def _prefill(
    policy, expert, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor
) -> _DecodeState:
    """Cache every prompt token but the last one in both models."""
    positions = (prompt_mask.cumsum(dim=1) - 1).clamp(min=0)
    policy_cache = DynamicCache(config=policy.config)
    expert_cache = DynamicCache(config=expert.config)
    for name, cache in (("policy", policy_cache), ("expert", expert_cache)):
        if any(type(layer).__name__ != "DynamicLayer" for layer in cache.layers):
            # Sliding-window / recurrent layers drop or fold slots: the 2-D mask would not fit.
            kinds = sorted({type(layer).__name__ for layer in cache.layers})
            raise ValueError(
                f"{name} model needs a full-attention DynamicCache; got layers {kinds}"
            )
    if prompt_ids.shape[1] > 1:
        body_ids, body_mask = prompt_ids[:, :-1], prompt_mask[:, :-1]
        _forward(policy, policy_cache, body_ids, body_mask, positions[:, :-1])
        _forward(expert, expert_cache, body_ids, body_mask, positions[:, :-1])
    return _DecodeState(
        policy_cache=policy_cache,
        expert_cache=expert_cache,
        attention_mask=prompt_mask[:, :-1].clone(),
        next_position=positions[:, -1].clone(),
        pending_token=prompt_ids[:, -1].clone(),
    )


def _resolve_pad(eos_token_id: int | None, pad_token_id: int | None) -> int:
    if pad_token_id is not None:
        return pad_token_id
    return eos_token_id if eos_token_id is not None else 0


def _empty_outputs(batch: int, max_new_tokens: int, pad_token_id: int, device):
    token_ids = torch.full(
        (batch, max_new_tokens), pad_token_id, dtype=torch.long, device=device
    )
    weights = torch.zeros((batch, max_new_tokens), dtype=torch.float32, device=device)
    log_probs = torch.zeros((batch, max_new_tokens), dtype=torch.float32, device=device)
    lengths = torch.zeros(batch, dtype=torch.long, device=device)
    return token_ids, weights, log_probs, lengths


@torch.inference_mode()
def naive_mixed_sample(
    policy,
    expert,
    prompt_ids: torch.Tensor,
    max_new_tokens: int,
    entropy_threshold: float,
    generator: torch.Generator,
    eos_token_id: int | None = None,
    attention_mask: torch.Tensor | None = None,
    pad_token_id: int | None = None,
) -> MixedSamples:
    """Sample from pi_mix token by token: both models forward every step (temperature 1).

    A row stops after it samples `eos_token_id` (kept in the output) or after
    `max_new_tokens`; later columns hold `pad_token_id` (default: eos, else 0).
    """
    prompt_mask = _validate_inputs(
        policy, expert, prompt_ids, max_new_tokens, entropy_threshold, attention_mask
    )
    pad_token_id = _resolve_pad(eos_token_id, pad_token_id)
    batch, device = prompt_ids.shape[0], prompt_ids.device
    state = _prefill(policy, expert, prompt_ids.long(), prompt_mask)
    token_ids, weights, log_probs, lengths = _empty_outputs(
        batch, max_new_tokens, pad_token_id, device
    )
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    for step in range(max_new_tokens):
        mask = torch.cat(
            [
                state.attention_mask,
                torch.ones_like(finished, dtype=torch.long)[:, None],
            ],
            1,
        )
        fed, positions = state.pending_token[:, None], state.next_position[:, None]
        policy_logits = _forward(policy, state.policy_cache, fed, mask, positions)[
            :, -1
        ]
        expert_logits = _forward(expert, state.expert_cache, fed, mask, positions)[
            :, -1
        ]
        state.attention_mask, state.next_position = mask, state.next_position + 1
        mix_log_probs, weight = mixed_policy_log_probs(
            policy_logits, expert_logits, entropy_threshold
        )
        sampled = torch.multinomial(
            mix_log_probs.exp(), 1, generator=generator
        ).squeeze(1)
        active = ~finished
        token_ids[active, step] = sampled[active]
        weights[active, step] = weight[active]
        log_probs[active, step] = mix_log_probs.gather(1, sampled[:, None]).squeeze(1)[
            active
        ]
        lengths += active.long()
        if eos_token_id is not None:
            finished |= sampled == eos_token_id
        if bool(finished.all()):
            break
        # Finished rows keep feeding tokens (outputs ignored) so the batch stays rectangular.
        state.pending_token = torch.where(finished, pad_token_id, sampled)
    return MixedSamples(
        token_ids=token_ids,
        lengths=lengths,
        mixture_weights=weights,
        log_probs=log_probs,
    )

