"""Rollout and learning overlapped: the step time of `rollout.max_staleness=1` over lockstep.

    .venv/bin/python benchmarks/bench_overlap.py [--setting one-node|cluster|smollm2]... [--steps 12]

Settings (each runs staleness 0, then 1, one after the other, each in a fresh process):
- one-node: the embedded default (toy world, 1 policy + 1 mixed engine, 1 learner) on a local
  Ray instance: every role shares this machine's cores;
- cluster: the toy cluster recipe cut to one engine of each kind and one learner, on a local
  cluster of three Ray nodes whose `engines` node is pinned to core 0 and `learners` node to
  core 1 (`local_cluster up --cores`): two cores standing in for two devices;
- smollm2: configs/smollm2-135m-gsm8k.yaml on a local Ray instance (needs the model folder:
  `python -m mentor_ray.gguf_model`).

Prints, per setting and staleness, the medians over steps 3..S (validation off) of the step,
the rollout, the learner phase, the wait for the rollout in flight, each role's busy share and
the overlap share, then the ratio staleness 1 / staleness 0 of the step time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

COLUMNS = (
    ("step s", "time/step_seconds"),
    ("rollout s", "time/rollout_seconds"),
    ("learn s", "time/learn_seconds"),
    ("wait s", "time/in_flight_wait_seconds"),
    ("policy eng", "busy/policy_engines_share"),
    ("mixed eng", "busy/mixed_engines_share"),
    ("learners", "busy/learners_share"),
    ("overlap", "busy/overlap_share"),
    ("machine CPU busy", "cpu"),
)
TOY_ONE_OF_EACH = ["scaling.num_policy_engines=1", "scaling.num_mixed_engines=1", "scaling.num_learner_workers=1"]


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


class CpuSampler:
    """The machine's CPU busy share (psutil, every 0.25 s) while the runs go, read back per run
    over the wall-clock span of the steps the medians cover (`time/step_started_at`, `_ended_at`)."""

    def __enter__(self) -> CpuSampler:
        import threading

        import psutil

        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()

        def sample() -> None:
            psutil.cpu_percent(None)
            while not self._stop.wait(0.25):
                self.samples.append((time.time(), psutil.cpu_percent(None) / 100))

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join()

    def busy_share(self, history: list[dict], first_step: int) -> float | None:
        steps = [row for row in history if row.get("step", 0) >= first_step and "time/step_started_at" in row]
        if not steps:
            return None
        start, end = steps[0]["time/step_started_at"], steps[-1]["time/step_ended_at"]
        inside = [share for moment, share in self.samples if start <= moment <= end]
        return statistics.mean(inside) if inside else None


def run(name: str, out: Path, config: str | None, overrides: list[str], env: dict[str, str] | None = None) -> list[dict]:
    command = [sys.executable, "-m", "pipelines.train", *(["--config", config] if config else []), *overrides,
               "eval.every_steps=0", f"logging.run_root={out}", f"logging.run_name={name}"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env={**os.environ, **(env or {})})
    if result.returncode != 0:
        raise SystemExit(f"{name} failed:\n{(result.stdout + result.stderr)[-4000:]}")
    return [json.loads(line) for line in (out / name / "metrics.jsonl").read_text().splitlines()]


def medians(history: list[dict], first_step: int) -> dict[str, float]:
    steps = [row for row in history if row.get("step", 0) >= first_step]
    values = {key: [row[key] for row in steps if key in row] for _, key in COLUMNS}
    return {key: statistics.median(found) for key, found in values.items() if found}


def setting_runs(setting: str, out: Path, steps: int, head_on_learner_core: bool) -> dict[int, list[dict]]:
    common = [f"total_steps={steps}", f"checkpoint.every_steps={steps}"]
    runs = {}
    if setting == "cluster":
        from pipelines.local_cluster import LocalCluster

        cores = sorted(os.sched_getaffinity(0))
        if len(cores) < 2:
            raise SystemExit("the cluster setting needs two cores")
        with LocalCluster.up(tempfile.mkdtemp(prefix="mrlc-overlap-"), cpus={"head": 4, "engines": 4, "learners": 2},
                             cores={"engines": [cores[0]], "learners": [cores[1]],
                                    **({"head": [cores[1]]} if head_on_learner_core else {})}) as cluster:
            for staleness in (0, 1):
                runs[staleness] = run(f"cluster-s{staleness}", out, "pipelines/recipes/toy_cluster.yaml",
                                      [*common, *TOY_ONE_OF_EACH, f"rollout.max_staleness={staleness}"], cluster.client_env())
        return runs
    config = "configs/smollm2-135m-gsm8k.yaml" if setting == "smollm2" else None
    for staleness in (0, 1):
        runs[staleness] = run(f"{setting}-s{staleness}", out, config, [*common, f"rollout.max_staleness={staleness}"])
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--setting", action="append", choices=("one-node", "cluster", "smollm2"), default=None)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--head-on-learner-core", action="store_true",
                        help="cluster: pin the head node (driver, graders, Ray Data tasks) to the learners' core too, "
                             "so CPU-side orchestration stays off the engines' core, as it stays off a GPU")
    parser.add_argument("--first-step", type=int, default=3, help="first step of the medians (earlier ones warm up)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    out = (args.out or Path(tempfile.mkdtemp(prefix="bench-overlap-"))).resolve()
    out.mkdir(parents=True, exist_ok=True)
    print(f"machine: {os.cpu_count()} CPUs, {_cpu_model()}; runs in {out}", flush=True)
    print("\n| setting | staleness | " + " | ".join(label for label, _ in COLUMNS) + " |")
    print("|---" * (2 + len(COLUMNS)) + "|")
    ratios = {}
    for setting in args.setting or ["one-node", "cluster"]:
        with CpuSampler() as cpu:
            runs = setting_runs(setting, out, args.steps, args.head_on_learner_core)
        table = {staleness: medians(history, args.first_step) for staleness, history in runs.items()}
        for staleness, numbers in table.items():
            numbers["cpu"] = cpu.busy_share(runs[staleness], args.first_step)
            cells = " | ".join("-" if numbers.get(key) is None else f"{numbers[key]:.2f}" for _, key in COLUMNS)
            print(f"| {setting} | {staleness} | {cells} |", flush=True)
        ratios[setting] = table[1]["time/step_seconds"] / table[0]["time/step_seconds"]
    print("\n| setting | step time, staleness 1 / staleness 0 |")
    print("|---|---|")
    for setting, ratio in ratios.items():
        print(f"| {setting} | {ratio:.2f} |")
    (out / "bench_overlap.json").write_text(json.dumps(ratios, indent=1))


if __name__ == "__main__":
    main()
