"""Rewards for math reasoning: answer accuracy (math-verify) and output format.

reward = weights.accuracy * accuracy + weights.format * format   (MENTOR.md section 5)

This is the only module that imports math_verify. The grader runs on untrusted model text:
nothing here evaluates it (math-verify parses LaTeX into sympy; no eval/exec), every string
scan is a single linear pass over a bounded window, and accuracy grading, which can hang or
blow up inside sympy (`9^{9^{9^9}}`), runs in worker PROCESSES that are killed and replaced
when they exceed their time budget.

math-verify's own timeouts use `signal.alarm`, which raises outside the main thread (Ray
actors, thread pools), so it is always called here with `parsing_timeout=None,
timeout_seconds=None` and time is bounded by `RewardGrader` instead.
"""

from __future__ import annotations

import ctypes
import importlib
import logging
import multiprocessing
import multiprocessing.connection
import os
import re
import resource
import signal
import time
import unicodedata
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

# Only the tail of a response can hold its final answer; scanning a bounded window keeps every
# string operation here O(window) whatever the model emits.
BOXED_SCAN_WINDOW_CHARS = 10_000
# Deeper brace nesting than this is not a real answer, and deeply nested LaTeX can exhaust
# recursion inside the LaTeX -> sympy parser.
MAX_BOXED_NESTING = 64

GradingStatus = Literal["ok", "no_answer", "timeout", "error", "bad_reference"]
# bad_reference: the dataset's answer itself cannot be parsed; counted apart from the model's
# failures, and the problem is named to the user (the data needs fixing, not the policy).
GRADING_STATUSES: tuple[str, ...] = ("ok", "no_answer", "timeout", "error", "bad_reference")

DEFAULT_GRADING_FUNCTION = "mentor_ray.rewards:grade_accuracy"

_BOXED_COMMANDS = ("\\boxed", "\\fbox")


# ----------------------------------------------------------------------------------------------
# Pure string scans (no math_verify needed)
# ----------------------------------------------------------------------------------------------
def _read_braced_group(text: str, open_index: int, max_nesting: int) -> str | None:
    """Content of the `{...}` group whose `{` is at `open_index`, or None if unclosed/too deep.

    A backslash escapes the next character, so `\\{` and `\\}` (literal braces in LaTeX sets)
    do not count as grouping.
    """
    depth = 0
    index = open_index
    length = len(text)
    while index < length:
        char = text[index]
        if char == "\\":
            index += 2
            continue
        if char == "{":
            depth += 1
            if depth > max_nesting:
                return None
        elif char == "}":
            depth -= 1
            if depth == 0:
                return text[open_index + 1 : index]
        index += 1
    return None


def _last_boxed_command(text: str) -> tuple[int, int] | None:
    """(start, end) of the last `\\boxed`/`\\fbox` command name in text, or None."""
    best: tuple[int, int] | None = None
    for command in _BOXED_COMMANDS:
        search_end = len(text)
        while True:
            start = text.rfind(command, 0, search_end)
            if start < 0:
                break
            end = start + len(command)
            # `\boxedsomething` is another macro, not \boxed.
            if end < len(text) and text[end].isalpha():
                search_end = start
                continue
            if best is None or start > best[0]:
                best = (start, end)
            break
    return best


def extract_last_boxed(
    text: str,
    scan_window_chars: int = BOXED_SCAN_WINDOW_CHARS,
    max_nesting: int = MAX_BOXED_NESTING,
) -> str | None:
    """Content of the LAST `\\boxed{...}` (or `\\fbox{...}`, or `\\boxed 5`) in text.

    Looks only at the last `scan_window_chars` characters. Returns None when there is no boxed
    answer, when the last one is unclosed, or when its braces nest deeper than `max_nesting`.
    An unclosed last box does not fall back to an earlier one: the model's final word is that
    box, and grading an earlier draft answer instead would reward the wrong thing.
    """
    if not isinstance(text, str):
        raise TypeError(f"extract_last_boxed expects str, got {type(text).__name__}")
    window = text[-scan_window_chars:] if scan_window_chars > 0 else text
    found = _last_boxed_command(window)
    if found is None:
        return None
    _, after_command = found
    index = after_command
    while index < len(window) and window[index] in " \t":
        index += 1
    if index >= len(window):
        return None
    if window[index] == "{":
        return _read_braced_group(window, index, max_nesting)
    if after_command < index:
        # `\boxed 5` form: the argument is the next whitespace/`$`-delimited token.
        token_end = index
        while token_end < len(window) and window[token_end] not in " \t\n$":
            token_end += 1
        return window[index:token_end]
    return None


def format_reward(response: str) -> float:
    """1.0 iff response is `<think> reasoning </think> ... \\boxed{answer}`, else 0.0.

    The think block comes first (only whitespace before it), is non-empty, appears exactly
    once, and a non-empty boxed answer follows `</think>`. Linear time: str.find/count only.
    """
    if not isinstance(response, str):
        raise TypeError(f"format_reward expects str, got {type(response).__name__}")
    body = response.lstrip()
    if not body.startswith("<think>"):
        return 0.0
    if response.count("<think>") != 1 or response.count("</think>") != 1:
        return 0.0
    close_index = body.find("</think>")
    reasoning = body[len("<think>") : close_index]
    if not reasoning.strip():
        return 0.0
    after_think = body[close_index + len("</think>") :]
    answer = extract_last_boxed(after_think)
    return 1.0 if answer is not None and answer.strip() else 0.0


_SPACE_AROUND_TAG_CHARS = re.compile(r"\s*([<>/])\s*")


def official_format_reward(response: str) -> float:
    r"""The official code's format rule (MENTOR.md section 5): strip whitespace around `<`, `>`
    and `/`, then `<think>.*</think>.*\boxed\{.*\}.*` must match the whole text (dot matches
    newlines). Repeated or empty think blocks and an empty box pass it. Checked with ordered
    substring searches, which decide the same match in linear time (the regex could backtrack)."""
    if not isinstance(response, str):
        raise TypeError(f"official_format_reward expects str, got {type(response).__name__}")
    text = _SPACE_AROUND_TAG_CHARS.sub(r"\1", response)
    if not text.startswith("<think>"):
        return 0.0
    close = text.find("</think>", len("<think>"))
    if close < 0:
        return 0.0
    box = text.find("\\boxed{", close + len("</think>"))
    if box < 0:
        return 0.0
    return 1.0 if text.find("}", box + len("\\boxed{")) >= 0 else 0.0


# Format rules by name (config: reward.format_rule).
FORMAT_RULES: dict[str, Callable[[str], float]] = {"strict": format_reward, "official": official_format_reward}


# ----------------------------------------------------------------------------------------------
# Accuracy with math-verify (in-process; unbounded time: use RewardGrader for untrusted text)
# ----------------------------------------------------------------------------------------------
def _reference_as_latex(reference: str) -> str:
    # A reference that already carries its own \boxed (a MATH solution) is parsed as is;
    # a bare answer ("\frac{1}{2}", "0.5", "(3, \pi/2)") is boxed so the LaTeX extractor
    # treats all of it as one answer.
    if extract_last_boxed(reference) is not None:
        return reference
    return "\\boxed{" + reference.strip() + "}"


def grade_accuracy(response: str, reference: str) -> tuple[float, str]:
    """(1.0 or 0.0, status) for the last boxed answer of response against reference.

    status is "ok" when both sides parsed (score says whether they match), "no_answer" when
    the response has no usable boxed answer, "bad_reference" when the reference cannot be
    parsed. Both answers are read in Unicode compatibility form (NFKC): a full-width
    `\boxed{２}` is the 2 it displays.
    Runs math-verify with its signal-based timeouts off: call it where time is bounded
    from outside (RewardGrader's worker processes).
    """
    # The only math_verify import in the project. LaTeX extraction only: the plain-expression
    # extractor hands text to sympy's parse_expr, which is built on eval().
    from math_verify import LatexExtractionConfig, parse, verify

    latex_only = [LatexExtractionConfig()]

    if not isinstance(response, str) or not isinstance(reference, str):
        raise TypeError(
            "grade_accuracy expects (str, str), got "
            f"({type(response).__name__}, {type(reference).__name__})"
        )
    answer = extract_last_boxed(response)
    if answer is None or not answer.strip():
        return 0.0, "no_answer"
    answer = unicodedata.normalize("NFKC", answer)
    reference = unicodedata.normalize("NFKC", reference[-BOXED_SCAN_WINDOW_CHARS:])
    predicted = parse(
        "\\boxed{" + answer + "}", extraction_config=latex_only, parsing_timeout=None
    )
    if not predicted:
        return 0.0, "no_answer"
    gold = parse(_reference_as_latex(reference), extraction_config=latex_only, parsing_timeout=None)
    if not gold:
        return 0.0, "bad_reference"
    matched = verify(gold, predicted, timeout_seconds=None)
    return (1.0 if matched else 0.0), "ok"


# A plain integer, at most 64 digits: what most toy and many MATH/GSM8K answers are.
_PLAIN_INTEGER = re.compile(r"[+-]?[0-9]{1,64}")


def grade_plain_integers(response: str, reference: str) -> tuple[float, str] | None:
    """`grade_accuracy`'s verdict without math-verify when it is certain: the response has no
    boxed answer, or both its boxed answer and the reference are plain integers (equal as
    integers, as math-verify also judges them). None otherwise. Linear time, bounded input."""
    answer = extract_last_boxed(response)
    if answer is None or not answer.strip():
        return 0.0, "no_answer"
    answer, gold = unicodedata.normalize("NFKC", answer).strip(), unicodedata.normalize("NFKC", reference[-BOXED_SCAN_WINDOW_CHARS:]).strip()
    if _PLAIN_INTEGER.fullmatch(answer) and _PLAIN_INTEGER.fullmatch(gold):
        return (1.0 if int(answer) == int(gold) else 0.0), "ok"
    return None


def accuracy_reward(response: str, reference: str) -> float:
    """1.0 if the last boxed answer in response is equivalent to reference, else 0.0.

    In-process and NOT time-bounded: for trusted inputs and tests. Grade model output through
    RewardGrader, which kills gradings that hang.
    """
    score, _ = grade_accuracy(response, reference)
    return score


# ----------------------------------------------------------------------------------------------
# Result types
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RewardWeights:
    accuracy: float = 0.9
    format: float = 0.1

    def __post_init__(self) -> None:
        for name in ("accuracy", "format"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"RewardWeights.{name} must be a number >= 0, got {value!r}")


@dataclass(frozen=True)
class RewardParts:
    accuracy: float
    format: float
    total: float
    status: str  # one of GRADING_STATUSES


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


def combine_reward(
    accuracy: float, format_score: float, status: str, weights: RewardWeights
) -> RewardParts:
    total = weights.accuracy * accuracy + weights.format * format_score
    return RewardParts(accuracy=accuracy, format=format_score, total=total, status=status)


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
