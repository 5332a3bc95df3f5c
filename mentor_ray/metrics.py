"""Step metrics (one flat namespace: `rollout/...`, `train/...`, `val/...`, `time/...`) and sinks.

Metric functions are pure: they take a step's rollout rows or tensors and return floats. Sinks
write a step's metrics somewhere; JSONL always, the others when configured. Each optional
sink imports its package only when asked, and a missing one is an error naming the extra.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable, Protocol

import numpy as np
import torch

from mentor_ray import storage
from mentor_ray.habits import habit_counts, habit_names, habit_rates
from mentor_ray.rollout.rows import RolloutRow
from mentor_ray.timeline import ROLES, covered_seconds

METRICS_FILE = "metrics.jsonl"


# The names a step's report can hold, for checking a sweep's objective and ASHA metric before
# any trial runs (tests/test_plan.py checks a real run's metrics.jsonl against them).
STEP_METRICS = frozenset(
    [f"guidance/{name}" for name in ("alpha", "entropy_threshold")]
    + [f"objective/{name}" for name in ("running_accuracy", "val_accuracy")]
    + [f"rollout/{name}" for name in (
        "accepted_draft_length", "accuracy", "composite_passes_per_token", "draft_acceptance_rate", "dropped_prompts",
        "entropy_mean", "entropy_p95", "format_rate", "full_expert_share",
        "mixture_weight_mean", "response_length", "reward", "truncated_rate",
        # One step of overlap: the rollout's weights version, the largest lag it was trained at,
        # rows dropped for being older than rollout.max_staleness.
        "weights_version", "behaviour_lag_max", "stale_rows_dropped",
    )]
    + [f"rollout/{kind}_{name}" for kind in ("on_policy", "mixed", "expert_trace")
       for name in ("accuracy", "format_rate", "response_length", "reward", "samples")]
    + [f"sync/{name}" for name in (
        "engine_fetch_seconds_max", "engine_load_seconds_max", "engine_weights_version_max", "engine_weights_version_min",
        # sync.transport=collective (pipelines/weight_sync.py): 1 when this sync's weights went by
        # broadcast, failures that fell back to the object store, the last standby copy's put, the
        # group's handshake, buckets, broadcast seconds on each side, engines whose CRC32s matched.
        "put_seconds", "collective", "collective_failures", "standby_put_seconds", "handshake_seconds", "transfer_seconds",
        "buckets", "sender_broadcast_seconds", "engine_transfer_seconds_max", "checked_engines",
        "sender_pack_seconds", "sender_wait_for_loads_seconds", "check_seconds",
        # vLLM's weight checker: engines that hold identical policy weights after the sync.
        "engines_agree",
    )]
    + [f"time/{name}" for name in (
        "engine_busy_seconds", "export_seconds", "grading_busy_seconds", "learn_seconds", "old_log_prob_seconds",
        "orchestration_seconds", "orchestration_share", "rollout_fetch_seconds_max", "rollout_overhead_seconds",
        "rollout_seconds", "rollout_tokens_per_second", "rollout_work_seconds", "step_seconds", "sync_seconds",
        "update_seconds", "validate_seconds", "rollout_wait_seconds", "in_flight_wait_seconds",
        "step_started_at", "step_ended_at", "verify_seconds",
    )]
    + [f"train/{name}" for name in (
        "behaviour_log_prob_gap_max", "clip_high_fraction", "clip_low_fraction", "dual_clip_fraction",
        "empty_mini_batches", "entropy_mean", "expert_token_share", "grad_norm", "loss", "lr", "optimizer_steps",
        "shaping_weight_mean", "skipped_updates", "tokens",
        "behaviour_corrected_token_share", "behaviour_weight_mean", "behaviour_weight_truncated_share",
        "stale_behaviour_log_prob_gap_max",
    )]
    + [f"busy/{role}_share" for role in (*ROLES, "overlap")]
    # How much of the expert a step trains on (expert_signal_metrics).
    + [f"signal/{name}" for name in (
        "expert_tokens_per_prompt", "expert_advantage_mass_per_prompt", "expert_positive_rows_per_prompt",
    )]
    + [f"transfer/{name}" for name in (
        "rollout_bytes", "rollout_bytes_per_rank_max", "weights_bytes", "weights_bytes_to_engines",
    )]
)
# Families whose last part varies: habits per kind of sample, grading statuses, validation modes.
STEP_METRIC_PATTERNS = (
    re.compile(rf"habits/(on_policy|mixed|expert_trace)_({'|'.join(habit_names())}|accuracy_with_useful|accuracy_without_useful)"),
    re.compile(r"reward/grading_\w+"),
    re.compile(r"val/(greedy|sampled)_\w+"),
    re.compile(r"time/validate_(greedy|sampled)_seconds"),
)


def is_step_metric(name: str) -> bool:
    return name in STEP_METRICS or any(pattern.fullmatch(name) for pattern in STEP_METRIC_PATTERNS)


def _mean(values: Iterable[float]) -> float:
    values = list(values)
    return float(np.mean(values)) if values else float("nan")


SAMPLE_KINDS = ("on_policy", "mixed", "expert_trace")


def sample_kind(row: RolloutRow) -> str:
    if row.get("is_expert_trace", False):
        return "expert_trace"
    return "mixed" if row["is_mixed"] else "on_policy"


def rollout_metrics(rows: list[RolloutRow]) -> dict[str, float]:
    """Rewards, accuracy, format rate, response length and habit rates (`habits/<kind>_<habit>`,
    occurrences per response), on-policy vs mixed (and vs the stored expert traces LUFFY puts in
    its groups)."""
    metrics: dict[str, float] = {}
    for label in SAMPLE_KINDS:
        group = [row for row in rows if sample_kind(row) == label]
        if label != "expert_trace" or group:
            metrics[f"rollout/{label}_samples"] = float(len(group))
        if not group:
            continue
        metrics[f"rollout/{label}_reward"] = _mean(row["reward"] for row in group)
        metrics[f"rollout/{label}_accuracy"] = _mean(row["accuracy"] for row in group)
        metrics[f"rollout/{label}_format_rate"] = _mean(row["format"] for row in group)
        metrics[f"rollout/{label}_response_length"] = _mean(len(row["response_token_ids"]) for row in group)
        metrics.update({f"habits/{label}_{name}": rate for name, rate in habit_rates(row["response_text"] for row in group).items()})
        # Whether the useful habits pay: accuracy of this kind's responses with one and without.
        has_useful = [habit_counts(row["response_text"])["useful"] > 0 for row in group]
        with_useful = [row["accuracy"] for row, useful in zip(group, has_useful) if useful]
        without_useful = [row["accuracy"] for row, useful in zip(group, has_useful) if not useful]
        if with_useful:
            metrics[f"habits/{label}_accuracy_with_useful"] = _mean(with_useful)
        if without_useful:
            metrics[f"habits/{label}_accuracy_without_useful"] = _mean(without_useful)
    metrics["rollout/reward"] = _mean(row["reward"] for row in rows)
    metrics["rollout/accuracy"] = _mean(row["accuracy"] for row in rows)
    metrics["rollout/format_rate"] = _mean(row["format"] for row in rows)
    metrics["rollout/response_length"] = _mean(len(row["response_token_ids"]) for row in rows)
    metrics["rollout/truncated_rate"] = _mean(row["finish_reason"] == "length" for row in rows)
    return metrics


def expert_signal_metrics(rows: list[RolloutRow], mixture: dict[str, float]) -> dict[str, float]:
    """How much expert a step trains on, per prompt of the step, whichever way the method brings it:
    a stored trace (LUFFY: every token the expert's) or a mixed sample (MENTOR: a token is the
    expert's in the share w of pi_mix; rows keep no per-token w, so each mixed token counts the
    step's mean w, mixture_weight_sum / scored_positions). `expert_tokens_per_prompt`: those
    tokens; `expert_advantage_mass_per_prompt`: their sum of advantage times tokens (before
    LUFFY's shaping weight, which the loss applies); `expert_positive_rows_per_prompt`: rows with
    expert tokens and an advantage above 0 (the only ones MENTOR's rule trains towards). Empty
    when the step has no expert rows or no advantages (GRPO, validation)."""
    prompts = len({row["prompt_index"] for row in rows})
    positions = mixture.get("scored_positions", 0.0)
    mean_weight = mixture.get("mixture_weight_sum", 0.0) / positions if positions > 0 else 0.0
    expert_rows = [(row, 1.0 if row.get("is_expert_trace", False) else mean_weight) for row in rows
                   if row.get("is_expert_trace", False) or row["is_mixed"]]
    if not prompts or not expert_rows or any("advantage" not in row for row, _ in expert_rows):
        return {}
    tokens = [len(row["response_token_ids"]) * share for row, share in expert_rows]
    return {
        "signal/expert_tokens_per_prompt": sum(tokens) / prompts,
        "signal/expert_advantage_mass_per_prompt": sum(float(row["advantage"]) * t for (row, _), t in zip(expert_rows, tokens)) / prompts,
        "signal/expert_positive_rows_per_prompt": sum(float(row["advantage"]) > 0 for row, _ in expert_rows) / prompts,
    }


def entropy_metrics(on_policy_token_entropies: torch.Tensor) -> dict[str, float]:
    values = on_policy_token_entropies.detach().flatten().float()
    if values.numel() == 0:
        return {}
    return {
        "rollout/entropy_mean": float(values.mean()),
        "rollout/entropy_p95": float(torch.quantile(values[:16_000_000], 0.95)),
    }


def mixture_metrics(summary: dict[str, float]) -> dict[str, float]:
    # The composite model counts every position it scores. With drafting that includes draft
    # positions the verifier then refused, so w's mean and the full-expert share are over the
    # positions verified, a slightly larger set than the tokens kept.
    positions = summary.get("scored_positions", 0.0)
    if positions <= 0:
        return {}
    metrics = {
        "rollout/mixture_weight_mean": summary["mixture_weight_sum"] / positions,
        "rollout/full_expert_share": summary["full_expert_positions"] / positions,
    }
    passes = summary.get("verify_passes", 0.0)
    if passes > 0:  # speculative mixed engine (rollout.speculative_tokens > 0)
        accepted, rejections = summary["accepted_draft_tokens"], summary["draft_rejections"]
        metrics["rollout/accepted_draft_length"] = accepted / passes
        metrics["rollout/draft_acceptance_rate"] = accepted / (accepted + rejections) if accepted + rejections else 0.0
        tokens = summary.get("mixed_generated_tokens", 0.0)
        if tokens > 0:
            metrics["rollout/composite_passes_per_token"] = passes / tokens
    return metrics


# Steps in the running mean of on-policy accuracy, the objective reported every step.
OBJECTIVE_WINDOW = 5


def objective_metrics(state: dict[str, Any], metrics: dict[str, float]) -> dict[str, float]:
    """Numbers a sweep can rank a run by at every step, not only at validation steps:
    `objective/running_accuracy`, the mean on-policy sampled accuracy of the last
    OBJECTIVE_WINDOW steps (the policy's own samples, so MENTOR and GRPO runs compare alike),
    and `objective/val_accuracy`, the latest greedy validation accuracy (step 0's at first).
    Updates `state`, which the checkpoint keeps, so a resumed run continues the same means."""
    accuracy = metrics.get("rollout/on_policy_accuracy")
    if accuracy is not None and not math.isnan(accuracy):
        state["accuracy_window"] = (state["accuracy_window"] + [float(accuracy)])[-OBJECTIVE_WINDOW:]
    if "val/greedy_accuracy" in metrics:
        state["val_accuracy"] = float(metrics["val/greedy_accuracy"])
    window = state["accuracy_window"]
    return {
        "objective/running_accuracy": sum(window) / len(window) if window else 0.0,
        "objective/val_accuracy": state["val_accuracy"] if state["val_accuracy"] is not None else float("nan"),
    }


def busy_seconds(intervals: Iterable[tuple[float, float]]) -> float:
    """Length of the union of (start, end) intervals: time in which at least one was running."""
    return covered_seconds(intervals)


def rollout_time_metrics(rollout_seconds: float, busy: dict[str, list[tuple[float, float]]]) -> dict[str, float]:
    """Where the rollout's wall time went: inside engine calls, inside grading calls, and the
    rest (Ray Data start-up, stage hops, transfers), from the roles' busy intervals."""
    engines, graders = busy.get("engines", []), busy.get("graders", [])
    working = busy_seconds(engines + graders)
    return {
        "time/engine_busy_seconds": busy_seconds(engines),
        "time/grading_busy_seconds": busy_seconds(graders),
        "time/rollout_work_seconds": working,
        "time/rollout_overhead_seconds": max(0.0, rollout_seconds - working),
    }


# Parts of a step that are work; the rest of the step's wall time is orchestration.
_WORK_SECONDS = (
    "time/rollout_work_seconds",
    "time/old_log_prob_seconds",
    "time/update_seconds",
    "time/export_seconds",
    "sync/engine_load_seconds_max",
    "time/validate_seconds",
)


def orchestration_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """Step wall time outside engine calls, grading, learner compute and weight loading."""
    step = metrics.get("time/step_seconds", 0.0)
    orchestration = max(0.0, step - sum(metrics.get(key, 0.0) for key in _WORK_SECONDS))
    return {
        "time/orchestration_seconds": orchestration,
        "time/orchestration_share": orchestration / step if step > 0 else 0.0,
    }


class MetricSink(Protocol):
    def log(self, step: int, metrics: dict[str, float]) -> None: ...

    def close(self) -> None: ...


class JsonlSink:
    """`metrics.jsonl`, one line per step, at a local path or a URI (rewritten whole each step:
    object stores cannot append, and a run's file stays small).

    resumed_at: the step the run (re)starts after. Lines of later steps, logged before a worker
    was lost, are dropped: the loop logs those steps again, so each step appears once."""

    def __init__(self, location: str, resumed_at: int = 0) -> None:
        self.location = location
        self._lines: list[str] = []
        if storage.exists(location):
            kept = [line for line in storage.read_text(location).splitlines() if line.strip()]
            self._lines = [line for line in kept if int(json.loads(line)["step"]) <= resumed_at]
        self._local = not storage.is_uri(location)
        storage.write_text(location, "".join(line + "\n" for line in self._lines))

    def log(self, step: int, metrics: dict[str, float]) -> None:
        line = json.dumps({"step": step, **metrics}, allow_nan=True)
        self._lines.append(line)
        if self._local:
            with open(self.location, "a") as handle:
                handle.write(line + "\n")
        else:
            storage.write_text(self.location, "".join(line + "\n" for line in self._lines))

    def close(self) -> None:
        pass


def _require(module: str, extra: str):
    try:
        return __import__(module)
    except ImportError as error:
        raise ImportError(
            f"logging sink {extra!r} needs the {module!r} package: pip install 'mentor-ray[{extra}]'"
        ) from error


class TensorBoardSink:
    """Event files in `location`; for a URI they are written locally and uploaded at close
    (TensorBoard's writer only writes to local files without TensorFlow's filesystems)."""

    def __init__(self, location: str) -> None:
        _require("tensorboard", "tensorboard")
        from torch.utils.tensorboard import SummaryWriter

        self.location = location
        self.local_dir = tempfile.mkdtemp(prefix="mentor-tensorboard-") if storage.is_uri(location) else location
        self.writer = SummaryWriter(self.local_dir)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
        if self.local_dir != self.location:
            storage.upload_dir(self.local_dir, self.location)
            shutil.rmtree(self.local_dir, ignore_errors=True)


class WandbSink:
    def __init__(self, project: str, run_name: str, config: dict[str, Any]) -> None:
        self.wandb = _require("wandb", "wandb")
        self.run = self.wandb.init(project=project, name=run_name, config=config)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self.run.log(metrics, step=step)

    def close(self) -> None:
        self.run.finish()


class SwanLabSink:
    def __init__(self, project: str, run_name: str, config: dict[str, Any]) -> None:
        self.swanlab = _require("swanlab", "swanlab")
        self.run = self.swanlab.init(project=project, experiment_name=run_name, config=config)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self.swanlab.log(metrics, step=step)

    def close(self) -> None:
        self.swanlab.finish()


class MlflowSink:
    def __init__(self, project: str, run_name: str, config: dict[str, Any]) -> None:
        self.mlflow = _require("mlflow", "mlflow")
        self.mlflow.set_experiment(project)
        self.mlflow.start_run(run_name=run_name)
        self.mlflow.log_params({k: str(v) for k, v in _flatten(config).items()})

    def log(self, step: int, metrics: dict[str, float]) -> None:
        # MLflow metric names may not contain every character; '/' is allowed.
        self.mlflow.log_metrics({k: float(v) for k, v in metrics.items() if np.isfinite(v)}, step=step)

    def close(self) -> None:
        self.mlflow.end_run()


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def build_sinks(
    names: list[str], run_dir: str, project: str, run_name: str, config: dict[str, Any], resumed_at: int = 0,
) -> list[MetricSink]:
    """The run's sinks; run_dir is a local path or a URI, resumed_at the step the loop starts after."""
    sinks: list[MetricSink] = [JsonlSink(storage.join(run_dir, METRICS_FILE), resumed_at)]
    factories = {
        "tensorboard": lambda: TensorBoardSink(storage.join(run_dir, "tensorboard")),
        "wandb": lambda: WandbSink(project, run_name, config),
        "swanlab": lambda: SwanLabSink(project, run_name, config),
        "mlflow": lambda: MlflowSink(project, run_name, config),
    }
    for name in names:
        if name != "jsonl":
            sinks.append(factories[name]())
    return sinks


def mean_of(values: Iterable[float | None]) -> float:
    """Mean of the values that are numbers (None and NaN left out); NaN if none are."""
    kept = [v for v in values if v is not None and not math.isnan(v)]
    return sum(kept) / len(kept) if kept else float("nan")


def window_mean(history: list[dict[str, float]], key: str, last_step: int, width: int = 3) -> float:
    """Mean of a metric over the `width` steps ending at `last_step` (one step is noisy)."""
    return mean_of(r.get(key) for r in history if last_step - width < r["step"] <= last_step)


def end_of_guidance_step(history: list[dict[str, float]], decay_steps: int) -> int:
    """The last step with guidance on (alpha > 0 up to decay_steps - 1), or the run's last step."""
    return min(decay_steps - 1, max((int(r["step"]) for r in history), default=0))


def read_metrics(path: str | Path) -> list[dict[str, float]]:
    """Rows of a metrics.jsonl (a local path or a URI); a step logged twice keeps its last record."""
    by_step: dict[int, dict[str, float]] = {}
    for line in storage.read_text(path).splitlines():
        if line.strip():
            record = json.loads(line)
            by_step[int(record["step"])] = record
    return [by_step[step] for step in sorted(by_step)]
