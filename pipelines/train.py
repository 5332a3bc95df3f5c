"""`python -m pipelines.train [--config FILE] [key=value ...]`: one MENTOR (or GRPO) run.

With no arguments it runs the embedded default: MENTOR on the toy world, on a local Ray
instance, on CPU (`pipelines/recipes/toy_mentor.yaml`). On a cluster, submit it with
`ray job submit --working-dir . -- python -m pipelines.train --config configs/<recipe>.yaml`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shutil
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mentor_ray.core.methods import METHODS, method_overrides

RECIPES = Path(__file__).parent / "recipes"
DEFAULT_RECIPE = RECIPES / "toy_mentor.yaml"
LOG_NOTE = "run log: "


@dataclass
class RunSummary:
    run_dir: str
    steps: int
    seconds: float
    final_model: str
    metrics: dict[str, float]
    # Why the loop stopped before total_steps (None for a finished run).
    stopped: str | None = None
    # Mean busy share of each role over the run's steps, the overlap's, and the idlest role.
    busy_shares: dict[str, float] = field(default_factory=dict)
    idlest_role: str | None = None


def find_checkpoint(path: str) -> str:
    """A checkpoint folder, or the newest checkpoint under a run folder (local path or URI)."""
    from mentor_ray import storage
    from mentor_ray.config import ConfigError
    from pipelines.loop import CLIENT_STATE_FILE

    root = path if storage.is_uri(path) else str(Path(path).expanduser())
    try:
        if storage.is_file(storage.join(root, CLIENT_STATE_FILE)):
            return root
        states = [name for name in storage.list_files(root, recursive=True) if name.rpartition("/")[2] == CLIENT_STATE_FILE]
    except storage.StorageError as error:
        raise ConfigError(f"checkpoint.resume_from={path!r}: {error}") from error
    if not states:
        raise ConfigError(f"checkpoint.resume_from={path!r}: no checkpoint (no {CLIENT_STATE_FILE}) there")
    newest = max(states, key=lambda name: json.loads(storage.read_text(storage.join(root, name)))["step"])
    return storage.join(root, newest.rpartition("/")[0])


def quiet_state_api_warnings() -> None:
    """Worker setup hook for the dashboard-less local instance: Ray Train's placement-group
    cleaner polls the state API, which lives in the dashboard, and warns on every poll (over a
    hundred lines per run, burying the one console line per step). Only that logger is quieted."""
    import logging

    logging.getLogger("ray.train.v2._internal.execution.controller.placement_group_cleaner").setLevel(logging.ERROR)


def _warm_up_quietly() -> None:
    from pipelines.rollout import warm_up_stage_workers

    try:
        warm_up_stage_workers()
    except Exception:
        pass


def _start_line(config, run_dir: str, paths, log_file: Path) -> str:
    from mentor_ray.core.methods import algorithm_name

    algorithm = algorithm_name(config)
    engines = f"{config.scaling.num_policy_engines} policy" + (
        f" + {config.scaling.num_mixed_engines} mixed" if config.guided else ""
    )
    return (
        f"{algorithm} run {run_dir} | policy {paths.policy_dir} | {config.total_steps} steps of "
        f"{config.rollout.prompts_per_step} prompts x {config.rollout.n_on_policy}+{config.rollout.n_mixed} | "
        f"setting up {engines} engines, {config.scaling.num_learner_workers} DeepSpeed learner(s) | "
        f"weights by {sync_route(config)} | log {log_file}"
    )


def sync_route(config) -> str:
    """How the weights travel, in words (sync.transport; pipelines/weight_sync.py)."""
    if config.sync.transport == "collective":
        return f"{'NCCL' if config.scaling.use_gpu else 'gloo'} broadcast (object store as fallback)"
    return "object store"


def failure_line(error: BaseException) -> str:
    """One line for a failure after start-up (an engine or learner that failed): the innermost
    cause's type and first line, and where the whole traceback is."""
    log = next((note[len(LOG_NOTE):] for note in getattr(error, "__notes__", ()) if note.startswith(LOG_NOTE)), None)
    while isinstance(getattr(error, "cause", None), BaseException) or error.__cause__ is not None:
        error = error.cause if isinstance(getattr(error, "cause", None), BaseException) else error.__cause__
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if type(error).__module__.startswith("ray.") and lines:
        # Ray's own errors wrap the actor's traceback; its last "SomeError: message" says what.
        raised = [line for line in lines if re.match(r"^[\w.]+(Error|Exception): ", line)]
        return f"{type(error).__name__}: {(raised or lines)[-1]}" + (f" (traceback in {log})" if log else "")
    where = f" (traceback in {log})" if log else ""
    return f"{type(error).__name__}: {lines[0] if lines else 'no message'}{where}"


def summary_line(summary: RunSummary) -> str:
    """The last console line; shows only numbers the run has (no validation, no 'nan')."""
    m = summary.metrics
    parts = [f"done: {summary.steps} steps in {summary.seconds / 60:.1f} min"]
    if "val/greedy_accuracy" in m:
        parts.append(f"final val greedy accuracy {m['val/greedy_accuracy']:.3f}")
    if "rollout/on_policy_accuracy" in m:
        parts.append(f"last on-policy accuracy {m['rollout/on_policy_accuracy']:.3f}")
    if summary.idlest_role is not None:
        parts.append(f"idlest role {summary.idlest_role.replace('_', ' ')} (busy {summary.busy_shares[summary.idlest_role]:.0%} of the time, "
                     f"overlap {summary.busy_shares.get('overlap', 0.0):.0%})")
    parts += [f"run folder {summary.run_dir}", f"model {summary.final_model}"]
    return " | ".join(parts)


def connect_ray(config, address: str | None = None, log_to_driver: bool = True, dashboard: bool = False) -> None:
    """Joins the Ray cluster at `address` (or RAY_ADDRESS), else starts a local instance
    (without the dashboard unless asked: a single run does not need its state API, and it
    costs start-up time). A no-op where Ray is already up, as inside a Tune trial."""
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=log_to_driver)
    else:
        ray.init(
            num_cpus=config.scaling.local_num_cpus,
            include_dashboard=dashboard,
            log_to_driver=log_to_driver,
            runtime_env={"worker_process_setup_hook": "pipelines.train.quiet_state_api_warnings"},
        )


def run_training(
    config,
    *,
    ray_address: str | None = None,
    callbacks: tuple = (),
    hooks=None,
    verbose: bool = False,
    cluster_file: str | None = None,
    warm_actors=None,
) -> RunSummary:
    """One whole loop from a typed config; returns its summary. The CLI and a Tune trial both
    call this. A loop that stops itself (too many NaN updates) returns too, with
    `summary.stopped` saying why; a config that cannot run raises ConfigError before any work.

    callbacks: Ray Train callbacks (a Tune trial passes the one that forwards each step's report).
    hooks: `pipelines.loop.LoopHooks`, the loop's test-only fault injection and inspection.
    verbose: library logs on the console instead of the run folder's run.log.
    cluster_file: the Ray cluster file a GPU recipe is planned on (pipelines.plan; default the
        repository's cluster.yaml).
    warm_actors: a `pipelines.roles.WarmActors` that outlives the run: the run takes over its
        idle engines and graders built alike and hands its own back at the end (a caller that
        makes several runs in turn on one Ray instance).
    """
    from mentor_ray import storage
    from mentor_ray.config import save_config
    from mentor_ray.data.run_inputs import make_run_dir, resolve_run_paths
    from pipelines.console import RUN_LOG_FILE, DriverConsole
    from pipelines.plan import check_plan

    started = time.perf_counter()
    check_plan(config, cluster_file)  # a recipe that cannot fit, refused before anything starts
    resume_from = find_checkpoint(config.checkpoint.resume_from) if config.checkpoint.resume_from else None
    run_dir = make_run_dir(config)
    paths = resolve_run_paths(config, run_dir)
    save_config(config, storage.join(run_dir, "config.yaml"))
    # The driver's own files (run.log, plots) need a local folder: the run folder itself, or,
    # for a run folder on shared storage, a staging folder uploaded and removed at the end.
    on_storage = storage.is_uri(run_dir)
    local_dir = Path(tempfile.mkdtemp(prefix="mentor-run-")) if on_storage else Path(run_dir)
    console = DriverConsole(local_dir, verbose=verbose)
    console.say(_start_line(config, run_dir, paths, storage.join(run_dir, RUN_LOG_FILE) if on_storage else local_dir / RUN_LOG_FILE))
    console.quiet_libraries()
    # A run that is killed (a sweep's scheduler stops trials that way) never reaches `finally`:
    # the staged log is mirrored every so often, so the run folder keeps most of it.
    mirror = StagingMirror(local_dir, run_dir) if on_storage else None
    log_file = storage.join(run_dir, RUN_LOG_FILE)
    try:
        summary = _run(
            config, run_dir, paths, resume_from, console, ray_address, tuple(callbacks), hooks, started, warm_actors,
        )
        if summary.stopped is not None:
            console.say(f"stopped: {summary.stopped}; run folder {summary.run_dir}")
        return summary
    except Exception as error:
        traceback.print_exc()  # into run.log: the driver's standard error is there while quiet
        error.add_note(f"{LOG_NOTE}{log_file}")
        raise
    finally:
        console.close()
        if mirror is not None:
            mirror.stop()
            storage.upload_dir(local_dir, run_dir)
            shutil.rmtree(local_dir, ignore_errors=True)


class StagingMirror:
    """Uploads the driver's staging folder to the run folder every `every_s` seconds."""

    def __init__(self, local_dir: Path, run_dir: str, every_s: float = 15.0) -> None:
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._loop, args=(local_dir, run_dir, every_s), name="run-log-mirror", daemon=True)
        self._thread.start()

    def _loop(self, local_dir: Path, run_dir: str, every_s: float) -> None:
        from mentor_ray import storage

        while not self._stopped.wait(every_s):
            try:
                storage.upload_dir(local_dir, run_dir)
            except storage.StorageError:
                continue  # the final upload says what is wrong, if it still is

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join(timeout=60)


def _later_hinted_problems(config, paths, tokenizer, traces, problems, say, selected=None) -> tuple[int, list] | None:
    """QuestA's second stage: (its first step, the same problems in the same order with
    algorithm.later_hint_fraction hints), or None for one stage. Which problems are kept does
    not depend on the fraction (a short or too long hint keeps the plain prompt in place), so
    the prompt schedule's indices mean the same problems in both stages."""
    from mentor_ray.data.hints import hinted_tokenized_problems

    if config.algorithm.later_hint_step is None:
        return None
    later_config = dataclasses.replace(config, algorithm=dataclasses.replace(
        config.algorithm, hint_fraction=config.algorithm.later_hint_fraction))
    later, _ = hinted_tokenized_problems(later_config, paths, tokenizer, traces, say, selected)
    if [p.problem_id for p in later] != [p.problem_id for p in problems]:
        raise RuntimeError("QuestA's two hint stages kept different problems")  # hints.py keeps them alike
    say(f"[data] questa: hints of {config.algorithm.hint_fraction:.0%} of the solution until step "
        f"{config.algorithm.later_hint_step - 1}, then {config.algorithm.later_hint_fraction:.0%}")
    return config.algorithm.later_hint_step, later


def _training_problems(config, paths, tokenizer, say) -> tuple[list, dict[str, float], dict[str, tuple[list[int], str]], tuple[int, list] | None]:
    """The tokenized training problems as the method wants them, their counts, the stored
    expert trace of each problem for a method that puts one in its groups, and a later stage's
    problems (QuestA's curriculum: its first step and the problems). A method that needs
    expert traces builds them first (or reuses the stored ones: mentor_ray.data.expert_traces)."""
    from mentor_ray.core.methods import method_for
    from mentor_ray.data.run_inputs import load_tokenized_problems

    method = method_for(config.algorithm)
    traces = {}
    if method.needs_expert_traces:
        from mentor_ray.data.expert_traces import build_expert_traces

        traces = build_expert_traces(config, paths, say=say).traces
    if method.hinted_prompts:
        from mentor_ray.data.hints import hinted_tokenized_problems

        selected = None
        if config.algorithm.hint_select_max_correct is not None:
            from mentor_ray.data.hard_problems import policy_pass_counts

            selected = policy_pass_counts(config, paths, say).hard(config.algorithm.hint_select_max_correct)
        problems, counts = hinted_tokenized_problems(config, paths, tokenizer, traces, say, selected)
        if not problems:
            from mentor_ray.config import ConfigError

            raise ConfigError(f"QuestA has no problem to train on: the starting policy solves every problem more than "
                              f"algorithm.hint_select_max_correct={config.algorithm.hint_select_max_correct} times, or none "
                              "has a correct expert trace")
        return problems, counts, {}, _later_hinted_problems(config, paths, tokenizer, traces, problems, say, selected)
    problems, counts = load_tokenized_problems(paths.train_path, config, tokenizer, paths.system_prompt, "train", say=say)
    if not method.expert_traces_per_group:
        return problems, counts, {}, None
    # A group's expert slot needs a correct trace: problems without one are left out, as LUFFY's
    # own data keeps only problems with a verified expert solution.
    kept = [p for p in problems if p.problem_id in traces]
    counts["data/train_without_expert_trace_skipped"] = len(problems) - len(kept)
    if len(kept) < len(problems):
        say(f"[data] train: {len(problems) - len(kept)} of {len(problems)} problems have no correct expert trace; "
            f"{config.algorithm.method} trains on the other {len(kept)}")
    if not kept:
        from mentor_ray.config import ConfigError

        raise ConfigError("no training problem has a correct expert trace: raise algorithm.expert_trace_samples or check the expert")
    counts["data/train_problems"] = len(kept)
    return kept, counts, {p.problem_id: (list(traces[p.problem_id].token_ids), traces[p.problem_id].text) for p in kept}, None


def _run(config, run_dir, paths, resume_from, console, ray_address, callbacks, hooks, started, warm_actors) -> RunSummary:
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from transformers import AutoTokenizer

    from mentor_ray import storage
    from mentor_ray.data.run_inputs import load_tokenized_problems
    from mentor_ray.metrics import METRICS_FILE, read_metrics
    from mentor_ray.plots import plot_runs, plot_timeline
    from mentor_ray.timeline import idlest_role, mean_busy_shares
    from pipelines.loop import (
        FINAL_MODEL_FOLDER,
        STOP_FILE,
        LoopHooks,
        LoopInputs,
        train_loop_per_worker,
    )
    from pipelines.resources import wait_for_room
    from pipelines.roles import build_rollout_roles, process_whereabouts

    tokenizer = AutoTokenizer.from_pretrained(paths.policy_dir)
    train_problems, data_counts, expert_traces, later_train_problems = _training_problems(config, paths, tokenizer, console.say)
    eval_problems = []
    if paths.eval_path and config.eval.every_steps:
        eval_problems, eval_counts = load_tokenized_problems(
            paths.eval_path, config, tokenizer, paths.system_prompt, "eval", limit=config.eval.max_problems, say=console.say
        )
        data_counts.update(eval_counts)

    connect_ray(config, ray_address, log_to_driver=console.log_to_driver)
    if not storage.is_uri(run_dir):
        console.link_ray_logs()  # a link in a staging folder would upload Ray's session logs
    wait_for_room(config, ray, console.say)  # a cluster that cannot run it, refused before any work
    # A reused run folder may hold an earlier run's stop marker; only this run's may count.
    storage.delete_file(storage.join(run_dir, STOP_FILE))
    roles = build_rollout_roles(config, paths.policy_ref, paths.expert_ref, wait=False, warm=warm_actors)
    finished = False
    threading.Thread(target=_warm_up_quietly, name="warm-up-stage-workers", daemon=True).start()
    try:
        console_lines = console.start_relay()
        trainer = TorchTrainer(
            train_loop_per_worker=train_loop_per_worker,
            train_loop_config={
                "inputs": LoopInputs(
                    config=config.to_dict(), paths=paths, roles=roles, train_problems=train_problems,
                    eval_problems=eval_problems, expert_traces=expert_traces, later_train_problems=later_train_problems,
                    resume_from=str(resume_from) if resume_from else None, driver=process_whereabouts(),
                    console=console_lines,
                ),
                "hooks": hooks or LoopHooks(),
            },
            scaling_config=ScalingConfig(
                num_workers=config.scaling.num_learner_workers,
                use_gpu=config.scaling.use_gpu,
                resources_per_worker={"CPU": config.scaling.cpus_per_learner_worker, **({"GPU": 1} if config.scaling.use_gpu else {})},
                label_selector=dict(config.placement.learners) or None,
            ),
            run_config=RunConfig(
                name="ray_train",
                **storage.ray_storage(run_dir),
                failure_config=FailureConfig(max_failures=2),
                checkpoint_config=CheckpointConfig(num_to_keep=config.checkpoint.keep_last),
                callbacks=list(callbacks),
            ),
        )
        result = trainer.fit()
        if result.error:
            # An engine that could not start explains a failed run best: say that first.
            roles.check_engines()
            raise result.error
        finished = True
    finally:
        roles.shutdown(keep_warm=finished)

    history = read_metrics(storage.join(run_dir, METRICS_FILE))
    plot_runs({paths.run_name: run_dir}, console.run_dir / "plots")
    plot_timeline(run_dir, console.run_dir / "plots")
    last = history[-1] if history else {}
    stop_file = storage.join(run_dir, STOP_FILE)
    stopped = json.loads(storage.read_text(stop_file))["reason"] if storage.exists(stop_file) else None
    summary = RunSummary(
        run_dir=run_dir, steps=int(last.get("step", 0)), seconds=time.perf_counter() - started,
        final_model=storage.join(run_dir, FINAL_MODEL_FOLDER) if stopped is None else "", stopped=stopped,
        metrics={**data_counts, **{k: v for k, v in last.items() if k != "step"}},
        busy_shares=mean_busy_shares(history), idlest_role=(idlest_role(history) or (None,))[0],
    )
    storage.write_text(storage.join(run_dir, "summary.json"), json.dumps(asdict(summary), indent=2))
    return summary


def build_parser() -> argparse.ArgumentParser:
    """The CLI; its --method choices are the registry's (mentor_ray.core.methods.METHODS)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=DEFAULT_RECIPE, help="YAML recipe (default: the toy-world MENTOR run)")
    parser.add_argument("--method", choices=tuple(METHODS), default=None,
                        help="algorithm.method; a method that makes no mixed samples ("
                        + ", ".join(m.name for m in METHODS.values() if not m.makes_mixed_samples)
                        + ") also sets rollout.n_mixed=0 (README, \"Baselines\")")
    parser.add_argument("--grpo", action="store_true", help="short for --method grpo")
    parser.add_argument("--address", default=None, help="Ray address (default: RAY_ADDRESS, else a local instance)")
    parser.add_argument("--verbose", action="store_true", help="show library logs (Ray, vLLM, DeepSpeed) on the console")
    parser.add_argument("--cluster", default=None, help="Ray cluster file a GPU recipe is planned on (default: cluster.yaml)")
    parser.add_argument("--record-shards", default=None, metavar="DIR",
                        help="inspection: each learner rank appends the samples it trained on to DIR/rank<r>.jsonl")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. guidance.entropy_quantile=0.9")
    return parser


def main(argv: list[str] | None = None) -> int:
    from mentor_ray.config import ConfigError, load_config

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.grpo and args.method not in (None, "grpo"):
        parser.error(f"--grpo is --method grpo; it cannot go with --method {args.method}")
    overrides = list(args.overrides) + method_overrides("grpo" if args.grpo else args.method)
    try:
        config = load_config(args.config, overrides)
        hooks = None
        if args.record_shards:
            from pipelines.loop import LoopHooks

            hooks = LoopHooks(shard_record_dir=args.record_shards)
        summary = run_training(config, ray_address=args.address, verbose=args.verbose, cluster_file=args.cluster, hooks=hooks)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except Exception as error:
        print(f"error: {failure_line(error)}", file=sys.stderr)
        return 1
    if summary.stopped is not None:
        return 1
    print(summary_line(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
