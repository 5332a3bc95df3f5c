"""Reading a response: its last boxed answer and its format. Pure string scans, bounded in
length, no math-verify: safe to call on untrusted text anywhere."""

from __future__ import annotations

import re
from collections.abc import Callable

# Only the tail of a response can hold its final answer; scanning a bounded window keeps every
# string operation here O(window) whatever the model emits.
BOXED_SCAN_WINDOW_CHARS = 10_000
# Deeper brace nesting than this is not a real answer, and deeply nested LaTeX can exhaust
# recursion inside the LaTeX -> sympy parser.
MAX_BOXED_NESTING = 64

_BOXED_COMMANDS = ("\\boxed", "\\fbox")


def _read_braced_group(text: str, open_index: int, max_nesting: int) -> str | None:
    """Content of the `{...}` group whose `{` is at `open_index`, or None if unclosed/too deep.

    A backslash escapes the next character, so `\\{` and `\\}` (literal braces in LaTeX sets)
    do not count as grouping.
    """
    depth = 0
    index = open_index
    length = len(text)
    while index < length:
        char = text[index]
        if char == "\\":
            index += 2
            continue
        if char == "{":
            depth += 1
            if depth > max_nesting:
                return None
        elif char == "}":
            depth -= 1
            if depth == 0:
                return text[open_index + 1 : index]
        index += 1
    return None


def _last_boxed_command(text: str) -> tuple[int, int] | None:
    """(start, end) of the last `\\boxed`/`\\fbox` command name in text, or None."""
    best: tuple[int, int] | None = None
    for command in _BOXED_COMMANDS:
        search_end = len(text)
        while True:
            start = text.rfind(command, 0, search_end)
            if start < 0:
                break
            end = start + len(command)
            # `\boxedsomething` is another macro, not \boxed.
            if end < len(text) and text[end].isalpha():
                search_end = start
                continue
            if best is None or start > best[0]:
                best = (start, end)
            break
    return best


def extract_last_boxed(
    text: str,
    scan_window_chars: int = BOXED_SCAN_WINDOW_CHARS,
    max_nesting: int = MAX_BOXED_NESTING,
) -> str | None:
    """Content of the LAST `\\boxed{...}` (or `\\fbox{...}`, or `\\boxed 5`) in text.

    Looks only at the last `scan_window_chars` characters. Returns None when there is no boxed
    answer, when the last one is unclosed, or when its braces nest deeper than `max_nesting`.
    An unclosed last box does not fall back to an earlier one: the model's final word is that
    box, and grading an earlier draft answer instead would reward the wrong thing.
    """
    if not isinstance(text, str):
        raise TypeError(f"extract_last_boxed expects str, got {type(text).__name__}")
    window = text[-scan_window_chars:] if scan_window_chars > 0 else text
    found = _last_boxed_command(window)
    if found is None:
        return None
    _, after_command = found
    index = after_command
    while index < len(window) and window[index] in " \t":
        index += 1
    if index >= len(window):
        return None
    if window[index] == "{":
        return _read_braced_group(window, index, max_nesting)
    if after_command < index:
        # `\boxed 5` form: the argument is the next whitespace/`$`-delimited token.
        token_end = index
        while token_end < len(window) and window[token_end] not in " \t\n$":
            token_end += 1
        return window[index:token_end]
    return None


def format_reward(response: str) -> float:
    """1.0 iff response is `<think> reasoning </think> ... \\boxed{answer}`, else 0.0.

    The think block comes first (only whitespace before it), is non-empty, appears exactly
    once, and a non-empty boxed answer follows `</think>`. Linear time: str.find/count only.
    """
    if not isinstance(response, str):
        raise TypeError(f"format_reward expects str, got {type(response).__name__}")
    body = response.lstrip()
    if not body.startswith("<think>"):
        return 0.0
    if response.count("<think>") != 1 or response.count("</think>") != 1:
        return 0.0
    close_index = body.find("</think>")
    reasoning = body[len("<think>") : close_index]
    if not reasoning.strip():
        return 0.0
    after_think = body[close_index + len("</think>") :]
    answer = extract_last_boxed(after_think)
    return 1.0 if answer is not None and answer.strip() else 0.0


_SPACE_AROUND_TAG_CHARS = re.compile(r"\s*([<>/])\s*")


def official_format_reward(response: str) -> float:
    r"""The official code's format rule (MENTOR.md section 5): strip whitespace around `<`, `>`
    and `/`, then `<think>.*</think>.*\boxed\{.*\}.*` must match the whole text (dot matches
    newlines). Repeated or empty think blocks and an empty box pass it. Checked with ordered
    substring searches, which decide the same match in linear time (the regex could backtrack)."""
    if not isinstance(response, str):
        raise TypeError(f"official_format_reward expects str, got {type(response).__name__}")
    text = _SPACE_AROUND_TAG_CHARS.sub(r"\1", response)
    if not text.startswith("<think>"):
        return 0.0
    close = text.find("</think>", len("<think>"))
    if close < 0:
        return 0.0
    box = text.find("\\boxed{", close + len("</think>"))
    if box < 0:
        return 0.0
    return 1.0 if text.find("}", box + len("\\boxed{")) >= 0 else 0.0


# Format rules by name (config: reward.format_rule).
FORMAT_RULES: dict[str, Callable[[str], float]] = {"strict": format_reward, "official": official_format_reward}


