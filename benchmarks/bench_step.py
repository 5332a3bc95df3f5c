"""Where an RL step's wall time goes, against TRL's GRPOTrainer on identical work.

    .venv/bin/python benchmarks/bench_step.py [--config RECIPE.yaml] [--steps 8] [--prompts 32]
        [--samples 8] [--mixed 4] [--new-tokens 96] [--skip-trl] [--skip-mentor] [--out DIR]
        [--override KEY=VALUE ...]

The embedded toy recipe by default; `--config configs/smollm2-135m-gsm8k.yaml` runs the same
comparison on SmolLM2-135M (a real 49k-token vocabulary).

Runs, one after another, each in a fresh process (so none shares the cores with another):
1. our GRPO step (`pipelines.train`, n_mixed=0), P prompts x G samples, validation off, one
   optimizer step per step (mini-batch = P prompts), on the recipe's policy;
2. our MENTOR step (N1 = G, N2 = --mixed), same P;
3. TRL's `GRPOTrainer` on the same work (`benchmarks/trl_peer.py`; needs the `[bench]` extra);
4. the policy engine called directly on the same prompts (P x G, same token budget), for the
   pipeline's share of the engine's own throughput.

Prints the median of steps 2..S of each phase (step 1 warms up), the ratios against the
targets of the step-speed issue, and the time from launch to the first step's console line.
Phases, from the loop's `time/*` metrics: engine calls and grading (union of the actors' busy
intervals), the rest of the rollout (Ray Data start-up, stage hops, transfers), the learner's
no-grad pass and update, weight export and engine reload, and orchestration (everything else).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PHASES = (
    ("step", "time/step_seconds"),
    ("rollout", "time/rollout_seconds"),
    ("  in engine calls", "time/engine_busy_seconds"),
    ("  in grading calls", "time/grading_busy_seconds"),
    ("  rest of rollout", "time/rollout_overhead_seconds"),
    ("learner no-grad pass", "time/old_log_prob_seconds"),
    ("learner update", "time/update_seconds"),
    ("weight export", "time/export_seconds"),
    ("engine weight reload", "sync/engine_load_seconds_max"),
    ("orchestration", "time/orchestration_seconds"),
)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def run_ours(name: str, args, out: Path, n_mixed: int) -> dict:
    """One `pipelines.train` run; returns its per-step metrics and the first-step latency."""
    overrides = [
        f"total_steps={args.steps}", f"rollout.prompts_per_step={args.prompts}", f"rollout.n_on_policy={args.samples}",
        f"rollout.n_mixed={n_mixed}", f"rollout.max_response_tokens={args.new_tokens}",
        f"optimizer.mini_batch_prompts={args.prompts}", "eval.every_steps=0", f"checkpoint.every_steps={args.steps}",
        f"logging.run_root={out}", f"logging.run_name={name}", f"seed={args.seed}", *args.override,
    ]
    if n_mixed == 0:
        overrides.append("model.expert_path=null")
    started = time.perf_counter()
    config = ["--config", str(args.config)] if args.config else []
    process = subprocess.Popen(
        [sys.executable, "-m", "pipelines.train", *config, *overrides], cwd=REPO, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True,
    )
    first_step = None
    lines = []
    for line in process.stdout:
        lines.append(line.rstrip())
        if first_step is None and line.startswith("step 1/"):
            first_step = time.perf_counter() - started
    if process.wait() != 0:
        raise SystemExit(f"{name} run failed:\n" + "\n".join(lines[-40:]))
    metrics = [json.loads(line) for line in (out / name / "metrics.jsonl").read_text().splitlines()]
    return {"steps": metrics, "first_step_line_seconds": first_step, "wall_seconds": time.perf_counter() - started, "console_lines": len(lines)}


def run_trl(args, out: Path) -> dict:
    target = out / "trl.json"
    command = [sys.executable, str(REPO / "benchmarks" / "trl_peer.py"), "--out", str(target), "--steps", str(args.steps),
               "--prompts", str(args.prompts), "--samples", str(args.samples), "--new-tokens", str(args.new_tokens), "--seed", str(args.seed)]
    if args.config:
        command += ["--config", str(args.config)]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit("TRL peer failed (pip install -e '.[bench]'):\n" + result.stderr[-4000:])
    return json.loads(target.read_text())


DIRECT_ENGINE = """
import json, os, sys, tempfile, time
from pathlib import Path
from mentor_ray.rollout.requests import CPU_ENGINE_ENV
os.environ.update(CPU_ENGINE_ENV)
from mentor_ray.config import load_config
from mentor_ray.data.prompt_schedule import PromptSchedule
from mentor_ray.rollout.engines import EngineSettings, PolicyEngine, SamplingSpec
from mentor_ray.data.run_inputs import load_tokenized_problems, resolve_run_paths
from pipelines.train import DEFAULT_RECIPE
from transformers import AutoTokenizer
prompts, samples, new_tokens, seed, steps = map(int, sys.argv[1:6])
config = load_config(sys.argv[6] or DEFAULT_RECIPE, [f"seed={seed}"])
paths = resolve_run_paths(config, Path(tempfile.mkdtemp()))
tokenizer = AutoTokenizer.from_pretrained(paths.policy_dir)
problems, _ = load_tokenized_problems(paths.train_path, config, tokenizer, paths.system_prompt, "train", say=lambda _: None)
schedule = PromptSchedule(len(problems), prompts, seed, config.data.shuffle)
engine = PolicyEngine(paths.policy_dir, EngineSettings(max_model_len=config.model.max_model_len, seed=seed))
rates = []
for step in range(1, steps + 1):
    ids = [problems[i].prompt_token_ids for i in schedule.indices_for_step(step)]
    started = time.perf_counter()
    results = engine.generate(ids, SamplingSpec(n=samples, max_new_tokens=new_tokens, seed=step))
    seconds = time.perf_counter() - started
    rates.append(sum(len(r.response_token_ids) for r in results) / seconds)
print(json.dumps({"tokens_per_second": rates}))
"""


def run_direct_engine(args) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", DIRECT_ENGINE, str(args.prompts), str(args.samples), str(args.new_tokens), str(args.seed),
         str(args.direct_steps), str(args.config or "")],
        cwd=REPO, capture_output=True, text=True,
    )
    if result.returncode != 0:
        raise SystemExit("direct engine run failed:\n" + result.stderr[-4000:])
    return json.loads(result.stdout.strip().splitlines()[-1])


def _median(steps: list[dict], key: str) -> float | None:
    values = [s[key] for s in steps if s.get("step", 0) >= 2 and key in s]
    return statistics.median(values) if values else None


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=None, help="recipe YAML (default: the embedded toy recipe)")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--direct-steps", type=int, default=4, help="calls of the direct-engine baseline (first is warm-up)")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--mixed", type=int, default=4)
    parser.add_argument("--new-tokens", type=int, default=96)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--skip-trl", action="store_true")
    parser.add_argument("--skip-mentor", action="store_true")
    parser.add_argument("--out", type=Path, default=None, help="folder for the runs (default: a temporary one)")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE", help="extra dotted override for our runs")
    args = parser.parse_args()
    out = (args.out or Path(tempfile.mkdtemp(prefix="bench-step-"))).resolve()
    out.mkdir(parents=True, exist_ok=True)
    print(f"machine: {os.cpu_count()} CPUs, {_cpu_model()}; runs in {out}", flush=True)

    results: dict = {"grpo": run_ours("grpo", args, out, 0)}
    if not args.skip_mentor:
        results["mentor"] = run_ours("mentor", args, out, args.mixed)
    if not args.skip_trl:
        results["trl"] = run_trl(args, out)
    results["direct_engine"] = run_direct_engine(args)
    (out / "bench_step.json").write_text(json.dumps(results, indent=1))

    ours = {name: results[name]["steps"] for name in ("grpo", "mentor") if name in results}
    header = f"| phase (median of steps 2-{args.steps}, s) | " + " | ".join(f"ours {n.upper()}" for n in ours)
    print()
    print(header + (" | TRL GRPO |" if "trl" in results else " |"))
    print("|---" * (1 + len(ours) + ("trl" in results)) + "|")
    trl_steps = results.get("trl", {}).get("steps", [])[1:]
    trl_step = statistics.median(s["step_seconds"] for s in trl_steps) if trl_steps else None
    trl_generate = statistics.median(s["generate_seconds"] for s in trl_steps) if trl_steps else None
    for label, key in PHASES:
        row = f"| {label} | " + " | ".join(_fmt(_median(steps, key)) for steps in ours.values())
        if "trl" in results:
            row += " | " + _fmt({"time/step_seconds": trl_step, "time/engine_busy_seconds": trl_generate}.get(key))
        print(row + " |")
    grpo = results["grpo"]
    grpo_step = _median(grpo["steps"], "time/step_seconds")
    direct = statistics.median(results["direct_engine"]["tokens_per_second"][1:])
    pipeline_rate = _median(grpo["steps"], "time/rollout_tokens_per_second")
    print()
    print("| ratio | value | target |")
    print("|---|---|---|")
    if trl_step:
        print(f"| our GRPO step / TRL step | {grpo_step / trl_step:.2f} | <= 1.0 |")
        engine = _median(grpo["steps"], "time/engine_busy_seconds")
        print(f"| our GRPO step / (our engine time + TRL's non-generation time) | {grpo_step / (engine + trl_step - trl_generate):.2f} | <= 1.1 |")
    print(f"| orchestration / step (GRPO) | {_median(grpo['steps'], 'time/orchestration_share'):.2f} | <= 0.10 |")
    if "mentor" in results:
        guided = [s for s in results["mentor"]["steps"] if s.get("rollout/mixed_samples", 0) > 0]
        mentor_step = statistics.median(s["time/step_seconds"] for s in guided[1:] or guided)
        print(f"| MENTOR step / our GRPO step | {mentor_step / grpo_step:.2f} | <= 1.3 |")
    print(f"| pipeline tokens/s / direct engine tokens/s | {pipeline_rate:.0f} / {direct:.0f} = {pipeline_rate / direct:.2f} | >= 0.70 |")
    print(f"| launch to first step line (s) | {grpo['first_step_line_seconds']:.1f} | <= 15 |")
    print(f"\nwhole runs: ours GRPO {grpo['wall_seconds']:.0f} s"
          + (f", MENTOR {results['mentor']['wall_seconds']:.0f} s" if "mentor" in results else "")
          + (f", TRL train() {results['trl']['train_seconds']:.0f} s" if "trl" in results else ""))


if __name__ == "__main__":
    main()
