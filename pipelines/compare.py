"""`python -m pipelines.compare [--methods mentor,grpo,luffy,questa] [--seeds 42,43,44] [--config FILE]
[key=value ...]`: MENTOR against the baselines, seed by seed, with a statement of what holds on
every seed.

For each seed, the recipe runs once per method (`--methods`, default mentor,grpo: MENTOR and
plain GRPO): MENTOR as the recipe says, every other method with `algorithm.method=<name>` and
`rollout.n_mixed=0` (`method_overrides`). The seed's runs give its numbers: validation accuracy
at the end, entropy while MENTOR is guided and at the end of its guidance, MENTOR's guided
rollout rewards, pass@k of every final model (the evaluation suite's estimator,
`--pass-at-k-samples` samples per held-out problem at T=0.6) and, on a toy world, the habits
that explain the result (how often each final model stops early or swaps operands). Then
`summary.md` / `summary.json` give every number per seed and method, their mean and spread, and
each effect the toy world should show, MENTOR against every other method, with whether it holds
on every seed; `plots/` draws every seed's curves. With one seed and no other flags it is the
quick single MENTOR-vs-GRPO comparison it always was. `--runs` compares finished runs instead:
`--runs MENTOR_RUN GRPO_RUN`, or `--runs mentor=RUN grpo=RUN luffy=RUN ...`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from mentor_ray import storage
from mentor_ray.config import ConfigError, MentorConfig, load_config
from mentor_ray.core.methods import METHODS, method_overrides
from mentor_ray.metrics import end_of_guidance_step, mean_of, read_metrics, window_mean
from mentor_ray.plots import plot_runs, plot_seeds
from pipelines.train import DEFAULT_RECIPE, run_training

PASS_AT_K_TEMPERATURE = 0.6

# The methods a comparison can train (config.py's algorithm.method), with the names tables use.
DEFAULT_METHODS = ("mentor", "grpo")


def comparison(mentor: list[dict], others: dict[str, list[dict]] | list[dict], decay_steps: int) -> dict[str, float]:
    """One seed's numbers from its runs' metrics: MENTOR's history and every other method's by
    name (a bare history is GRPO's, the two-method form). MENTOR's own numbers keep their
    historical names (`final_val_accuracy`, `guided_steps`, ...); every method, MENTOR included,
    has `<method>_final_val_accuracy` and its entropy while MENTOR is guided and at the end of
    MENTOR's guidance."""
    histories = {"mentor": mentor, **(others if isinstance(others, dict) else {"grpo": others})}
    guided = [r for r in mentor if r.get("rollout/mixed_samples", 0) > 0]
    validations = [r["val/greedy_accuracy"] for r in mentor if "val/greedy_accuracy" in r]
    end_of_guidance = end_of_guidance_step(mentor, decay_steps)
    numbers = {
        "guided_steps": len(guided),
        "mixed_reward_while_guided": mean_of([r["rollout/mixed_reward"] for r in guided]),
        "on_policy_reward_while_guided": mean_of([r["rollout/on_policy_reward"] for r in guided]),
        "initial_val_accuracy": validations[0] if validations else float("nan"),
        "final_val_accuracy": validations[-1] if validations else float("nan"),
        "end_of_guidance_step": end_of_guidance,
    }
    for method, history in histories.items():
        numbers[f"{method}_final_val_accuracy"] = next(
            (r["val/greedy_accuracy"] for r in reversed(history) if "val/greedy_accuracy" in r), float("nan"))
        numbers[f"{method}_entropy_while_guided"] = mean_of(
            r.get("rollout/entropy_mean") for r in history if 1 <= r["step"] <= end_of_guidance)
        numbers[f"{method}_entropy_end_of_guidance"] = window_mean(history, "rollout/entropy_mean", end_of_guidance)
        numbers.update(habit_numbers(method, history, end_of_guidance))
    return numbers


def habit_numbers(method: str, history: list[dict], end_of_guidance: int) -> dict[str, float]:
    """What a method's own samples carry over training (mentor_ray/habits.py, per response, mean of
    the last 3 steps): the useful habits and the filler at the end of MENTOR's guidance and at the
    end, the response length at step 1, at its largest and at the end, and the expert signal
    per prompt it trained on while MENTOR was guided (absent where the run logged none)."""
    last = max((int(r["step"]) for r in history), default=0)
    numbers = {}
    for group in ("useful", "filler"):
        key = f"habits/on_policy_{group}"
        if any(key in r for r in history):
            numbers[f"{method}_{group}_end_of_guidance"] = window_mean(history, key, end_of_guidance)
            numbers[f"{method}_{group}_final"] = window_mean(history, key, last)
    lengths = [r["rollout/on_policy_response_length"] for r in history if "rollout/on_policy_response_length" in r]
    if lengths:
        numbers.update({f"{method}_response_length_first": lengths[0], f"{method}_response_length_peak": max(lengths),
                        f"{method}_response_length_final": window_mean(history, "rollout/on_policy_response_length", last)})
    for name in ("expert_tokens_per_prompt", "expert_advantage_mass_per_prompt"):
        values = [r[f"signal/{name}"] for r in history if f"signal/{name}" in r and 1 <= r["step"] <= end_of_guidance]
        if values:
            numbers[f"{method}_{name}_while_guided"] = mean_of(values)
    return numbers


@dataclass(frozen=True)
class Effect:
    """A claim about MENTOR vs one other method, checked per seed or on the mean over seeds;
    instantiated for every other method compared (`{other}` in the name: its table name)."""

    name: str
    value: Callable[[dict, str], float]  # (a seed's numbers, the other method) -> the value judged
    holds: Callable[[float], bool]
    every_seed: bool  # False: the claim is about the mean over seeds
    value_format: str = "{:+.3f}"  # a difference; ratios use "{:.2f}"


EFFECTS = (
    Effect("final val accuracy, MENTOR - {other} (>= +0.05)",
           lambda n, other: n["final_val_accuracy"] - n[f"{other}_final_val_accuracy"], lambda v: v >= 0.05, every_seed=True),
    Effect("pass@32, MENTOR - {other} (> 0)",
           lambda n, other: n["mentor_pass_at_32"] - n[f"{other}_pass_at_32"], lambda v: v > 0, every_seed=True),
    Effect("entropy at the end of guidance, MENTOR / {other} (mean >= 1.2)",
           lambda n, other: n["mentor_entropy_end_of_guidance"] / n[f"{other}_entropy_end_of_guidance"], lambda v: v >= 1.2,
           every_seed=False, value_format="{:.2f}"),
)


def _spread(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values)}


def summarize(per_seed: dict[int, dict[str, float]], methods: Sequence[str] = DEFAULT_METHODS) -> dict:
    """Mean and spread of every number over seeds, and each effect against every other method
    in `methods`, with whether it holds: on every seed (per-seed claims) or on the mean (the
    entropy claim). An effect whose numbers are missing (pass@k skipped) is reported as not
    measured."""
    keys = sorted({key for numbers in per_seed.values() for key in numbers})
    spread = {key: _spread([n[key] for n in per_seed.values()]) for key in keys
              if all(isinstance(n.get(key), (int, float)) for n in per_seed.values())}
    effects = []
    for effect in EFFECTS:
        for other in (m for m in methods if m != "mentor"):
            name = effect.name.format(other=METHODS[other].display_name)
            try:
                values = {seed: effect.value(numbers, other) for seed, numbers in per_seed.items()}
            except KeyError:
                effects.append({"effect": name, "against": other, "measured": False})
                continue
            mean = statistics.fmean(values.values())
            holds = all(effect.holds(v) for v in values.values()) if effect.every_seed else effect.holds(mean)
            effects.append({"effect": name, "against": other, "measured": True, "per_seed": values,
                            "value_format": effect.value_format, **_spread(list(values.values())),
                            "judged_on": "every seed" if effect.every_seed else "mean over seeds", "holds": holds})
    return {"methods": list(methods), "seeds": sorted(per_seed), "per_seed": per_seed, "spread": spread, "effects": effects}


def table_rows(methods: Sequence[str]) -> list[tuple[str, str | tuple[str, ...]]]:
    """Rows of the per-seed table: (label, key in a seed's numbers, or keys shown as a / b).
    Each number every method has gets one row per method, in `methods` order."""

    def each(label: str, number: str) -> list[tuple[str, str]]:
        # MENTOR's final accuracy under its historical key, which every stored comparison has.
        return [(f"{label}, {METHODS[m].display_name}", "final_val_accuracy" if f"{m}_{number}" == "mentor_final_val_accuracy"
                 else f"{m}_{number}") for m in methods]

    return [
        ("val accuracy at step 0", "initial_val_accuracy"),
        *each("final val accuracy", "final_val_accuracy"),
        *(row for k in (1, 8, 32) for row in each(f"pass@{k}", f"pass_at_{k}")),
        *each("entropy while guided", "entropy_while_guided"),
        *each("entropy at end of guidance", "entropy_end_of_guidance"),
        ("reward while guided, MENTOR mixed / on-policy", ("mixed_reward_while_guided", "on_policy_reward_while_guided")),
        *each("final model stops early (T=1)", "early_stop_rate"),
        *each("final model swaps operands (T=1)", "swapped_share"),
        *each("final model accuracy (T=1)", "sampled_accuracy"),
        *each("useful habits (check, verify) per response, end of guidance", "useful_end_of_guidance"),
        *each("useful habits (check, verify) per response, last steps", "useful_final"),
        *each("filler (okay, wait) per response, end of guidance", "filler_end_of_guidance"),
        *each("filler (okay, wait) per response, last steps", "filler_final"),
        *each("final model's useful habits per response (T=1)", "useful_per_response"),
        *each("final model's filler per response (T=1)", "filler_per_response"),
        *each("response length at step 1", "response_length_first"),
        *each("response length at its largest", "response_length_peak"),
        *each("response length, last steps", "response_length_final"),
        *each("expert tokens trained on per prompt, while guided", "expert_tokens_per_prompt_while_guided"),
        *each("expert advantage mass per prompt, while guided", "expert_advantage_mass_per_prompt_while_guided"),
        *each("final model's greedy response = the stored expert trace (train problems)", "trace_copy_share"),
    ]


def summary_markdown(summary: dict) -> str:
    seeds = summary["seeds"]
    per_seed, spread = summary["per_seed"], summary["spread"]

    def cell(numbers: dict, key: str | tuple[str, ...]) -> str:
        keys = (key,) if isinstance(key, str) else key
        return " / ".join(f"{numbers[k]:.3f}" if k in numbers else "-" for k in keys)

    def mean_cell(key: str | tuple[str, ...]) -> str:
        keys = (key,) if isinstance(key, str) else key
        return " / ".join(f"{spread[k]['mean']:.3f} ± {spread[k]['std']:.3f}" if k in spread else "-" for k in keys)

    lines = ["| | " + " | ".join(f"seed {s}" for s in seeds) + " | mean ± sd |", "|---|" + "---|" * (len(seeds) + 1)]
    for label, key in table_rows(summary.get("methods", DEFAULT_METHODS)):
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
    """Every run's final model (label -> run folder) on the held-out problems, `samples` samples
    each (T=0.6): pass@k against k, the paper's exploration claim, as `<label>_pass_at_<k>`. Drawn into plots/pass_at_k.png. eval_file: the
    held-out problems (default: the default toy world's)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import ray

    from pipelines.evaluate import evaluate

    numbers: dict[str, float] = {}
    figure, axes = plt.subplots(figsize=(6, 4))
    results_of = {}
    try:
        # One Ray instance for every model (each evaluation releases its own engines).
        for label, run_dir in runs.items():
            results_of[label] = evaluate(str(run_dir), ["toy_eval"], root / f"eval-{label}", config_file=str(run_dir / "config.yaml"),
                                         limit=limit, samples=samples, files={"toy_eval": eval_file} if eval_file else None,
                                         say=lambda line: None)
    finally:
        ray.shutdown()
    for label, results in results_of.items():
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
    """The toy habits of every run's final model, sampled at T=1 on the held-out problems: what
    the accuracy differences are made of (finishing the working, the operand order it writes, the
    habits world's check steps and filler)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mentor_ray.toy_world.evaluate import sampled_habits

    problems = [json.loads(line) for line in Path(eval_path).read_text().splitlines() if line.strip()][:limit]
    numbers = {}
    for label, run_dir in runs.items():
        folder = run_dir / "final_model"
        habits = sampled_habits(AutoModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder), problems)
        numbers.update({f"{label}_sampled_accuracy": habits.accuracy, f"{label}_early_stop_rate": habits.early_stop_rate,
                        f"{label}_swapped_share": habits.swapped_share, f"{label}_useful_per_response": habits.useful_per_response,
                        f"{label}_filler_per_response": habits.filler_per_response})
    return numbers


TRACE_COPY_PROBLEMS = 256


def trace_copy_comparison(runs: dict[str, Path], config: MentorConfig, limit: int = TRACE_COPY_PROBLEMS) -> dict[str, float]:
    """How closely every final model copies the expert's stored traces (the ones LUFFY trained
    on and QuestA cut its hints from): its greedy response to each training problem that has a
    trace (the first `limit`), the share identical to the trace. The traces are the run's own
    (mentor_ray.data.expert_traces; built if missing)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mentor_ray.data import load_problems
    from mentor_ray.data.expert_traces import build_expert_traces
    from mentor_ray.data.run_inputs import data_row_fields, resolve_run_paths
    from mentor_ray.toy_world.evaluate import generate_responses

    paths = resolve_run_paths(config, str(runs["mentor"]))
    traces = build_expert_traces(config, paths, say=lambda _: None).traces
    fields = data_row_fields(paths.train_path, config, "data.train_path")
    problems = [p for p in load_problems(paths.train_path, problem_field=fields.problem_field, answer_field=fields.answer_field,
                                         id_field=fields.id_field, answer_from=fields.answer_from).problems
                if p.problem_id in traces][:limit]
    numbers = {}
    for label, run_dir in runs.items():
        folder = run_dir / "final_model"
        responses = generate_responses(AutoModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder),
                                       [p.problem for p in problems], temperature=0.0,
                                       max_new_tokens=config.rollout.max_response_tokens)
        copies = [response.strip() == traces[p.problem_id].text.strip() for response, p in zip(responses, problems)]
        numbers[f"{label}_trace_copy_share"] = sum(copies) / max(1, len(copies))
    return numbers


def seed_numbers(runs: dict[str, Path], root: Path, config: MentorConfig, pass_at_k_samples: int) -> dict[str, float]:
    """One seed's numbers from its runs (method -> run folder, MENTOR's among them); `config`
    is MENTOR's."""
    from mentor_ray.data.run_inputs import TOY_SCHEME, resolve_data_path

    plot_runs(runs, root / "plots")
    histories = {method: read_metrics(run_dir / "metrics.jsonl") for method, run_dir in runs.items()}
    numbers = comparison(histories.pop("mentor"), histories, config.guidance.decay_steps)
    eval_file = resolve_data_path(config.data.eval_path, "data.eval_path") if config.data.eval_path else None
    if pass_at_k_samples:
        numbers.update(pass_at_k_comparison(runs, root, pass_at_k_samples, config.eval.max_problems, eval_file))
    if eval_file and config.data.eval_path.startswith(TOY_SCHEME):
        numbers.update(habits_comparison(runs, eval_file, config.eval.max_problems))
        if any(METHODS[method].needs_expert_traces for method in runs):
            numbers.update(trace_copy_comparison(runs, config))
    return numbers


def method_configs(config_file: Path, overrides: list[str], methods: Sequence[str], root: Path) -> dict[str, MentorConfig]:
    """Each method's run of the recipe: its overrides, its own folder `root/<method>`."""
    return {method: load_config(config_file, overrides + method_overrides(method)
                                + [f"logging.run_root={root}", f"logging.run_name={method}"]) for method in methods}


def train_methods(configs: dict[str, MentorConfig]) -> dict[str, Path]:
    """Every method's run, one after the other, on one Ray instance: a run takes over the
    engines and graders of the run before it where it would build them alike (`WarmActors`;
    half a short run's time saved, the numbers a fresh run's: benchmarks/bench_warm_runs.py)."""
    import ray

    from pipelines.roles import WarmActors

    warm = WarmActors()
    runs = {}
    try:
        for method, config in configs.items():
            runs[method] = Path(run_training(config, warm_actors=warm).run_dir)
    finally:
        if ray.is_initialized():
            warm.close()
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


def _checked_methods(methods: list[str], text: str) -> list[str]:
    for method in methods:
        if method not in METHODS:
            raise argparse.ArgumentTypeError(f"{text!r}: {method!r} is not a method (one of {', '.join(METHODS)})")
    if len(set(methods)) != len(methods):
        raise argparse.ArgumentTypeError(f"{text!r}: a method is repeated")
    if "mentor" not in methods:
        raise argparse.ArgumentTypeError(f"{text!r}: mentor is missing (the comparison judges MENTOR against the others)")
    return methods


def _method_list(text: str) -> list[str]:
    return _checked_methods(text.split(","), text)


def _run_locations(items: list[str]) -> dict[str, str]:
    """--runs: two folders (MENTOR's, GRPO's) or METHOD=FOLDER pairs."""
    pairs = [item.partition("=") for item in items]
    labelled = [head.isidentifier() and bool(sep) for head, sep, _ in pairs]
    if not any(labelled):
        if len(items) != 2:
            raise argparse.ArgumentTypeError(f"{' '.join(items)!r}: expected MENTOR_RUN GRPO_RUN, or METHOD=RUN for each method")
        return {"mentor": items[0], "grpo": items[1]}
    if not all(labelled):
        raise argparse.ArgumentTypeError(f"{' '.join(items)!r}: name every run's method (METHOD=RUN) or give exactly "
                                         "MENTOR_RUN GRPO_RUN")
    _checked_methods([head for head, _, _ in pairs], " ".join(items))
    return {head: location for head, _, location in pairs}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=DEFAULT_RECIPE, help="YAML recipe of the MENTOR run (default: the toy world's)")
    parser.add_argument("--methods", type=_method_list, metavar="mentor,grpo,...",
                        help=f"methods trained on every seed, comma-separated, mentor among them (of {','.join(METHODS)}; "
                        f"default: {','.join(DEFAULT_METHODS)}); every method but MENTOR runs with algorithm.method=<name> "
                        "and rollout.n_mixed=0")
    parser.add_argument("--seeds", type=_seed_list, help="RL seeds, comma-separated (42,43,44): every method trains once on each "
                        "(default: the recipe's seed)")
    parser.add_argument("--runs", nargs="+", metavar="RUN",
                        help="compare finished run folders (local paths or URIs such as s3://bucket/runs/x) instead of "
                        "training: MENTOR_RUN GRPO_RUN, or METHOD=RUN for each method (mentor=... grpo=... luffy=...)")
    parser.add_argument("--pass-at-k-samples", type=int, default=32,
                        help="samples per held-out problem for every final model's pass@k (0: skip)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides for every method's run, e.g. total_steps=20")
    args = parser.parse_args(argv)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    overrides = list(args.overrides)
    if args.runs:
        if args.seeds:
            parser.error("--runs compares finished runs; --seeds trains new ones")
        if args.methods:
            parser.error("--runs names its methods (METHOD=RUN); --methods is for training new runs")
        try:
            locations = _run_locations(args.runs)
        except argparse.ArgumentTypeError as error:
            parser.error(f"--runs: {error}")
        try:
            return compare_finished_runs(locations, stamp, args.pass_at_k_samples)
        except storage.StorageError as error:
            print(f"error: --runs: {error}", file=sys.stderr)
            return 2
    methods = args.methods or list(DEFAULT_METHODS)
    try:  # every run's config checked before the first one trains
        recipe = load_config(args.config, overrides)
        root = Path(recipe.logging.run_root) / f"compare-{stamp}"
        seeds = args.seeds or [recipe.seed]
        seed_roots = {seed: root if len(seeds) == 1 else root / f"seed-{seed}" for seed in seeds}
        configs = {seed: method_configs(args.config, overrides + [f"seed={seed}"], methods, seed_roots[seed]) for seed in seeds}
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    per_seed: dict[int, dict[str, float]] = {}
    runs: dict[int, dict[str, Path]] = {}
    for seed in seeds:
        runs[seed] = train_methods(configs[seed])
        per_seed[seed] = seed_numbers(runs[seed], seed_roots[seed], configs[seed]["mentor"], args.pass_at_k_samples)
        (seed_roots[seed] / "comparison.json").write_text(json.dumps({"seed": seed, **per_seed[seed]}, indent=2))
    write_summary(per_seed, runs, root, methods)
    print(f"summary: {root / 'summary.md'}\nplots: {root / 'plots'}")
    return 0


def write_summary(per_seed: dict[int, dict[str, float]], runs: dict[int, dict[str, Path]], root: Path,
                  methods: Sequence[str]) -> None:
    summary = summarize(per_seed, methods)
    (root / "summary.json").write_text(json.dumps(summary, indent=2))
    (root / "summary.md").write_text(summary_markdown(summary))
    plot_seeds(runs, root / "plots")
    print(summary_markdown(summary))


# What a comparison reads of a finished run: never its checkpoints.
RUN_FILES_COMPARED = ("metrics.jsonl", "config.yaml", "final_model")


def compare_finished_runs(locations: dict[str, str], stamp: str, pass_at_k_samples: int) -> int:
    """Every run (method -> location) read where it is (local folders, or copies of what the
    comparison needs from shared storage); the comparison is written beside the MENTOR run, as
    `compare-<stamp>`."""
    output = storage.join(storage.parent(locations["mentor"]), f"compare-{stamp}")
    with contextlib.ExitStack() as stack:
        runs = {}
        for method, location in locations.items():
            runs[method] = stack.enter_context(storage.local_copy(location, only=RUN_FILES_COMPARED))
            missing = [name for name in RUN_FILES_COMPARED if not (runs[method] / name).exists()]
            if missing:
                raise storage.StorageNotFoundError(f"the {method} run {location} is not a finished run folder (no {', '.join(missing)})")
        root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="mentor-compare-"))) if storage.is_uri(output) else Path(output)
        config = load_config(runs["mentor"] / "config.yaml")
        per_seed = {config.seed: seed_numbers(runs, root, config, pass_at_k_samples)}
        (root / "comparison.json").write_text(json.dumps({"seed": config.seed, **per_seed[config.seed]}, indent=2))
        write_summary(per_seed, {config.seed: runs}, root, list(locations))
        if storage.is_uri(output):
            storage.upload_dir(root, output)
    print(f"summary: {storage.join(output, 'summary.md')}\nplots: {storage.join(output, 'plots')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
