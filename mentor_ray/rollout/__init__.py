"""Rollout engines (vLLM): on-policy and mixed-policy generation with in-place weight updates.

`engines` is the public API; `mixed_model` holds the composite vLLM architecture for pi_mix.
Only these two modules import vLLM.
"""
