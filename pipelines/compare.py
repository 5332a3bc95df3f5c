"""`python -m pipelines.compare [key=value ...]`: MENTOR and the GRPO baseline, same seed, one report.

Runs the embedded recipe twice (rollout.n_mixed=0 for GRPO), draws both into the same plots,
and prints the three numbers the toy world must show: mixed vs on-policy reward while guidance
is on, final vs initial validation accuracy, and MENTOR's vs GRPO's entropy at the end of the
guidance period.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from mentor_ray.config import load_config
from mentor_ray.metrics import end_of_guidance_step, mean_of, read_metrics, window_mean
from mentor_ray.plots import plot_runs
from pipelines.train import DEFAULT_RECIPE, run_training


def comparison(mentor: list[dict], grpo: list[dict], decay_steps: int) -> dict[str, float]:
    guided = [r for r in mentor if r.get("rollout/mixed_samples", 0) > 0]
    validations = [r for r in mentor if "val/greedy_accuracy" in r]
    end_of_guidance = end_of_guidance_step(mentor, decay_steps)
    return {
        "guided_steps": len(guided),
        "mixed_reward_while_guided": mean_of([r["rollout/mixed_reward"] for r in guided]),
        "on_policy_reward_while_guided": mean_of([r["rollout/on_policy_reward"] for r in guided]),
        "initial_val_accuracy": validations[0]["val/greedy_accuracy"] if validations else float("nan"),
        "final_val_accuracy": validations[-1]["val/greedy_accuracy"] if validations else float("nan"),
        "end_of_guidance_step": end_of_guidance,
        "mentor_entropy_end_of_guidance": window_mean(mentor, "rollout/entropy_mean", end_of_guidance),
        "grpo_entropy_end_of_guidance": window_mean(grpo, "rollout/entropy_mean", end_of_guidance),
        "grpo_final_val_accuracy": next((r["val/greedy_accuracy"] for r in reversed(grpo) if "val/greedy_accuracy" in r), float("nan")),
    }


def pass_at_k_comparison(runs: dict[str, Path], root: Path, samples: int, limit: int | None) -> dict[str, float]:
    """Both final models on the toy world's held-out problems, `samples` samples each (T=0.6):
    pass@k against k, the paper's exploration claim. Drawn into plots/pass_at_k.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import ray

    from pipelines.evaluate import evaluate

    numbers: dict[str, float] = {}
    figure, axes = plt.subplots(figsize=(6, 4))
    for label, run_dir in runs.items():
        results = evaluate(str(run_dir), ["toy_eval"], root / f"eval-{label}", config_file=str(run_dir / "config.yaml"),
                           limit=limit, samples=samples, say=lambda line: None)
        ray.shutdown()
        curve = sorted((int(k), v) for k, v in results["toy_eval"]["pass_at_k"].items())
        axes.plot(*zip(*curve), marker="o", label=label)
        numbers.update({f"{label}_pass_at_{k}": v for k, v in curve})
    axes.set_xscale("log", base=2)
    axes.set_xlabel("k")
    axes.set_ylabel("pass@k")
    axes.set_title(f"pass@k on held-out problems ({samples} samples, T=0.6)")
    axes.legend()
    figure.tight_layout()
    (root / "plots").mkdir(parents=True, exist_ok=True)
    figure.savefig(root / "plots" / "pass_at_k.png", dpi=100)
    plt.close(figure)
    return numbers


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=DEFAULT_RECIPE)
    parser.add_argument("--runs", nargs=2, type=Path, metavar=("MENTOR_RUN", "GRPO_RUN"),
                        help="compare two finished run folders instead of training")
    parser.add_argument("--pass-at-k-samples", type=int, default=32,
                        help="samples per held-out problem for both final models' pass@k (0: skip)")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    config = load_config(args.config, list(args.overrides))
    if args.runs:
        runs = {"mentor": args.runs[0], "grpo": args.runs[1]}
        root = args.runs[0].parent / f"compare-{stamp}"
        config = load_config(args.runs[0] / "config.yaml")
    else:
        root = Path(config.logging.run_root) / f"compare-{stamp}"
        runs = {}
        for label, extra in (("mentor", []), ("grpo", ["rollout.n_mixed=0"])):
            run_config = load_config(args.config, list(args.overrides) + extra + [f"logging.run_root={root}", f"logging.run_name={label}"])
            runs[label] = Path(run_training(run_config).run_dir)
            import ray

            ray.shutdown()
    plot_runs(runs, root / "plots")
    numbers = comparison(read_metrics(runs["mentor"] / "metrics.jsonl"), read_metrics(runs["grpo"] / "metrics.jsonl"), config.guidance.decay_steps)
    if args.pass_at_k_samples:
        numbers.update(pass_at_k_comparison(runs, root, args.pass_at_k_samples, config.eval.max_problems))
    (root / "comparison.json").write_text(json.dumps({"seed": config.seed, **numbers}, indent=2))
    print(json.dumps({"seed": config.seed, **numbers}, indent=2))
    print(f"plots: {root / 'plots'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
