"""Grading untrusted text in worker processes that are killed and replaced when they exceed
their time budget (`RewardGrader`): math-verify can hang or blow up inside sympy.

math-verify's own timeouts use `signal.alarm`, which raises outside the main thread (Ray
actors, thread pools), so it is always called with `parsing_timeout=None,
timeout_seconds=None` and time is bounded here instead.
"""

from __future__ import annotations

import ctypes
import importlib
import logging
import multiprocessing
import multiprocessing.connection
import os
import resource
import signal
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from mentor_ray.rewards.answers import FORMAT_RULES
from mentor_ray.rewards.scoring import (
    GRADING_STATUSES,
    RewardParts,
    RewardWeights,
    combine_reward,
    grade_plain_integers,
)

# The project's grader, by the import path worker processes resolve.
DEFAULT_GRADING_FUNCTION = "mentor_ray.rewards:grade_accuracy"


@dataclass
class GradingStats:
    ok: int = 0
    no_answer: int = 0
    timeout: int = 0
    error: int = 0
    bad_reference: int = 0
    slowest_seconds: float = 0.0
    # Worker processes started for this batch beyond the initial pool (kills, crashes).
    workers_replaced: int = 0
    error_examples: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return self.ok + self.no_answer + self.timeout + self.error + self.bad_reference

    def count(self, status: str, seconds: float) -> None:
        if status not in GRADING_STATUSES:
            raise ValueError(f"unknown grading status {status!r}; expected one of {GRADING_STATUSES}")
        setattr(self, status, getattr(self, status) + 1)
        self.slowest_seconds = max(self.slowest_seconds, seconds)


# ----------------------------------------------------------------------------------------------
# Worker processes
# ----------------------------------------------------------------------------------------------
def resolve_grading_function(import_path: str) -> Callable[[str, str], object]:
    """`"package.module:function"` -> the function. Raises ValueError naming the path."""
    module_name, sep, attribute = import_path.partition(":")
    if not sep or not module_name or not attribute:
        raise ValueError(
            f"grading function must be 'module:function', got {import_path!r}"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"cannot import grading function module {module_name!r}: {exc}") from exc
    function = module
    for part in attribute.split("."):
        function = getattr(function, part, None)
        if function is None:
            raise ValueError(f"grading function {import_path!r}: no attribute {part!r}")
    if not callable(function):
        raise ValueError(f"grading function {import_path!r} is not callable")
    return function  # type: ignore[return-value]


def _normalize_grading_result(result: object) -> tuple[float, str]:
    if isinstance(result, tuple) and len(result) == 2:
        score, status = result
    else:
        score, status = result, "ok"
    if status not in ("ok", "no_answer", "error", "bad_reference"):
        raise ValueError(f"grading function returned unknown status {status!r}")
    score = float(score)  # type: ignore[arg-type]
    if not 0.0 <= score <= 1.0:
        raise ValueError(f"grading function returned score {score} outside [0, 1]")
    return score, status


def _die_with_parent() -> None:
    # Linux: SIGKILL this worker when its parent (the forkserver or the grading process) dies,
    # so a worker stuck in sympy cannot outlive a killed Ray actor.
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
        pass


def _grading_worker_main(
    connection: multiprocessing.connection.Connection,
    grading_function_path: str,
    memory_limit_bytes: int | None,
) -> None:
    """Worker loop: receive (index, response, reference), send (index, score, status, note)."""
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    if memory_limit_bytes:
        # A runaway sympy computation then fails with MemoryError ("error") instead of
        # eating the machine.
        resource.setrlimit(resource.RLIMIT_AS, (memory_limit_bytes, memory_limit_bytes))
    # math-verify warns once per process that its timeouts are off: that is deliberate here.
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    try:
        grading_function = resolve_grading_function(grading_function_path)
        if grading_function_path == DEFAULT_GRADING_FUNCTION:
            grading_function("\\boxed{1}", "1")  # first math-verify call is slow; pay it now
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, then exit
        connection.send(("init_error", f"{type(exc).__name__}: {exc}"))
        return
    connection.send(("ready", os.getpid()))
    while True:
        try:
            message = connection.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        index, response, reference = message
        try:
            score, status = _normalize_grading_result(grading_function(response, reference))
            note = ""
        except BaseException as exc:  # noqa: BLE001 - any failure of the grader scores 0
            # Only the type name: str() of a sympy object can itself hang.
            score, status, note = 0.0, "error", type(exc).__name__
        try:
            connection.send((index, score, status, note))
        except (BrokenPipeError, OSError):
            return


@dataclass
class _Worker:
    process: multiprocessing.process.BaseProcess
    connection: multiprocessing.connection.Connection
    started_at: float = field(default_factory=time.monotonic)
    ready: bool = False
    task_index: int | None = None
    task_started: float = 0.0


class RewardGrader:
    """Batch reward grading with accuracy checks in killable worker processes.

    Usage:
        with RewardGrader() as grader:
            parts, stats = grader.grade(responses, references)

    - A grading that runs past `timeout_s` is killed (its worker process is SIGKILLed and
      replaced) and gets accuracy 0 with status "timeout"; a grader exception or worker crash
      gets accuracy 0 with status "error". The format reward is computed in the caller (a
      pure string scan) and is kept in all cases.
    - Workers start lazily in the process that first calls `grade` and belong to that
      process: pickling the grader (Ray actor args, Ray Data map_batches callables) carries
      only its settings.
    - `start_method`: "forkserver" (default: the server imports this module once, then each
      worker, including a replacement after a kill, forks from it in milliseconds) or "spawn".
      Plain fork is refused: forking a threaded process (a Ray worker) is unsafe.
    - `grading_function`: import path of `(response, reference) -> (score, status) | score`;
      tests inject slow or crashing graders this way.
    """

    def __init__(
        self,
        weights: RewardWeights = RewardWeights(),
        timeout_s: float = 5.0,
        format_rule: str = "strict",
        num_processes: int = 2,
        grading_function: str = DEFAULT_GRADING_FUNCTION,
        start_method: str = "forkserver",
        memory_limit_bytes: int | None = 4 * 1024**3,
        startup_timeout_s: float = 120.0,
    ) -> None:
        if timeout_s <= 0:
            raise ValueError(f"RewardGrader timeout_s must be > 0, got {timeout_s}")
        if num_processes < 1:
            raise ValueError(f"RewardGrader num_processes must be >= 1, got {num_processes}")
        if start_method not in ("forkserver", "spawn"):
            raise ValueError(
                f"RewardGrader start_method must be 'forkserver' or 'spawn', got {start_method!r}"
            )
        resolve_grading_function(grading_function)  # fail fast on a bad path, in the caller
        if format_rule not in FORMAT_RULES:
            raise ValueError(f"RewardGrader format_rule must be one of {sorted(FORMAT_RULES)}, got {format_rule!r}")
        self.format_rule = format_rule
        self.weights = weights
        self.timeout_s = float(timeout_s)
        self.num_processes = num_processes
        self.grading_function = grading_function
        self.start_method = start_method
        self.memory_limit_bytes = memory_limit_bytes
        self.startup_timeout_s = float(startup_timeout_s)
        self._workers: list[_Worker] = []
        self._owner_pid: int | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    def __enter__(self) -> RewardGrader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_workers"] = []
        state["_owner_pid"] = None
        return state

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    def close(self) -> None:
        """Stop all workers (idle ones get a stop message, busy ones are killed)."""
        if self._owner_pid != os.getpid():
            # A copy made by fork: the workers belong to the parent, leave them alone.
            self._workers = []
            return
        for worker in self._workers:
            if worker.task_index is None and worker.process.is_alive():
                try:
                    worker.connection.send(None)
                except (BrokenPipeError, OSError):
                    pass
        deadline = time.monotonic() + 2.0
        for worker in self._workers:
            worker.process.join(max(0.0, deadline - time.monotonic()))
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join()
            worker.connection.close()
        self._workers = []
        self._owner_pid = None

    def _context(self) -> multiprocessing.context.BaseContext:
        context = multiprocessing.get_context(self.start_method)
        if self.start_method == "forkserver":
            # Imported once in the server; every forked worker starts with it loaded.
            context.set_forkserver_preload(["mentor_ray.rewards", "math_verify"])
        return context

    def _start_worker(self) -> _Worker:
        context = self._context()
        parent_end, child_end = context.Pipe(duplex=True)
        process = context.Process(
            target=_grading_worker_main,
            args=(child_end, self.grading_function, self.memory_limit_bytes),
            name="reward-grader",
            daemon=True,
        )
        process.start()
        # Close our copy so the worker's death shows up as EOF on parent_end.
        child_end.close()
        return _Worker(process=process, connection=parent_end)

    def _ensure_pool(self) -> None:
        if self._owner_pid != os.getpid():
            self._workers = []
            self._owner_pid = os.getpid()
        while len(self._workers) < self.num_processes:
            self._workers.append(self._start_worker())

    def _replace(self, worker: _Worker, kill: bool) -> None:
        if kill and worker.process.is_alive():
            worker.process.kill()
        worker.process.join(5.0)
        worker.connection.close()
        self._workers[self._workers.index(worker)] = self._start_worker()

    # -- grading -----------------------------------------------------------------------------
    def grade(
        self, responses: list[str], references: list[str]
    ) -> tuple[list[RewardParts], GradingStats]:
        """Reward parts for each (response, reference) pair, in order, and batch statistics."""
        if len(responses) != len(references):
            raise ValueError(
                f"grade: {len(responses)} responses but {len(references)} references"
            )
        for position, (response, reference) in enumerate(zip(responses, references)):
            if not isinstance(response, str) or not isinstance(reference, str):
                raise TypeError(
                    f"grade: item {position} must be (str, str), got "
                    f"({type(response).__name__}, {type(reference).__name__})"
                )
        format_scores = [FORMAT_RULES[self.format_rule](response) for response in responses]
        accuracy: list[tuple[float, str, float] | None] = [None] * len(responses)
        stats = GradingStats()
        # The default grader's certain cases (no answer, integer vs integer) need no process
        # round trip; only the rest go to math-verify in the worker processes.
        remaining = list(range(len(responses)))
        if self.grading_function == DEFAULT_GRADING_FUNCTION:
            remaining = []
            for index, (response, reference) in enumerate(zip(responses, references)):
                started = time.monotonic()
                verdict = grade_plain_integers(response, reference)
                if verdict is None:
                    remaining.append(index)
                else:
                    accuracy[index] = (*verdict, time.monotonic() - started)
        if remaining:
            self._ensure_pool()
            self._run_accuracy(responses, references, accuracy, stats, remaining)
        parts: list[RewardParts] = []
        for format_score, outcome in zip(format_scores, accuracy):
            assert outcome is not None
            score, status, seconds = outcome
            stats.count(status, seconds)
            parts.append(combine_reward(score, format_score, status, self.weights))
        return parts, stats

    def _run_accuracy(
        self,
        responses: list[str],
        references: list[str],
        accuracy: list[tuple[float, str, float] | None],
        stats: GradingStats,
        indices: list[int],
    ) -> None:
        pending = deque(indices)

        def finish(worker: _Worker, score: float, status: str, note: str = "") -> None:
            index = worker.task_index
            assert index is not None
            accuracy[index] = (score, status, time.monotonic() - worker.task_started)
            if note and len(stats.error_examples) < 5:
                stats.error_examples.append(f"item {index}: {note}")
            worker.task_index = None

        while pending or any(worker.task_index is not None for worker in self._workers):
            for worker in list(self._workers):
                if worker.ready and worker.task_index is None and pending:
                    index = pending.popleft()
                    try:
                        worker.connection.send((index, responses[index], references[index]))
                    except (BrokenPipeError, OSError):
                        # Died while idle: replace it and retry the item on another turn.
                        pending.appendleft(index)
                        self._replace(worker, kill=True)
                        stats.workers_replaced += 1
                        continue
                    worker.task_index = index
                    worker.task_started = time.monotonic()

            now = time.monotonic()
            busy = [worker for worker in self._workers if worker.task_index is not None]
            starting = [worker for worker in self._workers if not worker.ready]
            startup_deadlines = [w.started_at + self.startup_timeout_s for w in starting]
            if not busy and starting and now > min(startup_deadlines):
                self.close()
                raise RuntimeError(
                    f"RewardGrader: no grading worker became ready within "
                    f"{self.startup_timeout_s:.0f} s (start_method={self.start_method!r})"
                )
            deadlines = [worker.task_started + self.timeout_s for worker in busy]
            deadlines.extend(startup_deadlines)
            wait_s = max(0.0, min(deadlines) - now) if deadlines else 0.0
            ready_connections = multiprocessing.connection.wait(
                [worker.connection for worker in busy + starting], timeout=wait_s
            )
            for worker in list(self._workers):
                if worker.connection not in ready_connections:
                    continue
                try:
                    message = worker.connection.recv()
                except (EOFError, OSError):
                    # The worker died: a crash on this item (or at start-up).
                    if worker.task_index is not None:
                        finish(worker, 0.0, "error", "grading worker process died")
                    elif not worker.ready:
                        self.close()
                        raise RuntimeError(
                            f"RewardGrader: grading worker exited during start-up "
                            f"(grading_function={self.grading_function!r})"
                        ) from None
                    self._replace(worker, kill=False)
                    stats.workers_replaced += 1
                    continue
                if not worker.ready:
                    if message[0] == "init_error":
                        self.close()
                        raise RuntimeError(
                            f"RewardGrader: grading worker failed to start "
                            f"(grading_function={self.grading_function!r}): {message[1]}"
                        )
                    worker.ready = True
                    continue
                index, score, status, note = message
                if index == worker.task_index:
                    finish(worker, score, status, note)

            now = time.monotonic()
            for worker in list(self._workers):
                if worker.task_index is not None and now - worker.task_started >= self.timeout_s:
                    finish(worker, 0.0, "timeout")
                    self._replace(worker, kill=True)
                    stats.workers_replaced += 1
