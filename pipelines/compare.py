"""`python -m pipelines.compare [--config FILE] [--seeds 42,43,44] [key=value ...]`: MENTOR against
the GRPO baseline, seed by seed, with a statement of what holds on every seed.

For each seed, the recipe runs twice (the second with rollout.n_mixed=0: plain GRPO) and the
pair gives its numbers: validation accuracy at the end, entropy while guided and at the end of
guidance, the guided rollout rewards, pass@k of both final models (the evaluation suite's
estimator, `--pass-at-k-samples` samples per held-out problem at T=0.6) and, on a toy world,
the habits that explain the result (how often each final model stops early or swaps operands).
Then `summary.md` / `summary.json` give every number per seed, their mean and spread, and each
effect the toy world should show with whether it holds on every seed; `plots/` draws every
seed's curves. With one seed and no other flags it is the quick single comparison it always was.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mentor_ray import storage
from mentor_ray.config import MentorConfig, load_config
from mentor_ray.metrics import end_of_guidance_step, mean_of, read_metrics, window_mean
from mentor_ray.plots import plot_runs, plot_seeds
from pipelines.train import DEFAULT_RECIPE, run_training

PASS_AT_K_TEMPERATURE = 0.6


def comparison(mentor: list[dict], grpo: list[dict], decay_steps: int) -> dict[str, float]:
    """One seed's numbers from the two runs' metrics."""
    guided = [r for r in mentor if r.get("rollout/mixed_samples", 0) > 0]
    validations = [r for r in mentor if "val/greedy_accuracy" in r]
    end_of_guidance = end_of_guidance_step(mentor, decay_steps)

    def while_guided(history: list[dict]) -> float:
        return mean_of(r.get("rollout/entropy_mean") for r in history if 1 <= r["step"] <= end_of_guidance)

    return {
        "guided_steps": len(guided),
        "mixed_reward_while_guided": mean_of([r["rollout/mixed_reward"] for r in guided]),
        "on_policy_reward_while_guided": mean_of([r["rollout/on_policy_reward"] for r in guided]),
        "initial_val_accuracy": validations[0]["val/greedy_accuracy"] if validations else float("nan"),
        "final_val_accuracy": validations[-1]["val/greedy_accuracy"] if validations else float("nan"),
        "grpo_final_val_accuracy": next((r["val/greedy_accuracy"] for r in reversed(grpo) if "val/greedy_accuracy" in r), float("nan")),
        "end_of_guidance_step": end_of_guidance,
        "mentor_entropy_while_guided": while_guided(mentor),
        "grpo_entropy_while_guided": while_guided(grpo),
        "mentor_entropy_end_of_guidance": window_mean(mentor, "rollout/entropy_mean", end_of_guidance),
        "grpo_entropy_end_of_guidance": window_mean(grpo, "rollout/entropy_mean", end_of_guidance),
    }


@dataclass(frozen=True)
class Effect:
    """A claim about MENTOR vs GRPO, checked per seed or on the mean over seeds."""

    name: str
    value: Callable[[dict], float]
    holds: Callable[[float], bool]
    every_seed: bool  # False: the claim is about the mean over seeds
    value_format: str = "{:+.3f}"  # a difference; ratios use "{:.2f}"


EFFECTS = (
    Effect("final val accuracy, MENTOR - GRPO (>= +0.05)",
           lambda n: n["final_val_accuracy"] - n["grpo_final_val_accuracy"], lambda v: v >= 0.05, every_seed=True),
    Effect("pass@32, MENTOR - GRPO (> 0)",
           lambda n: n["mentor_pass_at_32"] - n["grpo_pass_at_32"], lambda v: v > 0, every_seed=True),
    Effect("entropy at the end of guidance, MENTOR / GRPO (mean >= 1.2)",
           lambda n: n["mentor_entropy_end_of_guidance"] / n["grpo_entropy_end_of_guidance"], lambda v: v >= 1.2,
           every_seed=False, value_format="{:.2f}"),
)


def _spread(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values)}


def summarize(per_seed: dict[int, dict[str, float]]) -> dict:
    """Mean and spread of every number over seeds, and each effect with whether it holds: on
    every seed (per-seed claims) or on the mean (the entropy claim). An effect whose numbers
    are missing (pass@k skipped) is reported as not measured."""
    keys = sorted({key for numbers in per_seed.values() for key in numbers})
    spread = {key: _spread([n[key] for n in per_seed.values()]) for key in keys
              if all(isinstance(n.get(key), (int, float)) for n in per_seed.values())}
    effects = []
    for effect in EFFECTS:
        try:
            values = {seed: effect.value(numbers) for seed, numbers in per_seed.items()}
        except KeyError:
            effects.append({"effect": effect.name, "measured": False})
            continue
        holds = all(effect.holds(v) for v in values.values()) if effect.every_seed else effect.holds(statistics.fmean(values.values()))
        effects.append({"effect": effect.name, "measured": True, "per_seed": values, "value_format": effect.value_format,
                        **_spread(list(values.values())),
                        "judged_on": "every seed" if effect.every_seed else "mean over seeds", "holds": holds})
    return {"seeds": sorted(per_seed), "per_seed": per_seed, "spread": spread, "effects": effects}


# Rows of the per-seed table: (label, key in a seed's numbers).
TABLE_ROWS = (
    ("val accuracy at step 0", "initial_val_accuracy"),
    ("final val accuracy, MENTOR", "final_val_accuracy"),
    ("final val accuracy, GRPO", "grpo_final_val_accuracy"),
    ("pass@1, MENTOR / GRPO", ("mentor_pass_at_1", "grpo_pass_at_1")),
    ("pass@8, MENTOR / GRPO", ("mentor_pass_at_8", "grpo_pass_at_8")),
    ("pass@32, MENTOR / GRPO", ("mentor_pass_at_32", "grpo_pass_at_32")),
    ("entropy while guided, MENTOR / GRPO", ("mentor_entropy_while_guided", "grpo_entropy_while_guided")),
    ("entropy at end of guidance, MENTOR / GRPO", ("mentor_entropy_end_of_guidance", "grpo_entropy_end_of_guidance")),
    ("reward while guided, mixed / on-policy", ("mixed_reward_while_guided", "on_policy_reward_while_guided")),
    ("final model stops early (T=1), MENTOR / GRPO", ("mentor_early_stop_rate", "grpo_early_stop_rate")),
    ("final model swaps operands (T=1), MENTOR / GRPO", ("mentor_swapped_share", "grpo_swapped_share")),
    ("final model accuracy (T=1), MENTOR / GRPO", ("mentor_sampled_accuracy", "grpo_sampled_accuracy")),
)


def summary_markdown(summary: dict) -> str:
    seeds = summary["seeds"]
    per_seed, spread = summary["per_seed"], summary["spread"]

    def cell(numbers: dict, key: str | tuple[str, str]) -> str:
        keys = (key,) if isinstance(key, str) else key
        return " / ".join(f"{numbers[k]:.3f}" if k in numbers else "-" for k in keys)

    def mean_cell(key: str | tuple[str, str]) -> str:
        keys = (key,) if isinstance(key, str) else key
        return " / ".join(f"{spread[k]['mean']:.3f} ± {spread[k]['std']:.3f}" if k in spread else "-" for k in keys)

    lines = ["| | " + " | ".join(f"seed {s}" for s in seeds) + " | mean ± sd |", "|---|" + "---|" * (len(seeds) + 1)]
    for label, key in TABLE_ROWS:
        first_key = key if isinstance(key, str) else key[0]
        if any(first_key in per_seed[s] for s in seeds):
            lines.append(f"| {label} | " + " | ".join(cell(per_seed[s], key) for s in seeds) + f" | {mean_cell(key)} |")
    lines += ["", "| effect | " + " | ".join(f"seed {s}" for s in seeds) + " | mean ± sd | judged on | holds |",
              "|---|" + "---|" * (len(seeds) + 3)]
    for effect in summary["effects"]:
        if not effect["measured"]:
            lines.append(f"| {effect['effect']} | " + " | ".join("-" for _ in seeds) + " | - | - | not measured |")
            continue
        values = " | ".join(effect["value_format"].format(effect["per_seed"][s]) for s in seeds)
        lines.append(f"| {effect['effect']} | {values} | {effect['mean']:.3f} ± {effect['std']:.3f} | {effect['judged_on']} | "
                     f"{'yes' if effect['holds'] else 'no'} |")
    return "\n".join(lines) + "\n"


def pass_at_k_comparison(runs: dict[str, Path], root: Path, samples: int, limit: int | None,
                         eval_file: str | None = None) -> dict[str, float]:
    """Both final models on the held-out problems, `samples` samples each (T=0.6): pass@k
    against k, the paper's exploration claim. Drawn into plots/pass_at_k.png. eval_file: the
    held-out problems (default: the default toy world's)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import ray

    from pipelines.evaluate import evaluate

    numbers: dict[str, float] = {}
    figure, axes = plt.subplots(figsize=(6, 4))
    for label, run_dir in runs.items():
        results = evaluate(str(run_dir), ["toy_eval"], root / f"eval-{label}", config_file=str(run_dir / "config.yaml"),
                           limit=limit, samples=samples, files={"toy_eval": eval_file} if eval_file else None,
                           say=lambda line: None)
        ray.shutdown()
        curve = sorted((int(k), v) for k, v in results["toy_eval"]["pass_at_k"].items())
        axes.plot(*zip(*curve), marker="o", label=label)
        numbers.update({f"{label}_pass_at_{k}": v for k, v in curve})
    axes.set_xscale("log", base=2)
    axes.set_xlabel("k")
    axes.set_ylabel("pass@k")
    axes.set_title(f"pass@k on held-out problems ({samples} samples, T={PASS_AT_K_TEMPERATURE})")
    axes.legend()
    figure.tight_layout()
    (root / "plots").mkdir(parents=True, exist_ok=True)
    figure.savefig(root / "plots" / "pass_at_k.png", dpi=100)
    plt.close(figure)
    return numbers


def habits_comparison(runs: dict[str, Path], eval_path: str, limit: int | None) -> dict[str, float]:
    """The toy habits of both final models, sampled at T=1 on the held-out problems: what the
    accuracy difference is made of (finishing the working, the operand order it writes)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mentor_ray.toy_world.evaluate import sampled_habits

    problems = [json.loads(line) for line in Path(eval_path).read_text().splitlines() if line.strip()][:limit]
    numbers = {}
    for label, run_dir in runs.items():
        folder = run_dir / "final_model"
        habits = sampled_habits(AutoModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder), problems)
        numbers.update({f"{label}_sampled_accuracy": habits.accuracy, f"{label}_early_stop_rate": habits.early_stop_rate,
                        f"{label}_swapped_share": habits.swapped_share})
    return numbers


def seed_numbers(runs: dict[str, Path], root: Path, config: MentorConfig, pass_at_k_samples: int) -> dict[str, float]:
    from mentor_ray.run_inputs import TOY_SCHEME, resolve_data_path

    plot_runs(runs, root / "plots")
    numbers = comparison(read_metrics(runs["mentor"] / "metrics.jsonl"), read_metrics(runs["grpo"] / "metrics.jsonl"),
                         config.guidance.decay_steps)
    eval_file = resolve_data_path(config.data.eval_path, "data.eval_path") if config.data.eval_path else None
    if pass_at_k_samples:
        numbers.update(pass_at_k_comparison(runs, root, pass_at_k_samples, config.eval.max_problems, eval_file))
    if eval_file and config.data.eval_path.startswith(TOY_SCHEME):
        numbers.update(habits_comparison(runs, eval_file, config.eval.max_problems))
    return numbers


def train_pair(config_file: Path, overrides: list[str], root: Path) -> dict[str, Path]:
    import ray

    runs = {}
    for label, extra in (("mentor", []), ("grpo", ["rollout.n_mixed=0"])):
        run_config = load_config(config_file, overrides + extra + [f"logging.run_root={root}", f"logging.run_name={label}"])
        runs[label] = Path(run_training(run_config).run_dir)
        ray.shutdown()
    return runs


def _seed_list(text: str) -> list[int]:
    try:
        seeds = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated integers, e.g. 42,43,44") from None
    if len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"{text!r}: a seed is repeated")
    return seeds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=DEFAULT_RECIPE)
    parser.add_argument("--seeds", type=_seed_list, help="RL seeds, comma-separated (42,43,44): one MENTOR/GRPO pair each "
                        "(default: the recipe's seed)")
    parser.add_argument("--runs", nargs=2, metavar=("MENTOR_RUN", "GRPO_RUN"),
                        help="compare two finished run folders (local paths or URIs such as s3://bucket/runs/x) instead of training")
    parser.add_argument("--pass-at-k-samples", type=int, default=32,
                        help="samples per held-out problem for both final models' pass@k (0: skip)")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    overrides = list(args.overrides)
    config = load_config(args.config, overrides)
    per_seed: dict[int, dict[str, float]] = {}
    pairs: dict[int, dict[str, Path]] = {}
    if args.runs:
        if args.seeds:
            parser.error("--runs compares two finished runs; --seeds trains new ones")
        try:
            return compare_finished_runs(args.runs[0], args.runs[1], stamp, args.pass_at_k_samples)
        except storage.StorageError as error:
            print(f"error: --runs: {error}", file=sys.stderr)
            return 2
    else:
        root = Path(config.logging.run_root) / f"compare-{stamp}"
        seeds = args.seeds or [config.seed]
        for seed in seeds:
            seed_root = root if len(seeds) == 1 else root / f"seed-{seed}"
            seed_overrides = overrides + [f"seed={seed}"]
            pairs[seed] = train_pair(args.config, seed_overrides, seed_root)
            per_seed[seed] = seed_numbers(pairs[seed], seed_root, load_config(args.config, seed_overrides), args.pass_at_k_samples)
            (seed_root / "comparison.json").write_text(json.dumps({"seed": seed, **per_seed[seed]}, indent=2))
    write_summary(per_seed, pairs, root)
    print(f"summary: {root / 'summary.md'}\nplots: {root / 'plots'}")
    return 0


def write_summary(per_seed: dict[int, dict[str, float]], pairs: dict[int, dict[str, Path]], root: Path) -> None:
    summary = summarize(per_seed)
    (root / "summary.json").write_text(json.dumps(summary, indent=2))
    (root / "summary.md").write_text(summary_markdown(summary))
    plot_seeds(pairs, root / "plots")
    print(summary_markdown(summary))


# What a comparison reads of a finished run: never its checkpoints.
RUN_FILES_COMPARED = ("metrics.jsonl", "config.yaml", "final_model")


def compare_finished_runs(mentor_run: str, grpo_run: str, stamp: str, pass_at_k_samples: int) -> int:
    """Both runs read where they are (local folders, or copies of what the comparison needs
    from shared storage); the comparison is written beside the MENTOR run, as `compare-<stamp>`."""
    output = storage.join(storage.parent(mentor_run), f"compare-{stamp}")
    with contextlib.ExitStack() as stack:
        runs = {}
        for label, location in (("mentor", mentor_run), ("grpo", grpo_run)):
            runs[label] = stack.enter_context(storage.local_copy(location, only=RUN_FILES_COMPARED))
            missing = [name for name in RUN_FILES_COMPARED if not (runs[label] / name).exists()]
            if missing:
                raise storage.StorageNotFoundError(f"the {label} run {location} is not a finished run folder (no {', '.join(missing)})")
        root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="mentor-compare-"))) if storage.is_uri(output) else Path(output)
        config = load_config(runs["mentor"] / "config.yaml")
        per_seed = {config.seed: seed_numbers(runs, root, config, pass_at_k_samples)}
        (root / "comparison.json").write_text(json.dumps({"seed": config.seed, **per_seed[config.seed]}, indent=2))
        write_summary(per_seed, {config.seed: runs}, root)
        if storage.is_uri(output):
            storage.upload_dir(root, output)
    print(f"summary: {storage.join(output, 'summary.md')}\nplots: {storage.join(output, 'plots')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
