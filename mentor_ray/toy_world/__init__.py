"""A small, fully local world for running MENTOR end to end on a CPU in minutes.

A verifiable arithmetic task (``task``), a character-level tokenizer with a chat template
(``tokenizer``), and two tiny Qwen2 models trained by SFT (``build``): an expert that solves
the task in a varied style, and a weaker policy that often boxes an answer one step early. ``build_toy_world()``
returns the cached folders; ``python -m mentor_ray.toy_world`` builds them from the shell.
"""

from mentor_ray.toy_world.build import (
    ModelRecipe,
    ToyWorld,
    ToyWorldRecipe,
    build_toy_world,
)
from mentor_ray.toy_world.task import generate_problems
from mentor_ray.toy_world.tokenizer import (
    TOY_SYSTEM_PROMPT,
    build_toy_tokenizer,
    chat_prompt,
)

__all__ = [
    "TOY_SYSTEM_PROMPT",
    "ModelRecipe",
    "ToyWorld",
    "ToyWorldRecipe",
    "build_toy_tokenizer",
    "build_toy_world",
    "chat_prompt",
    "generate_problems",
]
