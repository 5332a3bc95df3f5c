"""What a person sees of a run: a start line, one line per step, a summary. Nothing else.

Library chatter (Ray, Ray Train, Ray Data, vLLM, DeepSpeed) stays out of the console:
- everything the driver process writes to its standard output and error (Python logging and
  warnings, Ray's C++ core, Ray's relayed warnings) goes to `run.log` in the run folder, while
  the console lines go to the real standard output;
- worker and actor output is not forwarded to the driver (`ray.init(log_to_driver=False)`); it
  stays in Ray's session logs, linked from the run folder as `ray_logs` on a local instance;
- the loop's lines travel from the rank-0 worker to the driver through a small queue actor
  and are printed by the driver alone, so each appears once, in a direct run and in a
  `ray job submit` log alike (a worker's `print` is echoed by Ray Train's print patch and by
  log forwarding).

`--verbose` turns all of this off and shows everything.
"""

from __future__ import annotations

import math
import os
import sys
import threading
from pathlib import Path
from typing import Any

RUN_LOG_FILE = "run.log"
RAY_LOGS_LINK = "ray_logs"


def _format_eta(seconds: float) -> str:
    minutes, secs = divmod(int(max(0.0, seconds)), 60)
    return f"{minutes}m{secs:02d}s"


def step_line(step: int, total: int, metrics: dict[str, float], step_seconds: float, eta: float) -> str:
    """The console's line for one step: rewards, accuracy, validation, entropy, tau, w, alpha, length, time, ETA."""
    def value(key: str, fmt: str = "{:.3f}") -> str:
        v = metrics.get(key)
        return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else fmt.format(v)

    return (
        f"step {step}/{total} | reward on {value('rollout/on_policy_reward')} mixed {value('rollout/mixed_reward')}"
        f" | acc on {value('rollout/on_policy_accuracy')} mixed {value('rollout/mixed_accuracy')}"
        f" | val {value('val/greedy_accuracy')} | H {value('rollout/entropy_mean')} tau {value('guidance/entropy_threshold', '{:.2f}')}"
        f" | w {value('rollout/mixture_weight_mean')} alpha {value('guidance/alpha', '{:.2f}')}"
        f" | len {value('rollout/response_length', '{:.1f}')} | {step_seconds:.1f}s | ETA {_format_eta(eta)}"
    )


class ConsoleLines:
    """Worker side: hands a line to the driver's console (or prints it when there is none)."""

    def __init__(self, queue: Any | None) -> None:
        self._queue = queue

    def say(self, line: str) -> None:
        if self._queue is None:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()
            return
        self._queue.put(line)


class DriverConsole:
    """Driver side: quiets the libraries, prints the loop's lines as they arrive."""

    def __init__(self, run_dir: Path, verbose: bool = False) -> None:
        self.run_dir = Path(run_dir)
        self.verbose = verbose
        self._queue: Any | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._log_file: Any | None = None
        self._console: Any | None = None
        self._saved_fds: dict[int, int] = {}

    # --- library output -----------------------------------------------------------------------

    def quiet_libraries(self) -> None:
        """Send the driver's library output to run.log: the process's standard output and
        error themselves (fds 1 and 2), so Python logging, warnings, Ray's C++ core and Ray's
        relayed warnings all land there, whoever writes them. The console keeps a handle on
        the real standard output for its own lines."""
        if self.verbose:
            return
        sys.stdout.flush()
        sys.stderr.flush()
        self._log_file = open(self.run_dir / RUN_LOG_FILE, "a", buffering=1)
        self._console = os.fdopen(os.dup(1), "w", buffering=1)
        self._saved_fds = {fd: os.dup(fd) for fd in (1, 2)}
        for fd in (1, 2):
            os.dup2(self._log_file.fileno(), fd)

    @property
    def console_fd(self) -> int:
        """The file descriptor console lines go to (the real standard output)."""
        return self._console.fileno() if self._console is not None else sys.stdout.fileno()

    @property
    def log_to_driver(self) -> bool:
        return self.verbose

    def link_ray_logs(self) -> None:
        """Point run_dir/ray_logs at this local Ray session's log folder (workers, actors)."""
        try:
            import ray._private.worker as ray_worker

            logs = ray_worker._global_node.get_logs_dir_path()
        except Exception:  # noqa: BLE001 - only a convenience link; a remote cluster has none here
            return
        link = self.run_dir / RAY_LOGS_LINK
        if link.is_symlink() or link.exists():
            link.unlink()
        if logs and os.path.isdir(logs):
            link.symlink_to(logs)

    # --- the loop's lines -----------------------------------------------------------------------

    def start_relay(self) -> ConsoleLines:
        """A queue the loop writes its lines to; a driver thread prints them."""
        from ray.util.queue import Queue

        from pipelines.resources import on_this_node

        # On the driver's node: the console must outlive any worker node.
        self._queue = Queue(actor_options={"num_cpus": 0, "scheduling_strategy": on_this_node()})
        self._thread = threading.Thread(target=self._relay, name="console-relay", daemon=True)
        self._thread.start()
        return ConsoleLines(self._queue)

    def _relay(self) -> None:
        from ray.util.queue import Empty

        while not self._stop.is_set():
            try:
                line = self._queue.get(block=True, timeout=0.5)
            except Empty:
                continue
            except Exception:  # noqa: BLE001 - the queue actor is gone at shutdown
                return
            self.say(line)

    def say(self, line: str) -> None:
        stream = self._console or sys.stdout
        stream.write(line + "\n")
        stream.flush()

    def close(self) -> None:
        """Print what is still queued, stop the relay, restore logging."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join(timeout=5)
            self._thread = None
        if self._queue is not None:
            try:
                while not self._queue.empty():
                    self.say(self._queue.get_nowait())
                self._queue.shutdown()
            except Exception:  # noqa: BLE001 - best effort at teardown
                pass
            self._queue = None
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, saved in self._saved_fds.items():
            os.dup2(saved, fd)
            os.close(saved)
        self._saved_fds = {}
        if self._console is not None:
            self._console.close()
            self._console = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
