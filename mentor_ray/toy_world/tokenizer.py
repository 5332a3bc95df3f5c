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

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from tokenizers import AddedToken
from transformers import PreTrainedTokenizerFast

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


def build_toy_tokenizer() -> PreTrainedTokenizerFast:
    """The tokenizer in memory (ids: specials first, then markers, then characters)."""
    vocab: dict[str, int] = {}
    for token in (*SPECIAL_TOKENS, *MARKER_TOKENS, *CHARACTERS):
        vocab.setdefault(token, len(vocab))
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK_TOKEN))
    # One piece per character; added tokens (specials, markers) are split out before this.
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    core.decoder = decoders.Fuse()
    core.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    core.add_tokens([AddedToken(t, special=False, normalized=False) for t in MARKER_TOKENS])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        unk_token=UNK_TOKEN,
        additional_special_tokens=list(ROLE_TOKENS),
        model_max_length=512,
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def save_toy_tokenizer(directory: str | Path) -> PreTrainedTokenizerFast:
    """Writes the tokenizer folder (tokenizer.json, tokenizer_config.json, chat template)."""
    tokenizer = build_toy_tokenizer()
    tokenizer.save_pretrained(str(directory))
    return tokenizer


def chat_prompt(tokenizer: PreTrainedTokenizerFast, problem: str, system_prompt: str | None = TOY_SYSTEM_PROMPT) -> str:
    """The prompt text a problem is asked with, identical at SFT, RL and eval time."""
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    messages.append({"role": "user", "content": problem})
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
