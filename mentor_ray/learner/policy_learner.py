"""The policy learner: old log-probs and entropies, PPO updates, weight export.

This is the only module that imports DeepSpeed. It runs inside each Ray Train worker
(`TorchTrainer.train_loop_per_worker`): Ray Train has already created the torch.distributed
process group (gloo on CPU, NCCL on GPU), and DeepSpeed wraps that group instead of creating
its own.

Data layout, per RL step:
  * the caller splits the global batch with `shard_for_rank`, which returns this rank's part
    of every global mini-batch; global mini-batch k is the union over ranks of their k-th
    local mini-batch, so one optimizer step on every rank is one step on global mini-batch k;
  * `compute_old_log_probs` runs the no-grad pass over the flat local samples;
  * log-probs and entropies come from `mentor_ray.token_scoring.TokenScorer`, the module
    DeepSpeed wraps: response positions only, at the rollout temperature, chunked over the
    vocabulary-sized logits;
  * `update` runs PPO over the local mini-batches, with a loss whose gradient equals the
    token-level mean over the GLOBAL mini-batch (see `update` for how DeepSpeed's gradient
    averaging is compensated).

Every method that talks to other ranks is collective: all ranks call it, in the same order.
Ranks may hold different numbers of samples; the learner pads the number of forward/backward
passes with zero-gradient dummy passes so that ZeRO-2/3's per-pass collectives line up.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

# DeepSpeed picks its accelerator on first use; without a GPU it must be told it is CPU, or it
# probes for CUDA and misconfigures itself. Set before deepspeed is imported.
if not torch.cuda.is_available():
    os.environ.setdefault("DS_ACCELERATOR", "cpu")

import deepspeed

from mentor_ray.config import MentorConfig
from mentor_ray.core.losses import (
    BehaviourCorrection,
    ClipSettings,
    LossWeights,
    PolicyLossInputs,
    ShapingSettings,
    policy_loss,
)
from mentor_ray.distributed import all_reduce_values, ensure_process_group
from mentor_ray.learner.batching import (
    TrainingSample,
    align_to_response,
    check_sample,
    chunked,
    collate,
    split_response_values,
)
from mentor_ray.token_scoring import TokenScorer

_TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Tokenizer files copied next to exported weights so the folder is a complete HF model.
_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "chat_template.jinja",
    "chat_template.json",
    "generation_config.json",
)


@dataclass
class LearnResult:
    """What one step's learning gives back: metrics, and per local sample (in the flat order of
    the mini-batches) the old log-probs and the policy entropy at each response token."""

    metrics: dict[str, float]
    old_log_probs: list[torch.Tensor]
    entropies: list[torch.Tensor]


# ---------------------------------------------------------------------------------------------
# DeepSpeed plumbing.


def _disable_shared_memory_comm_op() -> None:
    """Stop DeepSpeed JIT-compiling its CPU shared-memory all-reduce op (40-90 s on first use).

    DeepSpeed builds that op whenever it wraps a process group on CPU, but only its
    tensor-parallel inference path (`inference_all_reduce`) uses it; training collectives go
    through torch.distributed (gloo). Marking the op incompatible in DeepSpeed's own probe
    table (`deepspeed.ops.__compatible_ops__`, a module-level dict DeepSpeed reads each time)
    makes `build_shm_op` return None before compiling anything.
    """
    if torch.cuda.is_available():
        return
    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def build_deepspeed_config(config: MentorConfig, world_size: int) -> dict[str, Any]:
    """The DeepSpeed config dict for this learner (no optimizer section: a torch AdamW is passed in)."""
    micro = config.optimizer.micro_batch_samples
    zero: dict[str, Any] = {"stage": config.deepspeed.zero_stage}
    if config.deepspeed.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu"}
    if config.deepspeed.offload_params:
        zero["offload_param"] = {"device": "cpu"}
    return {
        "train_micro_batch_size_per_gpu": micro,
        # The learner owns accumulation: it marks the boundary itself and steps once per
        # mini-batch, with however many micro-batches the mini-batch has.
        "gradient_accumulation_steps": 1,
        "train_batch_size": micro * world_size,
        "gradient_clipping": config.optimizer.grad_clip,
        "zero_optimization": zero,
        "bf16": {"enabled": bool(config.deepspeed.bf16)},
        # A torch AdamW instead of DeepSpeed's fused/CPU Adam (which JIT-compiles for minutes on CPU).
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }


# ---------------------------------------------------------------------------------------------
# The learner.


class PolicyLearner:
    """One rank's DeepSpeed-wrapped policy. All public methods are collective."""

    def __init__(self, model_dir: str | Path, config: MentorConfig, world_size: int, rank: int):
        from transformers import AutoModelForCausalLM

        errors: list[str] = []
        config.check(errors)
        if errors:
            raise ValueError("learner config cannot run:\n  " + "\n  ".join(errors))
        self.model_dir = Path(model_dir)
        if not (self.model_dir / "config.json").is_file():
            raise FileNotFoundError(f"{self.model_dir} is not a Hugging Face model folder (no config.json)")
        self.config = config
        self.world_size = world_size
        self.rank = rank
        ensure_process_group(world_size, rank)
        _disable_shared_memory_comm_op()
        deepspeed.init_distributed(dist_backend=dist.get_backend(), dist_init_required=False)

        model = AutoModelForCausalLM.from_pretrained(str(self.model_dir), dtype=_TORCH_DTYPES[config.model.dtype])
        model.config.use_cache = False
        self.vocab_size = int(model.config.vocab_size)
        self.pad_token_id = self._pad_token_id(model)
        if config.optimizer.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        # Log-probs and entropies at the rollout temperature, the distribution the engines sample.
        scorer = TokenScorer(model, config.rollout.temperature, config.optimizer.logit_chunk_tokens)
        probe = torch.arange(2, 2 + 6, dtype=torch.long).remainder(self.vocab_size).unsqueeze(0)
        scorer.check_matches_model_logits(probe)
        optimizer = torch.optim.AdamW(
            scorer.parameters(),
            lr=config.optimizer.lr,
            betas=tuple(config.optimizer.betas),
            weight_decay=config.optimizer.weight_decay,
        )
        self.ds_config = build_deepspeed_config(config, world_size)
        self.engine, *_ = deepspeed.initialize(
            model=scorer, optimizer=optimizer, config=self.ds_config, dist_init_required=False
        )
        if config.deepspeed.zero_stage == 3:
            # The scorer applies the output layer's weight itself, chunk by chunk, outside the
            # layer's own forward: ZeRO-3 must gather it for the scorer's forward and backward.
            deepspeed.zero.register_external_parameter(self.engine.module, self.engine.module.output_layer.weight)
        self.device = self.engine.device
        self.clip = ClipSettings(config.loss.eps_low, config.loss.eps_high, config.loss.dual_clip)
        self.loss_weights = LossWeights(policy=1.0, kl=config.loss.kl_coef, entropy=config.loss.entropy_coef)
        # Used only by off-policy rows (LUFFY's expert traces); the learner does not ask which method.
        self.shaping = ShapingSettings(config.algorithm.shaping_gamma)
        self.correction = BehaviourCorrection(config.loss.behaviour_weight_cap)

    def _pad_token_id(self, model: torch.nn.Module) -> int:
        for candidate in (model.config.pad_token_id, model.config.eos_token_id, 0):
            if isinstance(candidate, list):
                candidate = candidate[0] if candidate else None
            if candidate is not None:
                return int(candidate)
        return 0

    @property
    def module(self) -> torch.nn.Module:
        """The Hugging Face model being trained."""
        return self.engine.module.causal_lm

    # --- collectives ---------------------------------------------------------------------------

    def _all_reduce(self, values: list[float], op: dist.ReduceOp = dist.ReduceOp.SUM) -> list[float]:
        return all_reduce_values(values, op)

    def _dummy_batch(self) -> dict[str, torch.Tensor]:
        """A two-token pass whose loss is multiplied by 0: keeps ranks' pass counts equal."""
        ids = torch.full((1, 2), self.pad_token_id, dtype=torch.long)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "response_mask": torch.ones((1, 1))}

    def _forward(self, batch: dict[str, torch.Tensor], entropy_requires_grad: bool = False):
        """Log-probs and entropies at the response positions of `batch`, [B, L-1] fp32."""
        return self.engine(
            batch["input_ids"].to(self.device),
            batch["attention_mask"].to(self.device),
            batch["response_mask"].to(self.device) > 0,
            entropy_requires_grad,
        )

    def _check_samples(self, samples: Sequence[TrainingSample]) -> None:
        for index, sample in enumerate(samples):
            check_sample(sample, index, self.vocab_size)

    # --- no-grad pass --------------------------------------------------------------------------

    @torch.no_grad()
    def compute_old_log_probs(
        self, samples: Sequence[TrainingSample]
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per sample, the log-prob of each response token and the policy entropy before it (fp32, CPU)."""
        self._check_samples(samples)
        micro_batches = chunked(samples, self.config.optimizer.micro_batch_samples)
        # Under ZeRO-3 every forward gathers parameters collectively: equal pass counts.
        (passes,) = self._all_reduce([len(micro_batches)], dist.ReduceOp.MAX)
        log_probs: list[torch.Tensor] = []
        entropies: list[torch.Tensor] = []
        was_training = self.engine.training
        self.engine.eval()
        try:
            for index in range(int(passes)):
                if index < len(micro_batches):
                    batch = collate(micro_batches[index], self.pad_token_id)
                    token_log_probs, entropy = self._forward(batch)
                    log_probs += split_response_values(token_log_probs.float().cpu(), micro_batches[index])
                    entropies += split_response_values(entropy.float().cpu(), micro_batches[index])
                else:
                    self._forward(self._dummy_batch())
        finally:
            self.engine.train(was_training)
        return log_probs, entropies

    # --- PPO update ----------------------------------------------------------------------------

    def learn(self, local_mini_batches: Sequence[Sequence[TrainingSample]]) -> LearnResult:
        """One RL step's learning: old log-probs, then PPO over the mini-batches.

        The first global mini-batch's old log-probs are the current policy's, so they come from
        its own first training forward pass (detached): the separate no-grad pass runs only
        over the later mini-batches, whose old log-probs must predate the first optimizer step.
        With one mini-batch per step (TRL's default) there is no separate pass at all.
        """
        started = time.perf_counter()
        first, later = list(local_mini_batches[0]), [s for mb in local_mini_batches[1:] for s in mb]
        later_log_probs, later_entropies = self.compute_old_log_probs(later)
        old_log_probs: list[torch.Tensor | None] = [None] * len(first) + list(later_log_probs)
        entropies: list[torch.Tensor | None] = [None] * len(first) + list(later_entropies)
        old_pass_seconds = time.perf_counter() - started
        metrics = self.update(local_mini_batches, old_log_probs, entropies)
        metrics["time/old_log_prob_seconds"] = old_pass_seconds
        metrics["time/update_seconds"] = time.perf_counter() - started - old_pass_seconds
        return LearnResult(metrics, old_log_probs, entropies)

    def update(
        self,
        local_mini_batches: Sequence[Sequence[TrainingSample]],
        old_log_probs: list[torch.Tensor | Sequence[float] | None],
        entropies: list[torch.Tensor | None] | None = None,
    ) -> dict[str, float]:
        """PPO epochs over this rank's mini-batches; one optimizer step per global mini-batch.

        `local_mini_batches` is what `shard_for_rank` returned; `old_log_probs` is flat, one entry
        per sample of `[s for mb in local_mini_batches for s in mb]` (the order
        `compute_old_log_probs` returns them in for that flat list). An entry may be None for a
        sample of the first mini-batch: its old log-probs are then taken, detached, from its
        first training forward pass, and written into `old_log_probs` (and its entropies into
        `entropies`, when given) in place.

        Gradient scale: DeepSpeed averages gradients over the data-parallel ranks (divides the
        sum by world_size), and with `scale_wrt_gas=False` does not divide by the accumulation
        steps. Each micro-batch's loss is sum(token losses) / (G / world_size), with G the
        global response-token count of the mini-batch; the averaged gradient is then
        sum over all ranks' tokens / G: the token-level mean over the global mini-batch,
        whatever the split across ranks and micro-batches.
        """
        flat = [s for mini_batch in local_mini_batches for s in mini_batch]
        self._check_samples(flat)
        if len(old_log_probs) != len(flat):
            raise ValueError(f"old_log_probs has {len(old_log_probs)} entries for {len(flat)} local samples")
        low, high = self._all_reduce([-len(local_mini_batches), len(local_mini_batches)], dist.ReduceOp.MAX)
        if -low != high:
            raise ValueError(
                f"ranks hold different numbers of mini-batches ({int(-low)} to {int(high)}); split the "
                "global batch with shard_for_rank so global mini-batch k is every rank's k-th local one"
            )
        # Attach each sample's old log-probs by position; samples are not hashable.
        offsets, start = [], 0
        for mini_batch in local_mini_batches:
            offsets.append(start)
            start += len(mini_batch)

        totals = {"loss_sum": 0.0, "tokens": 0.0, "entropy_sum": 0.0, "grad_norm_sum": 0.0}
        clip_sums: dict[str, float] = {}
        steps = skipped = empty = 0
        self.engine.train()
        for epoch in range(self.config.optimizer.ppo_epochs):
            for index, (mini_batch, offset) in enumerate(zip(local_mini_batches, offsets)):
                mini_old = list(old_log_probs[offset : offset + len(mini_batch)])
                if any(old is None for old in mini_old) and (epoch, index) != (0, 0):
                    raise ValueError("old log-probs may be left to the update only in the first mini-batch of the first epoch")
                # Only the very first pass sees the pre-update policy: only it can stand in for
                # the no-grad pass, so only it splits its outputs per sample.
                captured = [None] * len(mini_batch) if (epoch, index) == (0, 0) else None
                result = self._update_mini_batch(list(mini_batch), mini_old, captured)
                if captured is not None:
                    old_log_probs[offset : offset + len(mini_batch)] = mini_old
                    if entropies is not None:
                        for position, entropy in enumerate(captured):
                            if entropies[offset + position] is None:
                                entropies[offset + position] = entropy
                if result is None:
                    empty += 1
                    continue
                sums, applied, grad_norm = result
                if not applied:
                    # A skipped step (NaN/inf loss or gradient norm) contributes no metrics.
                    skipped += 1
                    continue
                steps += 1
                totals["grad_norm_sum"] += grad_norm
                totals["loss_sum"] += sums["loss_sum"]
                totals["tokens"] += sums["tokens"]
                totals["entropy_sum"] += sums["entropy_sum"]
                for name, value in sums.items():
                    if name.startswith(("clip/", "sum/")):
                        clip_sums[name] = clip_sums.get(name, 0.0) + value
        tokens = max(totals["tokens"], 1.0)
        metrics = {
            "train/loss": totals["loss_sum"] / tokens,
            "train/entropy_mean": totals["entropy_sum"] / tokens,
            "train/grad_norm": totals["grad_norm_sum"] / steps if steps else float("nan"),
            "train/lr": float(self.engine.get_lr()[0]),
            "train/optimizer_steps": float(steps),
            "train/skipped_updates": float(skipped),
            "train/empty_mini_batches": float(empty),
            "train/tokens": totals["tokens"],
        }
        for name, value in clip_sums.items():
            if name.startswith("clip/"):
                metrics["train/" + name.removeprefix("clip/")] = value / tokens
        corrected_tokens = clip_sums.get("sum/behaviour_corrected_tokens", 0.0)
        metrics["train/behaviour_corrected_token_share"] = corrected_tokens / tokens
        if corrected_tokens > 0:  # stale on-policy tokens (one step of overlap)
            metrics["train/behaviour_weight_mean"] = clip_sums["sum/behaviour_weight"] / corrected_tokens
            metrics["train/behaviour_weight_truncated_share"] = clip_sums["sum/behaviour_weight_truncated_tokens"] / corrected_tokens
        off_policy_tokens = clip_sums.get("sum/off_policy_tokens", 0.0)
        if off_policy_tokens > 0:  # expert-trace tokens (LUFFY)
            metrics["train/expert_token_share"] = off_policy_tokens / tokens
            metrics["train/shaping_weight_mean"] = clip_sums["sum/shaping_weight"] / off_policy_tokens
        return metrics

    def _update_mini_batch(
        self, mini_batch: list[TrainingSample], mini_old: list[Any], mini_entropies: list[Any] | None
    ) -> tuple[dict[str, float], bool, float] | None:
        """Forward/backward every micro-batch of one global mini-batch, then one optimizer step.

        With `mini_entropies` given, None entries of `mini_old` are filled with this forward
        pass's own (detached) log-probs, and `mini_entropies` with its per-sample entropies.
        Returns (global sums for metrics, whether the step was applied, grad norm), or None
        when the global mini-batch has no response tokens (no step on any rank).
        """
        size = self.config.optimizer.micro_batch_samples
        micro_batches = chunked(mini_batch, size)
        local_tokens = sum(len(s.response_token_ids) for s in mini_batch)
        (global_tokens,) = self._all_reduce([float(local_tokens)])
        (passes,) = self._all_reduce([float(len(micro_batches))], dist.ReduceOp.MAX)
        if global_tokens == 0:
            return None
        normalizer = global_tokens / self.world_size
        entropy_grad = self.loss_weights.entropy != 0.0
        local = {"loss_sum": 0.0, "entropy_sum": 0.0, "bad": 0.0}
        clip_counts: dict[str, float] = {}
        for index in range(int(passes)):
            self.engine.set_gradient_accumulation_boundary(index == int(passes) - 1)
            if index < len(micro_batches):
                batch = collate(micro_batches[index], self.pad_token_id)
                log_probs, entropy = self._forward(batch, entropy_grad)
                first = index * size
                if mini_entropies is not None:
                    own_log_probs = split_response_values(log_probs.detach().float().cpu(), micro_batches[index])
                    own_entropies = split_response_values(entropy.detach().float().cpu(), micro_batches[index])
                    for position, (own_lp, own_entropy) in enumerate(zip(own_log_probs, own_entropies)):
                        if mini_old[first + position] is None:
                            mini_old[first + position] = own_lp
                        mini_entropies[first + position] = own_entropy
                width = log_probs.shape[1]
                mask = batch["response_mask"].to(log_probs.device)
                inputs = PolicyLossInputs(
                    log_probs=log_probs,
                    old_log_probs=align_to_response(mini_old[first : first + size], micro_batches[index], width).to(log_probs.device),
                    advantages=batch["advantages"].to(log_probs.device),
                    response_mask=mask,
                    entropy=entropy,
                    off_policy=batch["off_policy"].to(log_probs.device),
                    **self._behaviour_inputs(micro_batches[index], batch, width, log_probs.device),
                )
                output = policy_loss(inputs, self.clip, self.loss_weights, token_normalizer=normalizer, shaping=self.shaping,
                                     correction=self.correction)
                loss = output.loss
                if not bool(torch.isfinite(loss)):
                    local["bad"] += 1.0
                    # Make sure the gradient is non-finite too (an inf loss can have finite
                    # gradients): ZeRO's overflow check, which it all-reduces over ranks, then
                    # skips the step and clears the gradients on every rank.
                    loss = loss * float("nan")
                else:
                    local["loss_sum"] += float(loss.detach()) * normalizer
                local["entropy_sum"] += float((entropy.detach() * mask).sum())
                tokens = output.metrics["loss/tokens"]
                for name, value in output.metrics.items():
                    if name.startswith("clip/"):
                        clip_counts[name] = clip_counts.get(name, 0.0) + value * tokens
                    elif name.startswith("sum/"):
                        clip_counts[name] = clip_counts.get(name, 0.0) + value
            else:
                log_probs, _ = self._forward(self._dummy_batch())
                loss = log_probs.sum() * 0.0
            self.engine.backward(loss, scale_wrt_gas=False)
        clip_names = sorted(clip_counts)
        reduced = self._all_reduce(
            [local["loss_sum"], local["entropy_sum"], local["bad"]] + [clip_counts[n] for n in clip_names]
        )
        global_bad = reduced[2] > 0
        self.engine.step()
        applied = bool(self.engine.was_step_applied())
        if global_bad and applied:
            raise RuntimeError("a non-finite loss reached an applied optimizer step; parameters are corrupted")
        grad_norm = self.engine.get_global_grad_norm()
        sums = {"loss_sum": reduced[0], "entropy_sum": reduced[1], "tokens": global_tokens}
        for name, value in zip(clip_names, reduced[3:]):
            sums[name] = value
        return sums, applied, float(grad_norm) if grad_norm is not None else float("nan")

    @staticmethod
    def _behaviour_inputs(samples: list[TrainingSample], batch: dict[str, torch.Tensor], width: int, device) -> dict[str, Any]:
        """The engine's log-probs of the micro-batch's stale on-policy rows, for the decoupled
        objective; nothing when no row is stale, so lockstep runs today's loss exactly."""
        corrected = batch["behaviour_corrected"]
        if not bool(corrected.any()):
            return {}
        behaviour = [s.behaviour_log_probs if stale else [0.0] * len(s.response_token_ids) for s, stale in zip(samples, corrected.tolist())]
        return {"behaviour_log_probs": align_to_response(behaviour, samples, width).to(device), "behaviour_corrected": corrected.to(device)}

    # --- weights out and checkpoints -----------------------------------------------------------

    def export_weights(self) -> dict[str, torch.Tensor] | None:
        """The full state dict with HF names on rank 0 (None elsewhere). Collective.

        A tensor shared by two names (a head tied to the embedding) is exported once, under
        its first name, as a tied checkpoint stores it: not a second 25-75% of the model's
        bytes through the object store and into saved folders.
        Under ZeRO-3 each parameter is gathered in turn, so at most one full parameter is
        materialised beyond rank 0's growing copy.
        """
        module = self.module
        weights: dict[str, torch.Tensor] = {}
        if self.config.deepspeed.zero_stage != 3:
            if self.rank != 0:
                return None
            seen: set[int] = set()
            for name, tensor in module.state_dict().items():
                if tensor.data_ptr() in seen and tensor.numel() > 0:
                    continue
                seen.add(tensor.data_ptr())
                weights[name] = tensor.detach().cpu().clone()
            return weights
        for name, parameter in module.named_parameters():  # shared parameters once
            with deepspeed.zero.GatheredParameters([parameter], modifier_rank=None):
                if self.rank == 0:
                    weights[name] = parameter.detach().cpu().clone()
        if self.rank != 0:
            return None
        # Buffers are not partitioned; take the persistent ones the state dict would hold.
        state_keys = set(module.state_dict().keys())
        for name, buffer in module.named_buffers():
            if name in state_keys:
                weights[name] = buffer.detach().cpu().clone()
        return weights

    def save_hf(self, path: str | Path) -> None:
        """Rank 0 writes a complete HF model folder (weights, config, tokenizer files). Collective."""
        weights = self.export_weights()
        if self.rank != 0:
            return
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.module.save_pretrained(str(path), state_dict=weights)
        for name in _TOKENIZER_FILES:
            source = self.model_dir / name
            if source.is_file():
                shutil.copy2(source, path / name)

    def save_checkpoint(self, directory: str | Path, client_state: dict[str, Any] | None = None) -> None:
        """DeepSpeed's own checkpoint (weights, optimizer partitions, step counters). Collective."""
        self.engine.save_checkpoint(str(directory), client_state=dict(client_state or {}))

    def load_checkpoint(self, directory: str | Path) -> dict[str, Any]:
        """Restores weights and optimizer state from `save_checkpoint`; returns the client state."""
        load_path, client_state = self.engine.load_checkpoint(str(directory))
        if load_path is None:
            raise FileNotFoundError(f"no DeepSpeed checkpoint found in {directory}")
        return dict(client_state or {})
