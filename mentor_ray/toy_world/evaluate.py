"""Fast batched generation with HF ``generate`` and a local exact-match grader for the toy task.

The project's real grader (math-verify, format checks, time bounds) is mentor_ray/rewards/;
this one only needs to tell whether a toy model learned its task, so it is a plain string
match of the last ``\\boxed{...}`` against the integer answer.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from mentor_ray.habits import habit_rates
from mentor_ray.toy_world.task import (
    ONE_DIGIT_COMMUTATIVE_STEP,
    PROBLEM_PREFIX,
    evaluate_stepwise,
    parse_problem,
    split_steps,
    swapped,
)
from mentor_ray.toy_world.tokenizer import chat_prompt

_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")
_THINK = re.compile(r"<think>(.*?)</think>", re.DOTALL)
_OPERATORS = re.compile(r"[+\-*]")
_FORMAT = re.compile(r"^\s*<think>.+?</think>.*\\boxed\{[^{}]*\}\s*$", re.DOTALL)


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` in ``text`` (no nested braces), or None."""
    matches = _BOXED.findall(text)
    return matches[-1].strip() if matches else None


def is_correct(response: str, answer: str) -> bool:
    return last_boxed(response) == str(answer).strip()


def _written_steps(response: str) -> list[str]:
    working = _THINK.search(response)
    return split_steps(working.group(1)) if working and working.group(1) else []


def stops_early(response: str, problem: str) -> bool:
    """True when the working has fewer ``a?b=c`` steps than the problem has operations.

    The toy policy's bad habit (boxing an answer before the working is done); a response with
    no ``<think>`` block at all counts as stopping early too.
    """
    return len(_written_steps(response)) < len(_OPERATORS.findall(problem.removeprefix(PROBLEM_PREFIX)))


def early_stop_rate(responses: Sequence[str], problems: Sequence[str]) -> float:
    return sum(stops_early(r, p) for r, p in zip(responses, problems, strict=True)) / len(problems)


def swapped_steps(response: str, problem: str) -> tuple[int, int]:
    """(steps written ``b+a`` / ``b*a``, steps that could be) over the one-digit ``+`` / ``*``
    steps of the problem's intended working that the response reproduces in either order."""
    intended = evaluate_stepwise(*parse_problem(problem))
    swapped_count = eligible = 0
    for step, wrote in zip(intended.steps if intended else (), _written_steps(response)):
        operation = ONE_DIGIT_COMMUTATIVE_STEP.fullmatch(step)
        if operation and operation.group(1) != operation.group(3):
            eligible += 1
            swapped_count += wrote == swapped(operation)
    return swapped_count, eligible


def is_well_formatted(response: str) -> bool:
    """``<think>...</think> ... \\boxed{...}`` with nothing after the box."""
    return _FORMAT.match(response) is not None


@torch.no_grad()
def generate_responses(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    problems: Sequence[str],
    temperature: float = 0.0,
    max_new_tokens: int = 96,
    batch_size: int = 256,
    seed: int = 0,
) -> list[str]:
    """Responses (decoded, special tokens dropped) for each problem text; temperature 0 = greedy.

    Sampling uses the full distribution (top_k 0, top_p 1): the distribution RL samples from.
    """
    model.eval()
    original_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        responses: list[str] = []
        for start in range(0, len(problems), batch_size):
            prompts = [chat_prompt(tokenizer, p) for p in problems[start : start + batch_size]]
            batch = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
            sampling = (
                {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0}
                if temperature > 0
                else {"do_sample": False}
            )
            output = model.generate(
                **batch,
                max_new_tokens=max_new_tokens,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
                **sampling,
            )
            new_tokens = output[:, batch["input_ids"].shape[1] :]
            responses.extend(tokenizer.batch_decode(new_tokens, skip_special_tokens=True))
        return responses
    finally:
        tokenizer.padding_side = original_side
        torch.random.set_rng_state(generator_state)


@dataclass(frozen=True)
class Scores:
    accuracy: float
    format_rate: float
    count: int


def score_responses(responses: Sequence[str], answers: Sequence[str]) -> Scores:
    if len(responses) != len(answers):
        raise ValueError(f"{len(responses)} responses for {len(answers)} answers")
    if not responses:
        raise ValueError("score_responses needs at least one response")
    correct = sum(is_correct(r, a) for r, a in zip(responses, answers))
    formatted = sum(is_well_formatted(r) for r in responses)
    return Scores(accuracy=correct / len(responses), format_rate=formatted / len(responses), count=len(responses))


@dataclass(frozen=True)
class Habits:
    """How a model solves the toy task when sampled (temperature 1): what RL and guidance change."""

    accuracy: float
    early_stop_rate: float
    swapped_share: float
    responses: int
    # mentor_ray.habits per response: check/verify, and okay/wait filler (the habits world's).
    useful_per_response: float = 0.0
    filler_per_response: float = 0.0


def sampled_habits(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, problems: Sequence[dict], samples_per_problem: int = 4, seed: int = 0
) -> Habits:
    texts = [p["problem"] for p in problems for _ in range(samples_per_problem)]
    answers = [p["answer"] for p in problems for _ in range(samples_per_problem)]
    responses = generate_responses(model, tokenizer, texts, temperature=1.0, seed=seed)
    swap_counts = [swapped_steps(r, t) for r, t in zip(responses, texts)]
    rates = habit_rates(responses)
    return Habits(
        accuracy=score_responses(responses, answers).accuracy,
        early_stop_rate=early_stop_rate(responses, texts),
        swapped_share=sum(s for s, _ in swap_counts) / max(1, sum(e for _, e in swap_counts)),
        responses=len(texts),
        useful_per_response=rates["useful"],
        filler_per_response=rates["filler"],
    )


def evaluate_model(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    problems: Sequence[dict],
    temperature: float,
    seed: int = 0,
) -> Scores:
    responses = generate_responses(model, tokenizer, [p["problem"] for p in problems], temperature=temperature, seed=seed)
    return score_responses(responses, [p["answer"] for p in problems])
