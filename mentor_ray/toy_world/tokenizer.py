"""A character-level tokenizer for the toy world, saved as a Hugging Face tokenizer folder.

Every printable ASCII letter, digit and the punctuation the task and system prompt use is one
token; the response markers ``<think>``, ``</think>`` and ``\\boxed{`` are one token each (they
are ordinary, non-special tokens, so decoding with ``skip_special_tokens=True``, which vLLM
does, keeps them in the text the reward reads). Chat roles and bos/eos/pad are special tokens.

The chat template renders ``<|bos|>`` then ``<|system|>...<|end|>`` (optional),
``<|user|>...<|end|>``, assistant turns ``<|assistant|>...<|end|>``, and with
``add_generation_prompt`` a trailing ``<|assistant|>``. ``<|end|>`` is the eos token, so a
model trained on ``response + <|end|>`` stops by itself. The tokenizer adds no tokens of its
own when encoding (no post-processor), so encoding a rendered chat gives the same ids with
``add_special_tokens`` True or False (vLLM and HF differ in which one they use).
"""

from __future__ import annotations

import string
from pathlib import Path

from tokenizers import AddedToken
from transformers import PreTrainedTokenizerFast, Qwen2Tokenizer
from transformers.convert_slow_tokenizer import bytes_to_unicode

BOS_TOKEN = "<|bos|>"
EOS_TOKEN = "<|end|>"
PAD_TOKEN = "<|pad|>"
UNK_TOKEN = "<|unk|>"
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>")
SPECIAL_TOKENS = (PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, UNK_TOKEN, *ROLE_TOKENS)
MARKER_TOKENS = ("<think>", "</think>", "\\boxed{")
# Letters and digits, plus the punctuation of task text, system prompts and LaTeX-ish answers.
CHARACTERS = tuple(string.ascii_letters + string.digits + " +-*/=;:,.?!()[]{}<>\\^_'\"|\n")

# Short on purpose: it is part of every prompt, and every prompt token costs CPU time in RL.
TOY_SYSTEM_PROMPT = "Reason in <think></think>, answer in \\boxed{}."

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}<|system|>{{ message['content'] }}<|end|>"
    "{% elif message['role'] == 'user' %}<|user|>{{ message['content'] }}<|end|>"
    "{% elif message['role'] == 'assistant' %}<|assistant|>{{ message['content'] }}<|end|>"
    "{% else %}{{ raise_exception('unknown chat role: ' ~ message['role']) }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def _byte_level_symbol(character: str) -> str:
    """The symbol a byte-level BPE uses for a one-byte character (space is "Ġ", newline "Ċ")."""
    return bytes_to_unicode()[ord(character)]


def build_toy_tokenizer(word_tokens: tuple[str, ...] = ()) -> PreTrainedTokenizerFast:
    """The tokenizer in memory (ids: specials first, then markers, then characters).

    It is a ``Qwen2Tokenizer`` (byte-level BPE) with an empty merge list, which makes it
    character-level. Why that class: transformers 5 loads the tokenizer of any folder whose
    config.json says ``model_type: qwen2`` as ``Qwen2Tokenizer`` whatever tokenizer_config.json
    names, rebuilding the pipeline from the vocabulary (vLLM does the same). A tokenizer of any
    other shape would silently change there (a generic character tokenizer lost its spaces).

    word_tokens: whole words made one token each, after every other id (the habits world's
    `` check``, `` okay``, `` wait``, leading space included): in a real model's vocabulary these
    words are single tokens, and a word spelled out character by character is a habit that
    MENTOR's token-level mixture can start but not finish (the policy, sure of itself after an
    unfamiliar first character, takes the rest over: benchmarks/RESULTS.md).
    """
    vocab: dict[str, int] = {}
    for token in (*SPECIAL_TOKENS, *MARKER_TOKENS):
        vocab.setdefault(token, len(vocab))
    for character in CHARACTERS:
        vocab.setdefault(_byte_level_symbol(character), len(vocab))
    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=[],
        unk_token=UNK_TOKEN,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        additional_special_tokens=list(ROLE_TOKENS),
        model_max_length=512,
        clean_up_tokenization_spaces=False,
    )
    tokenizer.add_special_tokens({"additional_special_tokens": list(ROLE_TOKENS)})
    # Ordinary (non-special) added tokens: kept when decoding with skip_special_tokens.
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in MARKER_TOKENS])
    if word_tokens:
        tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in word_tokens])
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def save_toy_tokenizer(directory: str | Path, word_tokens: tuple[str, ...] = ()) -> PreTrainedTokenizerFast:
    """Writes the tokenizer folder (tokenizer.json, tokenizer_config.json, chat template)."""
    tokenizer = build_toy_tokenizer(tuple(word_tokens))
    tokenizer.save_pretrained(str(directory))
    return tokenizer


def chat_prompt(tokenizer: PreTrainedTokenizerFast, problem: str, system_prompt: str | None = TOY_SYSTEM_PROMPT) -> str:
    """The prompt text a problem is asked with, identical at SFT, RL and eval time."""
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    messages.append({"role": "user", "content": problem})
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
