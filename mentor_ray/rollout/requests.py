"""What goes into and comes out of an engine: plain dataclasses, no vLLM import.

Ray Data stages and the learner handle these without paying vLLM's import in every worker.
"""

from __future__ import annotations

from dataclasses import dataclass

PROMPT_TOO_LONG = "prompt_too_long"

# Environment for an engine on CPU (see docs CPU_NOTES.md): engine in the calling process
# (start ~3 s instead of ~23 s, and tensors can be handed over without serialisation),
# 1 GiB of KV cache, no OpenMP thread pinning (the cores are shared with other work).
CPU_ENGINE_ENV = {
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "VLLM_CPU_OMP_THREADS_BIND": "nobind",
}


def engine_environment(config) -> dict[str, str]:
    """What a run's engine process needs in its environment (config: a MentorConfig): on CPU,
    CPU_ENGINE_ENV and the run's engine threads; on GPU, nothing."""
    if config.scaling.use_gpu:
        return {}
    return {**CPU_ENGINE_ENV, "OMP_NUM_THREADS": str(config.cpu_threads()[0])}


@dataclass(frozen=True)
class SamplingSpec:
    """How to sample: n samples per prompt, up to max_new_tokens each.

    With a seed, prompt i's samples use seeds seed + i * n + j (j < n), so a call is
    reproducible and identical prompts in one batch still get different samples.
    """

    n: int
    max_new_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"SamplingSpec.n must be >= 1, got {self.n}")
        if self.max_new_tokens < 1:
            raise ValueError(f"SamplingSpec.max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not self.temperature >= 0:
            raise ValueError(
                f"SamplingSpec.temperature must be >= 0 (0 = greedy), got {self.temperature}"
            )
        if self.temperature == 0 and self.n != 1:
            raise ValueError(f"greedy decoding (temperature 0) gives one answer: n must be 1, got {self.n}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"SamplingSpec.top_p must be in (0, 1], got {self.top_p}")


@dataclass
class GenerationResult:
    """One sampled response. `response_log_probs[k]` is the log-prob of `response_token_ids[k]`."""

    prompt_index: int
    sample_index: int
    prompt_token_ids: list[int]
    response_token_ids: list[int]
    response_text: str
    response_log_probs: list[float]
    finish_reason: str  # "stop" (EOS / stop token), "length", or PROMPT_TOO_LONG
