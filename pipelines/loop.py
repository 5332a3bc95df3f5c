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

from mentor_ray.config import MentorConfig, config_from_dict
from mentor_ray.core.guidance import guidance_alpha, next_entropy_threshold
from mentor_ray.distributed import all_gather_variable_length, broadcast_object
from mentor_ray.learner import PolicyLearner, TrainingSample, shard_for_rank
from mentor_ray.metrics import (
    build_sinks,
    objective_metrics,
    entropy_metrics,
    mixture_metrics,
    orchestration_metrics,
    read_metrics,
    rollout_metrics,
    rollout_time_metrics,
)
from mentor_ray.prompt_schedule import PromptSchedule
from mentor_ray.run_inputs import RunPaths, TokenizedProblem
from pipelines.console import ConsoleLines, step_line
from pipelines.evaluation import evaluate_policy
from pipelines.roles import RolloutRoles
from pipelines.rollout import PromptRecord, RolloutPlan, run_rollout

CLIENT_STATE_FILE = "loop_state.json"
# Written by rank 0 when the loop stops on purpose (too many NaN updates); the driver reads it.
STOP_FILE = "stopped.json"
PLACEMENT_GROUP_FILE = "placement_group.json"


def global_entropy_threshold(local_on_policy_entropies: list[torch.Tensor], config: MentorConfig) -> tuple[float, torch.Tensor]:
    """tau for the next step, the exact quantile over every rank's on-policy response-token
    entropies (MENTOR.md section 2), and those entropies. Collective."""
    local = torch.cat(local_on_policy_entropies) if local_on_policy_entropies else torch.zeros(0)
    everything = all_gather_variable_length(local.float())
    return next_entropy_threshold(everything, config.guidance.entropy_quantile, config.guidance.tau_floor), everything


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


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    config: MentorConfig = config_from_dict(loop_config["config"], "run config")
    paths = RunPaths(**loop_config["paths"])
    roles: RolloutRoles = loop_config["roles"]
    train_problems: list[TokenizedProblem] = loop_config["train_problems"]
    eval_problems: list[TokenizedProblem] = loop_config["eval_problems"]
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
    learner = PolicyLearner(paths.policy_dir, config, world_size, rank)
    schedule = PromptSchedule(len(train_problems), config.rollout.prompts_per_step, config.seed, config.data.shuffle)
    prompts_per_batch = rollout_batch_prompts(config)

    state = {
        "step": 0, "entropy_threshold": config.guidance.tau_init, "skipped_updates": 0, "elapsed_seconds": 0.0,
        "accuracy_window": [], "val_accuracy": None,
    }
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None and loop_config.get("resume_from"):
        checkpoint = ray.train.Checkpoint(loop_config["resume_from"])
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

    run_dir = Path(paths.run_dir)
    if is_chief:
        # The learners' placement group, named in the run folder: a sweep that stops this run
        # early removes it (Ray Train's own cleaner cannot reach a ray.init() local instance).
        group = ray.util.get_current_placement_group()
        if group is not None:
            (run_dir / PLACEMENT_GROUP_FILE).write_text(json.dumps({"id": group.id.hex()}))
    sinks = build_sinks(config.logging.sinks, run_dir, config.logging.project, run_dir.name, config.to_dict()) if is_chief else []
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

        # 1. Rollouts on rank 0, shared with every rank through the object store.
        rows_ref = None
        if is_chief:
            prompts = [
                PromptRecord(position, train_problems[i].problem_id, train_problems[i].answer, train_problems[i].prompt_token_ids)
                for position, i in enumerate(schedule.indices_for_step(step))
            ]
            plan = RolloutPlan(
                step=step, seed=config.seed, n_on_policy=config.rollout.n_on_policy, n_mixed=n_mixed,
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
            rows_ref = [ray.put(rollout.rows)]
        rows = ray.get(broadcast_object(rows_ref)[0])
        samples = [TrainingSample.from_rollout_row(row) for row in rows]
        if step in loop_config.get("nan_loss_at_steps", ()):
            # Fault injection for tests: a NaN advantage makes every loss of this step NaN.
            samples = [dataclasses.replace(s, advantage=float("nan")) for s in samples]
        surviving_prompts = len({s.group_id for s in samples})
        if config.optimizer.mini_batch_samples is None and surviving_prompts < config.rollout.prompts_per_step // config.optimizer.mini_batch_prompts:
            raise RuntimeError(f"step {step}: too few prompts survived the rollout to fill the mini-batches of optimizer.mini_batch_prompts")
        mini_batch_count = config.mini_batch_count(len(samples), surviving_prompts)

        # 2. Old log-probs, entropies and the PPO update on this rank's shard.
        learn_started = time.perf_counter()
        local_batches = shard_for_rank(samples, rank, world_size, mini_batch_count)
        flat = [s for batch in local_batches for s in batch]
        learned = learner.learn(local_batches)
        update_metrics = learned.metrics
        metrics.update(update_metrics)
        metrics["time/learn_seconds"] = time.perf_counter() - learn_started

        # 3. tau for the next step: the exact global quantile over every rank's on-policy
        # response-token entropies (MENTOR.md section 2), from the pre-update policy.
        on_policy = [e for s, e in zip(flat, learned.entropies) if not s.is_mixed]
        next_threshold, all_entropies = global_entropy_threshold(on_policy, config)
        metrics.update(entropy_metrics(all_entropies))
        # On-policy samples came from the engine holding the weights the learner held before
        # the update: their log-probs must agree, or the engines serve stale weights (a sync bug).
        gaps = [
            (lp - torch.tensor(s.behaviour_log_probs)).abs()
            for s, lp in zip(flat, learned.old_log_probs)
            if not s.is_mixed and s.behaviour_log_probs and len(s.behaviour_log_probs) == len(lp)
        ]
        if gaps:
            metrics["train/behaviour_log_prob_gap_max"] = float(torch.cat(gaps).max())
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
        history = read_metrics(run_dir / "metrics.jsonl") if is_chief and (run_dir / "metrics.jsonl").is_file() else []
        ray.train.report(history[-1] if history else {})
    if stop_reason is None:
        learner.save_hf(run_dir / "final_model")
    elif is_chief:
        (run_dir / STOP_FILE).write_text(json.dumps({"reason": stop_reason}))
    for sink in sinks:
        sink.close()
