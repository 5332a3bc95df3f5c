"""QuestA's choice of problems: the ones the starting policy seldom solves.

QuestA's authors hint hard problems only: their training file holds the problems their base
model solved at most once in 8 tries, the easier ones removed, not kept plain (the paper's data
section; the official data script, `AReaL/datasets/add_prefix.py`, hints every row of that
already filtered file). Here the run's own starting policy (model.policy_path) samples
algorithm.hint_select_samples responses per training problem at rollout.temperature, the
project's reward grader marks them, and a problem solved more than
algorithm.hint_select_max_correct times is left out of QuestA's training.

The counts are data prepared once, like the expert traces: one JSON file per (policy, training
data, prompt, sampling settings, algorithm.expert_trace_seed), named by a hash of those, beside
the traces (algorithm.expert_traces_dir), and reused by every later run.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mentor_ray import storage
from mentor_ray.config import MentorConfig
from mentor_ray.data.expert_traces import (
    engine_on,
    graded_samples,
    model_fingerprint,
    sampling_fingerprint,
    traces_folder,
)
from mentor_ray.data.run_inputs import RunPaths, load_tokenized_problems

COUNTS_FORMAT = 1


@dataclass(frozen=True)
class PassCounts:
    """How often the starting policy solved each training problem."""

    correct: dict[str, int]  # by problem id
    samples: int  # per problem
    location: str
    reused: bool

    def hard(self, max_correct: int) -> set[str]:
        """The problems solved at most `max_correct` times."""
        return {problem_id for problem_id, count in self.correct.items() if count <= max_correct}


def pass_counts_fingerprint(config: MentorConfig, paths: RunPaths) -> dict[str, Any]:
    return {
        "format": COUNTS_FORMAT,
        "policy": model_fingerprint(config.model.policy_path, paths.policy_dir),
        **sampling_fingerprint(config, paths),
        "samples": config.algorithm.hint_select_samples,
        "seed": config.algorithm.expert_trace_seed,
    }


def counts_location(config: MentorConfig, paths: RunPaths) -> str:
    name = hashlib.sha256(json.dumps(pass_counts_fingerprint(config, paths), sort_keys=True).encode()).hexdigest()[:16]
    return storage.join(traces_folder(config), f"policy-pass-counts-{name}.json")


def policy_pass_counts(config: MentorConfig, paths: RunPaths, say: Callable[[str], None] = print, engine: Any = None) -> PassCounts:
    """The config's counts: read from their file when it exists, else sampled and stored.
    engine: an already started engine on the policy (left open); None starts one here."""
    location = counts_location(config, paths)
    if storage.exists(location):
        try:
            stored = json.loads(storage.read_text(location))
            counts = PassCounts({key: int(value) for key, value in stored["correct"].items()}, int(stored["samples"]), location, True)
            say(f"[data] questa: the starting policy's pass counts reused from {location}")
            return counts
        except (storage.StorageError, ValueError, KeyError, TypeError) as error:
            say(f"[data] questa: {location} cannot be used ({type(error).__name__}: {error}); counting again")
    from transformers import AutoTokenizer

    started = time.perf_counter()
    samples = config.algorithm.hint_select_samples
    tokenizer = AutoTokenizer.from_pretrained(paths.policy_dir)
    problems, _ = load_tokenized_problems(paths.train_path, config, tokenizer, paths.system_prompt, "train", say=lambda _: None)
    say(f"[data] questa: the starting policy samples {samples} responses to each of {len(problems)} problems, to keep the hard ones")
    correct = {problem.problem_id: 0 for problem in problems}
    with engine_on(config, paths.policy_dir, engine) as running:
        for problem, _, part in graded_samples(running, problems, config, samples, config.algorithm.expert_trace_seed, say,
                                               "questa pass counts"):
            correct[problem.problem_id] += int(part.accuracy == 1.0)
    storage.write_text(location, json.dumps({"covers": pass_counts_fingerprint(config, paths), "samples": samples,
                                             "seconds": round(time.perf_counter() - started, 1), "correct": correct}))
    return PassCounts(correct, samples, location, False)
