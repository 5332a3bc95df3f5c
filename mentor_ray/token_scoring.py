"""Log-probs and entropies of response tokens with memory bounded by a chunk size.

The learner needs two numbers per response token: log pi(token) and the full-vocabulary
entropy H of pi there. Taking them from the model's logits costs a [B, L, V] fp32 tensor (and
as much again for its gradient): about 45 GB for one micro-batch of the 7B recipe (8 x 9,216
tokens x 152,064 ids). `TokenScorer` instead runs the decoder to its final hidden states,
keeps only the response positions, and applies the output layer to `chunk_tokens` positions at
a time. Each chunk runs under activation checkpointing, so autograd keeps only the chunk's
hidden states and recomputes its [chunk, V] logits in the backward pass: peak memory for the
vocabulary part is bounded by the chunk size, whatever the sequence length.

One temperature (the convention the engines follow too): the sampling distribution at
temperature T is softmax(z / T), and every number here is of that distribution: log-probs for
the PPO ratio and entropies for MENTOR's w and tau. The official code also divides the
learner's logits by the rollout temperature.

Pure torch and transformers: no DeepSpeed, no Ray (scripts/gpu_check.py runs it bare on CUDA).
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint


def score_chunk(
    hidden: torch.Tensor,
    targets: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    temperature: float,
    entropy_requires_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """log softmax(z / T)[target] and the entropy of softmax(z / T), z = hidden @ weight.T + bias.

    hidden [N, D], targets [N]; both results [N], fp32. H = logsumexp(z) - sum_v p_v z_v, which
    for finite logits equals -sum p log p without a second [N, V] log-softmax.
    """
    logits = F.linear(hidden, weight, bias).float()
    if temperature != 1.0:
        logits = logits / temperature
    normalizer = torch.logsumexp(logits, dim=-1)
    token_log_probs = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - normalizer
    with nullcontext() if entropy_requires_grad else torch.no_grad():
        entropy = normalizer - (torch.softmax(logits, dim=-1) * logits).sum(dim=-1)
    return token_log_probs, entropy


def score_positions(
    hidden: torch.Tensor,
    targets: torch.Tensor,
    output_layer: nn.Linear,
    temperature: float,
    chunk_tokens: int | None,
    entropy_requires_grad: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`score_chunk` over [N, D] hidden states, `chunk_tokens` rows at a time (None: one chunk).

    With gradients enabled each chunk is checkpointed: its logits are recomputed in backward
    instead of kept, so the values and gradients are those of the unchunked computation.
    """
    if chunk_tokens is not None and chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be >= 1 or None, got {chunk_tokens}")
    count = hidden.shape[0]
    size = count if chunk_tokens is None else chunk_tokens
    weight, bias = output_layer.weight, output_layer.bias
    log_prob_parts, entropy_parts = [], []
    for start in range(0, count, max(size, 1)):
        args = (hidden[start : start + size], targets[start : start + size], weight, bias, temperature, entropy_requires_grad)
        if torch.is_grad_enabled():
            token_log_probs, entropy = checkpoint(score_chunk, *args, use_reentrant=False)
        else:
            token_log_probs, entropy = score_chunk(*args)
        log_prob_parts.append(token_log_probs)
        entropy_parts.append(entropy)
    if not log_prob_parts:
        empty = hidden.new_zeros(0, dtype=torch.float32)
        return empty, empty
    return torch.cat(log_prob_parts), torch.cat(entropy_parts)


class TokenScorer(nn.Module):
    """A Hugging Face causal LM whose forward returns what the policy loss needs.

    `forward(input_ids, attention_mask, score_mask)` gives log pi(next token) and H at each
    position, both [B, L-1] fp32 and zero where `score_mask` is False: position t scores token
    t+1, the layout of `mentor_ray.learner.batching.collate`'s `response_mask`. Only scored positions
    reach the output layer, so prompts cost nothing there.

    Works for models whose logits are `get_output_embeddings()(decoder hidden states)`, a plain
    linear layer (Qwen2, Llama, Mistral, SmolLM); `check_matches_model_logits` verifies it.
    """

    def __init__(self, causal_lm: nn.Module, temperature: float = 1.0, chunk_tokens: int | None = 1024):
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        output_layer = causal_lm.get_output_embeddings()
        if not isinstance(output_layer, nn.Linear):
            raise TypeError(
                f"{type(causal_lm).__name__}'s output layer is {type(output_layer).__name__}, not a linear layer; "
                "TokenScorer applies it chunk by chunk and supports plain linear heads only"
            )
        self.causal_lm = causal_lm
        self.temperature = float(temperature)
        self.chunk_tokens = chunk_tokens

    @property
    def output_layer(self) -> nn.Linear:
        return self.causal_lm.get_output_embeddings()

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        score_mask: torch.Tensor,
        entropy_requires_grad: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        decoder = self.causal_lm.get_decoder()
        hidden = decoder(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
        score_mask = score_mask.to(device=hidden.device, dtype=torch.bool)
        if not bool(score_mask.any()):
            # Score one position anyway: a pass must reach every parameter on every rank, or
            # ZeRO's gradient reduction waits for a rank that has nothing to send. The loss's
            # response mask gives this position zero weight.
            score_mask = score_mask.clone()
            score_mask[0, 0] = True
        selected = hidden[:, :-1][score_mask]
        targets = input_ids[:, 1:].to(hidden.device)[score_mask]
        token_log_probs, entropy = score_positions(
            selected, targets, self.output_layer, self.temperature, self.chunk_tokens, entropy_requires_grad
        )
        shape = score_mask.shape
        log_prob_grid = torch.zeros(shape, dtype=torch.float32, device=hidden.device)
        entropy_grid = torch.zeros(shape, dtype=torch.float32, device=hidden.device)
        log_prob_grid = log_prob_grid.masked_scatter(score_mask, token_log_probs)
        entropy_grid = entropy_grid.masked_scatter(score_mask, entropy)
        return log_prob_grid, entropy_grid

    @torch.no_grad()
    def check_matches_model_logits(self, input_ids: torch.Tensor, tolerance: float = 1e-2) -> None:
        """Raise unless this forward reproduces log_softmax(model logits / T) on `input_ids`
        (catches heads with logit scaling or soft-capping, which this class would silently drop)."""
        attention_mask = torch.ones_like(input_ids)
        logits = self.causal_lm(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits[:, :-1].float()
        expected = torch.log_softmax(logits / self.temperature, dim=-1).gather(-1, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)
        mask = torch.ones(expected.shape, dtype=torch.bool)
        token_log_probs, _ = self(input_ids, attention_mask, mask)
        gap = float((token_log_probs - expected).abs().max())
        if not gap <= tolerance:
            raise ValueError(
                f"{type(self.causal_lm).__name__}: log-probs from decoder states and the output layer differ from "
                f"the model's own logits by {gap:.2e}; the model transforms its logits (scaling, soft-capping) "
                "in a way TokenScorer does not support"
            )
