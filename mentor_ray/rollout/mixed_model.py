"""A vLLM architecture that samples MENTOR's mixed policy pi_mix inside vLLM.

`MentorMixedForCausalLM` holds vLLM's own model stack twice: the policy under the prefix
`policy` and the expert under `expert`, each built from its own Hugging Face config (depth,
width and head size may differ; the tokenizer must be the same). `forward` runs both stacks on
the same tokens and returns their final hidden states side by side; `compute_logits` returns
log pi_mix (from `mentor_ray.core.mixture.mixed_policy_log_probs`). Because the returned
"logits" are already normalised log-probabilities, vLLM's sampler at temperature 1 / top_p 1
samples pi_mix exactly and its returned log-probs are log pi_mix, the behaviour log-probs.
A sampling temperature T is applied inside, to each model's logits before mixing
(`MentorWorkerExtension.mentor_set_temperature`; `MixedEngine.generate` does it for you).

The V1 KV-cache manager gives every attention layer of both stacks its own cache with its own
shape, so the two stacks keep separate KV caches through one scheduler.

How it is selected (see `mixed_engine_hf_overrides`): the engine is built on the POLICY folder
with `hf_overrides` that set `architectures` to this class and name the expert folder. The
class is registered with `ModelRegistry` by `register()`, the `vllm.general_plugins` entry
point, which vLLM runs in every process it starts.

Per-step control goes through `MentorWorkerExtension` (the engine's `worker_extension_cls`):
the entropy threshold tau, a summary of the mixture weights w_t, and an in-place reload of the
POLICY half only (the expert is fixed).
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import nn

from mentor_ray.core.mixture import mixed_policy_log_probs

MIXED_ARCHITECTURE = "MentorMixedForCausalLM"
POLICY_PREFIX = "policy"
EXPERT_PREFIX = "expert"
# Inner architectures this composite is known to work with (vLLM's own classes).
SUPPORTED_INNER_ARCHITECTURES = ("Qwen2ForCausalLM", "LlamaForCausalLM")
# Extra keys the engine puts into the policy's hf_config through hf_overrides.
EXPERT_PATH_KEY = "mentor_expert_path"
POLICY_ARCHITECTURES_KEY = "mentor_policy_architectures"
ENTROPY_THRESHOLD_KEY = "mentor_entropy_threshold"
# tau before the first `set_entropy_threshold`: MENTOR's tau_1 (w ~ 0, in effect on-policy).
DEFAULT_ENTROPY_THRESHOLD = 999.0


def mixed_engine_hf_overrides(
    policy_architectures: list[str], expert_path: str, entropy_threshold: float
) -> dict[str, Any]:
    """The `hf_overrides` that turn an engine built on the policy folder into the mixed model."""
    for architecture in policy_architectures:
        if architecture not in SUPPORTED_INNER_ARCHITECTURES:
            raise ValueError(
                f"policy architecture {architecture!r} is not supported by the mixed engine; "
                f"supported: {list(SUPPORTED_INNER_ARCHITECTURES)}"
            )
    return {
        "architectures": [MIXED_ARCHITECTURE],
        POLICY_ARCHITECTURES_KEY: list(policy_architectures),
        EXPERT_PATH_KEY: os.path.abspath(expert_path),
        ENTROPY_THRESHOLD_KEY: float(entropy_threshold),
    }


def _load_expert_config(expert_path: str):
    from vllm.transformers_utils.config import get_config

    # vLLM's own config loader applies the same normalisations (rope defaults, ...) the
    # policy's config got when the engine was built.
    return get_config(expert_path, trust_remote_code=False)


def _expert_weight_iterator(expert_path: str) -> Iterator[tuple[str, torch.Tensor]]:
    from safetensors.torch import safe_open

    files = sorted(glob.glob(os.path.join(expert_path, "*.safetensors")))
    if not files:
        raise FileNotFoundError(f"no *.safetensors weight files in expert folder {expert_path}")
    for file in files:
        with safe_open(file, framework="pt") as handle:
            for name in handle.keys():  # noqa: SIM118 (safe_open is not a dict)
                yield name, handle.get_tensor(name)


class MentorMixedForCausalLM(nn.Module):
    """Policy and expert stacks in one vLLM model; `compute_logits` returns log pi_mix."""

    def __init__(self, *, vllm_config, prefix: str = "") -> None:
        super().__init__()
        from vllm.model_executor.models.utils import (
            init_vllm_registered_model,
            maybe_prefix,
        )

        policy_config = vllm_config.model_config.hf_config
        expert_path = getattr(policy_config, EXPERT_PATH_KEY, None)
        policy_architectures = getattr(policy_config, POLICY_ARCHITECTURES_KEY, None)
        if not expert_path or not policy_architectures:
            raise ValueError(
                f"{MIXED_ARCHITECTURE} needs hf_overrides with {EXPERT_PATH_KEY!r} and "
                f"{POLICY_ARCHITECTURES_KEY!r}; build it through mixed_engine_hf_overrides()"
            )
        expert_config = _load_expert_config(expert_path)
        expert_architectures = list(expert_config.architectures or [])
        for architecture in expert_architectures:
            if architecture not in SUPPORTED_INNER_ARCHITECTURES:
                raise ValueError(
                    f"expert architecture {architecture!r} (from {expert_path}) is not supported "
                    f"by the mixed engine; supported: {list(SUPPORTED_INNER_ARCHITECTURES)}"
                )

        self.policy = init_vllm_registered_model(
            vllm_config,
            hf_config=policy_config,
            architectures=list(policy_architectures),
            prefix=maybe_prefix(prefix, POLICY_PREFIX),
        )
        self.expert = init_vllm_registered_model(
            vllm_config,
            hf_config=expert_config,
            architectures=expert_architectures,
            prefix=maybe_prefix(prefix, EXPERT_PREFIX),
        )
        self.expert_path = expert_path
        self.policy_vocab_size = int(policy_config.vocab_size)
        self.expert_vocab_size = int(expert_config.vocab_size)
        self.policy_hidden_size = int(policy_config.hidden_size)
        self.entropy_threshold = float(
            getattr(policy_config, ENTROPY_THRESHOLD_KEY, DEFAULT_ENTROPY_THRESHOLD)
        )
        # Sampling temperature T, applied to each model before mixing (see compute_logits).
        self.temperature = 1.0
        self._weight_sum = torch.zeros((), dtype=torch.float64)
        self._full_expert_count = torch.zeros((), dtype=torch.int64)
        self._scored_positions = torch.zeros((), dtype=torch.int64)

    # vLLM calls this only for multimodal / prompt-embedding inputs; the policy owns the
    # token embedding the engine's inputs are defined by.
    def embed_input_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.policy.embed_input_ids(input_ids)

    def forward(
        self,
        input_ids: torch.Tensor | None,
        positions: torch.Tensor,
        intermediate_tensors=None,
        inputs_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if intermediate_tensors is not None or inputs_embeds is not None:
            raise NotImplementedError(
                f"{MIXED_ARCHITECTURE} supports token-id inputs only (no pipeline parallelism, "
                "no prompt embeddings)"
            )
        policy_hidden = self.policy(input_ids, positions)
        expert_hidden = self.expert(input_ids, positions)
        # One tensor so vLLM's runner can index rows (logits_indices) as for any model;
        # compute_logits splits it again by the policy's width.
        return torch.cat([policy_hidden, expert_hidden], dim=-1)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor | None:
        policy_hidden = hidden_states[..., : self.policy_hidden_size]
        expert_hidden = hidden_states[..., self.policy_hidden_size :]
        policy_logits = self.policy.compute_logits(policy_hidden)
        expert_logits = self.expert.compute_logits(expert_hidden)
        if policy_logits is None or expert_logits is None:
            return None
        expert_logits = _match_vocabulary_width(expert_logits, policy_logits.shape[-1])
        if self.temperature != 1.0:
            # pi_mix at temperature T mixes softmax(z_policy / T) and softmax(z_expert / T), and
            # w uses the entropy of the first: the policy distribution the engines sample and
            # the learner scores at T. vLLM's sampler then runs at temperature 1 on log pi_mix.
            policy_logits = policy_logits / self.temperature
            expert_logits = expert_logits / self.temperature
        log_probs, weight = mixed_policy_log_probs(
            policy_logits, expert_logits, self.entropy_threshold
        )
        self._record_weights(weight)
        return log_probs.to(policy_logits.dtype)

    @torch.no_grad()
    def _record_weights(self, weight: torch.Tensor) -> None:
        # Kept as device tensors so recording never forces a device sync per step.
        if self._weight_sum.device != weight.device:
            self._weight_sum = self._weight_sum.to(weight.device)
            self._full_expert_count = self._full_expert_count.to(weight.device)
            self._scored_positions = self._scored_positions.to(weight.device)
        self._weight_sum += weight.double().sum()
        self._full_expert_count += (weight >= 1.0).sum()
        self._scored_positions += weight.numel()

    def mixture_weight_summary(self, reset: bool) -> dict[str, float]:
        """Sum and counts of w_t over every position scored since the last reset."""
        positions = int(self._scored_positions.item())
        summary = {
            "scored_positions": float(positions),
            "mixture_weight_sum": float(self._weight_sum.item()),
            "full_expert_positions": float(self._full_expert_count.item()),
        }
        if reset:
            self._weight_sum.zero_()
            self._full_expert_count.zero_()
            self._scored_positions.zero_()
        return summary

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """Initial load: the iterator holds the policy folder's plain names; the expert's
        weights come from its own folder. Names are returned with their prefixes."""
        loaded = {f"{POLICY_PREFIX}.{name}" for name in self.policy.load_weights(weights)}
        expert_loaded = self.expert.load_weights(_expert_weight_iterator(self.expert_path))
        loaded |= {f"{EXPERT_PREFIX}.{name}" for name in expert_loaded}
        return loaded


def _match_vocabulary_width(expert_logits: torch.Tensor, width: int) -> torch.Tensor:
    """Bring the expert's logits to the policy's vocabulary width.

    Same tokenizer, but checkpoints pad the embedding differently (Qwen2.5-3B has 151,936
    rows, 7B 152,064). The extra rows are padding ids no tokenizer emits: drop the expert's
    extra rows, or give the policy's extra rows -inf under the expert.
    """
    expert_width = expert_logits.shape[-1]
    if expert_width == width:
        return expert_logits
    if expert_width > width:
        return expert_logits[..., :width]
    padding = expert_logits.new_full((*expert_logits.shape[:-1], width - expert_width), -torch.inf)
    return torch.cat([expert_logits, padding], dim=-1)


def _iter_safetensors_folder(folder: str) -> Iterator[tuple[str, torch.Tensor]]:
    return _expert_weight_iterator(folder)


def policy_module(model: nn.Module) -> nn.Module:
    """The module that holds the policy's weights: the policy half of the mixed model, or the
    plain model itself."""
    return model.policy if isinstance(model, MentorMixedForCausalLM) else model


def repack_tied_head(module: nn.Module) -> None:
    """Tied heads share their weight with the embedding; the layer-wise reload only processes
    the embedding layer, so the head's packed CPU GEMM handle would keep the old weights."""
    config = getattr(module, "config", None)
    head = getattr(module, "lm_head", None)
    if config is None or head is None or not getattr(config, "tie_word_embeddings", False):
        return
    quant_method = getattr(head, "quant_method", None)
    if quant_method is not None:
        quant_method.process_weights_after_loading(head)


class MentorWorkerExtension:
    """Methods added to vLLM's worker (`worker_extension_cls`), called via `collective_rpc`.

    Method names carry a `mentor_` prefix because vLLM refuses extensions whose names clash
    with the worker's own attributes.
    """

    def _mentor_model(self) -> nn.Module:
        return self.model_runner.get_model()  # type: ignore[attr-defined]

    def mentor_set_entropy_threshold(self, entropy_threshold: float) -> None:
        model = self._mentor_model()
        if not isinstance(model, MentorMixedForCausalLM):
            raise TypeError("entropy threshold is only meaningful for the mixed engine")
        if not entropy_threshold > 0:
            raise ValueError(f"entropy_threshold must be > 0, got {entropy_threshold}")
        model.entropy_threshold = float(entropy_threshold)

    def _mentor_draft_model(self) -> nn.Module | None:
        """The speculative draft (the policy as a plain model), where the engine has one."""
        runner = self.model_runner  # type: ignore[attr-defined]
        proposer = getattr(runner, "drafter", None) or getattr(runner, "speculator", None)
        return getattr(proposer, "model", None)

    def mentor_set_temperature(self, temperature: float) -> None:
        model = self._mentor_model()
        if not isinstance(model, MentorMixedForCausalLM):
            raise TypeError("the mixture temperature is only meaningful for the mixed engine")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        model.temperature = float(temperature)
        draft = self._mentor_draft_model()
        if draft is not None:
            # Requests run at temperature 1 (the composite applies T itself), and vLLM divides
            # draft logits by the request's temperature only: the draft's logits processor
            # applies T, so drafts come from the policy at T, as the mixture's policy half.
            processor = draft.logits_processor
            if not hasattr(processor, "mentor_base_scale"):
                processor.mentor_base_scale = float(processor.scale)
            processor.scale = processor.mentor_base_scale / float(temperature)

    def mentor_draft_weight_norms(self) -> tuple[float, float]:
        """Sums of squares of the draft's and of the mixture's policy-half parameters, as vLLM
        holds them (for tests: the draft follows the policy)."""
        draft = self._mentor_draft_model()
        if draft is None:
            raise TypeError("this engine has no speculative draft")

        def norm(module: nn.Module) -> float:
            return float(sum(p.detach().double().pow(2).sum() for p in module.parameters()))

        return norm(draft), norm(policy_module(self._mentor_model()))

    def mentor_mixture_weight_summary(self, reset: bool = True) -> dict[str, float]:
        model = self._mentor_model()
        if not isinstance(model, MentorMixedForCausalLM):
            raise TypeError("mixture weights exist only in the mixed engine")
        return model.mixture_weight_summary(reset)

    def mentor_prepare_weight_transfer(self) -> None:
        """Before a collective handshake: point the transfer engine at the draft too, and end
        an update a lost learner left open (its half-loaded layers are finished as they are;
        the engine reloads whole weights from the store before it generates again)."""
        engine = self.weight_transfer_engine  # type: ignore[attr-defined]
        if engine is None:
            raise RuntimeError("this engine was built without a weight transfer backend (sync.transport)")
        engine.draft_model = self._mentor_draft_model()
        self.mentor_abort_weight_update()

    def mentor_abort_weight_update(self) -> None:
        """After a failed collective update: leave the model whole and the worker ready for the
        next update (vLLM's worker refuses a start while its last update is open)."""
        from vllm.config import set_current_vllm_config

        engine = self.weight_transfer_engine  # type: ignore[attr-defined]
        with set_current_vllm_config(self.vllm_config):  # type: ignore[attr-defined]
            engine.abort_weight_update()
        engine.reset_weight_update_target()
        self._weight_update_active = False

    def mentor_policy_weight_digests(self) -> dict[str, str]:
        """vLLM's weight checker (SHA-256 per parameter, as loaded and processed) over the
        policy's copies: the plain model, or the mixed model's policy half, and the draft."""
        from vllm.model_executor.model_loader.weight_checksum import compute_tensor_digests

        digests = compute_tensor_digests(policy_module(self._mentor_model()))
        draft = self._mentor_draft_model()
        if draft is not None:
            digests.update({f"draft.{name}": d for name, d in compute_tensor_digests(draft).items()})
        return digests

    def mentor_weight_transfer_receipt(self) -> dict[str, Any]:
        """What the last collective update brought (bytes, buckets, checksums, seconds)."""
        from dataclasses import asdict

        receipt = getattr(self.weight_transfer_engine, "receipt", None)  # type: ignore[attr-defined]
        return asdict(receipt) if receipt is not None else {}

    def mentor_reload_policy_weights(
        self,
        named_tensors: list[tuple[str, torch.Tensor]] | None = None,
        weights_path: str | None = None,
    ) -> None:
        """In-place layer-wise reload of the policy's weights (plain checkpoint names).

        `named_tensors` works when the engine is in-process; a multiprocess engine gets a
        folder of safetensors files (`weights_path`) because tensors do not survive its RPC.
        """
        from vllm.config import set_current_vllm_config
        from vllm.model_executor.model_loader.reload.inplace import reload_weights

        if (named_tensors is None) == (weights_path is None):
            raise ValueError("pass exactly one of named_tensors and weights_path")
        weights = list(named_tensors) if named_tensors is not None else list(_iter_safetensors_folder(weights_path))
        # The speculative draft is the policy too: it drafts with the weights being trained.
        targets = [policy_module(self._mentor_model()), self._mentor_draft_model()]
        vllm_config = self.vllm_config  # type: ignore[attr-defined]
        with set_current_vllm_config(vllm_config):
            for target in (t for t in targets if t is not None):
                reload_weights(
                    vllm_config,
                    target,
                    weights_iterator=iter(weights),
                    weights_path=None,
                    is_checkpoint_format=True,
                )
                repack_tied_head(target)


def register() -> None:
    """`vllm.general_plugins` entry point: make the mixed architecture known to vLLM, and
    mend its CPU speculative sampling (`vllm_patches`)."""
    from vllm import ModelRegistry

    from mentor_ray.rollout import vllm_patches, weight_transfer

    vllm_patches.apply()
    weight_transfer.register()

    if MIXED_ARCHITECTURE not in ModelRegistry.get_supported_archs():
        # The class itself, not a lazy "module:Class" string: a string makes vLLM inspect the
        # class in a fresh subprocess, which costs seconds per engine start.
        ModelRegistry.register_model(MIXED_ARCHITECTURE, MentorMixedForCausalLM)
