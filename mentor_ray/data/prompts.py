"""Chat prompts for math reasoning (MENTOR.md section 8: think in <think>, answer in \\boxed{})."""

from __future__ import annotations

from typing import Any

# The paper's system prompt (Appendix B; the official code's verl/utils/dataset.py, one line):
# the default for real data, and what the paper recipes use.
PAPER_SYSTEM_PROMPT = (
    "You are a helpful AI Assistant that provides well-reasoned and detailed responses. You FIRST "
    "think about the reasoning process as an internal monologue and then provide the final answer. "
    "The reasoning process MUST BE enclosed within <think> </think> tags. The final answer MUST BE "
    "put in \\boxed{}."
)
# A shorter prompt of this project's own, with an example of the boxed answer.
CAREFUL_SYSTEM_PROMPT = (
    "You are a careful mathematician. Think the problem through step by step inside "
    "<think> </think> tags. After </think>, state the final answer and put it inside "
    "\\boxed{}, for example \\boxed{42}."
)
# Named prompts (config: data.system_prompt_preset).
SYSTEM_PROMPTS = {"paper": PAPER_SYSTEM_PROMPT, "careful": CAREFUL_SYSTEM_PROMPT}
DEFAULT_SYSTEM_PROMPT = PAPER_SYSTEM_PROMPT


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
