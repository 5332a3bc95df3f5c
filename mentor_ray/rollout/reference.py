"""Reference samplers for the mixed policy pi_mix, in plain torch + transformers.

These are the ground truth the vLLM rollout engines are checked against, not a fast path.

- `naive_mixed_sample`: both models forward every token (with KV caches), mix, sample.
- `speculative_mixed_sample`: MENTOR's modified speculative sampling (MENTOR.md section 4):
  the policy drafts K tokens, the expert scores them in one forward pass, draft y is accepted
  with probability min(1, pi_mix(y) / pi_theta(y)), a rejection is replaced by a sample from
  normalize(max(0, pi_mix - pi_theta)) and ends the round, and there is no bonus token.
  Its output distribution equals the naive sampler's.

Both accept any `transformers` causal LM that takes `input_ids`, `attention_mask`,
`position_ids`, `past_key_values` (a croppable `DynamicCache`) and `use_cache`, e.g. Qwen2.
Batching: prompts are a [batch, prompt_len] tensor; rows of different lengths must be
LEFT-padded and come with an `attention_mask` (0 on padding). Each row is sampled
independently; the shared `generator` makes a call reproducible, not row-for-row identical to
a batch-of-one call.

KV-cache bookkeeping (both samplers): each model's cache always holds the committed sequence
minus its last token, which is fed at the start of the next forward. In the speculative
sampler rows of a batch accept different numbers of drafts per round. Rather than
re-aligning caches, every row keeps the round's K cache slots and the slots of discarded
drafts are masked out in the 2-D attention mask (positions are explicit per row, so a masked
slot is exactly as if it had never been written). Slots that are dead in every row are then
removed with `DynamicCache.crop`, so with batch = 1 the rollback is a plain crop and no
masked slots ever remain.
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
class SpeculativeMixedSamples(MixedSamples):
    """`MixedSamples` plus the speculative sampler's draft statistics.

    A draft counts as verified when it reached the acceptance test; drafts after an accepted
    EOS, after a rejection, or past max_new_tokens are never tested and are not counted.
    """

    verified_drafts: torch.Tensor  # [batch] long
    accepted_drafts: torch.Tensor  # [batch] long
    rounds: int  # draft-verify rounds run (expert forward passes after the prompt)

    @property
    def acceptance_rate(self) -> float:
        """Accepted / verified drafts over the whole batch (1.0 when nothing was verified)."""
        verified = int(self.verified_drafts.sum())
        return float(self.accepted_drafts.sum()) / verified if verified else 1.0


@dataclass
class _DecodeState:
    """KV caches of both models plus the per-row bookkeeping that makes them shareable.

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
            f"prompt rows {rows} end in padding; the samplers need LEFT-padded prompts "
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
        if not cache.is_croppable or any(
            type(layer).__name__ != "DynamicLayer" for layer in cache.layers
        ):
            # Sliding-window / recurrent layers cannot be rolled back by masking slots.
            kinds = sorted({type(layer).__name__ for layer in cache.layers})
            raise ValueError(
                f"{name} model needs a full-attention DynamicCache for rollback; got layers {kinds}"
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


def _draft(
    policy, state: _DecodeState, num_drafts: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Policy samples `num_drafts` tokens per row; returns (drafts [B, K], policy logits [B, K, V]).

    The policy is fed the pending token and the first K-1 drafts (the last draft's successor
    distribution is never needed: no bonus token), so its cache grows by exactly K slots.
    """
    batch = state.pending_token.shape[0]
    ones = torch.ones((batch, 1), dtype=torch.long, device=state.pending_token.device)
    fed = state.pending_token
    mask = state.attention_mask
    drafts, logits = [], []
    for k in range(num_drafts):
        mask = torch.cat([mask, ones], dim=1)
        step_logits = _forward(
            policy,
            state.policy_cache,
            fed[:, None],
            mask,
            (state.next_position + k)[:, None],
        )[:, -1]
        fed = torch.multinomial(
            torch.softmax(step_logits, dim=-1), 1, generator=generator
        )
        fed = fed.squeeze(1)
        drafts.append(fed)
        logits.append(step_logits)
    return torch.stack(drafts, dim=1), torch.stack(logits, dim=1)


def _residual_sample(
    mix_log_probs: torch.Tensor,
    policy_log_probs: torch.Tensor,
    generator: torch.Generator,
) -> torch.Tensor:
    """Sample from normalize(max(0, pi_mix - pi_theta)) per row ([rows, V] -> [rows]).

    A row with no positive residual mass (pi_mix == pi_theta up to rounding, e.g. w = 0) can
    only be rejected through float rounding of a ratio ~1; it falls back to pi_mix itself.
    """
    residual = (mix_log_probs.exp() - policy_log_probs.exp()).clamp(min=0.0)
    no_mass = residual.sum(dim=-1, keepdim=True) <= 1e-12
    residual = torch.where(no_mass, mix_log_probs.exp(), residual)
    return torch.multinomial(residual, 1, generator=generator).squeeze(1)


@torch.inference_mode()
def speculative_mixed_sample(
    policy,
    expert,
    prompt_ids: torch.Tensor,
    max_new_tokens: int,
    entropy_threshold: float,
    generator: torch.Generator,
    eos_token_id: int | None = None,
    num_draft_tokens: int = 4,
    attention_mask: torch.Tensor | None = None,
    pad_token_id: int | None = None,
) -> SpeculativeMixedSamples:
    """Sample from pi_mix with the policy as draft model and pi_mix as target (exact).

    Same stopping and padding rules as `naive_mixed_sample`.
    """
    prompt_mask = _validate_inputs(
        policy, expert, prompt_ids, max_new_tokens, entropy_threshold, attention_mask
    )
    if num_draft_tokens < 1:
        raise ValueError(f"num_draft_tokens must be >= 1, got {num_draft_tokens}")
    pad_token_id = _resolve_pad(eos_token_id, pad_token_id)
    batch, device = prompt_ids.shape[0], prompt_ids.device
    state = _prefill(policy, expert, prompt_ids.long(), prompt_mask)
    token_ids, weights, log_probs, lengths = _empty_outputs(
        batch, max_new_tokens, pad_token_id, device
    )
    verified = torch.zeros(batch, dtype=torch.long, device=device)
    accepted = torch.zeros(batch, dtype=torch.long, device=device)
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    rows = torch.arange(batch, device=device)
    rounds = 0
    while not bool(finished.all()):
        rounds += 1
        remaining = max_new_tokens - lengths  # > 0 for every unfinished row
        num_drafts = min(num_draft_tokens, int(remaining[~finished].max()))
        cache_len_before = state.attention_mask.shape[1]

        drafts, policy_logits = _draft(policy, state, num_drafts, generator)
        # The expert scores all K draft positions in one pass over [pending, d_0 .. d_{K-2}].
        expert_fed = torch.cat([state.pending_token[:, None], drafts[:, :-1]], dim=1)
        ones = torch.ones((batch, num_drafts), dtype=torch.long, device=device)
        round_mask = torch.cat([state.attention_mask, ones], dim=1)
        expert_positions = state.next_position[:, None] + torch.arange(
            num_drafts, device=device
        )
        expert_logits = _forward(
            expert, state.expert_cache, expert_fed, round_mask, expert_positions
        )
        mix_log_probs, weight = mixed_policy_log_probs(
            policy_logits, expert_logits, entropy_threshold
        )
        policy_log_probs = torch.log_softmax(policy_logits, dim=-1)

        # Walk the K positions left to right; `deciding` rows are still accepting this round.
        deciding = ~finished
        committed = torch.zeros(batch, dtype=torch.long, device=device)
        last_token = state.pending_token.clone()
        for k in range(num_drafts):
            deciding &= k < remaining
            if not bool(deciding.any()):
                break
            draft = drafts[:, k]
            log_ratio = (
                mix_log_probs[:, k].gather(1, draft[:, None])
                - policy_log_probs[:, k].gather(1, draft[:, None])
            ).squeeze(1)
            uniform = torch.rand(batch, generator=generator, device=device)
            accept = deciding & (uniform < log_ratio.exp())
            reject = deciding & ~accept
            token = draft.clone()
            if bool(reject.any()):
                token[reject] = _residual_sample(
                    mix_log_probs[reject, k], policy_log_probs[reject, k], generator
                )
            column = lengths.clamp(max=max_new_tokens - 1)
            token_ids[rows[deciding], column[deciding]] = token[deciding]
            weights[rows[deciding], column[deciding]] = weight[deciding, k]
            token_log_probs = mix_log_probs[:, k].gather(1, token[:, None]).squeeze(1)
            log_probs[rows[deciding], column[deciding]] = token_log_probs[deciding]
            lengths += deciding.long()
            committed += deciding.long()
            verified += deciding.long()
            accepted += accept.long()
            last_token = torch.where(deciding, token, last_token)
            if eos_token_id is not None:
                finished |= deciding & (token == eos_token_id)
            deciding &= accept & ~finished
        finished |= lengths >= max_new_tokens

        # Row b committed c_b tokens; its caches must now hold everything but the last, i.e.
        # the first c_b of the K new slots (old pending token + accepted drafts before it).
        slot = torch.arange(num_drafts, device=device)[None, :]
        new_slots_valid = (slot < committed[:, None]) & ~finished[:, None]
        state.attention_mask = torch.cat(
            [state.attention_mask, new_slots_valid.long()], dim=1
        )
        state.next_position = state.next_position + committed
        state.pending_token = torch.where(finished, pad_token_id, last_token)
        _crop_dead_tail(state, cache_len_before)
    return SpeculativeMixedSamples(
        token_ids=token_ids,
        lengths=lengths,
        mixture_weights=weights,
        log_probs=log_probs,
        verified_drafts=verified,
        accepted_drafts=accepted,
        rounds=rounds,
    )


def _crop_dead_tail(state: _DecodeState, keep_at_least: int) -> None:
    """Drop trailing cache slots that no row uses (rejected drafts) from both caches."""
    alive_columns = state.attention_mask[:, keep_at_least:].any(dim=0)
    alive = torch.nonzero(alive_columns).flatten()
    new_len = keep_at_least + (int(alive[-1]) + 1 if alive.numel() else 0)
    tokens_to_remove = state.attention_mask.shape[1] - new_len
    if tokens_to_remove > 0:
        # transformers >= 5.x: a negative argument removes that many tokens from the end.
        state.policy_cache.crop(-tokens_to_remove)
        state.expert_cache.crop(-tokens_to_remove)
        state.attention_mask = state.attention_mask[:, :new_len]
