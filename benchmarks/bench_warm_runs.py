"""Runs made in turn by one driver: what `pipelines.roles.WarmActors` saves per run.

    .venv/bin/python benchmarks/bench_warm_runs.py [--runs 3] [--steps 1]

Three ways to make N short runs of the embedded recipe (the test suite's short run, cut to
`--steps` steps), each in a fresh driver process:
- fresh: each run on its own local Ray instance (`ray.shutdown()` between runs), as separate
  `python -m pipelines.train` commands behave;
- one Ray instance: the runs share the driver's Ray instance, each builds its own engines;
- warm: the runs share the Ray instance and a `WarmActors`, so a run takes over the last run's
  engines and graders.
Prints each run's wall time, the mean of runs 2..N, and its ratio to fresh; checks that every
run of a way logged the same step-1 numbers as the fresh way's first run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

DRIVER = """
import json, sys, time
sys.path.insert(0, {tests!r})
import ray
from short_runs import short_config
from mentor_ray.metrics import read_metrics
from pipelines.roles import WarmActors
from pipelines.train import run_training

way, runs, steps, root = {way!r}, {runs}, {steps}, {root!r}
warm = WarmActors() if way == "warm" else None
out = []
for i in range(runs):
    started = time.perf_counter()
    summary = run_training(short_config(root, f"logging.run_name={{way}}-{{i}}", f"total_steps={{steps}}"), warm_actors=warm)
    seconds = time.perf_counter() - started
    step_1 = next(r for r in read_metrics(summary.run_dir + "/metrics.jsonl") if r["step"] == 1)
    out.append({{"seconds": seconds, "step_1": {{k: step_1[k] for k in ("rollout/on_policy_reward", "rollout/mixed_reward", "train/loss")}}}})
    if way == "fresh":
        ray.shutdown()
if warm is not None:
    warm.close()
print("RESULT " + json.dumps(out))
"""


def _way(way: str, runs: int, steps: int) -> list[dict]:
    with tempfile.TemporaryDirectory(prefix="bench-warm-") as root:
        code = DRIVER.format(tests=str(REPO / "tests"), way=way, runs=runs, steps=steps, root=root)
        result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=3600, check=False)
    line = next((line for line in result.stdout.splitlines() if line.startswith("RESULT ")), None)
    if result.returncode != 0 or line is None:
        raise SystemExit(f"{way}: the driver failed\n{(result.stdout + result.stderr)[-3000:]}")
    return json.loads(line.removeprefix("RESULT "))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=1)
    args = parser.parse_args()
    if args.runs < 2:
        parser.error("--runs must be at least 2: the first run of every way builds everything")
    ways = {way: _way(way, args.runs, args.steps) for way in ("fresh", "one Ray instance", "warm")}
    reference = ways["fresh"][0]["step_1"]
    later = {way: sum(r["seconds"] for r in rows[1:]) / (len(rows) - 1) for way, rows in ways.items()}
    header = f"{'way':<18}" + "".join(f"{f'run {i + 1} s':>10}" for i in range(args.runs)) + f"{'runs 2+ mean s':>16}{'/ fresh':>9}  same step 1"
    print(header)
    print("-" * len(header))
    for way, rows in ways.items():
        same = all(r["step_1"] == reference for r in rows)
        print(f"{way:<18}" + "".join(f"{r['seconds']:>10.1f}" for r in rows) + f"{later[way]:>16.1f}{later[way] / later['fresh']:>9.2f}  {same}")
    return 0 if all(r["step_1"] == reference for rows in ways.values() for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
