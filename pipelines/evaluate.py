"""`python -m pipelines.evaluate --model <HF folder | run folder> --benchmarks math500,aime24,...`

Scores a saved model on the paper's benchmarks (`mentor_ray.data.eval_sets`) with each one's
protocol (avg@32 at T=0.6 for AIME/AMC, greedy pass@1 for the rest), through the same Ray Data
pipeline over vLLM engines as training's validation. Writes, in `--out`:
- `results.md` and `results.csv`: the paper's layout, benchmarks as columns, average last;
- `pass_at_k.csv` and `pass_at_k.png`: pass@k for k = 1, 2, 4, ... up to the samples drawn;
- `generations.jsonl`: every sample (problem id, response, answer, accuracy, status).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import sys
import time
import traceback
from pathlib import Path

from mentor_ray.data.eval_sets import BENCHMARKS
from mentor_ray.config import ConfigError, load_config
from pipelines.plan import check_model_lengths
from pipelines.train import LOG_NOTE, failure_line

CHOICE_GRADER = "mentor_ray.data.eval_sets:grade_choice"


def _model_dir(model: str) -> str:
    """A run folder means its final model."""
    path = Path(model).expanduser()
    if (path / "final_model" / "config.json").is_file():
        return str(path / "final_model")
    return model


def lengths_from_model(model: str) -> tuple[str, ...]:
    """Without a training config, the engine's context is the model's own (capped at the
    default config's): a quarter for the prompt, the rest for the response."""
    from mentor_ray.config import MentorConfig
    from mentor_ray.model_shapes import model_shape

    default = MentorConfig()
    positions = model_shape(_model_dir(model), "--model").max_positions
    if not positions or positions >= default.model.max_model_len:
        return ()
    prompt = min(default.data.max_prompt_tokens, positions // 4)
    return (f"model.max_model_len={positions}", f"data.max_prompt_tokens={prompt}", f"rollout.max_response_tokens={positions - prompt}")


def _tokenized(problems, tokenizer, system_prompt: str, max_prompt_tokens: int):
    from mentor_ray.data import filter_long_prompts
    from mentor_ray.data.prompts import build_chat_prompt
    from mentor_ray.data.run_inputs import TokenizedProblem

    kept, too_long = filter_long_prompts(problems, tokenizer, max_prompt_tokens, system_prompt)
    return [
        TokenizedProblem(p.problem_id, p.answer, tokenizer(build_chat_prompt(tokenizer, p.problem, system_prompt), add_special_tokens=False)["input_ids"])
        for p in kept
    ], too_long


def evaluate(model: str, benchmarks: list[str], out_dir: Path, *, config_file: str | None = None, overrides: tuple[str, ...] = (),
             limit: int | None = None, samples: int | None = None, files: dict[str, str] | None = None,
             say=None, verbose: bool = False) -> dict[str, dict]:
    import ray
    import ray.data
    from transformers import AutoTokenizer

    from mentor_ray.data.prompts import DEFAULT_SYSTEM_PROMPT, SYSTEM_PROMPTS
    from mentor_ray.data.run_inputs import TOY_SCHEME, resolve_model_dir
    from mentor_ray.toy_world import TOY_SYSTEM_PROMPT
    from pipelines.console import DriverConsole
    from pipelines.evaluation import score_problems
    from pipelines.roles import build_rollout_roles, start_reward_actor
    from pipelines.train import connect_ray

    unknown = [b for b in benchmarks if b not in BENCHMARKS]
    if unknown:
        raise ConfigError(f"--benchmarks: unknown {unknown}; known: {sorted(BENCHMARKS)}")
    if limit is not None and limit < 1:
        raise ConfigError(f"--limit {limit}: must be a positive number of problems")
    if samples is not None and samples < 1:
        raise ConfigError(f"--samples {samples}: must be a positive number of samples per problem")
    for name, path in (files or {}).items():
        # Checked before anything starts (Ray, the engines): a typo should cost a second, not 25.
        if name not in BENCHMARKS:
            raise ConfigError(f"--file {name}={path}: unknown benchmark {name!r}; known: {sorted(BENCHMARKS)}")
        if not Path(path).is_file():
            raise ConfigError(f"--file {name}={path}: no such file")
    from_model = () if config_file else lengths_from_model(model)
    config = load_config(config_file, [*from_model, *overrides, f"model.policy_path={_model_dir(model)}", "rollout.n_mixed=0",
                                       "logging.run_root=" + str(out_dir)])
    check_model_lengths(config)
    policy_dir = resolve_model_dir(_model_dir(config.model.policy_path), "--model")
    if config.data.system_prompt is not None:
        system_prompt = config.data.system_prompt
    elif config.data.system_prompt_preset is not None:
        system_prompt = SYSTEM_PROMPTS[config.data.system_prompt_preset]
    else:  # the paper's prompt, except for toy-world models (trained on toy data), which know only theirs
        toy = model.startswith(TOY_SCHEME) or config.data.train_path.startswith(TOY_SCHEME)
        system_prompt = TOY_SYSTEM_PROMPT if toy else DEFAULT_SYSTEM_PROMPT
    tokenizer = AutoTokenizer.from_pretrained(policy_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    console = DriverConsole(out_dir, verbose=verbose)
    console.quiet_libraries()
    say = say or console.say
    say(f"evaluating {policy_dir} on {', '.join(benchmarks)} | out {out_dir} | log {out_dir / 'run.log'}")
    try:
        connect_ray(config, log_to_driver=console.log_to_driver)
        ray.data.DataContext.get_current().enable_progress_bars = False
        roles = build_rollout_roles(config, policy_dir, None)
        choice_roles = None
        results: dict[str, dict] = {}
        try:
            with (out_dir / "generations.jsonl").open("w") as generations:
                for name in benchmarks:
                    benchmark = BENCHMARKS[name]
                    report = benchmark.load((files or {}).get(name))
                    problems, too_long = _tokenized(report.problems, tokenizer, system_prompt, config.data.max_prompt_tokens)
                    problems = problems[:limit] if limit else problems  # the first N that fit
                    n = samples or benchmark.protocol.samples
                    temperature = benchmark.protocol.temperature if n == benchmark.protocol.samples else (0.0 if n == 1 else benchmark.protocol.temperature or 0.6)
                    use = roles
                    if benchmark.answer_type == "choice":
                        choice_roles = choice_roles or dataclasses.replace(roles, reward_actors=[start_reward_actor(config, CHOICE_GRADER)])
                        use = choice_roles
                    started = time.perf_counter()
                    scored = score_problems(problems, use, samples=n, temperature=temperature,
                                            max_new_tokens=config.rollout.max_response_tokens, seed=config.seed)
                    ks = [k for k in (1, 2, 4, 8, 16, 32, 64) if k <= n]
                    results[name] = {
                        "accuracy": scored.accuracy, "protocol": f"avg@{n}, T={temperature:g}" if temperature else "greedy pass@1",
                        "problems": len(scored.counts), "too_long_skipped": too_long, "bad_references": scored.output.bad_reference_problems,
                        "pass_at_k": {str(k): v for k, v in scored.pass_at(ks).items()}, "seconds": time.perf_counter() - started,
                    }
                    for row in scored.output.rows:
                        generations.write(json.dumps({
                            "benchmark": name, "problem_id": row["problem_id"], "sample": int(row["sample_index"]),
                            "response": row["response_text"], "answer": row["answer"], "accuracy": float(row["accuracy"]),
                            "status": row["grading_status"],
                        }) + "\n")
                    say(f"{name}: {100 * scored.accuracy:.1f} ({results[name]['protocol']}, {len(scored.counts)} problems, {results[name]['seconds']:.0f} s)")
        finally:
            roles.shutdown()
            if choice_roles is not None:
                for actor in choice_roles.reward_actors:
                    ray.kill(actor)
            write_tables(results, out_dir)
    except Exception as error:
        traceback.print_exc()  # into run.log while the libraries are quiet
        error.add_note(f"{LOG_NOTE}{out_dir / 'run.log'}")
        raise
    finally:
        console.close()
    return results


def write_tables(results: dict[str, dict], out_dir: Path) -> None:
    names = list(results)
    scores = [100 * results[n]["accuracy"] for n in names]
    average = sum(scores) / len(scores) if scores else float("nan")
    header = [*names, "average"]
    values = [f"{s:.1f}" for s in scores] + [f"{average:.1f}"]
    (out_dir / "results.md").write_text(
        "| " + " | ".join(header) + " |\n|" + "---|" * len(header) + "\n| " + " | ".join(values) + " |\n\n"
        + "\n".join(f"- {n}: {results[n]['protocol']}, {results[n]['problems']} problems" for n in names) + "\n"
    )
    with (out_dir / "results.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerow(values)
    ks = sorted({int(k) for r in results.values() for k in r["pass_at_k"]})
    with (out_dir / "pass_at_k.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["benchmark", *[f"pass@{k}" for k in ks]])
        for name in names:
            writer.writerow([name, *[f"{results[name]['pass_at_k'].get(str(k), float('nan')):.4f}" for k in ks]])
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 4))
    for name in names:
        points = sorted((int(k), v) for k, v in results[name]["pass_at_k"].items())
        if len(points) > 1:
            axes.plot(*zip(*points), marker="o", label=name)
    axes.set_xscale("log", base=2)
    axes.set_xlabel("k")
    axes.set_ylabel("pass@k")
    axes.set_title("pass@k (unbiased estimator)")
    if axes.lines:
        axes.legend()
    figure.tight_layout()
    figure.savefig(out_dir / "pass_at_k.png", dpi=100)
    plt.close(figure)
    (out_dir / "results.json").write_text(json.dumps(results, indent=1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a Hugging Face model folder, a run folder (its final_model), or toy://policy")
    parser.add_argument("--benchmarks", default="math500,aime24,aime25,amc23,minerva,olympiadbench,gpqa_diamond",
                        help=f"comma-separated, from {sorted(BENCHMARKS)}")
    parser.add_argument("--config", default=None, help="a training config for engine and length settings")
    parser.add_argument("--out", type=Path, default=Path("eval") / time.strftime("eval-%Y%m%d-%H%M%S"))
    parser.add_argument("--limit", type=int, default=None, help="first N problems of each benchmark")
    parser.add_argument("--samples", type=int, default=None, help="samples per problem instead of each protocol's")
    parser.add_argument("--file", action="append", default=[], metavar="NAME=PATH", help="a local file for a benchmark")
    parser.add_argument("--verbose", action="store_true", help="show library logs on the console")
    parser.add_argument("overrides", nargs="*", help="dotted config overrides")
    args = parser.parse_args(argv)
    try:
        malformed = [item for item in args.file if "=" not in item]
        if malformed:
            raise ConfigError(f"--file {malformed[0]}: expected NAME=PATH, e.g. math500=/data/math500.jsonl")
        files = dict(item.split("=", 1) for item in args.file)
        evaluate(args.model, [b.strip() for b in args.benchmarks.split(",") if b.strip()], args.out,
                 config_file=args.config, overrides=tuple(args.overrides), limit=args.limit, samples=args.samples, files=files,
                 verbose=args.verbose)
    except (ConfigError, ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except Exception as error:  # noqa: BLE001 - a failure after start-up: its last line, traceback in run.log
        print(f"error: {failure_line(error)}", file=sys.stderr)
        return 1
    print(f"results: {args.out / 'results.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
