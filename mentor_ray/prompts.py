"""Chat prompts for math reasoning (MENTOR.md section 8: think in <think>, answer in \\boxed{})."""

from __future__ import annotations

from typing import Any

DEFAULT_SYSTEM_PROMPT = (
    "You are a careful mathematician. Think the problem through step by step inside "
    "<think> </think> tags. After </think>, state the final answer and put it inside "
    "\\boxed{}, for example \\boxed{42}."
)


def build_chat_prompt(
    tokenizer: Any, problem: str, system_prompt: str | None = DEFAULT_SYSTEM_PROMPT
) -> str:
    """The generation prompt text for `problem`, rendered with the tokenizer's chat template.

    `system_prompt=None` sends the problem as the only (user) message, for models whose
    template has no system role.
    """
    if not isinstance(problem, str) or not problem.strip():
        raise ValueError(f"build_chat_prompt: problem must be a non-empty string, got {problem!r:.80}")
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            f"build_chat_prompt: tokenizer {type(tokenizer).__name__} "
            f"({getattr(tokenizer, 'name_or_path', '') or 'unnamed'}) has no chat_template; "
            "use an instruct/chat model's tokenizer or set tokenizer.chat_template"
        )
    messages = []
    if system_prompt is not None:
        messages.append({"role": "system", "content": system_prompt})
    messages.append({"role": "user", "content": problem})
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
