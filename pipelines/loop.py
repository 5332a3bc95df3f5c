"""The MENTOR RL loop, run by every Ray Train worker (`train_loop_per_worker`).

One step is six named phases of `TrainingLoop`:
  rollout    rank 0 takes the step's rollout (made now, or in flight since the last step) and
             keeps only rows within `rollout.max_staleness`; with overlap it then starts the
             next step's rollout on the current engine weights, in a thread of rank 0;
  shard      each rank fetches its part of every global mini-batch from the object store;
  learn      old log-probs and entropies, the PPO update, tau from the exact global quantile;
  sync       the new weights go to the engines, once the rollout in flight has finished, so
             no engine changes weights inside a generation call;
  validate   greedy accuracy on the engines (now idle);
  checkpoint DeepSpeed shards, the loop state and a finished rollout still to be trained on.
The learner is blind to the algorithm; everything MENTOR-specific is in `mentor_ray.core`
and the rollout plan.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import random
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import ray
import ray.data
import ray.train
import torch
from torch.distributed import ReduceOp

from mentor_ray import storage
from mentor_ray.config import MentorConfig, config_from_dict
from mentor_ray.core.guidance import next_entropy_threshold
from mentor_ray.core.methods import method_for
from mentor_ray.core.staleness import admit_by_staleness
from mentor_ray.data.prompt_schedule import PromptSchedule
from mentor_ray.data.run_inputs import RunPaths, TokenizedProblem, node_model_dir
from mentor_ray.distributed import (
    all_gather_objects,
    all_gather_variable_length,
    all_reduce_values,
)
from mentor_ray.learner import PolicyLearner, TrainingSample
from mentor_ray.metrics import (
    METRICS_FILE,
    build_sinks,
    entropy_metrics,
    objective_metrics,
    orchestration_metrics,
    read_metrics,
    rollout_time_metrics,
)
from mentor_ray.timeline import ROLES, TIMELINE_FILE, RoleTimeline, clipped
from pipelines.console import ConsoleLines, step_line
from pipelines.evaluation import evaluate_policy
from pipelines.roles import RolloutRoles, process_whereabouts
from pipelines.rollout_shards import exchange, fetch_shard, share_rollout
from pipelines.step_rollout import (
    PreparedRollout,
    RolloutInFlight,
    StepRolloutMaker,
    start_step_rollout,
)
from pipelines.weight_sync import (
    WeightSyncError,
    check_engines_agree,
    make_weight_transport,
)

CLIENT_STATE_FILE = "loop_state.json"
# A finished rollout of the next step, saved with a checkpoint taken while it was in flight.
IN_FLIGHT_ROLLOUT_FILE = "in_flight_rollout.json"
# Written by rank 0 when the loop stops on purpose (too many NaN updates); the driver reads it.
STOP_FILE = "stopped.json"
PLACEMENT_GROUP_FILE = "placement_group.json"
PLACEMENT_FILE = "placement.json"
FINAL_MODEL_FOLDER = "final_model"


def global_entropy_threshold(local_on_policy_entropies: list[torch.Tensor], config: MentorConfig) -> tuple[float, torch.Tensor]:
    """tau from the exact quantile over every rank's on-policy response-token entropies
    (MENTOR.md section 2), and those entropies. Collective."""
    local = torch.cat(local_on_policy_entropies) if local_on_policy_entropies else torch.zeros(0)
    everything = all_gather_variable_length(local.float())
    return next_entropy_threshold(everything, config.guidance.entropy_quantile, config.guidance.tau_floor), everything


def save_final_model(learner: PolicyLearner, run_dir: str, is_chief: bool) -> None:
    """`final_model/` in the run folder; on shared storage it is written locally, then uploaded."""
    if not storage.is_uri(run_dir):
        learner.save_hf(Path(run_dir) / FINAL_MODEL_FOLDER)
        return
    with tempfile.TemporaryDirectory(prefix="mentor-final-model-") as local:
        learner.save_hf(local)  # collective; rank 0 writes
        if is_chief:
            storage.upload_dir(local, storage.join(run_dir, FINAL_MODEL_FOLDER))


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rollout_batch_prompts(config: MentorConfig) -> int:
    """Prompts per Ray Data batch: one batch per engine and step, so each engine schedules all
    its sequences at once (toy policy, 32 prompts x 8: one call 0.5 s, two calls of half 0.7 s);
    grading, mostly in-process for integer answers, costs milliseconds to overlap."""
    engines = max(config.scaling.num_policy_engines, config.scaling.num_mixed_engines if config.guided else 0)
    return max(1, math.ceil(config.rollout.prompts_per_step / engines))


def _mini_batches_or_error(samples: list[TrainingSample], config: MentorConfig, step: int) -> tuple[int | None, str | None]:
    """The step's global mini-batch count, or why the step cannot fill its mini-batches."""
    surviving_prompts = len({s.group_id for s in samples})
    if config.optimizer.mini_batch_samples is None and surviving_prompts < config.rollout.prompts_per_step // config.optimizer.mini_batch_prompts:
        return None, f"step {step}: too few prompts survived the rollout to fill the mini-batches of optimizer.mini_batch_prompts"
    if not samples:
        return None, f"step {step}: the rollout returned no samples"
    return config.mini_batch_count(len(samples), surviving_prompts), None


# ---------------------------------------------------------------------------------------------
# What the loop is given, what it keeps, and what one rollout hands it.


@dataclass(frozen=True)
class LoopHooks:
    """Test-only inspection and fault injection, in one place."""

    # Those steps' advantages are made NaN, so every loss of the step is NaN.
    nan_loss_at_steps: tuple[int, ...] = ()
    # Each rank appends what it trained on, sample by sample, to <dir>/rank<r>.jsonl.
    shard_record_dir: str | None = None


@dataclass(frozen=True)
class LoopInputs:
    """Everything the driver hands every learner worker."""

    config: dict[str, Any]  # MentorConfig.to_dict(): each worker validates it again
    paths: RunPaths
    roles: RolloutRoles
    train_problems: list[TokenizedProblem]
    eval_problems: list[TokenizedProblem]
    # problem id -> (response token ids, text) of its stored expert trace, for a method whose
    # groups hold one (LUFFY); empty otherwise.
    expert_traces: dict[str, tuple[list[int], str]] = field(default_factory=dict)
    # (first step, problems): the same problems, in the same order, prompted differently from
    # that step on (QuestA's shorter hints); None: train_problems throughout.
    later_train_problems: tuple[int, list[TokenizedProblem]] | None = None
    # The user's resume point for a new run; Ray Train's own checkpoint wins after a restart.
    resume_from: str | None = None
    driver: dict[str, Any] | None = None  # the driver's whereabouts, for the placement record
    console: ConsoleLines | None = None


@dataclass
class LoopState:
    """What a checkpoint keeps of the loop, so a resumed run continues the same run."""

    step: int = 0
    # tau for the next rollout to start: from the latest finished learner pass (core.staleness).
    entropy_threshold: float = 999.0
    skipped_updates: int = 0
    elapsed_seconds: float = 0.0
    accuracy_window: list[float] = field(default_factory=list)
    val_accuracy: float | None = None

    @classmethod
    def restored(cls, saved: dict[str, Any], defaults: LoopState) -> LoopState:
        # DeepSpeed returns its own bookkeeping beside ours; keep only the loop's keys.
        names = {f.name for f in dataclasses.fields(cls)}
        return dataclasses.replace(defaults, **{k: v for k, v in saved.items() if k in names})

    def record_objective(self, metrics: dict[str, float]) -> dict[str, float]:
        view = {"accuracy_window": self.accuracy_window, "val_accuracy": self.val_accuracy}
        numbers = objective_metrics(view, metrics)
        self.accuracy_window, self.val_accuracy = view["accuracy_window"], view["val_accuracy"]
        return numbers


# ---------------------------------------------------------------------------------------------
# The loop.


class TrainingLoop:
    """One learner rank's RL loop; rank 0 (the chief) also drives the rollouts and the logs."""

    def __init__(self, inputs: LoopInputs, hooks: LoopHooks) -> None:
        self.config: MentorConfig = config_from_dict(inputs.config, "run config")
        self.inputs, self.hooks = inputs, hooks
        self.method = method_for(self.config.algorithm)
        self.roles = inputs.roles
        self.console = inputs.console or ConsoleLines(None)
        context = ray.train.get_context()
        self.rank, self.world_size = context.get_world_rank(), context.get_world_size()
        self.is_chief = self.rank == 0
        _seed_everything(self.config.seed + self.rank)
        if not self.config.scaling.use_gpu:
            torch.set_num_threads(self.config.cpu_threads()[1])
        # One console line per step says where the run is; per-operator bars from inside a
        # worker arrive as interleaved log lines and bury it.
        data_context = ray.data.DataContext.get_current()
        data_context.enable_progress_bars = False
        # Per-execution stats logging costs ~20 ms a step and nobody reads it here.
        data_context.enable_auto_log_stats = False
        paths = inputs.paths
        self.run_dir = paths.run_dir  # a local path or a URI: every file goes through mentor_ray.storage
        self.learner = PolicyLearner(node_model_dir(paths.policy_ref or paths.policy_dir, "model.policy_path"), self.config, self.world_size, self.rank)
        self.schedule = PromptSchedule(len(inputs.train_problems), self.config.rollout.prompts_per_step, self.config.seed, self.config.data.shuffle)
        self.state = LoopState(entropy_threshold=self.config.guidance.tau_init)
        self.in_flight: RolloutInFlight | None = None  # the next step's rollout (rank 0, with overlap)
        self.make_rollout = StepRolloutMaker(
            self.config, self.method, self.roles, self.schedule, inputs.train_problems, inputs.expert_traces,
            rollout_batch_prompts(self.config), inputs.later_train_problems,
        )
        # Put once: the in-flight rollout task of every step reads the problems from here.
        self.make_rollout_ref = ray.put(self.make_rollout) if self.is_chief and self.config.rollout.max_staleness > 0 else None
        roles = ROLES if self.config.guided else tuple(r for r in ROLES if r != "mixed_engines")
        self.timeline = RoleTimeline(time.time(), roles)
        self.bad_references_told: set[str] = set()
        self._restore()
        # After a resume or a worker restart the engines may hold weights from later steps than
        # the checkpoint: every (re)start publishes the learner's weights first.
        self.published_version = -1
        self.weights_out = make_weight_transport(self.config, self.roles, self.console.say) if self.is_chief else None
        self._publish(self.state.step, self.learner.export_weights())
        self._record_placement()
        self.sinks = build_sinks(
            self.config.logging.sinks, self.run_dir, self.config.logging.project, paths.run_name, self.config.to_dict(),
            resumed_at=self.state.step,
        ) if self.is_chief else []

    # --- start, resume, placement ------------------------------------------------------------

    def _restore(self) -> None:
        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None and self.inputs.resume_from:
            filesystem, path = storage.resolve(self.inputs.resume_from)
            checkpoint = ray.train.Checkpoint(path, filesystem=filesystem)
        if checkpoint is None:
            return
        with checkpoint.as_directory() as folder:
            loaded = self.learner.load_checkpoint(Path(folder) / "deepspeed")
            stored = Path(folder) / IN_FLIGHT_ROLLOUT_FILE
            if self.is_chief and stored.exists():
                # The next step's rollout had finished when the checkpoint was taken: train on
                # exactly those samples (regenerating them would need the weights before the
                # checkpoint's step, which the checkpoint no longer holds).
                self.in_flight = RolloutInFlight(finished=PreparedRollout.from_json(stored.read_text()))
        self.state = LoopState.restored(loaded, self.state)
        if self.is_chief:
            self.console.say(f"resuming at step {self.state.step} from {checkpoint.path}")

    def _record_placement(self) -> None:
        learners = all_gather_objects({**process_whereabouts(), "role": f"learner rank {self.rank}",
                                       "model_dirs": {"policy_dir": str(self.learner.model_dir)}})
        if not self.is_chief:
            return
        # Where every role landed and what it read: the run's placement record.
        storage.write_text(storage.join(self.run_dir, PLACEMENT_FILE), json.dumps(
            {"driver": self.inputs.driver, "learners": learners, "rollout": self.roles.whereabouts()}, indent=2))
        # The learners' placement group, named in the run folder: a sweep that stops this run
        # early removes it (Ray Train's own cleaner cannot reach a ray.init() local instance).
        group = ray.util.get_current_placement_group()
        if group is not None:
            storage.write_text(storage.join(self.run_dir, PLACEMENT_GROUP_FILE), json.dumps({"id": group.id.hex()}))

    # --- the run -------------------------------------------------------------------------------

    def run(self) -> None:
        config = self.config
        if self.is_chief and self.state.step == 0 and self.inputs.eval_problems and config.eval.every_steps:
            # Step 0: the initial policy's validation, so every later number has its baseline.
            initial = evaluate_policy(self.inputs.eval_problems, config, self.roles, 0, self.published_version)
            self.state.val_accuracy = initial.get("val/greedy_accuracy")
            for sink in self.sinks:
                sink.log(0, initial)
            self.console.say(f"step 0/{config.total_steps} | initial policy val {initial.get('val/greedy_accuracy', float('nan')):.3f}")
        run_started = time.perf_counter() - self.state.elapsed_seconds
        first_step = self.state.step + 1
        stop_reason = None
        try:
            for step in range(first_step, config.total_steps + 1):
                stop_reason = self.step(step, run_started)
                if stop_reason is not None:
                    break
        finally:
            self._settle_in_flight()
        if first_step > config.total_steps:
            # Resumed at the last step (a run interrupted after its final checkpoint): report the
            # last step again, so whoever follows the reports (a Tune trial) sees how it ended.
            metrics_file = storage.join(self.run_dir, METRICS_FILE)
            history = read_metrics(metrics_file) if self.is_chief and storage.exists(metrics_file) else []
            ray.train.report(history[-1] if history else {})
        if stop_reason is None:
            save_final_model(self.learner, self.run_dir, self.is_chief)
        elif self.is_chief:
            storage.write_text(storage.join(self.run_dir, STOP_FILE), json.dumps({"reason": stop_reason}))
        self._write_timeline()
        for sink in self.sinks:
            sink.close()

    def step(self, step: int, run_started: float) -> str | None:
        """One RL step; returns why the run stops here, or None to go on."""
        config = self.config
        window_start, step_started = time.time(), time.perf_counter()
        metrics: dict[str, float] = {}
        rollout = self.rollout(step, metrics)
        local_batches = self.shard(step, rollout, metrics)
        next_threshold = self.learn(local_batches, metrics)
        self.state.skipped_updates += int(metrics.get("train/skipped_updates", 0))
        if self.state.skipped_updates > config.max_skipped_updates:
            # Every rank sees the same count (ZeRO's overflow check is global), so all stop here,
            # before a sync, a checkpoint or an export. Ending the loop, not raising: Ray Train would
            # retry a raised error from the last checkpoint and meet the same NaN again.
            for sink in self.sinks:
                sink.log(step, metrics)
            return (f"step {step}: {self.state.skipped_updates} updates skipped for a NaN/inf loss or grad norm "
                    f"(max_skipped_updates={config.max_skipped_updates}); stopped without saving this step")
        self.sync(step, metrics)
        self.state.entropy_threshold = next_threshold
        self.state.step = step
        self.validate(step, metrics)

        metrics.update(self.state.record_objective(metrics))
        step_seconds = time.perf_counter() - step_started
        metrics["time/step_seconds"] = step_seconds
        if self.is_chief:
            self._drain_busy()
            window_end = time.time()
            metrics.update(self.timeline.step_shares(step, window_start, window_end))
            # Unix seconds, so a benchmark can line up what it samples beside the run (CPU load).
            metrics["time/step_started_at"], metrics["time/step_ended_at"] = window_start, window_end
        metrics.update(orchestration_metrics(metrics))
        self.state.elapsed_seconds = time.perf_counter() - run_started
        eta = self.state.elapsed_seconds / step * (config.total_steps - step)
        if self.is_chief:
            for sink in self.sinks:
                sink.log(step, metrics)
            self.console.say(step_line(step, config.total_steps, metrics, step_seconds, eta))
        self.checkpoint(step, metrics)
        return None

    # --- phases --------------------------------------------------------------------------------

    def rollout(self, step: int, metrics: dict[str, float]) -> PreparedRollout | None:
        """Rank 0: this step's rollout, rows within the allowed staleness only; with overlap,
        the next step's rollout is started before this one is trained on. Other ranks: None."""
        if not self.is_chief:
            return None
        waited = time.perf_counter()
        prepared = self.in_flight.result() if self.in_flight is not None else None
        self.in_flight = None
        if prepared is not None and prepared.step != step:
            raise RuntimeError(f"the rollout in flight is step {prepared.step}'s, not step {step}'s")
        dropped = 0
        if prepared is not None:
            # The learner holds the weights after step - 1's update.
            admitted = admit_by_staleness(prepared.samples, step - 1, self.config.rollout.max_staleness)
            dropped = admitted.dropped
            # Every row too old (a checkpoint of an overlapped run resumed in lockstep): the
            # step's rollout is made again on the current weights.
            prepared = dataclasses.replace(prepared, samples=admitted.kept) if admitted.kept else None
        metrics["time/rollout_wait_seconds"] = time.perf_counter() - waited
        if prepared is None:
            # Made now on the learner's own weights: every row has lag 0, the samples' default.
            prepared = self.make_rollout(step, self.state.entropy_threshold, self.published_version)
            self._drain_busy()
        metrics["rollout/stale_rows_dropped"] = float(dropped)
        metrics["rollout/behaviour_lag_max"] = float(max((s.behaviour_lag for s in prepared.samples), default=0))
        metrics.update(prepared.metrics)
        metrics.update(rollout_time_metrics(metrics["time/rollout_seconds"], self._busy_between(prepared.started, prepared.ended)))
        for problem_id in set(prepared.bad_reference_problems) - self.bad_references_told:
            self.console.say(f"[data] problem {problem_id}: its reference answer cannot be parsed; its samples score 0 "
                             "(counted in reward/grading_bad_reference)")
            self.bad_references_told.add(problem_id)
        if self.config.rollout.max_staleness > 0 and step < self.config.total_steps:
            # The next step's rollout runs on the weights the engines hold now (before this
            # step's update), with the tau of the latest finished learner pass.
            self.in_flight = start_step_rollout(
                self.make_rollout_ref, self.config, step + 1, self.state.entropy_threshold, self.published_version)
        return prepared

    def shard(self, step: int, rollout: PreparedRollout | None, metrics: dict[str, float]) -> list[list[TrainingSample]]:
        """Every rank's local mini-batches, through the object store."""
        shards = None
        if rollout is not None:
            shards = share_rollout(rollout.samples, self.world_size, *_mini_batches_or_error(rollout.samples, self.config, step))
            metrics["transfer/rollout_bytes_per_rank_max"] = float(max(shards.shard_bytes, default=0))
            metrics["transfer/rollout_bytes"] = float(sum(shards.shard_bytes))
        local_batches, fetch_seconds = fetch_shard(exchange(shards), self.rank)
        if self.hooks.shard_record_dir:
            with (Path(self.hooks.shard_record_dir) / f"rank{self.rank}.jsonl").open("a") as record:
                record.write(json.dumps({"step": step, "rank": self.rank, "mini_batches": [
                    [[s.group_id, s.is_mixed, s.response_token_ids, s.weights_version] for s in batch] for batch in local_batches
                ]}) + "\n")
        if step in self.hooks.nan_loss_at_steps:
            local_batches = [[dataclasses.replace(s, advantage=float("nan")) for s in batch] for batch in local_batches]
        (metrics["time/rollout_fetch_seconds_max"],) = all_reduce_values([fetch_seconds], ReduceOp.MAX)
        return local_batches

    def learn(self, local_batches: list[list[TrainingSample]], metrics: dict[str, float]) -> float:
        """Old log-probs, entropies and the PPO update on this rank's shard; returns the tau
        that the learner pass of this step sets (the exact global quantile)."""
        learn_started, busy_from = time.perf_counter(), time.time()
        flat = [s for batch in local_batches for s in batch]
        learned = self.learner.learn(local_batches)
        metrics.update(learned.metrics)
        metrics["time/learn_seconds"] = time.perf_counter() - learn_started
        self.timeline.add("learners", [(busy_from, time.time())])
        # tau from the pre-update policy's on-policy response-token entropies (MENTOR.md section 2).
        on_policy = [e for s, e in zip(flat, learned.entropies) if s.is_on_policy]
        next_threshold, all_entropies = global_entropy_threshold(on_policy, self.config)
        metrics.update(entropy_metrics(all_entropies))
        # On-policy samples made by the weights the learner held before the update must agree
        # with its log-probs, or the engines serve wrong weights (a sync bug). Stale samples
        # differ by design: their gap is the decoupled objective's business, reported apart.
        for name, lagged in (("train/behaviour_log_prob_gap_max", False), ("train/stale_behaviour_log_prob_gap_max", True)):
            gaps = [
                (lp - torch.tensor(s.behaviour_log_probs)).abs()
                for s, lp in zip(flat, learned.old_log_probs)
                if s.is_on_policy and (s.behaviour_lag > 0) == lagged and s.behaviour_log_probs and len(s.behaviour_log_probs) == len(lp)
            ]
            (largest_gap,) = all_reduce_values([float(torch.cat(gaps).max()) if gaps else -1.0], ReduceOp.MAX)
            if largest_gap >= 0:
                metrics[name] = largest_gap
        return next_threshold

    def sync(self, step: int, metrics: dict[str, float]) -> None:
        """The updated weights to the engines, in place, between generation calls."""
        sync_started, busy_from = time.perf_counter(), time.time()
        weights = self.learner.export_weights()
        metrics["time/export_seconds"] = time.perf_counter() - sync_started
        self.timeline.add("learners", [(busy_from, time.time())])
        if self.is_chief and self.in_flight is not None:
            # The engines are generating the next step on the old weights: let them finish.
            waited = time.perf_counter()
            self.in_flight.result()
            metrics["time/in_flight_wait_seconds"] = time.perf_counter() - waited
        metrics.update(self._publish(step, weights))
        metrics["time/sync_seconds"] = time.perf_counter() - sync_started

    def validate(self, step: int, metrics: dict[str, float]) -> None:
        config = self.config
        if not (self.is_chief and self.inputs.eval_problems and config.eval.every_steps):
            return
        if step % config.eval.every_steps == 0 or step == config.total_steps:
            started = time.perf_counter()
            metrics.update(evaluate_policy(self.inputs.eval_problems, config, self.roles, step, self.published_version))
            metrics["time/validate_seconds"] = time.perf_counter() - started

    def checkpoint(self, step: int, metrics: dict[str, float]) -> None:
        """Every rank writes its DeepSpeed shard into one folder; rank 0 adds the loop state and
        a finished next-step rollout. The report carries the step: a sweep's scheduler counts
        steps, not reports (a resumed run reports some steps twice)."""
        report = {**metrics, "step": step}
        if not (step % self.config.checkpoint.every_steps == 0 or step == self.config.total_steps):
            ray.train.report(report)
            return
        with tempfile.TemporaryDirectory() as folder:
            state = dataclasses.asdict(self.state)
            self.learner.save_checkpoint(Path(folder) / "deepspeed", client_state=state)
            if self.is_chief:
                (Path(folder) / CLIENT_STATE_FILE).write_text(json.dumps(state))
                if self.in_flight is not None:
                    (Path(folder) / IN_FLIGHT_ROLLOUT_FILE).write_text(self.in_flight.result().to_json())
                self._write_timeline()
            ray.train.report(report, checkpoint=ray.train.Checkpoint.from_directory(folder))

    # --- helpers -------------------------------------------------------------------------------

    def _publish(self, version: int, weights: dict[str, torch.Tensor] | None) -> dict[str, float]:
        reports: dict[str, float] = {}
        if self.is_chief:
            reports = self.weights_out.publish(version, weights)
            every = self.config.sync.verify_every_steps
            if every and version % every == 0:
                started = time.perf_counter()
                reports["sync/engines_agree"] = float(self._check_engines_agree(version, weights))
                reports["time/verify_seconds"] = time.perf_counter() - started
        del weights
        self.published_version = version
        return reports

    def _check_engines_agree(self, version: int, weights: dict[str, torch.Tensor]) -> int:
        """vLLM's weight checker across engines after a sync. Engines that disagree get the
        weights again by object store; a second disagreement stops the run."""
        timeout_s = self.config.sync.timeout_s
        try:
            return check_engines_agree(self.roles, timeout_s)
        except WeightSyncError as error:
            self.console.say(f"[sync] after v{version}: {error}; sending v{version} again by object store")
        self.roles.publish_weights(version, weights)
        return check_engines_agree(self.roles, timeout_s)

    def _drain_busy(self) -> None:
        """The engines' and graders' busy intervals onto the timeline. Only when no rollout is
        in flight: an engine answers between calls, so asking mid-rollout would wait for it."""
        if self.in_flight is not None and not self.in_flight.done():
            return
        for role, intervals in self.roles.busy_intervals().items():
            if role in self.timeline.busy:
                self.timeline.add(role, intervals)

    def _busy_between(self, start: float, end: float) -> dict[str, list[tuple[float, float]]]:
        engines = [i for role in ("policy_engines", "mixed_engines") for i in self.timeline.busy.get(role, [])]
        return {"engines": clipped(engines, start, end), "graders": clipped(self.timeline.busy.get("graders", []), start, end)}

    def _settle_in_flight(self) -> None:
        """A rollout still in flight when the loop ends (a stop, an error) is waited for, so no
        engine call outlives the loop; its samples are not trained on."""
        if self.in_flight is not None:
            # The loop is already ending for its own reason: the rollout's error would hide it.
            with contextlib.suppress(Exception):
                self.in_flight.result()

    def _write_timeline(self) -> None:
        if self.is_chief:
            storage.write_text(storage.join(self.run_dir, TIMELINE_FILE), self.timeline.chrome_trace())


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Ray Train's entry point: `loop_config` holds {"inputs": LoopInputs, "hooks": LoopHooks}."""
    TrainingLoop(loop_config["inputs"], loop_config.get("hooks") or LoopHooks()).run()
