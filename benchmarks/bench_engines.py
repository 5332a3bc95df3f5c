"""Rollout throughput: vLLM policy and mixed engines vs the torch reference sampler.

    .venv/bin/python benchmarks/bench_engines.py [--config RECIPE.yaml] [--prompts 64] [--samples 8]
        [--new-tokens 128] [--entropy-threshold 0.4] [--repeats 3] [--torch-prompts 64]
        [--max-model-len N]

By default uses the toy world (`build_toy_world`, seed 0): real toy prompts from train.jsonl
rendered with the chat template, the trained policy and expert. With `--config` it uses that
recipe's policy, expert, training problems and system prompt instead (e.g.
configs/smollm2-135m-gsm8k.yaml: SmolLM2-135M, GSM8K). Measures, all in this process:
- generated tokens/s of `PolicyEngine` and of `MixedEngine` at tau = --entropy-threshold
  (plus the mean mixture weight w_t over the generated tokens);
- generated tokens/s of the torch reference sampler (`rollout.reference.naive_mixed_sample`,
  batched with left padding; at the full batch by default);
- `update_weights` seconds vs constructing a fresh engine, for both engines.

Responses stop at EOS (the engines have no ignore-EOS switch), so every tokens/s counts the
tokens actually generated, EOS included, over the wall time of the whole call.

Fairness rules: every sampler is warmed up on a prompt set of its own; timed round r uses
prompt set r (disjoint problems, the same set for every contender), so vLLM's prefix cache
never sees a prompt from an earlier call, as in RL where each step has new prompts. Within a
round the contenders run one after another, so load from other users drifts over all of them;
ratios are medians of per-round ratios. Both engines stay alive together (two 1 GiB KV
caches). Run it when the machine is otherwise idle: the last line says how many cores other
processes took during the run. Under 50 s on an idle 2-core machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from mentor_ray.rollout.requests import CPU_ENGINE_ENV  # no vLLM import

for _key, _value in CPU_ENGINE_ENV.items():
    os.environ.setdefault(_key, _value)

TARGET_MIXED_OVER_POLICY = 0.5
TARGET_MIXED_OVER_TORCH = 3.0
TARGET_UPDATE_OVER_REBUILD = 0.1


@dataclass
class Generated:
    """What one generation call produced."""

    tokens: int  # generated tokens, EOS included
    capped: int  # sequences that stopped at max_new_tokens rather than at EOS
    weight_sum: float = 0.0  # sum of w_t over generated tokens (torch sampler only)


@dataclass
class Contender:
    """One sampler under test and its timed calls (one per repeat)."""

    name: str
    sequences_per_call: int
    generate: Callable[[list[list[int]], int], Generated]  # (prompts, repeat) -> Generated
    tokens: list[int] = field(default_factory=list)
    wall_seconds: list[float] = field(default_factory=list)
    cpu_seconds: list[float] = field(default_factory=list)
    capped: int = 0
    weight_sum: float = 0.0
    mean_weight: float | None = None  # set after the run

    def timed_call(self, prompts: list[list[int]], repeat: int) -> None:
        wall, cpu = time.perf_counter(), time.process_time()
        generated = self.generate(prompts, repeat)
        self.wall_seconds.append(time.perf_counter() - wall)
        self.cpu_seconds.append(time.process_time() - cpu)
        self.tokens.append(generated.tokens)
        self.capped += generated.capped
        self.weight_sum += generated.weight_sum

    @property
    def tokens_per_second(self) -> float:
        return statistics.median(self.rates)

    @property
    def rates(self) -> list[float]:
        return [t / s for t, s in zip(self.tokens, self.wall_seconds)]

    @property
    def tokens_per_cpu_second(self) -> float:
        return statistics.median(t / s for t, s in zip(self.tokens, self.cpu_seconds))

    def row(self) -> str:
        mean_tokens = statistics.mean(self.tokens)
        weight = "-" if self.mean_weight is None else f"{self.mean_weight:.3f}"
        capped = self.capped / (self.sequences_per_call * len(self.tokens))
        return (
            f"| {self.name} | {self.sequences_per_call} | {mean_tokens:,.0f} "
            f"({mean_tokens / self.sequences_per_call:.1f}/seq, {capped:.1%} capped) | "
            f"{statistics.median(self.wall_seconds):.2f} | **{self.tokens_per_second:,.0f}** | "
            f"{self.tokens_per_cpu_second:,.0f} | {weight} | "
            f"{' / '.join(f'{rate:,.0f}' for rate in self.rates)} |"
        )


def paired_ratio(numerator: Contender, denominator: Contender) -> float:
    """Median over rounds of the per-round tokens/s ratio: both ran in the same round, so
    slow drifts in machine load cancel out better than in a ratio of medians."""
    return statistics.median(a / b for a, b in zip(numerator.rates, denominator.rates))


class MachineShare:
    """How much CPU the rest of the machine used while this process ran (Linux /proc/stat).

    The load average lags by minutes; this says directly how many cores other processes
    took from the benchmark between two marks.
    """

    def __init__(self) -> None:
        self._ticks_per_second = os.sysconf("SC_CLK_TCK")
        self._mark = self._read()

    def _read(self) -> tuple[float, float, float] | None:
        try:
            with open("/proc/stat", encoding="ascii") as handle:
                fields = [int(v) for v in handle.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        # user nice system idle iowait irq softirq steal ...: busy = all but idle and iowait.
        busy = (sum(fields[:8]) - fields[3] - fields[4]) / self._ticks_per_second
        return time.perf_counter(), busy, time.process_time()

    def others_cores(self) -> float | None:
        """Cores used by other processes since the previous call (or construction)."""
        now, before = self._read(), self._mark
        self._mark = now
        if now is None or before is None or now[0] <= before[0]:
            return None
        return max(0.0, (now[1] - before[1]) - (now[2] - before[2])) / (now[0] - before[0])


def load_recipe_prompt_sets(config_path: str, prompts_per_set: int, sets: int):
    """(policy dir, expert dir, tokenizer, prompt sets) of a recipe: its own training problems,
    loaded, rendered and length-filtered as a run does, in file order."""
    import tempfile

    from transformers import AutoTokenizer

    from mentor_ray.config import load_config
    from mentor_ray.data.run_inputs import load_tokenized_problems, resolve_run_paths

    config = load_config(config_path)
    paths = resolve_run_paths(config, Path(tempfile.mkdtemp(prefix="bench-engines-")))
    tokenizer = AutoTokenizer.from_pretrained(paths.policy_dir)
    problems, _ = load_tokenized_problems(paths.train_path, config, tokenizer, paths.system_prompt, "train",
                                          limit=prompts_per_set * sets, say=lambda _: None)
    encoded = [p.prompt_token_ids for p in problems]
    if len(encoded) < prompts_per_set * sets:
        raise ValueError(f"{paths.train_path}: {len(encoded)} usable problems, the benchmark needs {prompts_per_set * sets}")
    return paths.policy_dir, paths.expert_dir or paths.policy_dir, tokenizer, [encoded[i * prompts_per_set : (i + 1) * prompts_per_set] for i in range(sets)]


def load_prompt_sets(world, tokenizer, prompts_per_set: int, sets: int) -> list[list[list[int]]]:
    """`sets` disjoint sets of toy train prompts, as token ids (set 0 is for warm-up)."""
    from mentor_ray.data.prompts import build_chat_prompt
    from mentor_ray.toy_world import TOY_SYSTEM_PROMPT

    with open(world.train_path, encoding="utf-8") as handle:
        problems = [json.loads(line)["problem"] for line in handle if line.strip()]
    needed = prompts_per_set * sets
    if len(problems) < needed:
        raise ValueError(
            f"{world.train_path} has {len(problems)} problems; the benchmark needs {needed} "
            f"({sets} sets of {prompts_per_set})"
        )
    encoded = [
        tokenizer(build_chat_prompt(tokenizer, problem, TOY_SYSTEM_PROMPT), add_special_tokens=False)[
            "input_ids"
        ]
        for problem in problems[:needed]
    ]
    return [encoded[i * prompts_per_set : (i + 1) * prompts_per_set] for i in range(sets)]


# ---- contenders -----------------------------------------------------------------------


def load_models_and_prompts(args: argparse.Namespace):
    """(policy dir, expert dir, tokenizer, prompt sets, source name, policy config.json, engine
    settings): the recipe's (--config) or the toy world's, one prompt set per round plus warm-up."""
    from transformers import AutoTokenizer

    from mentor_ray.rollout.engines import EngineSettings
    from mentor_ray.toy_world import build_toy_world

    if args.config:
        policy_dir, expert_dir, tokenizer, prompt_sets = load_recipe_prompt_sets(args.config, args.prompts, args.repeats + 1)
        source = f"recipe {args.config}"
    else:
        world = build_toy_world(seed=args.toy_seed)
        policy_dir, expert_dir = str(world.policy_dir), str(world.expert_dir)
        tokenizer = AutoTokenizer.from_pretrained(policy_dir)
        prompt_sets = load_prompt_sets(world, tokenizer, args.prompts, args.repeats + 1)
        source = f"toy world {world.root.name}"
    config = json.loads((Path(policy_dir) / "config.json").read_text())
    # As the toy recipe's engines (pipelines/roles.py): max_model_len from the model.
    settings = EngineSettings(max_model_len=args.max_model_len or int(config["max_position_embeddings"]))
    if args.max_num_seqs is not None:
        settings = dataclasses.replace(settings, max_num_seqs=args.max_num_seqs)
    return policy_dir, expert_dir, tokenizer, prompt_sets, source, config, settings


def engine_generate(engine, spec, max_new_tokens: int):
    def generate(prompts: list[list[int]], repeat: int) -> Generated:
        outputs = engine.generate(prompts, spec)
        return Generated(
            tokens=sum(len(o.response_token_ids) for o in outputs),
            capped=sum(len(o.response_token_ids) >= max_new_tokens for o in outputs),
        )

    return generate


def left_padded_batch(prompts: list[list[int]], samples: int, pad_id: int):
    """[prompts * samples, max_len] ids and attention mask, each prompt repeated `samples` times."""
    import torch

    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt) :] = torch.tensor(prompt)
        mask[row, width - len(prompt) :] = 1
    return ids.repeat_interleave(samples, 0), mask.repeat_interleave(samples, 0)


def torch_generate(sampler, policy, expert, tokenizer, args, prompts_per_call: int):
    """A torch reference sampler on the first `prompts_per_call` prompts of each set."""
    import torch

    def generate(prompts: list[list[int]], repeat: int) -> Generated:
        ids, mask = left_padded_batch(prompts[:prompts_per_call], args.samples, tokenizer.pad_token_id)
        samples = sampler(
            policy, expert, ids, args.new_tokens, args.entropy_threshold,
            torch.Generator().manual_seed(repeat), eos_token_id=tokenizer.eos_token_id,
            attention_mask=mask, pad_token_id=tokenizer.pad_token_id,
        )
        generated_mask = torch.arange(args.new_tokens)[None, :] < samples.lengths[:, None]
        return Generated(
            tokens=int(samples.lengths.sum()),
            capped=int((samples.lengths >= args.new_tokens).sum()),
            weight_sum=float(samples.mixture_weights[generated_mask].sum()),
        )

    return generate


def time_updates(engine, weights, repeats: int) -> list[float]:
    engine.update_weights(weights)  # warm-up
    return [engine.update_weights(weights) for _ in range(repeats)]


def time_rebuilds(build, repeats: int) -> list[float]:
    """Seconds to construct a fresh engine (closing it is not counted)."""
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        engine = build()
        seconds.append(time.perf_counter() - started)
        engine.close()
    return seconds


# ---- main ------------------------------------------------------------------------------


def _verdict(value: float, target: float, higher_is_better: bool) -> str:
    met = value >= target if higher_is_better else value <= target
    return "met" if met else "MISSED"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=None, help="a recipe YAML: its policy, expert and training prompts")
    parser.add_argument("--max-model-len", type=int, default=None, help="engine context (default: the model's)")
    parser.add_argument("--prompts", type=int, default=64, help="prompts per vLLM call")
    parser.add_argument("--samples", type=int, default=8, help="samples per prompt")
    parser.add_argument("--new-tokens", type=int, default=128, help="max new tokens per sample")
    parser.add_argument("--entropy-threshold", type=float, default=0.4, help="tau of the mixed samplers")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds (medians reported)")
    parser.add_argument("--warmup-prompts", type=int, default=8)
    parser.add_argument("--torch-prompts", type=int, default=64, help="prompts per naive torch call")
    parser.add_argument("--rebuild-repeats", type=int, default=None,
                        help="engine rebuilds timed per engine (default: --repeats)")
    parser.add_argument("--toy-seed", type=int, default=0)
    parser.add_argument("--speculative-tokens", type=int, nargs="+", default=None, metavar="K",
                        help="instead: the mixed engine without drafting vs with K draft tokens, for each K")
    parser.add_argument("--max-num-seqs", type=int, default=None,
                        help="vLLM's max_num_seqs (default: EngineSettings' default, as the pipeline)")
    args = parser.parse_args()
    if args.repeats < 1 or args.prompts < 1 or args.samples < 1 or args.new_tokens < 1:
        parser.error("--repeats, --prompts, --samples and --new-tokens must be >= 1")
    if not 1 <= args.torch_prompts <= args.prompts:
        parser.error("--torch-prompts must be in [1, --prompts]")
    if not 1 <= args.warmup_prompts <= args.prompts:
        parser.error("--warmup-prompts must be in [1, --prompts]")
    return args


def main() -> None:
    args = parse_args()
    rebuild_repeats = args.rebuild_repeats or args.repeats

    import torch
    from transformers import AutoModelForCausalLM

    from mentor_ray.rollout.engines import (
        MixedEngine,
        PolicyEngine,
        SamplingSpec,
    )
    from mentor_ray.rollout.reference import naive_mixed_sample

    run_started = time.perf_counter()
    loads: list[float] = []
    whole_run, per_phase = MachineShare(), MachineShare()
    others: list[float] = []

    def log(message: str) -> None:
        loads.append(os.getloadavg()[0])
        share = per_phase.others_cores()
        if share is not None:
            others.append(share)
        share_text = "" if share is None else f", others used {share:.2f} cores since last mark"
        print(f"[{time.perf_counter() - run_started:6.1f}s load {loads[-1]:.2f}{share_text}] {message}",
              flush=True)

    if args.speculative_tokens:
        return speculation_main(args)
    policy_dir, expert_dir, tokenizer, prompt_sets, source, config, settings = load_models_and_prompts(args)
    log(source)
    prompt_lengths = [len(p) for s in prompt_sets for p in s]
    spec = SamplingSpec(n=args.samples, max_new_tokens=args.new_tokens, seed=0)
    policy_hf = AutoModelForCausalLM.from_pretrained(policy_dir, dtype=torch.float32).eval()
    expert_hf = AutoModelForCausalLM.from_pretrained(expert_dir, dtype=torch.float32).eval()
    # What a learner pushes each step: its parameters (the tied head appears once).
    weights = [(name, tensor.detach().clone()) for name, tensor in policy_hf.named_parameters()]

    def build_policy():
        return PolicyEngine(policy_dir, settings)

    def build_mixed():
        return MixedEngine(policy_dir, expert_dir, settings,
                           entropy_threshold=args.entropy_threshold)

    log("building engines")
    # Timed like the rebuilds (whole constructor); the first one also pays vLLM's first-use
    # costs in this process (imports, kernel set-up).
    first_builds = {}
    started = time.perf_counter()
    policy_engine = build_policy()
    first_builds["policy"] = time.perf_counter() - started
    started = time.perf_counter()
    mixed_engine = build_mixed()
    first_builds["mixed"] = time.perf_counter() - started
    rows = args.prompts * args.samples
    contenders = [
        Contender("policy engine (vLLM)", rows, engine_generate(policy_engine, spec, args.new_tokens)),
        Contender("mixed engine (vLLM)", rows, engine_generate(mixed_engine, spec, args.new_tokens)),
        Contender("torch naive mixed", args.torch_prompts * args.samples,
                  torch_generate(naive_mixed_sample, policy_hf, expert_hf, tokenizer, args, args.torch_prompts)),
    ]
    log("warm-up")
    for contender in contenders:
        contender.generate(prompt_sets[0][: args.warmup_prompts], 0)
    mixed_engine.mixture_weight_summary(reset=True)
    # Rounds, not one contender after another: load from other users of the machine drifts
    # over minutes, and interleaving spreads it over every contender alike.
    for repeat in range(1, args.repeats + 1):
        log(f"round {repeat}/{args.repeats}")
        for contender in contenders:
            contender.timed_call(prompt_sets[repeat], repeat)
    engine_weight = mixed_engine.mixture_weight_summary(reset=True)
    contenders[1].mean_weight = engine_weight["mixture_weight_mean"]
    for contender in contenders[2:]:
        contender.mean_weight = contender.weight_sum / sum(contender.tokens)

    log("update_weights")
    updates = {"policy": time_updates(policy_engine, weights, args.repeats),
               "mixed": time_updates(mixed_engine, weights, args.repeats)}
    policy_engine.close()
    mixed_engine.close()
    log("rebuilds")
    rebuilds = {"policy": time_rebuilds(build_policy, rebuild_repeats),
                "mixed": time_rebuilds(build_mixed, rebuild_repeats)}
    log("done")
    total_seconds = time.perf_counter() - run_started
    others_whole_run = whole_run.others_cores()

    # ---- report ------------------------------------------------------------------------
    policy, mixed = contenders[:2]
    ratios = [
        ("mixed / policy tokens/s", paired_ratio(mixed, policy),
         mixed.tokens_per_cpu_second / policy.tokens_per_cpu_second, TARGET_MIXED_OVER_POLICY, True),
    ]
    for reference in contenders[2:]:
        ratios.append((f"mixed / {reference.name} tokens/s",
                       paired_ratio(mixed, reference),
                       mixed.tokens_per_cpu_second / reference.tokens_per_cpu_second,
                       TARGET_MIXED_OVER_TORCH, True))
    for name in ("policy", "mixed"):
        ratio = statistics.median(updates[name]) / statistics.median(rebuilds[name])
        ratios.append((f"{name} update_weights / rebuild time", ratio, None,
                       TARGET_UPDATE_OVER_REBUILD, False))

    print()
    print(f"{source} (policy {config['num_hidden_layers']} layers x {config['hidden_size']}, vocabulary "
          f"{config['vocab_size']}, expert from {Path(expert_dir).name}/), fp32, T=1, "
          f"tau={args.entropy_threshold}. {args.prompts} prompts x {args.samples} samples x up to "
          f"{args.new_tokens} new tokens (prompts {min(prompt_lengths)}-{max(prompt_lengths)} "
          f"tokens); {args.repeats} interleaved rounds on disjoint prompt sets after a "
          f"{args.warmup_prompts}-prompt warm-up; vLLM max_num_seqs {settings.max_num_seqs}; "
          f"torch threads {torch.get_num_threads()}.")
    print("\n| sampler | seqs/call | tokens/call | median call s | tokens/s (median) "
          "| tokens per CPU-s | mean w_t | tokens/s per round |\n|---|---|---|---|---|---|---|---|")
    for contender in contenders:
        print(contender.row())
    print(f"\nmixed engine: w_t = 1 at {engine_weight['full_expert_fraction']:.1%} of "
          f"{engine_weight['scored_positions']:.0f} scored positions")
    print("\n| weights | update_weights ms (median) | rebuild s (median) | first build s |"
          "\n|---|---|---|---|")
    for name in ("policy", "mixed"):
        print(f"| {name} engine | {statistics.median(updates[name]) * 1000:.0f} | "
              f"{statistics.median(rebuilds[name]):.2f} | {first_builds[name]:.2f} |")
    print("\n| ratio | wall-clock (median of per-round ratios) | per CPU-s | target | |"
          "\n|---|---|---|---|---|")
    for name, value, cpu_value, target, higher in ratios:
        cpu_text = "-" if cpu_value is None else f"{cpu_value:.3g}"
        sign = ">=" if higher else "<="
        print(f"| {name} | {value:.3g} | {cpu_text} | {sign} {target} | {_verdict(value, target, higher)} |")
    others_text = "n/a" if others_whole_run is None else f"{others_whole_run:.2f}"
    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} CPUs; 1-min load average at each "
          f"phase: {', '.join(f'{x:.2f}' for x in loads)}; cores used by other processes during "
          f"the run: {others_text} on average (per phase: {', '.join(f'{x:.2f}' for x in others)}); "
          f"total {total_seconds:.0f} s")


def speculation_main(args: argparse.Namespace) -> None:
    """The mixed engine without drafting against the same engine drafting K tokens with the
    policy (rollout.speculative_tokens), for each K: tokens/s (interleaved rounds, disjoint
    prompt sets), the per-round ratio to no drafting, and what drafting did: the share of
    draft tokens kept, accepted drafts per composite pass, composite passes per token."""
    from mentor_ray.rollout.engines import MixedEngine, SamplingSpec

    started = time.perf_counter()
    policy_dir, expert_dir, _, prompt_sets, source, config, settings = load_models_and_prompts(args)
    spec = SamplingSpec(n=args.samples, max_new_tokens=args.new_tokens, seed=0)
    engines = {0: MixedEngine(policy_dir, expert_dir, settings, entropy_threshold=args.entropy_threshold)}
    for k in args.speculative_tokens:
        engines[k] = MixedEngine(policy_dir, expert_dir, dataclasses.replace(settings, speculative_tokens=k),
                                 entropy_threshold=args.entropy_threshold)
    rows = args.prompts * args.samples
    contenders = {k: Contender("no drafting" if k == 0 else f"K = {k}", rows, engine_generate(engine, spec, args.new_tokens))
                  for k, engine in engines.items()}
    for contender in contenders.values():
        contender.generate(prompt_sets[0][: args.warmup_prompts], 0)
    before = {k: engine.stats() for k, engine in engines.items()}
    weights = {k: engine.mixture_weight_summary(reset=True) for k, engine in engines.items()}
    for repeat in range(1, args.repeats + 1):
        for contender in contenders.values():
            contender.timed_call(prompt_sets[repeat], repeat)
    print(f"\n{source} (policy {config['num_hidden_layers']} layers x {config['hidden_size']}, expert "
          f"{Path(expert_dir).name}/), fp32, T=1, tau={args.entropy_threshold}, {args.prompts} prompts x "
          f"{args.samples} samples x up to {args.new_tokens} tokens, {args.repeats} interleaved rounds; "
          f"draft tokens sampled from the policy (probabilistic).")
    print("\n| mixed engine | tokens/s (median) | tokens/s per round | vs no drafting (median of per-round ratios) "
          "| draft tokens kept | accepted drafts per pass | composite passes per token | mean w_t |\n|---|---|---|---|---|---|---|---|")
    for k, contender in contenders.items():
        after = engines[k].stats()
        weights[k] = engines[k].mixture_weight_summary(reset=True)
        passes = after.verify_passes - before[k].verify_passes
        kept = after.accepted_draft_tokens - before[k].accepted_draft_tokens
        tested = kept + after.draft_rejections - before[k].draft_rejections
        tokens = sum(contender.tokens)
        drafting = (f"{kept / tested:.3f} | {kept / passes:.2f} | {passes / tokens:.3f}" if passes else "- | - | 1 (by definition)")
        ratio = "1" if k == 0 else f"{paired_ratio(contender, contenders[0]):.2f}x"
        print(f"| {contender.name} | {contender.tokens_per_second:,.0f} | "
              f"{' / '.join(f'{rate:,.0f}' for rate in contender.rates)} | {ratio} | {drafting} | "
              f"{weights[k]['mixture_weight_mean']:.3f} |")
    for engine in engines.values():
        engine.close()
    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} CPUs; {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
