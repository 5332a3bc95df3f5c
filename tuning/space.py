"""A sweep file: what to search over whole MENTOR runs, read and checked before any trial starts.

```yaml
name: toy-sweep                       # experiment folder: <storage>/<name>
storage: sweeps                       # a local folder, or a URI: s3://bucket/prefix (any pyarrow filesystem)
base_config: pipelines/recipes/toy_mentor.yaml
overrides: {total_steps: 12}          # dotted keys, applied to every trial
parameters:                           # dotted config keys, each with one distribution
  guidance.entropy_quantile: {uniform: [0.80, 0.99]}
  guidance.tau_floor: {uniform: [0.03, 0.15], times: log_vocab}
  rollout.guidance_ratio: {choice: [0.0, 0.1667, 0.3333, 0.5]}
  guidance.decay_steps: {int: [4, 16]}
points_to_evaluate: [{rollout.guidance_ratio: 0.0}]
search: {num_trials: 8, algorithm: tpe, objectives: [{metric: objective/val_accuracy, mode: max}]}
asha: {metric: objective/running_accuracy, mode: max, grace_period: 4, reduction_factor: 2}
```

Distributions: `uniform`, `loguniform` ([low, high]), `int` ([low, high], both included) and
`choice` (a list). `times: log_vocab` scales a range by ln(vocabulary size) of the policy's
tokenizer: an entropy threshold means something different for a 100-token and a 150k-token
vocabulary (the largest possible entropy is ln V).

`rollout.guidance_ratio` is N2 / (N1 + N2) with N1 + N2 kept at the base config's value:
ratio 0 is the on-policy GRPO baseline.

`algorithm.method` may be a choice (mentor, grpo, luffy, questa): a trial of a method other
than mentor makes no mixed samples (rollout.n_mixed = 0), as `python -m pipelines.train
--method NAME` does.

Every value a parameter can take (a choice's items, a range's ends) and every point to
evaluate is put through the run config's own checks first; a value the config refuses stops
the sweep before any trial, naming the parameter.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mentor_ray.config import (
    ConfigError,
    MentorConfig,
    config_from_dict,
    config_key_problem,
    load_config_tree,
    set_dotted,
)
from mentor_ray.core.methods import METHODS
from mentor_ray.metrics import STEP_METRICS, is_step_metric
from pipelines.plan import check_plan

GUIDANCE_RATIO = "rollout.guidance_ratio"
METHOD = "algorithm.method"
DISTRIBUTIONS = ("uniform", "loguniform", "int", "choice")
SCALES = ("log_vocab",)
ALGORITHMS = ("tpe", "random")


@dataclass(frozen=True)
class Parameter:
    key: str
    kind: str  # one of DISTRIBUTIONS
    values: tuple[Any, ...]  # [low, high] for ranges, the items for a choice
    times: str | None = None  # one of SCALES


@dataclass(frozen=True)
class Objective:
    metric: str
    mode: str  # "max" or "min"


@dataclass(frozen=True)
class AshaSettings:
    metric: str = "objective/running_accuracy"
    mode: str = "max"
    grace_period: int = 4
    reduction_factor: float = 2.0


@dataclass(frozen=True)
class SearchSettings:
    num_trials: int = 8
    algorithm: str = "tpe"
    objectives: tuple[Objective, ...] = (Objective("objective/val_accuracy", "max"),)
    # An upper bound; what each trial needs against what the cluster has may allow fewer.
    max_concurrent_trials: int | None = None
    seed: int = 0


@dataclass
class SweepSpec:
    name: str
    base_config: str | None
    overrides: dict[str, Any]
    parameters: list[Parameter]
    points_to_evaluate: list[dict[str, Any]]
    search: SearchSettings
    asha: AshaSettings | None
    # An absolute local path, or a URI (s3://bucket/prefix, any filesystem pyarrow knows).
    storage: str = "sweeps"
    source: str = "sweep"
    # Filled in by `check_sweep`: ln(vocabulary size) of the policy, for `times: log_vocab`.
    log_vocab: float | None = field(default=None)
    # Filled in by `check_sweep`: the base config file as read on the sweep's driver. A trial
    # builds its config from this, not from the file: it runs in a working folder of its own
    # (Tune's trial folder), on any node of a cluster, where the file's path may name nothing.
    base_tree: dict[str, Any] | None = field(default=None, repr=False)

    @property
    def experiment(self) -> str:
        """The experiment folder, `<storage>/<name>`: an absolute local path or a URI."""
        if storage_uri(self.storage):
            from mentor_ray import storage

            return storage.join(self.storage, self.name)
        return str(Path(self.storage).expanduser().resolve() / self.name)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def storage_uri(location: str) -> bool:
    """True for a `storage` given as a URI (`scheme://...`), as mentor_ray.storage.is_uri
    (not imported here: pyarrow only when a sweep runs)."""
    return bool(re.match(r"^[A-Za-z][A-Za-z0-9+.\-]*://", location))


def check_storage(spec: SweepSpec) -> None:
    """Creates the experiment folder where `storage` says: a bad URI (unknown scheme, missing
    bucket, unreachable server, no credentials) or an unwritable folder is refused here, in one
    line naming the key, before any trial starts."""
    from mentor_ray import storage

    try:
        storage.make_dirs(spec.experiment)
    except storage.StorageError as error:
        raise ConfigError(f"{spec.source}: storage={spec.storage!r}: {error}") from None


def _fail(source: str, problems: list[str]) -> ConfigError:
    return ConfigError(f"invalid {source}:\n  " + "\n  ".join(problems))


def _parameter(key: str, spec: Any, problems: list[str]) -> Parameter | None:
    unknown = config_key_problem(key) if key != GUIDANCE_RATIO else None
    if unknown:
        problems.append(f"parameters.{unknown}")
        return None
    if not isinstance(spec, dict):
        problems.append(f"parameters.{key}: must be a mapping such as {{uniform: [0.8, 0.99]}}")
        return None
    kinds = [k for k in spec if k in DISTRIBUTIONS]
    unknown = [k for k in spec if k not in DISTRIBUTIONS and k != "times"]
    if len(kinds) != 1 or unknown:
        problems.append(f"parameters.{key}: needs exactly one of {list(DISTRIBUTIONS)} (and optionally times), got {sorted(spec)}")
        return None
    kind = kinds[0]
    values = spec[kind]
    times = spec.get("times")
    if times is not None and times not in SCALES:
        problems.append(f"parameters.{key}.times={times!r}: must be one of {list(SCALES)}")
    if not isinstance(values, list) or not values:
        problems.append(f"parameters.{key}.{kind}: must be a non-empty list")
        return None
    if kind == "choice":
        if times is not None and not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            problems.append(f"parameters.{key}: times needs numeric choices")
        return Parameter(key, kind, tuple(values), times)
    if len(values) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        problems.append(f"parameters.{key}.{kind}: must be [low, high] numbers, got {values!r}")
        return None
    low, high = values
    if not low < high:
        problems.append(f"parameters.{key}.{kind}: low {low} must be below high {high}")
    if kind == "int" and not (float(low).is_integer() and float(high).is_integer()):
        problems.append(f"parameters.{key}.int: bounds must be integers, got {values!r}")
    if kind == "loguniform" and not low > 0:
        problems.append(f"parameters.{key}.loguniform: low must be > 0, got {low}")
    return Parameter(key, kind, (low, high), times)


def _settings(cls: type, data: Any, where: str, problems: list[str]) -> Any:
    if data is None:
        return cls()
    if not isinstance(data, dict):
        problems.append(f"{where}: must be a mapping")
        return cls()
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        problems.append(f"{where}: unknown keys {unknown} (allowed: {sorted(names)})")
        return cls()
    return cls(**data)


def read_yaml_mapping(path: Path, what: str) -> dict[str, Any]:
    """A YAML file holding a mapping; anything else is a ConfigError naming `what` and the path."""
    if not path.is_file():
        raise ConfigError(f"{what} {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{what} {path} is not valid YAML: {error}") from error
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {path} must hold a mapping at the top level")
    return data


def load_sweep(path: str | Path, storage: str | None = None) -> SweepSpec:
    """Reads a sweep file; `check_sweep` then tests it against the run config. `storage`, if
    given, replaces the file's `storage`."""
    path = Path(path)
    data = read_yaml_mapping(path, "sweep file")
    if storage is not None:
        data["storage"] = storage
    return sweep_from_dict(data, f"sweep file {path}", base_dir=path.parent)


def sweep_from_dict(data: dict[str, Any], source: str = "sweep", base_dir: Path | None = None) -> SweepSpec:
    problems: list[str] = []
    allowed = {"name", "base_config", "overrides", "parameters", "points_to_evaluate", "search", "asha", "storage"}
    for key in sorted(set(data) - allowed):
        problems.append(f"{key}: unknown key (allowed: {sorted(allowed)})")
    name = data.get("name")
    if not isinstance(name, str) or not name or "/" in name:
        problems.append(f"name={name!r}: must be a folder name (no '/')")
    base_config = data.get("base_config")
    if base_config is not None:
        candidate = Path(base_config)
        if not candidate.is_absolute() and not candidate.is_file() and base_dir is not None and (base_dir / candidate).is_file():
            candidate = base_dir / candidate
        if not candidate.is_file():
            problems.append(f"base_config={base_config!r}: no such file")
        base_config = str(candidate)
    overrides = data.get("overrides") or {}
    if not isinstance(overrides, dict):
        problems.append("overrides: must be a mapping of dotted config keys to values")
        overrides = {}
    raw_parameters = data.get("parameters") or {}
    if not isinstance(raw_parameters, dict) or not raw_parameters:
        problems.append("parameters: must map at least one dotted config key to a distribution")
        raw_parameters = {}
    parameters = [p for key, spec in raw_parameters.items() if (p := _parameter(str(key), spec, problems))]
    points = data.get("points_to_evaluate") or []
    if not isinstance(points, list) or not all(isinstance(p, dict) for p in points):
        problems.append("points_to_evaluate: must be a list of mappings")
        points = []
    search_data = dict(data.get("search") or {})
    if "objectives" in search_data:
        objectives = search_data["objectives"]
        if not isinstance(objectives, list) or not objectives or not all(isinstance(o, dict) and set(o) == {"metric", "mode"} for o in objectives):
            problems.append("search.objectives: must be a non-empty list of {metric, mode}")
            search_data.pop("objectives")
        else:
            search_data["objectives"] = tuple(Objective(o["metric"], o["mode"]) for o in objectives)
    search = _settings(SearchSettings, search_data, "search", problems)
    asha = None if "asha" in data and data["asha"] is None else _settings(AshaSettings, data.get("asha"), "asha", problems)
    storage = str(data.get("storage", "sweeps"))
    if not storage.strip():
        problems.append("storage: must be a local folder or a URI such as s3://bucket/prefix")
    elif not storage_uri(storage):
        # Absolute now: a trial runs in its own working folder, where a relative path means elsewhere.
        storage = str(Path(storage).expanduser().resolve())
    if problems:
        raise _fail(source, problems)
    spec = SweepSpec(
        name=name, base_config=base_config, overrides=overrides, parameters=parameters, points_to_evaluate=points,
        search=search, asha=asha, storage=storage, source=source,
    )
    _check_settings(spec)
    return spec


def _check_settings(spec: SweepSpec) -> None:
    problems: list[str] = []
    search = spec.search
    if search.num_trials < 1:
        problems.append(f"search.num_trials={search.num_trials}: must be >= 1")
    if search.algorithm not in ALGORITHMS:
        problems.append(f"search.algorithm={search.algorithm!r}: must be one of {list(ALGORITHMS)}")
    if search.max_concurrent_trials is not None and search.max_concurrent_trials < 1:
        problems.append(f"search.max_concurrent_trials={search.max_concurrent_trials}: must be >= 1, or null")
    for objective in search.objectives:
        if objective.mode not in ("max", "min"):
            problems.append(f"search.objectives: mode {objective.mode!r} of {objective.metric}: must be max or min")
    if spec.asha is not None:
        if spec.asha.mode not in ("max", "min"):
            problems.append(f"asha.mode={spec.asha.mode!r}: must be max or min")
        if spec.asha.grace_period < 1:
            problems.append(f"asha.grace_period={spec.asha.grace_period}: must be >= 1")
        if not spec.asha.reduction_factor > 1:
            problems.append(f"asha.reduction_factor={spec.asha.reduction_factor}: must be > 1")
    known = {p.key for p in spec.parameters}
    for i, point in enumerate(spec.points_to_evaluate):
        for key in sorted(set(point) - known):
            problems.append(f"points_to_evaluate[{i}].{key}: not a searched parameter (parameters: {sorted(known)})")
    if problems:
        raise _fail(spec.source, problems)


# ---------------------------------------------------------------------------------------------
# From a trial's parameters to its run config.


def _base_tree(spec: SweepSpec) -> dict[str, Any]:
    if spec.base_tree is not None:
        tree = copy.deepcopy(spec.base_tree)
    else:
        tree = load_config_tree(spec.base_config) if spec.base_config else {}
    for key, value in spec.overrides.items():
        set_dotted(tree, str(key), value)
    _no_mixed_samples_unless_the_method_makes_them(tree)
    return tree


def _no_mixed_samples_unless_the_method_makes_them(tree: dict[str, Any]) -> None:
    method = tree.get("algorithm", {}).get("method", "mentor")
    if method in METHODS and not METHODS[method].makes_mixed_samples:
        set_dotted(tree, "rollout.n_mixed", 0)


def scaled(spec: SweepSpec, parameter: Parameter, value: Any) -> Any:
    """A sampled value in the config's own units (`times: log_vocab` multiplies by ln V)."""
    if parameter.times == "log_vocab":
        if spec.log_vocab is None:
            raise ValueError("check_sweep() must run first: it reads the vocabulary size")
        return float(value) * spec.log_vocab
    return value


def trial_config(spec: SweepSpec, params: dict[str, Any], run_root: str | None = None, run_name: str | None = None) -> MentorConfig:
    """The run config of one trial: base config, overrides, then the trial's parameters."""
    tree = _base_tree(spec)
    by_key = {p.key: p for p in spec.parameters}
    for key, value in params.items():
        if key not in by_key:
            raise ConfigError(f"{spec.source}: trial parameter {key!r} is not in parameters")
        value = scaled(spec, by_key[key], value)
        if key == GUIDANCE_RATIO:
            _set_guidance_ratio(tree, float(value))
        else:
            set_dotted(tree, key, value)
    _no_mixed_samples_unless_the_method_makes_them(tree)  # after a swept ratio or method: the method decides
    if run_root is not None:
        set_dotted(tree, "logging.run_root", run_root)
    if run_name is not None:
        set_dotted(tree, "logging.run_name", run_name)
    return config_from_dict(tree, f"{spec.source} trial {params}")


def _set_guidance_ratio(tree: dict[str, Any], ratio: float) -> None:
    """N2 / (N1 + N2) = ratio with N1 + N2 as in the base config."""
    if not 0 <= ratio < 1:
        raise ConfigError(f"{GUIDANCE_RATIO}={ratio}: must be in [0, 1) (1 would leave no on-policy samples)")
    rollout = MentorConfig().rollout
    base = tree.get("rollout", {})
    total = int(base.get("n_on_policy", rollout.n_on_policy)) + int(base.get("n_mixed", rollout.n_mixed))
    n_mixed = round(ratio * total)
    set_dotted(tree, "rollout.n_on_policy", total - n_mixed)
    set_dotted(tree, "rollout.n_mixed", n_mixed)


def _policy_log_vocab(config: MentorConfig) -> float:
    from transformers import AutoTokenizer

    from mentor_ray.data.run_inputs import resolve_model_dir

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_dir(config.model.policy_path, "model.policy_path"))
    return math.log(len(tokenizer))


def _base_value(base: MentorConfig, key: str) -> Any:
    if key == GUIDANCE_RATIO:
        return base.rollout.guidance_ratio
    node: Any = base
    for part in key.split("."):
        node = getattr(node, part)
    return node


def _in_distribution(parameter: Parameter, value: Any) -> bool:
    if parameter.kind == "choice":
        return value in parameter.values
    low, high = parameter.values
    return isinstance(value, (int, float)) and not isinstance(value, bool) and low <= value <= high


def full_points(spec: SweepSpec) -> list[dict[str, Any]]:
    """points_to_evaluate with every parameter given (Optuna needs whole points): a missing
    one takes the base config's value, in the file's units."""
    base = config_from_dict(_base_tree(spec), f"{spec.source}: base_config + overrides")
    points = []
    for point in spec.points_to_evaluate:
        full = {}
        for parameter in spec.parameters:
            if parameter.key in point:
                full[parameter.key] = point[parameter.key]
                continue
            value = _base_value(base, parameter.key)
            if parameter.times == "log_vocab" and spec.log_vocab:
                value = value / spec.log_vocab
            if parameter.kind == "choice":
                value = min(parameter.values, key=lambda v: abs(v - value)) if isinstance(value, (int, float)) else value
            full[parameter.key] = value
        points.append(full)
    return points


def check_sweep(spec: SweepSpec) -> SweepSpec:
    """Every value a parameter can take and every point to evaluate must make a config the run
    accepts; also requires the objectives to exist (validation for `objective/val_accuracy`).
    Reads the base config file once, for every trial (`SweepSpec.base_tree`)."""
    if spec.base_config and spec.base_tree is None:
        spec.base_tree = load_config_tree(spec.base_config)
    base = config_from_dict(_base_tree(spec), f"{spec.source}: base_config + overrides")
    if any(p.times == "log_vocab" for p in spec.parameters):
        spec.log_vocab = _policy_log_vocab(base)
    problems: list[str] = []
    for parameter in spec.parameters:
        for value in parameter.values:  # a range's ends, or every item of a choice
            try:
                # Each end must also fit the cluster (a swept length or batch can push a
                # trial past its GPUs' memory): the plan of pipelines.plan, per value.
                check_plan(trial_config(spec, {parameter.key: value}))
            except ConfigError as error:
                shown = f"{value} (x ln V = {scaled(spec, parameter, value):.3f})" if parameter.times else repr(value)
                reason = str(error).split("\n", 1)[-1].strip()
                problems.append(f"parameters.{parameter.key}: value {shown} is refused by the run config: {reason}")
    by_key = {p.key: p for p in spec.parameters}
    for i, point in enumerate(full_points(spec)):
        outside = [f"{k}={v!r}" for k, v in point.items() if not _in_distribution(by_key[k], v)]
        if outside:
            given = "given" if all(k.split("=")[0] in spec.points_to_evaluate[i] for k in outside) else "given or taken from the base config"
            problems.append(f"points_to_evaluate[{i}]: {', '.join(outside)} ({given}) outside the parameter's distribution")
            continue
        try:
            trial_config(spec, point)
        except ConfigError as error:
            problems.append(f"points_to_evaluate[{i}] {point}: refused by the run config: {str(error).split(chr(10), 1)[-1].strip()}")
    metrics = [o.metric for o in spec.search.objectives] + ([spec.asha.metric] if spec.asha else [])
    for where, metric in [("search.objectives", o.metric) for o in spec.search.objectives] + ([("asha.metric", spec.asha.metric)] if spec.asha else []):
        if not is_step_metric(metric):
            close = difflib.get_close_matches(metric, sorted(STEP_METRICS), n=1)
            problems.append(f"{where}: {metric!r} is not a metric the loop reports"
                            + (f"; did you mean {close[0]}?" if close else " (see mentor_ray/metrics.py STEP_METRICS)"))
    if "objective/val_accuracy" in metrics and not (base.eval.every_steps and base.data.eval_path):
        problems.append("search.objectives: objective/val_accuracy needs validation (eval.every_steps > 0 and data.eval_path)")
    if spec.asha is not None and spec.asha.grace_period > base.total_steps:
        problems.append(f"asha.grace_period={spec.asha.grace_period}: more than total_steps={base.total_steps}")
    if problems:
        raise _fail(spec.source, problems)
    return spec


def tune_search_space(spec: SweepSpec) -> dict[str, Any]:
    """Ray Tune's param_space: sampled values stay in the file's units (before `times`)."""
    from ray import tune

    space: dict[str, Any] = {}
    for p in spec.parameters:
        if p.kind == "uniform":
            space[p.key] = tune.uniform(*p.values)
        elif p.kind == "loguniform":
            space[p.key] = tune.loguniform(*p.values)
        elif p.kind == "int":
            space[p.key] = tune.randint(int(p.values[0]), int(p.values[1]) + 1)
        else:
            space[p.key] = tune.choice(list(p.values))
    return space
