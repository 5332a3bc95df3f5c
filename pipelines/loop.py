"""The MENTOR RL loop, run by every Ray Train worker (`train_loop_per_worker`).

Per step: rollouts (rank 0, Ray Data) -> shard to ranks -> old log-probs and entropies ->
next tau (exact global quantile) -> PPO update -> weight sync to the engines (in place) ->
metrics -> validation -> checkpoint, reported through `ray.train.report`. The learner is blind
to the algorithm; everything MENTOR-specific is in `mentor_ray.core` and the rollout plan.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import tempfile
import time
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
from mentor_ray.core.guidance import guidance_alpha, next_entropy_threshold
from mentor_ray.core.methods import method_for
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
    mixture_metrics,
    objective_metrics,
    orchestration_metrics,
    read_metrics,
    rollout_metrics,
    rollout_time_metrics,
)
from mentor_ray.data.prompt_schedule import PromptSchedule
from mentor_ray.data.run_inputs import RunPaths, TokenizedProblem, node_model_dir
from pipelines.console import ConsoleLines, step_line
from pipelines.evaluation import evaluate_policy
from pipelines.roles import RolloutRoles, process_whereabouts
from pipelines.rollout import PromptRecord, RolloutPlan, run_rollout
from pipelines.rollout_shards import exchange, fetch_shard, share_rollout

CLIENT_STATE_FILE = "loop_state.json"
# Written by rank 0 when the loop stops on purpose (too many NaN updates); the driver reads it.
STOP_FILE = "stopped.json"
PLACEMENT_GROUP_FILE = "placement_group.json"
PLACEMENT_FILE = "placement.json"
FINAL_MODEL_FOLDER = "final_model"


def global_entropy_threshold(local_on_policy_entropies: list[torch.Tensor], config: MentorConfig) -> tuple[float, torch.Tensor]:
    """tau for the next step, the exact quantile over every rank's on-policy response-token
    entropies (MENTOR.md section 2), and those entropies. Collective."""
    local = torch.cat(local_on_policy_entropies) if local_on_policy_entropies else torch.zeros(0)
    everything = all_gather_variable_length(local.float())
    return next_entropy_threshold(everything, config.guidance.entropy_quantile, config.guidance.tau_floor), everything


def _expert_trace(traces: dict[str, tuple[list[int], str]], problem_id: str) -> tuple[list[int] | None, str | None]:
    return traces.get(problem_id, (None, None))


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


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    config: MentorConfig = config_from_dict(loop_config["config"], "run config")
    method = method_for(config.algorithm)
    paths = RunPaths(**loop_config["paths"])
    roles: RolloutRoles = loop_config["roles"]
    train_problems: list[TokenizedProblem] = loop_config["train_problems"]
    eval_problems: list[TokenizedProblem] = loop_config["eval_problems"]
    # problem id -> (response token ids, text) of its stored expert trace, for a method whose
    # groups hold one (LUFFY); empty otherwise.
    expert_traces: dict[str, tuple[list[int], str]] = loop_config.get("expert_traces") or {}
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    is_chief = rank == 0
    _seed_everything(config.seed + rank)
    if not config.scaling.use_gpu:
        torch.set_num_threads(config.cpu_threads()[1])
    console: ConsoleLines = loop_config.get("console") or ConsoleLines(None)

    # One console line per step says where the run is; per-operator bars from inside a
    # worker arrive as interleaved log lines and bury it.
    data_context = ray.data.DataContext.get_current()
    data_context.enable_progress_bars = False
    # Per-execution stats logging costs ~20 ms a step and nobody reads it here.
    data_context.enable_auto_log_stats = False
    learner = PolicyLearner(node_model_dir(paths.policy_ref or paths.policy_dir, "model.policy_path"), config, world_size, rank)
    schedule = PromptSchedule(len(train_problems), config.rollout.prompts_per_step, config.seed, config.data.shuffle)
    prompts_per_batch = rollout_batch_prompts(config)

    state = {
        "step": 0, "entropy_threshold": config.guidance.tau_init, "skipped_updates": 0, "elapsed_seconds": 0.0,
        "accuracy_window": [], "val_accuracy": None,
    }
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None and loop_config.get("resume_from"):
        filesystem, path = storage.resolve(loop_config["resume_from"])
        checkpoint = ray.train.Checkpoint(path, filesystem=filesystem)
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            loaded = learner.load_checkpoint(Path(folder) / "deepspeed")
        # DeepSpeed returns its own bookkeeping beside ours; keep only the loop's keys.
        state.update({key: loaded[key] for key in state if key in loaded})
    if is_chief and checkpoint is not None:
        console.say(f"resuming at step {state['step']} from {checkpoint.path}")
    # After a resume or a worker restart the engines may hold weights from later steps than
    # the checkpoint: every (re)start publishes the learner's weights first.
    weights = learner.export_weights()
    if is_chief:
        roles.publish_weights(state["step"], weights)
    del weights
    weights_version = state["step"]

    run_dir = paths.run_dir  # a local path or a URI: every file goes through mentor_ray.storage
    learners = all_gather_objects({**process_whereabouts(), "role": f"learner rank {rank}", "model_dirs": {"policy_dir": str(learner.model_dir)}})
    if is_chief:
        # Where every role landed and what it read: the run's placement record.
        storage.write_text(storage.join(run_dir, PLACEMENT_FILE), json.dumps({"driver": loop_config.get("driver"), "learners": learners, "rollout": roles.whereabouts()}, indent=2))
        # The learners' placement group, named in the run folder: a sweep that stops this run
        # early removes it (Ray Train's own cleaner cannot reach a ray.init() local instance).
        group = ray.util.get_current_placement_group()
        if group is not None:
            storage.write_text(storage.join(run_dir, PLACEMENT_GROUP_FILE), json.dumps({"id": group.id.hex()}))
    sinks = build_sinks(
        config.logging.sinks, run_dir, config.logging.project, paths.run_name, config.to_dict(), resumed_at=state["step"],
    ) if is_chief else []
    if is_chief and state["step"] == 0 and eval_problems and config.eval.every_steps:
        # Step 0: the initial policy's validation, so every later number has its baseline.
        initial = evaluate_policy(eval_problems, config, roles, 0, weights_version)
        state["val_accuracy"] = initial.get("val/greedy_accuracy")
        for sink in sinks:
            sink.log(0, initial)
        console.say(f"step 0/{config.total_steps} | initial policy val {initial.get('val/greedy_accuracy', float('nan')):.3f}")
    bad_references_told: set[str] = set()
    run_started = time.perf_counter() - state["elapsed_seconds"]
    first_step = state["step"] + 1
    stop_reason: str | None = None
    for step in range(first_step, config.total_steps + 1):
        step_started = time.perf_counter()
        alpha = guidance_alpha(step, config.guidance.alpha_0, config.guidance.decay_steps)
        n_mixed = config.rollout.n_mixed if alpha > 0 else 0
        metrics: dict[str, float] = {"guidance/alpha": alpha, "guidance/entropy_threshold": state["entropy_threshold"]}

        # 1. Rollouts on rank 0; each rank fetches its own shard from the object store.
        shards = None
        if is_chief:
            prompts = [
                PromptRecord(position, train_problems[i].problem_id, train_problems[i].answer, train_problems[i].prompt_token_ids,
                             *_expert_trace(expert_traces, train_problems[i].problem_id))
                for position, i in enumerate(schedule.indices_for_step(step))
            ]
            plan = RolloutPlan(
                step=step, seed=config.seed, n_on_policy=config.rollout.n_on_policy - method.expert_traces_per_group,
                n_mixed=n_mixed, advantages=method.advantages, expert_traces_per_group=method.expert_traces_per_group,
                max_new_tokens=config.rollout.max_response_tokens, temperature=config.rollout.temperature,
                top_p=config.rollout.top_p, entropy_threshold=state["entropy_threshold"], alpha=alpha,
                weights_version=weights_version, prompts_per_batch=prompts_per_batch,
            )
            rollout = run_rollout(prompts, plan, roles)
            metrics.update(rollout_time_metrics(rollout.seconds, roles.busy_intervals()))
            metrics.update(rollout_metrics(rollout.rows))
            metrics.update(mixture_metrics(rollout.mixture))
            metrics["rollout/dropped_prompts"] = float(rollout.dropped_prompts)
            for status, count in rollout.grading.items():
                metrics[f"reward/grading_{status}"] = float(count)
            for problem_id in set(rollout.bad_reference_problems) - bad_references_told:
                console.say(f"[data] problem {problem_id}: its reference answer cannot be parsed; its samples score 0 "
                            "(counted in reward/grading_bad_reference)")
                bad_references_told.add(problem_id)
            metrics["time/rollout_seconds"] = rollout.seconds
            metrics["time/rollout_tokens_per_second"] = rollout.generated_tokens / max(rollout.seconds, 1e-9)
            samples = [TrainingSample.from_rollout_row(row) for row in rollout.rows]
            shards = share_rollout(samples, world_size, *_mini_batches_or_error(samples, config, step))
            metrics["transfer/rollout_bytes_per_rank_max"] = float(max(shards.shard_bytes, default=0))
            metrics["transfer/rollout_bytes"] = float(sum(shards.shard_bytes))
        shards = exchange(shards)
        local_batches, fetch_seconds = fetch_shard(shards, rank)
        if loop_config.get("shard_record_dir"):
            # Inspection for tests: what this rank trained on, sample by sample.
            with (Path(loop_config["shard_record_dir"]) / f"rank{rank}.jsonl").open("a") as record:
                record.write(json.dumps({"step": step, "rank": rank, "mini_batches": [
                    [[s.group_id, s.is_mixed, s.response_token_ids] for s in batch] for batch in local_batches
                ]}) + "\n")
        if step in loop_config.get("nan_loss_at_steps", ()):
            # Fault injection for tests: a NaN advantage makes every loss of this step NaN.
            local_batches = [[dataclasses.replace(s, advantage=float("nan")) for s in batch] for batch in local_batches]
        (metrics["time/rollout_fetch_seconds_max"],) = all_reduce_values([fetch_seconds], ReduceOp.MAX)

        # 2. Old log-probs, entropies and the PPO update on this rank's shard.
        learn_started = time.perf_counter()
        flat = [s for batch in local_batches for s in batch]
        learned = learner.learn(local_batches)
        update_metrics = learned.metrics
        metrics.update(update_metrics)
        metrics["time/learn_seconds"] = time.perf_counter() - learn_started

        # 3. tau for the next step: the exact global quantile over every rank's on-policy
        # response-token entropies (MENTOR.md section 2), from the pre-update policy.
        on_policy = [e for s, e in zip(flat, learned.entropies) if s.is_on_policy]
        next_threshold, all_entropies = global_entropy_threshold(on_policy, config)
        metrics.update(entropy_metrics(all_entropies))
        # On-policy samples came from the engine holding the weights the learner held before
        # the update: their log-probs must agree, or the engines serve stale weights (a sync bug).
        gaps = [
            (lp - torch.tensor(s.behaviour_log_probs)).abs()
            for s, lp in zip(flat, learned.old_log_probs)
            if s.is_on_policy and s.behaviour_log_probs and len(s.behaviour_log_probs) == len(lp)
        ]
        (largest_gap,) = all_reduce_values([float(torch.cat(gaps).max()) if gaps else -1.0], ReduceOp.MAX)
        if largest_gap >= 0:
            metrics["train/behaviour_log_prob_gap_max"] = largest_gap
        state["skipped_updates"] += int(update_metrics.get("train/skipped_updates", 0))
        if state["skipped_updates"] > config.max_skipped_updates:
            # Every rank sees the same count (ZeRO's overflow check is global), so all stop here,
            # before a sync, a checkpoint or an export. Ending the loop, not raising: Ray Train would
            # retry a raised error from the last checkpoint and meet the same NaN again.
            stop_reason = (
                f"step {step}: {state['skipped_updates']} updates skipped for a NaN/inf loss or grad norm "
                f"(max_skipped_updates={config.max_skipped_updates}); stopped without saving this step"
            )
            for sink in sinks:
                sink.log(step, metrics)
            break

        # 4. Weight sync: learner -> engines, in place.
        sync_started = time.perf_counter()
        weights = learner.export_weights()
        metrics["time/export_seconds"] = time.perf_counter() - sync_started
        if is_chief:
            metrics.update(roles.publish_weights(step, weights))
        del weights
        weights_version = step
        metrics["time/sync_seconds"] = time.perf_counter() - sync_started
        state["entropy_threshold"] = next_threshold
        state["step"] = step

        # 5. Validation.
        if is_chief and eval_problems and config.eval.every_steps and (step % config.eval.every_steps == 0 or step == config.total_steps):
            validate_started = time.perf_counter()
            metrics.update(evaluate_policy(eval_problems, config, roles, step, weights_version))
            metrics["time/validate_seconds"] = time.perf_counter() - validate_started

        metrics.update(objective_metrics(state, metrics))
        step_seconds = time.perf_counter() - step_started
        metrics["time/step_seconds"] = step_seconds
        metrics.update(orchestration_metrics(metrics))
        state["elapsed_seconds"] = time.perf_counter() - run_started
        eta = state["elapsed_seconds"] / step * (config.total_steps - step)
        if is_chief:
            for sink in sinks:
                sink.log(step, metrics)
            console.say(step_line(step, config.total_steps, metrics, step_seconds, eta))

        # 6. Checkpoint (every rank writes its DeepSpeed shard into one folder). The report
        # carries the step: a sweep's scheduler counts steps, not reports (a resumed run
        # reports some steps twice).
        report = {**metrics, "step": step}
        if step % config.checkpoint.every_steps == 0 or step == config.total_steps:
            with tempfile.TemporaryDirectory() as folder:
                learner.save_checkpoint(Path(folder) / "deepspeed", client_state=dict(state))
                if is_chief:
                    (Path(folder) / CLIENT_STATE_FILE).write_text(json.dumps(state))
                ray.train.report(report, checkpoint=ray.train.Checkpoint.from_directory(folder))
        else:
            ray.train.report(report)

    if first_step > config.total_steps:
        # Resumed at the last step (a run interrupted after its final checkpoint): report the
        # last step again, so whoever follows the reports (a Tune trial) sees how it ended.
        metrics_file = storage.join(run_dir, METRICS_FILE)
        history = read_metrics(metrics_file) if is_chief and storage.exists(metrics_file) else []
        ray.train.report(history[-1] if history else {})
    if stop_reason is None:
        save_final_model(learner, run_dir, is_chief)
    elif is_chief:
        storage.write_text(storage.join(run_dir, STOP_FILE), json.dumps({"reason": stop_reason}))
    for sink in sinks:
        sink.close()
