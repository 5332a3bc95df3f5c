"""Supervised fine-tuning of the toy models: a plain torch loop, tuned for 2 CPU cores.

Every training sequence is ``shared_prefix + problem-specific suffix`` (the chat header, the
system prompt and ``Compute `` are the same for all problems: ~60% of the tokens). The prefix
is run once per step with batch size 1 and its key/value cache is broadcast to the batch, so
each step pays for ~35 tokens per sample instead of ~80. Gradients flow through the shared
prefix exactly as if it had been repeated, so the result is the same objective.

Loss: mean cross-entropy over response tokens (the solution and the closing eos) only.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase

from mentor_ray.toy_world.tokenizer import chat_prompt


@dataclass(frozen=True)
class SFTConfig:
    steps: int
    batch_size: int = 64
    learning_rate: float = 3e-3
    weight_decay: float = 0.01
    warmup_steps: int = 30
    min_learning_rate_ratio: float = 0.05
    grad_clip: float = 1.0


@dataclass(frozen=True)
class EncodedExamples:
    """Token ids split into the prefix every example shares and each example's suffix."""

    prefix_ids: list[int]
    suffix_ids: list[list[int]]
    # Index into the suffix where the response (the supervised part) starts.
    response_starts: list[int]


def encode_examples(tokenizer: PreTrainedTokenizerBase, problems: Sequence[dict]) -> EncodedExamples:
    """Tokenizes chat prompt + solution + eos and finds the longest prefix they all share."""
    if not problems:
        raise ValueError("encode_examples needs at least one problem")
    full_ids, prompt_lengths = [], []
    for problem in problems:
        prompt_ids = tokenizer(chat_prompt(tokenizer, problem["problem"]), add_special_tokens=False)["input_ids"]
        response_ids = tokenizer(problem["solution"], add_special_tokens=False)["input_ids"]
        full_ids.append(prompt_ids + response_ids + [tokenizer.eos_token_id])
        prompt_lengths.append(len(prompt_ids))
    shared = min(prompt_lengths)
    first = full_ids[0]
    for ids in full_ids[1:]:
        shared = next((i for i in range(shared) if ids[i] != first[i]), shared)
    # Keep at least one prompt token in the suffix: the last prompt position predicts the
    # first response token, and it must sit in the suffix forward pass to be supervised.
    shared = min(shared, min(prompt_lengths) - 1)
    return EncodedExamples(
        prefix_ids=first[:shared],
        suffix_ids=[ids[shared:] for ids in full_ids],
        response_starts=[length - shared for length in prompt_lengths],
    )


def _batch_tensors(examples: EncodedExamples, indices: Sequence[int], pad_id: int):
    suffixes = [examples.suffix_ids[i] for i in indices]
    width = max(len(s) for s in suffixes)
    input_ids = torch.full((len(suffixes), width), pad_id, dtype=torch.long)
    labels = torch.full((len(suffixes), width), -100, dtype=torch.long)
    mask = torch.zeros((len(suffixes), width), dtype=torch.long)
    for row, (i, suffix) in enumerate(zip(indices, suffixes)):
        input_ids[row, : len(suffix)] = torch.tensor(suffix)
        mask[row, : len(suffix)] = 1
        start = examples.response_starts[i]
        # labels[t] is the token predicted at position t (already shifted).
        labels[row, start - 1 : len(suffix) - 1] = torch.tensor(suffix[start:])
    return input_ids, labels, mask


def response_loss(model: PreTrainedModel, prefix_ids: list[int], input_ids, labels, mask) -> torch.Tensor:
    """Mean response-token cross-entropy, with the shared prefix run once and broadcast."""
    batch = input_ids.shape[0]
    prefix = torch.tensor([prefix_ids], dtype=torch.long)
    cache = DynamicCache(config=model.config)
    model(input_ids=prefix, past_key_values=cache, use_cache=True)
    cache.batch_repeat_interleave(batch)
    full_mask = torch.cat([torch.ones((batch, len(prefix_ids)), dtype=mask.dtype), mask], dim=1)
    logits = model(input_ids=input_ids, attention_mask=full_mask, past_key_values=cache, use_cache=True).logits
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100)


def _learning_rate(step: int, config: SFTConfig) -> float:
    if step < config.warmup_steps:
        return config.learning_rate * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    floor = config.min_learning_rate_ratio
    return config.learning_rate * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


def train_sft(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    problems: Sequence[dict],
    config: SFTConfig,
    seed: int,
    log: Callable[[str], None] = print,
    name: str = "model",
    every_100_steps: Callable[[int], None] | None = None,
) -> list[float]:
    """Trains ``model`` in place on ``problems`` (dicts with problem/solution); returns losses.

    Batches are drawn without replacement from a seeded shuffle, reshuffled each epoch.
    """
    examples = encode_examples(tokenizer, problems)
    order_rng = random.Random(seed)
    order: list[int] = []
    decay, no_decay = [], []
    for param_name, param in model.named_parameters():
        (no_decay if param.ndim < 2 or "norm" in param_name else decay).append(param)
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.learning_rate,
        betas=(0.9, 0.98),
    )
    model.train()
    losses: list[float] = []
    started = time.perf_counter()
    for step in range(config.steps):
        if len(order) < config.batch_size:
            fresh = list(range(len(problems)))
            order_rng.shuffle(fresh)
            order.extend(fresh)
        indices, order = order[: config.batch_size], order[config.batch_size :]
        for group in optimizer.param_groups:
            group["lr"] = _learning_rate(step, config)
        loss = response_loss(model, examples.prefix_ids, *_batch_tensors(examples, indices, tokenizer.pad_token_id))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        losses.append(loss.item())
        if (step + 1) % 100 == 0 or step + 1 == config.steps:
            recent = losses[-100:]
            log(
                f"[toy-world] sft {name} step {step + 1}/{config.steps} "
                f"loss {sum(recent) / len(recent):.4f} ({time.perf_counter() - started:.0f}s)"
            )
            if every_100_steps is not None:
                every_100_steps(step + 1)
                model.train()
    model.eval()
    return losses
