"""MENTOR's math as pure torch functions: no Ray, vLLM or DeepSpeed imports here.

Read in this order: `mixture` (the per-token expert/policy mixture), `guidance` (the entropy
threshold tau and the alpha schedule), `advantages` (GRPO + mixed rule), `losses` (PPO-clip
with clip-higher and dual clip, assembled from named components).
"""
