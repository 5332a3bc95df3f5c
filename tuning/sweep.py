"""`python -m tuning.sweep --config tuning/sweeps/toy.yaml`: Ray Tune over whole MENTOR runs.

Each trial is one whole RL run (its own engines, graders and TorchTrainer), started by a small
trial driver that forwards the run's per-step reports to Tune (Ray's Train-inside-Tune
pattern). Optuna proposes the parameters; ASHA stops trials whose objective lags at its rungs.
The experiment folder `<storage>/<name>/` holds Tune's state (`tune/`), every trial's run
folder (`runs/trial-<id>/`, named without timestamps so a restored trial finds its
checkpoints), `sweep.yaml` (the sweep as run), `trials.json` (this sweep's ledger of every
trial's parameters, status and error, which `python -m tuning.report` reads),
`asha_rungs.json` (ASHA's rung records), `run.log` (library output) and `sweep_summary.json`.

`storage` is a local folder or a URI (`s3://bucket/prefix`, any filesystem pyarrow knows;
`--storage` overrides the file's). On a URI everything above is written there and nothing in a
local folder: Tune's state through its `storage_filesystem`, the trials' run folders by the
runs themselves (`logging.run_root` is the URI), the ledger, rungs, spec and summary directly;
`run.log` is written in a local staging folder and uploaded when the sweep ends (appended to
the one already there on a resume).

Run the same command again after an interruption: it restores the sweep with
`Tuner.restore` (from the URI as well), keeps finished trials and continues the rest.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml
from ray.tune import Callback
from ray.tune.schedulers import ASHAScheduler

from mentor_ray import storage
from mentor_ray.config import ConfigError, MentorConfig
from tuning.space import SweepSpec, check_storage, check_sweep, full_points, load_sweep, trial_config, tune_search_space

DEFAULT_SWEEP = Path(__file__).parent / "sweeps" / "toy.yaml"
LEDGER_FILE = "trials.json"
SPEC_FILE = "sweep.yaml"
SUMMARY_FILE = "sweep_summary.json"
RUNS_FOLDER = "runs"
# Tune's own experiment folder, inside ours: Tune mirrors its folder from a staging copy and
# would overwrite anything else kept there (the ledger, the ASHA rungs) with stale versions.
TUNE_FOLDER = "tune"
# What Tune reserves for a trial's driver (the function that starts the run's actors).
TRIAL_DRIVER_CPUS = 0.1


def trial_run_name(trial_id: str) -> str:
    return f"trial-{trial_id}"


# ---------------------------------------------------------------------------------------------
# One trial: one whole run.


def run_trial(params: dict[str, Any], spec: SweepSpec) -> None:
    """Tune's trainable: builds the trial's config and runs the loop; every step the run
    reports (through Ray Train) is forwarded to Tune by TuneReportCallback."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from pipelines.train import run_training

    trial_id = tune.get_context().get_trial_id()
    config = trial_config(spec, params, run_root=storage.join(spec.experiment, RUNS_FOLDER), run_name=trial_run_name(trial_id))
    run_training(config, callbacks=(TuneReportCallback(),))


# ---------------------------------------------------------------------------------------------
# What a person sees, and the ledger the report reads.


@dataclass
class TrialRecord:
    trial_id: str
    params: dict[str, Any]
    run_dir: str
    status: str = "running"  # running, finished, stopped by ASHA, stopped (NaN), failed
    steps: int = 0
    error: str | None = None
    last: dict[str, float] = field(default_factory=dict)
    # Placement groups of the run's learners removed by the sweep after the run was stopped.
    released_placement_groups: int = 0


def _error_text(trial) -> str:
    path = getattr(trial, "error_file", None)
    if path and Path(path).is_file():
        text = Path(path).read_text().strip()
        # Tune's file holds the remote traceback; its last line names the error.
        return text.splitlines()[-1] if text else "unknown error"
    return "unknown error (see the trial folder)"


def _short(params: dict[str, Any]) -> str:
    def fmt(v: Any) -> str:
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    return ", ".join(f"{k.split('.')[-1]}={fmt(v)}" for k, v in params.items())


def _write_whole(location: str, text: str) -> None:
    """Replaces a file at once: a local one through a temporary file and a rename; an object
    store's PUT is already all or nothing."""
    if storage.is_uri(location):
        storage.write_text(location, text)
        return
    path = Path(location)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(path)


class SweepLedger:
    """Every trial's parameters, status and last numbers in trials.json. The file is the only
    state: each change reads it, updates one record and writes it back, so any copy of the
    callback that holds a ledger (Tune copies and pickles its callbacks) sees the same trials.
    `experiment_dir`: a local folder or a URI."""

    def __init__(self, experiment_dir: str | Path, total_steps: int) -> None:
        self.experiment_dir = os.fspath(experiment_dir)
        self.path = storage.join(self.experiment_dir, LEDGER_FILE)
        self.total_steps = total_steps

    @property
    def records(self) -> dict[str, TrialRecord]:
        if not storage.is_file(self.path):
            return {}
        return {row["trial_id"]: TrialRecord(**row) for row in json.loads(storage.read_text(self.path))}

    def _save(self, records: dict[str, TrialRecord]) -> None:
        rows = [asdict(r) for r in sorted(records.values(), key=lambda r: r.trial_id)]
        _write_whole(self.path, json.dumps(rows, indent=1))

    def _record(self, records: dict[str, TrialRecord], trial) -> TrialRecord:
        if trial.trial_id not in records:
            run_dir = storage.join(self.experiment_dir, RUNS_FOLDER, trial_run_name(trial.trial_id))
            records[trial.trial_id] = TrialRecord(trial.trial_id, dict(trial.config), run_dir)
        return records[trial.trial_id]

    def start(self, trial) -> TrialRecord:
        records = self.records
        record = self._record(records, trial)
        record.status = "running"
        self._save(records)
        return record

    def finish(self, trial, failed: bool) -> TrialRecord:
        """How the trial ended: failed (with its error), finished (the run wrote its summary),
        stopped (NaN) (the loop stopped itself), or stopped by ASHA (ended early without a summary)."""
        records = self.records
        record = self._record(records, trial)
        last = trial.last_result or {}
        record.last = {k: float(v) for k, v in last.items() if "/" in k and isinstance(v, (int, float))}
        record.steps = int(last.get("step", record.steps) or 0)
        run_dir = record.run_dir
        summary_file = storage.join(run_dir, "summary.json")
        summary = json.loads(storage.read_text(summary_file)) if storage.is_file(summary_file) else None
        if summary is None:
            record.released_placement_groups = release_placement_group(run_dir)
        if failed:
            record.status, record.error = "failed", _error_text(trial)
        elif summary is not None:
            record.steps = int(summary["steps"])
            record.status, record.error = ("finished", None) if summary["stopped"] is None else ("stopped (NaN)", summary["stopped"])
        else:
            record.status = "stopped by ASHA"
        self._save(records)
        return record

    def done(self) -> list[TrialRecord]:
        return [r for r in self.records.values() if r.status != "running"]


def release_placement_group(run_dir: str | Path, wait_s: float = 2.0) -> int:
    """Removes the learners' placement group of a run that did not end by itself (stopped by
    ASHA, failed): its controller died with the trial, and Ray Train's cleaner, which asks the
    dashboard whether the controller lives, cannot reach a local instance started by
    ray.init() (ray-project/ray issue 54305). Returns how many it removed."""
    import ray
    from ray._raylet import PlacementGroupID
    from ray.util.placement_group import PlacementGroup

    from pipelines.loop import PLACEMENT_GROUP_FILE

    if not ray.is_initialized():
        return 0
    path = storage.join(os.fspath(run_dir), PLACEMENT_GROUP_FILE)
    if not storage.is_file(path):
        return 0
    group_id = json.loads(storage.read_text(path))["id"]
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        state = ray.util.placement_group_table().get(group_id, {}).get("state")
        if state in (None, "REMOVED"):
            return 0
        time.sleep(0.5)  # a run ending on its own removes it within moments
    ray.util.remove_placement_group(PlacementGroup(PlacementGroupID(bytes.fromhex(group_id))))
    return 1


class ConsoleWriter:
    """Writes console lines to a file descriptor: picklable, so it survives Tune copying the
    callback that holds it (within this process; a restore attaches a new one)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __call__(self, line: str) -> None:
        os.write(self.fd, (line + "\n").encode())


class SweepConsole(Callback):
    """One line when a trial starts, at each of its validation steps, and when it ends; keeps
    the ledger."""

    def __init__(self, experiment_dir: str | Path, total_steps: int, num_trials: int, objective: str, say: ConsoleWriter) -> None:
        self.ledger = SweepLedger(experiment_dir, total_steps)
        self.total_steps = total_steps
        self.num_trials = num_trials
        self.objective = objective
        self.say = say
        self._started = time.perf_counter()
        self._done_at_start = len(self.ledger.done())

    def on_trial_start(self, iteration, trials, trial, **info):
        record = self.ledger.start(trial)
        self.say(f"trial {trial.trial_id} started | {_short(record.params)}")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if "val/greedy_accuracy" in result:
            self.say(
                f"trial {trial.trial_id} step {int(result.get('step', 0))}/{self.total_steps} | "
                f"val {result['val/greedy_accuracy']:.3f} | running acc {result.get('objective/running_accuracy', float('nan')):.3f}"
            )

    def _ended(self, trial, failed: bool) -> None:
        record = self.ledger.finish(trial, failed)
        done = len(self.ledger.done())
        elapsed = time.perf_counter() - self._started
        eta = elapsed / max(done - self._done_at_start, 1) * max(self.num_trials - done, 0)
        value = record.last.get(self.objective)
        detail = record.error if record.error else (f"{self.objective} {value:.3f}" if value is not None else "")
        self.say(
            f"trial {trial.trial_id} {record.status} after {record.steps} steps | {detail} | "
            f"{done}/{self.num_trials} trials done | ETA {int(eta // 60)}m{int(eta % 60):02d}s"
        )

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._ended(trial, failed=False)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._ended(trial, failed=True)


# ---------------------------------------------------------------------------------------------
# Resources: what a trial needs, and how many fit at once.


def trial_needs(spec: SweepSpec):
    """The most any trial of this sweep needs, its driver included: engines depend on the
    guidance ratio (ratio 0 starts no mixed engine), so every value of every parameter is looked at."""
    from pipelines.resources import run_needs

    configs: list[MentorConfig] = [trial_config(spec, {})]
    for parameter in spec.parameters:
        configs += [trial_config(spec, {parameter.key: v}) for v in parameter.values]
    needs = max((run_needs(c) for c in configs), key=lambda n: (n.gpus, n.cpus))
    return dataclasses.replace(needs, cpus=round(needs.cpus + TRIAL_DRIVER_CPUS, 6))


def concurrent_trials(spec: SweepSpec, resources: dict[str, float]) -> tuple[int, Any]:
    needs = trial_needs(spec)
    fit = needs.copies_that_fit(resources)
    if fit < 1:
        raise ConfigError(
            f"{spec.source}: one trial needs {needs.describe()}; the cluster has "
            f"{resources.get('CPU', 0):g} CPUs and {resources.get('GPU', 0):g} GPUs"
        )
    cap = spec.search.max_concurrent_trials
    return (min(fit, cap) if cap else fit), needs


# Actor classes a trial's run starts (engines, graders, Ray Train's controller and workers).
RUN_ACTOR_CLASSES = ("RolloutEngineActor", "RewardActor", "RayTrainWorker", "TrainController")


def leftover_resources(wait_s: float = 90.0) -> dict[str, list[str]]:
    """Placement groups and engine/learner actors still alive once every trial has ended.
    Ray Train's worker placement groups outlive a killed trial driver unless its cleaner removes
    them (ray-project/ray issue 54305); waits up to wait_s for Ray's own cleanup first (it
    returns as soon as nothing is left; on a loaded 2-core machine the cleanup of a trial that
    ended last took more than 30 s)."""
    import ray
    from ray._private import state as ray_state

    deadline = time.monotonic() + wait_s
    while True:
        groups = [
            f"{pg_id} {info.get('name') or '(unnamed)'} {info.get('state')} {list(info.get('bundles', {}).values())}"
            for pg_id, info in ray.util.placement_group_table().items()
            if info.get("state") != "REMOVED"
        ]
        actors = [
            f"{info['ActorClassName']}:{actor_id}"
            for actor_id, info in ray_state.actors().items()
            if info.get("State") in ("ALIVE", "PENDING_CREATION", "RESTARTING")
            and any(name in info.get("ActorClassName", "") for name in RUN_ACTOR_CLASSES)
        ]
        if (not groups and not actors) or time.monotonic() > deadline:
            return {"placement_groups": groups, "actors": actors}
        time.sleep(1.0)


# ---------------------------------------------------------------------------------------------
# The sweep.


@dataclass
class SweepOutcome:
    experiment_dir: str
    trials: list[TrialRecord]
    seconds: float
    concurrent_trials: int
    resumed: bool
    leftovers: dict[str, list[str]]

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for record in self.trials:
            counts[record.status] = counts.get(record.status, 0) + 1
        return counts


def _searcher(spec: SweepSpec):
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    objectives = spec.search.objectives
    metric: Any = objectives[0].metric if len(objectives) == 1 else [o.metric for o in objectives]
    mode: Any = objectives[0].mode if len(objectives) == 1 else [o.mode for o in objectives]
    # Optuna's TPE handles one objective or several (a Pareto front) alike.
    samplers = {"tpe": optuna.samplers.TPESampler, "random": optuna.samplers.RandomSampler}
    sampler = samplers[spec.search.algorithm](seed=spec.search.seed)
    return OptunaSearch(metric=metric, mode=mode, points_to_evaluate=full_points(spec) or None, sampler=sampler)


class ResumableASHA(ASHAScheduler):
    """ASHA whose rung records survive `Tuner.restore`: Tune saves the searcher's state but
    not the scheduler's, so a resumed sweep would judge its next trials against empty rungs.
    The records go to a file at every result (a local path or a URI); the unpickled scheduler of
    a restore reads them."""

    def __init__(self, state_file: str | Path, **kwargs) -> None:
        super().__init__(**kwargs)
        self._state_file = os.fspath(state_file)

    def _persist(self) -> None:
        rungs = [[[milestone, recorded] for milestone, recorded in bracket._rungs] for bracket in self._brackets]
        storage.write_text(self._state_file, json.dumps({"rungs": rungs, "num_stopped": self._num_stopped}))

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if storage.is_file(self._state_file):
            saved = json.loads(storage.read_text(self._state_file))
            for bracket, rungs in zip(self._brackets, saved["rungs"]):
                bracket._rungs = [(milestone, dict(recorded)) for milestone, recorded in rungs]
            self._num_stopped = saved["num_stopped"]

    def on_trial_result(self, tune_controller, trial, result):
        action = super().on_trial_result(tune_controller, trial, result)
        self._persist()
        return action

    def on_trial_complete(self, tune_controller, trial, result):
        super().on_trial_complete(tune_controller, trial, result)
        self._persist()



ASHA_STATE_FILE = "asha_rungs.json"


def _scheduler(spec: SweepSpec, total_steps: int, experiment_dir: str | Path):
    from ray.tune.schedulers import FIFOScheduler

    if spec.asha is None:
        return FIFOScheduler()
    return ResumableASHA(
        state_file=storage.join(os.fspath(experiment_dir), ASHA_STATE_FILE),
        # max_t one past the last step: a trial ends by itself (saving its model, releasing its
        # learners' placement group); ASHA stops only those that lag at a rung.
        time_attr="step", metric=spec.asha.metric, mode=spec.asha.mode, max_t=total_steps + 1,
        grace_period=spec.asha.grace_period, reduction_factor=spec.asha.reduction_factor,
    )


def run_sweep(spec: SweepSpec, *, ray_address: str | None = None, verbose: bool = False, say=print) -> SweepOutcome:
    """Runs (or resumes) the sweep to the end. Refuses a bad sweep, or a `storage` it cannot
    write to, before any trial starts."""
    from ray import tune

    from pipelines.console import RUN_LOG_FILE, DriverConsole
    from pipelines.train import connect_ray

    check_sweep(spec)
    check_storage(spec)  # creates the experiment folder
    started = time.perf_counter()
    experiment_dir = spec.experiment
    # Tune's state: on a URI through the filesystem mentor_ray.storage built (endpoint, query
    # options); Tuner.restore and can_restore need it too, with the path on that filesystem.
    tune_storage = storage.ray_storage(experiment_dir)
    tune_filesystem = tune_storage.get("storage_filesystem")
    tune_path = storage.join(tune_storage["storage_path"], TUNE_FOLDER) if tune_filesystem is None else f"{tune_storage['storage_path']}/{TUNE_FOLDER}"
    resumed = tune.Tuner.can_restore(tune_path, storage_filesystem=tune_filesystem)
    saved = storage.join(experiment_dir, SPEC_FILE)
    if resumed and storage.is_file(saved) and yaml.safe_load(storage.read_text(saved)) != spec_as_yaml(spec):
        raise ConfigError(
            f"{spec.source}: {experiment_dir} holds a sweep with other settings ({saved}); "
            "run that file to resume it, or give this sweep another name"
        )
    storage.write_text(saved, yaml.safe_dump(spec_as_yaml(spec), sort_keys=False))
    base = trial_config(spec, {})
    # The driver's run.log needs a local folder: the experiment folder itself, or, for one on
    # shared storage, a staging folder uploaded (and removed) at the end, as a run does.
    on_storage = storage.is_uri(experiment_dir)
    log_file = storage.join(experiment_dir, RUN_LOG_FILE)
    local_dir = Path(tempfile.mkdtemp(prefix="mentor-sweep-")) if on_storage else Path(experiment_dir)
    if on_storage and storage.is_file(log_file):  # a resume appends to the log of the first session
        (local_dir / RUN_LOG_FILE).write_bytes(storage.read_bytes(log_file))
    console = DriverConsole(local_dir, verbose=verbose)
    console.quiet_libraries()
    try:
        # The dashboard's state API lets Ray Train's placement-group cleaner see that a trial
        # stopped by ASHA took its controller with it (ray-project/ray issue 54305).
        connect_ray(base, ray_address, log_to_driver=console.log_to_driver, dashboard=True)
        import ray

        concurrency, needs = concurrent_trials(spec, ray.cluster_resources())
        objective = spec.search.objectives[0].metric
        sweep_console = SweepConsole(experiment_dir, base.total_steps, spec.search.num_trials, objective, ConsoleWriter(console.console_fd))
        ledger = sweep_console.ledger
        console.say(
            f"sweep {spec.name} | {'resuming' if resumed else 'starting'} in {experiment_dir} | "
            f"{spec.search.num_trials} trials ({len(ledger.done())} done), {concurrency} at a time "
            f"(each needs {needs.describe()}) | {base.total_steps} steps each | "
            f"search {spec.search.algorithm} on {objective} | "
            + (f"ASHA on {spec.asha.metric} from step {spec.asha.grace_period}" if spec.asha else "no early stopping")
            + f" | log {log_file}"
        )
        trainable = tune.with_resources(tune.with_parameters(run_trial, spec=spec), {"CPU": TRIAL_DRIVER_CPUS})
        if resumed:
            tuner = tune.Tuner.restore(tune_path, trainable=trainable, resume_errored=False, restart_errored=False,
                                       storage_filesystem=tune_filesystem)
            # The restored run config carries the pickled SweepConsole of the first process,
            # whose console is gone: use this one (Tuner.restore takes no callbacks).
            restored = tuner._local_tuner.get_run_config()
            restored.callbacks = [c for c in restored.callbacks or [] if not isinstance(c, SweepConsole)] + [sweep_console]
        else:
            tuner = tune.Tuner(
                trainable,
                param_space=tune_search_space(spec),
                tune_config=tune.TuneConfig(
                    search_alg=_searcher(spec), scheduler=_scheduler(spec, base.total_steps, experiment_dir),
                    num_samples=spec.search.num_trials, max_concurrent_trials=concurrency,
                    trial_name_creator=lambda trial: trial_run_name(trial.trial_id),
                    trial_dirname_creator=lambda trial: trial_run_name(trial.trial_id),
                ),
                run_config=tune.RunConfig(
                    name=TUNE_FOLDER, **tune_storage, callbacks=[sweep_console], verbose=0,
                    failure_config=tune.FailureConfig(max_failures=0),
                ),
            )
        tuner.fit()
        leftovers = leftover_resources()
        outcome = SweepOutcome(experiment_dir, sorted(ledger.records.values(), key=lambda r: r.trial_id),
                               time.perf_counter() - started, concurrency, resumed, leftovers)
        storage.write_text(storage.join(experiment_dir, SUMMARY_FILE), json.dumps(asdict(outcome), indent=1))
        unfinished = spec.search.num_trials - len(ledger.done())
        if unfinished > 0:
            console.say(
                f"sweep interrupted: {len(ledger.done())} of {spec.search.num_trials} trials done; "
                f"run the same command again to resume ({experiment_dir})"
            )
        else:
            console.say(summary_line(outcome, objective))
        return outcome
    finally:
        console.close()
        if on_storage:
            try:
                storage.upload_dir(local_dir, experiment_dir)
            finally:
                shutil.rmtree(local_dir, ignore_errors=True)


def spec_as_yaml(spec: SweepSpec) -> dict[str, Any]:
    """The sweep as a file again, with the base config's path made absolute: saved in the
    experiment folder, and compared on resume so a changed sweep is not mixed into an old one."""
    parameters = {}
    for p in spec.parameters:
        parameters[p.key] = {p.kind: list(p.values), **({"times": p.times} if p.times else {})}
    return {
        "name": spec.name,
        "base_config": str(Path(spec.base_config).resolve()) if spec.base_config else None,
        "overrides": dict(spec.overrides),
        "parameters": parameters,
        "points_to_evaluate": [dict(p) for p in spec.points_to_evaluate],
        "search": {**asdict(spec.search), "objectives": [asdict(o) for o in spec.search.objectives]},
        "asha": asdict(spec.asha) if spec.asha else None,
        "storage": spec.storage,
    }


def summary_line(outcome: SweepOutcome, objective: str) -> str:
    counts = ", ".join(f"{n} {status}" for status, n in sorted(outcome.counts().items()))
    scored = [r for r in outcome.trials if r.status != "failed" and not math.isnan(r.last.get(objective, math.nan))]
    best = max(scored, key=lambda r: r.last[objective], default=None)
    parts = [f"sweep done: {len(outcome.trials)} trials in {outcome.seconds / 60:.1f} min ({counts})"]
    if best is not None:
        parts.append(f"best {objective} {best.last[objective]:.3f} by trial {best.trial_id} ({_short(best.params)})")
    leaks = outcome.leftovers
    if leaks["placement_groups"] or leaks["actors"]:
        parts.append(f"LEFT OVER: {len(leaks['placement_groups'])} placement groups, {len(leaks['actors'])} actors")
    parts.append(f"report: python -m tuning.report {outcome.experiment_dir}")
    return " | ".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=DEFAULT_SWEEP, help="sweep file (default: the toy-world sweep)")
    parser.add_argument("--address", default=None, help="Ray address (default: RAY_ADDRESS, else a local instance)")
    parser.add_argument(
        "--storage", default=None,
        help="where the experiment folder goes, instead of the sweep file's storage: a local path or a URI (s3://bucket/prefix)",
    )
    parser.add_argument("--verbose", action="store_true", help="show library logs on the console")
    args = parser.parse_args(argv)
    return exit_code_of(lambda: run_sweep(load_sweep(args.config, storage=args.storage), ray_address=args.address,
                                          verbose=args.verbose))


def exit_code_of(action) -> int:
    """A command's exit status: 0, 2 for a bad sweep (one line), 1 for a failure after start-up
    (one line naming the log)."""
    try:
        action()
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except Exception as error:  # noqa: BLE001 - a failure after start-up ends the console in one line
        from pipelines.train import failure_line

        print(f"error: {failure_line(error)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    # Run the importable module's main, not this __main__ copy: Tune pickles the callback and
    # the scheduler into its experiment state, and only classes of an importable module are
    # pickled by reference (and so are the same classes again in a resuming process).
    from tuning.sweep import main as sweep_main

    sys.exit(sweep_main())
