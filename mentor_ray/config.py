"""One typed config tree for a MENTOR run, loaded from YAML with dotted command-line overrides.

Every section is a dataclass whose defaults are the paper's (MENTOR.md section 8), except where
a comment says otherwise. `load_config` checks keys and types against the dataclass fields and
then runs each section's `check`, so a config that cannot run fails at load, with the key, the
value and what is allowed, before any work starts.

Model and data paths may name the project's toy world (`toy://policy`, `toy://expert`,
`toy://train`, `toy://eval`); the embedded default uses them, so a run with no arguments needs
no downloads.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from mentor_ray.core.methods import METHODS


class ConfigError(ValueError):
    """A config that cannot run. The message names every offending key."""


def _problem(errors: list[str], key: str, value: Any, allowed: str) -> None:
    errors.append(f"{key}={value!r}: {allowed}")


@dataclass
class ModelConfig:
    policy_path: str = "toy://policy"
    # The expert must share the policy's tokenizer; None means no guidance (N2 must be 0).
    expert_path: str | None = "toy://expert"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    # Engine context: prompt + response must fit.
    max_model_len: int = 9216

    def check(self, errors: list[str], prefix: str) -> None:
        if not self.policy_path:
            _problem(errors, f"{prefix}.policy_path", self.policy_path, "must name a model folder or toy://policy")
        if self.max_model_len < 2:
            _problem(errors, f"{prefix}.max_model_len", self.max_model_len, "must be >= 2")


@dataclass
class DataConfig:
    train_path: str = "toy://train"
    eval_path: str | None = "toy://eval"
    problem_field: str = "problem"
    answer_field: str = "answer"
    id_field: str | None = None
    # The system message: your own text, or a named preset (mentor_ray.data.prompts.SYSTEM_PROMPTS:
    # "paper" is the paper's Appendix B prompt, "careful" a shorter one of this project's).
    # Neither set: the paper's prompt for real data, the toy world's own for toy:// data.
    system_prompt: str | None = None
    system_prompt_preset: Literal["paper", "careful"] | None = None
    max_prompt_tokens: int = 1024
    shuffle: bool = True

    def check(self, errors: list[str], prefix: str) -> None:
        if self.max_prompt_tokens < 1:
            _problem(errors, f"{prefix}.max_prompt_tokens", self.max_prompt_tokens, "must be >= 1")
        if not self.train_path:
            _problem(errors, f"{prefix}.train_path", self.train_path, "must name a dataset")
        if self.system_prompt is not None and self.system_prompt_preset is not None:
            _problem(errors, f"{prefix}.system_prompt_preset", self.system_prompt_preset,
                     "must be null when data.system_prompt gives the text itself")


@dataclass
class RolloutConfig:
    prompts_per_step: int = 128
    n_on_policy: int = 8  # N1
    n_mixed: int = 4  # N2
    temperature: float = 1.0
    top_p: float = 1.0
    max_response_tokens: int = 8192
    # Speculative sampling of pi_mix in the mixed engines (MENTOR.md section 4): the current
    # policy drafts this many tokens, the mixture verifies them, exactly. 0: every token is a
    # pass of both models. The CPU default is what benchmarks/bench_engines.py measured faster.
    speculative_tokens: int = 0
    # Steps the engines may run ahead of the learners. 0: lockstep (the paper). 1: step k+1's
    # rollouts are generated with the weights before step k's update while the learners train
    # on step k; stale on-policy samples get the decoupled objective (loss.behaviour_weight_cap).
    max_staleness: int = 0

    def check(self, errors: list[str], prefix: str) -> None:
        if self.max_staleness not in (0, 1):
            _problem(errors, f"{prefix}.max_staleness", self.max_staleness, "must be 0 (lockstep) or 1 (one step of overlap)")
        if self.speculative_tokens < 0:
            _problem(errors, f"{prefix}.speculative_tokens", self.speculative_tokens, "must be >= 0 (0: no drafting)")
        if self.prompts_per_step < 1:
            _problem(errors, f"{prefix}.prompts_per_step", self.prompts_per_step, "must be >= 1")
        if self.n_on_policy < 2:
            # GRPO's baseline is the group's on-policy mean and std: one sample has no spread.
            _problem(errors, f"{prefix}.n_on_policy", self.n_on_policy, "must be >= 2 (GRPO needs a group)")
        if self.n_mixed < 0:
            _problem(errors, f"{prefix}.n_mixed", self.n_mixed, "must be >= 0 (0 = GRPO baseline)")
        if not self.temperature > 0:
            _problem(errors, f"{prefix}.temperature", self.temperature, "must be > 0")
        if not 0 < self.top_p <= 1:
            _problem(errors, f"{prefix}.top_p", self.top_p, "must be in (0, 1]")
        if self.max_response_tokens < 1:
            _problem(errors, f"{prefix}.max_response_tokens", self.max_response_tokens, "must be >= 1")

    @property
    def guidance_ratio(self) -> float:
        return self.n_mixed / (self.n_on_policy + self.n_mixed)


@dataclass
class AlgorithmConfig:
    """Which method trains the policy (mentor_ray.core.methods): MENTOR, or one of the paper's
    baselines (MENTOR.md section 10), on the same data, loop and loss settings."""

    # mentor: mixed-policy rollouts (with rollout.n_mixed = 0 it is GRPO in all but name);
    # grpo: on-policy samples only; luffy: one stored expert trace takes one slot of each group,
    # its tokens trained with policy shaping; questa: training prompts carry a hint, the first
    # part of the expert's solution.
    method: str = "mentor"  # a name in mentor_ray.core.methods.METHODS
    # LUFFY: f(p) = p / (p + gamma) on the expert trace's token probabilities.
    shaping_gamma: float = 0.1
    # LUFFY: advantages over the whole mixed group divided by its std (the paper's formula);
    # false subtracts the group mean only, as LUFFY's own training script runs.
    luffy_divide_by_std: bool = False
    # QuestA: the hint is this share of the characters of the expert's final solution.
    hint_fraction: float = 0.5
    # QuestA's curriculum (its authors' partial_50 then partial_50_25 runs): from step
    # later_hint_step on, hints are later_hint_fraction of the solution instead. The authors
    # switched where the policy's entropy began to fall; null keeps one stage.
    later_hint_fraction: float = 0.25
    later_hint_step: int | None = None
    # QuestA trains on hard problems only (mentor_ray.data.hard_problems): the starting policy
    # samples hint_select_samples responses per problem and one solved more than
    # hint_select_max_correct times is left out (the authors: at most 1 of 8). null: every problem.
    hint_select_samples: int = 8
    hint_select_max_correct: int | None = 1
    # QuestA: a shorter hint is not given (the problem keeps its plain prompt).
    min_hint_chars: int = 10
    # QuestA: what the hint is cut from: the expert's final solution, the text after </think>
    # (QuestA's rule, for reasoning models that restate the solution after thinking), or the
    # whole response (the toy worlds, whose worked steps are all inside <think> and whose
    # final solution is only the boxed answer).
    hint_from: Literal["final_solution", "whole_response"] = "final_solution"
    # Expert traces (LUFFY, QuestA): samples the expert makes per problem; the first correct
    # one is kept. Stored under expert_traces_dir (default <logging.run_root>/expert_traces),
    # one file per expert, data and prompt, and reused by every later run.
    expert_trace_samples: int = 4
    expert_traces_dir: str | None = None
    # The traces' own sampling seed, not the run's: they are data prepared once, so runs of
    # every RL seed (pipelines.compare --seeds) train on the same traces.
    expert_trace_seed: int = 0

    @property
    def uses_expert_traces(self) -> bool:
        return METHODS[self.method].needs_expert_traces

    def check(self, errors: list[str], prefix: str) -> None:
        if self.method not in METHODS:
            _problem(errors, f"{prefix}.method", self.method, f"one of {list(METHODS)}")
        if not self.shaping_gamma > 0:
            _problem(errors, f"{prefix}.shaping_gamma", self.shaping_gamma, "must be > 0")
        if not 0 < self.hint_fraction <= 1:
            _problem(errors, f"{prefix}.hint_fraction", self.hint_fraction, "must be in (0, 1]")
        if not 0 < self.later_hint_fraction <= 1:
            _problem(errors, f"{prefix}.later_hint_fraction", self.later_hint_fraction, "must be in (0, 1]")
        if self.later_hint_step is not None and self.later_hint_step < 1:
            _problem(errors, f"{prefix}.later_hint_step", self.later_hint_step, "must be >= 1 (or null: one stage)")
        if self.hint_select_samples < 1:
            _problem(errors, f"{prefix}.hint_select_samples", self.hint_select_samples, "must be >= 1")
        if self.hint_select_max_correct is not None and not 0 <= self.hint_select_max_correct < self.hint_select_samples:
            _problem(errors, f"{prefix}.hint_select_max_correct", self.hint_select_max_correct,
                     f"must be in 0..hint_select_samples - 1 ({self.hint_select_samples - 1}), or null to keep every problem")
        if self.min_hint_chars < 0:
            _problem(errors, f"{prefix}.min_hint_chars", self.min_hint_chars, "must be >= 0")
        if self.expert_trace_samples < 1:
            _problem(errors, f"{prefix}.expert_trace_samples", self.expert_trace_samples, "must be >= 1")


@dataclass
class GuidanceConfig:
    entropy_quantile: float = 0.95
    tau_floor: float = 1.5  # from the official code; not in the paper
    tau_init: float = 999.0  # step 1 is in effect on-policy
    alpha_0: float = 1.0
    decay_steps: int = 120

    def check(self, errors: list[str], prefix: str) -> None:
        if not 0 < self.entropy_quantile < 1:
            _problem(errors, f"{prefix}.entropy_quantile", self.entropy_quantile, "must be in (0, 1)")
        if not self.tau_floor > 0:
            _problem(errors, f"{prefix}.tau_floor", self.tau_floor, "must be > 0")
        if not self.tau_init > 0:
            _problem(errors, f"{prefix}.tau_init", self.tau_init, "must be > 0")
        if self.alpha_0 < 0:
            _problem(errors, f"{prefix}.alpha_0", self.alpha_0, "must be >= 0")
        if self.decay_steps < 1:
            _problem(errors, f"{prefix}.decay_steps", self.decay_steps, "must be >= 1")


@dataclass
class LossConfig:
    eps_low: float = 0.2
    eps_high: float = 0.28
    dual_clip: float | None = 3.0  # None disables
    kl_coef: float = 0.0
    entropy_coef: float = 0.0
    # Truncation of pi_prox / pi_behaviour on stale on-policy tokens (rollout.max_staleness = 1;
    # MENTOR.md section 12). 2.0 is verl's rollout-correction default.
    behaviour_weight_cap: float = 2.0

    def check(self, errors: list[str], prefix: str) -> None:
        if not self.behaviour_weight_cap >= 1:
            _problem(errors, f"{prefix}.behaviour_weight_cap", self.behaviour_weight_cap,
                     "must be >= 1 (a cap below 1 would shrink every stale token's weight)")
        if not 0 < self.eps_low < 1:
            _problem(errors, f"{prefix}.eps_low", self.eps_low, "must be in (0, 1)")
        if not self.eps_high > 0:
            _problem(errors, f"{prefix}.eps_high", self.eps_high, "must be > 0")
        if self.dual_clip is not None and not self.dual_clip > 1:
            _problem(errors, f"{prefix}.dual_clip", self.dual_clip, "must be > 1, or null to disable")
        if self.kl_coef != 0:
            # MENTOR drops the KL term (MENTOR.md); supporting it needs a reference model.
            _problem(errors, f"{prefix}.kl_coef", self.kl_coef,
                     "must be 0: the learner holds no reference model, so there is no KL term to weigh")


@dataclass
class OptimizerConfig:
    lr: float = 1e-6
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = 1.0
    mini_batch_prompts: int = 64  # prompts per optimizer step (when mini_batch_samples is null)
    # Samples per optimizer step, as the official code counts its mini-batch (64 prompts x 8 =
    # 512): a step's samples make ceil(samples / 512) optimizer steps (3 while guided with
    # 128 x 12, 2 after), each of whole prompt groups. Null: mini_batch_prompts.
    mini_batch_samples: int | None = None
    ppo_epochs: int = 1
    micro_batch_samples: int = 8  # sequences per forward/backward on one worker
    # Response tokens whose [tokens, vocabulary] logits exist at once in the learner
    # (mentor_ray/token_scoring.py): the bound on its vocabulary-sized memory. Null: all at once.
    logit_chunk_tokens: int | None = 1024
    # Recompute each decoder layer's activations in backward instead of keeping them: memory
    # for long responses, at about one more forward pass of compute.
    gradient_checkpointing: bool = False

    def check(self, errors: list[str], prefix: str) -> None:
        if not self.lr > 0:
            _problem(errors, f"{prefix}.lr", self.lr, "must be > 0")
        if self.weight_decay < 0:
            _problem(errors, f"{prefix}.weight_decay", self.weight_decay, "must be >= 0")
        if not all(0 <= b < 1 for b in self.betas):
            _problem(errors, f"{prefix}.betas", self.betas, "each must be in [0, 1)")
        if not self.grad_clip > 0:
            _problem(errors, f"{prefix}.grad_clip", self.grad_clip, "must be > 0")
        for name in ("mini_batch_prompts", "ppo_epochs", "micro_batch_samples"):
            if getattr(self, name) < 1:
                _problem(errors, f"{prefix}.{name}", getattr(self, name), "must be >= 1")
        for name in ("mini_batch_samples", "logit_chunk_tokens"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                _problem(errors, f"{prefix}.{name}", getattr(self, name), "must be >= 1, or null")


@dataclass
class DeepSpeedConfig:
    # ZeRO 1-3 only: skipping a NaN step relies on ZeRO's shared overflow check.
    zero_stage: Literal[1, 2, 3] = 2
    offload_optimizer: bool = False
    offload_params: bool = False
    bf16: bool = False

    def check(self, errors: list[str], prefix: str) -> None:
        if self.offload_params and self.zero_stage != 3:
            _problem(errors, f"{prefix}.offload_params", True, "needs zero_stage=3")


@dataclass
class ScalingConfig:
    num_policy_engines: int = 1
    num_mixed_engines: int = 1
    num_learner_workers: int = 1
    use_gpu: bool = False
    gpus_per_engine: int = 1  # tensor-parallel size of one engine, on GPU
    cpus_per_engine: float = 1.0
    cpus_per_learner_worker: float = 1.0
    # CPU threads of each engine and learner worker when they run on CPU. None: this machine's
    # cores shared by what runs at once: the engines that generate together (policy + mixed
    # when guided) split the cores, and so do the learner workers, since rollout and learning
    # take turns (with rollout.max_staleness = 1 they do not: the learners get what is left).
    # Ray's own default is one thread per reserved CPU, which on a 2-core machine leaves a core
    # idle in every phase (measured: update 0.71 s -> 0.54 s with 2 threads).
    engine_threads: int | None = None
    learner_threads: int | None = None
    # Logical CPUs for a local Ray instance. On 2 physical cores Ray needs more than it
    # detects, or actors sit PENDING (CPU_NOTES.md); Ray also keeps only about this many idle
    # worker processes, and Ray Data stage tasks re-import torch in each one it has to start.
    # None: leave Ray's detection alone.
    local_num_cpus: int | None = 16
    # Seconds to wait, before anything starts, for nodes the run needs that are not up yet: an
    # autoscaling cluster (`ray up cluster.yaml` starts the head alone) brings GPU workers when
    # asked. 0: refuse at once a cluster without room or without the placement's labels.
    wait_for_nodes_s: float = 0.0

    def check(self, errors: list[str], prefix: str) -> None:
        for name in ("num_policy_engines", "num_learner_workers", "gpus_per_engine"):
            if getattr(self, name) < 1:
                _problem(errors, f"{prefix}.{name}", getattr(self, name), "must be >= 1")
        if self.num_mixed_engines < 0:
            _problem(errors, f"{prefix}.num_mixed_engines", self.num_mixed_engines, "must be >= 0")
        if self.wait_for_nodes_s < 0:
            _problem(errors, f"{prefix}.wait_for_nodes_s", self.wait_for_nodes_s, "must be >= 0")
        for name in ("engine_threads", "learner_threads"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                _problem(errors, f"{prefix}.{name}", getattr(self, name), "must be >= 1, or null for the cores shared out")


@dataclass
class PlacementConfig:
    """Where each role runs: the Ray node labels its actors require, as Ray label selectors
    (`{"mentor-ray/node-type": "engines"}`; a value may also be `!v`, `in(a,b)` or `!in(a,b)`).
    Nodes get labels from `ray start --labels` or cluster.yaml's node types. Empty: anywhere
    Ray finds room (one machine, or a cluster of one node type)."""

    engines: dict[str, str] = field(default_factory=dict)  # policy and mixed vLLM engines
    learners: dict[str, str] = field(default_factory=dict)  # DeepSpeed workers under Ray Train
    graders: dict[str, str] = field(default_factory=dict)  # reward actors (math-verify, CPU)

    def check(self, errors: list[str], prefix: str) -> None:
        for role in ("engines", "learners", "graders"):
            for label, value in getattr(self, role).items():
                if not label.strip() or not value.strip():
                    _problem(errors, f"{prefix}.{role}", {label: value}, "labels and values must be non-empty strings")


@dataclass
class RewardConfig:
    accuracy_weight: float = 0.9
    format_weight: float = 0.1
    # "strict" (this project's): one non-empty think block first, then a non-empty boxed
    # answer; "official": the official code's looser rule, which also passes repeated or
    # empty think blocks and an empty box (mentor_ray.rewards.FORMAT_RULES).
    format_rule: Literal["strict", "official"] = "strict"
    timeout_s: float = 5.0
    num_processes: int = 2

    def check(self, errors: list[str], prefix: str) -> None:
        if self.accuracy_weight < 0 or self.format_weight < 0:
            _problem(errors, f"{prefix}.accuracy_weight/format_weight",
                     (self.accuracy_weight, self.format_weight), "must be >= 0")
        elif self.accuracy_weight + self.format_weight <= 0:
            _problem(errors, f"{prefix}.accuracy_weight+format_weight",
                     self.accuracy_weight + self.format_weight, "must be > 0")
        if not self.timeout_s > 0:
            _problem(errors, f"{prefix}.timeout_s", self.timeout_s, "must be > 0")
        if self.num_processes < 1:
            _problem(errors, f"{prefix}.num_processes", self.num_processes, "must be >= 1")


LOGGER_SINKS = ("jsonl", "tensorboard", "wandb", "swanlab", "mlflow")


@dataclass
class LoggingConfig:
    run_root: str = "runs"
    run_name: str | None = None  # None: mentor-<timestamp>
    sinks: list[str] = field(default_factory=lambda: ["jsonl"])
    project: str = "mentor-ray"

    def check(self, errors: list[str], prefix: str) -> None:
        for sink in self.sinks:
            if sink not in LOGGER_SINKS:
                _problem(errors, f"{prefix}.sinks", sink, f"each must be one of {list(LOGGER_SINKS)}")


@dataclass
class CheckpointConfig:
    every_steps: int = 10
    keep_last: int = 3
    resume_from: str | None = None

    def check(self, errors: list[str], prefix: str) -> None:
        if self.every_steps < 1:
            _problem(errors, f"{prefix}.every_steps", self.every_steps, "must be >= 1")
        if self.keep_last < 1:
            _problem(errors, f"{prefix}.keep_last", self.keep_last, "must be >= 1")


@dataclass
class EvalConfig:
    every_steps: int = 5  # 0 disables periodic validation
    greedy: bool = True
    sampled_samples: int = 0  # extra samples per problem at `sampled_temperature`; 0 = greedy only
    sampled_temperature: float = 0.6
    max_problems: int | None = None
    max_response_tokens: int | None = None  # None: rollout.max_response_tokens

    def check(self, errors: list[str], prefix: str) -> None:
        if self.every_steps < 0:
            _problem(errors, f"{prefix}.every_steps", self.every_steps, "must be >= 0")
        if self.sampled_samples < 0:
            _problem(errors, f"{prefix}.sampled_samples", self.sampled_samples, "must be >= 0")
        if not self.sampled_temperature > 0:
            _problem(errors, f"{prefix}.sampled_temperature", self.sampled_temperature, "must be > 0")


@dataclass
class SyncConfig:
    """How the weights go from learner rank 0 to the engines after each update
    (pipelines/weight_sync.py). `object_store`: one put, every engine pulls a copy; fine while
    engines and learners share a node or the model is small. `collective`: one broadcast through
    vLLM's weight-transfer API (NCCL on GPUs, gloo on CPU), the object store kept as the
    fallback; across nodes at 135M it took 0.xx of the object store's time (RESULTS.md)."""

    transport: Literal["object_store", "collective"] = "object_store"
    bucket_mb: float = 256.0  # tensors packed per broadcast; each side holds one bucket
    timeout_s: float = 120.0  # every call to an engine and every broadcast of a sync
    # Every N-th sync, check that each engine got what was sent (CRC32 per bucket, collective)
    # and that all engines hold identical policy weights (vLLM's weight checker). 0: never.
    verify_every_steps: int = 1

    def check(self, errors: list[str], prefix: str) -> None:
        if not self.bucket_mb > 0:
            _problem(errors, f"{prefix}.bucket_mb", self.bucket_mb, "must be > 0 (MiB per packed bucket)")
        if not self.timeout_s > 0:
            _problem(errors, f"{prefix}.timeout_s", self.timeout_s, "must be > 0 seconds")
        if self.verify_every_steps < 0:
            _problem(errors, f"{prefix}.verify_every_steps", self.verify_every_steps, "must be >= 0 (0: never)")


@dataclass
class MentorConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    guidance: GuidanceConfig = field(default_factory=GuidanceConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    scaling: ScalingConfig = field(default_factory=ScalingConfig)
    placement: PlacementConfig = field(default_factory=PlacementConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    sync: SyncConfig = field(default_factory=SyncConfig)
    seed: int = 42
    total_steps: int = 200
    # Updates skipped for a NaN loss or grad norm before the run stops.
    max_skipped_updates: int = 3

    def cpu_threads(self) -> tuple[int, int]:
        """(threads per engine, threads per learner worker) on CPU; see ScalingConfig."""
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        engines = self.scaling.num_policy_engines + (self.scaling.num_mixed_engines if self.guided else 0)
        learners = self.scaling.num_learner_workers
        if self.rollout.max_staleness > 0:
            # Rollout and learning run at once: engines and learners split the cores, at least
            # one thread each (measured on 2 cores, a GRPO step: 0.96 s, against 1.43 s with the
            # engine on both cores beside the learner). A learner on a node of its own sees only
            # that node's cores.
            engine = self.scaling.engine_threads or max(1, cores // max(1, engines + learners))
            learner = self.scaling.learner_threads or max(1, (cores - engine * engines) // learners)
        else:
            engine = self.scaling.engine_threads or max(1, cores // max(1, engines))
            learner = self.scaling.learner_threads or max(1, cores // learners)
        return engine, learner

    def mini_batch_count(self, samples: int, prompts: int) -> int:
        """Optimizer steps for one RL step of `samples` samples over `prompts` prompts (each
        mini-batch holds whole prompt groups, so never more than `prompts`)."""
        if self.optimizer.mini_batch_samples is not None:
            wanted = math.ceil(samples / self.optimizer.mini_batch_samples)
        else:
            wanted = self.rollout.prompts_per_step // self.optimizer.mini_batch_prompts
        return max(1, min(wanted, prompts))

    @property
    def guided(self) -> bool:
        """Whether the run makes mixed-policy (expert-guided) rollouts: MENTOR, not plain GRPO."""
        return self.algorithm.method in METHODS and METHODS[self.algorithm.method].makes_mixed_samples and self.rollout.n_mixed > 0

    def check(self, errors: list[str], prefix: str = "") -> None:
        for section in dataclasses.fields(self):
            value = getattr(self, section.name)
            if dataclasses.is_dataclass(value):
                value.check(errors, section.name)
        if self.total_steps < 1:
            _problem(errors, "total_steps", self.total_steps, "must be >= 1")
        if self.max_skipped_updates < 0:
            _problem(errors, "max_skipped_updates", self.max_skipped_updates, "must be >= 0")
        # Cross-section rules: a config that cannot run.
        method = self.algorithm.method
        if method not in METHODS:
            return  # named by AlgorithmConfig.check; the rules below need a known method
        entry = METHODS[method]
        if not entry.makes_mixed_samples and self.rollout.n_mixed != 0:
            _problem(errors, "rollout.n_mixed", self.rollout.n_mixed,
                     f"must be 0 for algorithm.method={method} (mixed-policy samples are MENTOR's; "
                     f"`--method {method}` sets it)")
        if entry.needs_expert_traces and not self.model.expert_path:
            _problem(errors, "model.expert_path", self.model.expert_path,
                     f"must name the expert for algorithm.method={method} (its traces come from the expert)")
        if self.rollout.n_on_policy <= entry.expert_traces_per_group:
            _problem(errors, "rollout.n_on_policy", self.rollout.n_on_policy,
                     f"must be >= {entry.expert_traces_per_group + 1} for algorithm.method={method} "
                     f"({entry.expert_traces_per_group} slot of the group is the expert trace)")
        if self.guided and not self.model.expert_path:
            _problem(errors, "rollout.n_mixed", self.rollout.n_mixed,
                     "needs model.expert_path (mixed-policy samples come from the expert); set rollout.n_mixed=0 for the GRPO baseline")
        if self.guided and self.scaling.num_mixed_engines < 1:
            _problem(errors, "scaling.num_mixed_engines", self.scaling.num_mixed_engines,
                     "must be >= 1 when rollout.n_mixed > 0")
        if self.optimizer.mini_batch_samples is None and self.rollout.prompts_per_step % self.optimizer.mini_batch_prompts != 0:
            _problem(errors, "optimizer.mini_batch_prompts", self.optimizer.mini_batch_prompts,
                     f"must divide rollout.prompts_per_step={self.rollout.prompts_per_step}")
        if self.model.dtype == "float16":
            _problem(errors, "model.dtype", self.model.dtype,
                     "float16 training needs loss scaling, which the learner does not do; use float32 or bfloat16")
        if self.model.dtype == "bfloat16" and not self.deepspeed.bf16:
            _problem(errors, "deepspeed.bf16", self.deepspeed.bf16,
                     "must be true with model.dtype=bfloat16 (DeepSpeed then keeps fp32 master weights)")
        if self.data.max_prompt_tokens + self.rollout.max_response_tokens > self.model.max_model_len:
            _problem(errors, "model.max_model_len", self.model.max_model_len,
                     f"must be >= data.max_prompt_tokens + rollout.max_response_tokens "
                     f"= {self.data.max_prompt_tokens + self.rollout.max_response_tokens}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------------------------
# Loading: YAML -> dict -> typed, checked dataclasses.


def _type_name(annotation: Any) -> str:
    if annotation is type(None):
        return "null"
    if typing.get_origin(annotation) is Literal:
        return f"one of {list(typing.get_args(annotation))}"
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def _coerce(value: Any, annotation: Any, key: str, errors: list[str]) -> Any:
    """Check `value` against a field annotation; return it converted where lossless."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        candidates = [a for a in args if a is not type(None)]
        for candidate in candidates:
            trial: list[str] = []
            converted = _coerce(value, candidate, key, trial)
            if not trial:
                return converted
        _problem(errors, key, value, f"must be {' or '.join(_type_name(a) for a in args)}")
        return value
    if origin is Literal:
        if value not in args or type(value) is bool and True not in args and False not in args:
            _problem(errors, key, value, f"must be one of {list(args)}")
        return value
    if origin is dict:
        if not isinstance(value, dict):
            _problem(errors, key, value, f"must be a mapping ({_type_name(annotation)})")
            return value
        key_type, value_type = args or (Any, Any)
        return {
            _coerce(k, key_type, f"{key} key", errors): _coerce(v, value_type, f"{key}[{k!r}]", errors)
            for k, v in value.items()
        }
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            _problem(errors, key, value, f"must be a list ({_type_name(annotation)})")
            return value
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                _problem(errors, key, value, f"must have {len(args)} items")
                return value
            return tuple(_coerce(v, a, f"{key}[{i}]", errors) for i, (v, a) in enumerate(zip(value, args)))
        item_type = args[0] if args else Any
        items = [_coerce(v, item_type, f"{key}[{i}]", errors) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if annotation is Any:
        return value
    if annotation is bool:
        if not isinstance(value, bool):
            _problem(errors, key, value, "must be true or false")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            _problem(errors, key, value, "must be an integer")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            _problem(errors, key, value, "must be a number")
            return value
        if not math.isfinite(value):
            # YAML reads .inf and .nan as numbers; no setting of a run means either.
            _problem(errors, key, value, "must be a finite number")
            return value
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            _problem(errors, key, value, "must be a string")
        return value
    raise TypeError(f"config field {key} has an unsupported annotation {annotation!r}")


def _build(cls: type, data: dict[str, Any], prefix: str, errors: list[str]) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if key not in fields:
            suggestion = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f"; did you mean {prefix}{suggestion[0]}?" if suggestion else ""
            errors.append(f"{dotted}: unknown key (allowed under {prefix.rstrip('.') or 'the top level'}: {sorted(fields)}){hint}")
            continue
        annotation = hints[key]
        if dataclasses.is_dataclass(annotation):
            if not isinstance(value, dict):
                _problem(errors, dotted, value, f"must be a mapping of {annotation.__name__} keys")
                continue
            kwargs[key] = _build(annotation, value, f"{dotted}.", errors)
        else:
            kwargs[key] = _coerce(value, annotation, dotted, errors)
    return cls(**kwargs)


def config_key_problem(dotted_key: str) -> str | None:
    """None if `dotted_key` names a setting of MentorConfig, else what is wrong with it (the
    first part that is unknown, with the closest name)."""
    cls: Any = MentorConfig
    parts = dotted_key.split(".")
    for i, part in enumerate(parts):
        fields = {f.name: f for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else {}
        prefix = ".".join(parts[:i])
        if part not in fields:
            options = sorted(fields)
            suggestion = difflib.get_close_matches(part, options, n=1)
            hint = f"; did you mean {'.'.join([*parts[:i], suggestion[0]])}?" if suggestion else f" (allowed under {prefix or 'the top level'}: {options})"
            return f"{dotted_key}: unknown key{hint}"
        cls = typing.get_type_hints(cls)[part]
    if dataclasses.is_dataclass(cls):
        return f"{dotted_key}: a section, not a setting"
    return None


def set_dotted(tree: dict[str, Any], dotted_key: str, value: Any) -> None:
    parts = dotted_key.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {dotted_key}: {part} is not a section")
        node = child
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """`guidance.entropy_quantile=0.9` -> ("guidance.entropy_quantile", 0.9); values are YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r}: expected key=value, e.g. guidance.entropy_quantile=0.9")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as error:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({error})") from error
    if isinstance(value, str):
        # YAML 1.1 reads "5e-4" (no dot) as a string; on a command line it is a number.
        try:
            value = float(value) if any(c in value.lower() for c in ".en") else int(value)
        except ValueError:
            pass
    return key.strip(), value


def config_from_dict(data: dict[str, Any], source: str = "config") -> MentorConfig:
    errors: list[str] = []
    config = _build(MentorConfig, data, "", errors)
    if not errors:
        config.check(errors)
    if errors:
        raise ConfigError(f"invalid {source}:\n  " + "\n  ".join(errors))
    return config


def load_config_tree(path: str | Path) -> dict[str, Any]:
    """A YAML config file as a plain tree (not yet checked: `config_from_dict` does that)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        loaded = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ConfigError(f"config file {path} is not valid YAML: {error}") from error
    if loaded is not None and not isinstance(loaded, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level, got {type(loaded).__name__}")
    return loaded or {}


def load_config(
    path: str | Path | None = None, overrides: list[str] | None = None, values: dict[str, Any] | None = None
) -> MentorConfig:
    """Defaults, then the YAML file (if any), then `key=value` override strings, then dotted
    `values` (Python objects, as a sweep passes them), then checks."""
    data = load_config_tree(path) if path is not None else {}
    source = f"config {path}" if path is not None else "default config"
    for override in overrides or []:
        key, value = parse_override(override)
        set_dotted(data, key, value)
    for key, value in (values or {}).items():
        set_dotted(data, key, value)
    if overrides or values:
        source += " with overrides"
    return config_from_dict(data, source)


def save_config(config: MentorConfig, path: str | Path) -> None:
    def plain(value: Any) -> Any:
        if isinstance(value, tuple):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, list):
            return [plain(v) for v in value]
        return value

    from mentor_ray import storage  # pyarrow, only when a config is saved

    storage.write_text(path, yaml.safe_dump(plain(config.to_dict()), sort_keys=False))
