"""The policy learner, in two parts (the process group it runs in is `mentor_ray.distributed`'s):
- `batching`: the rollout sample type, micro-batch tensors, each rank's share of a global
  mini-batch (pure torch);
- `policy_learner`: `PolicyLearner`, one rank's DeepSpeed-wrapped policy (the only DeepSpeed
  code in the project).
"""

from mentor_ray.learner.batching import (
    TrainingSample,
    align_to_response,
    collate,
    shard_for_rank,
    split_response_values,
)
from mentor_ray.learner.policy_learner import (
    LearnResult,
    PolicyLearner,
    build_deepspeed_config,
)

__all__ = [
    "LearnResult",
    "PolicyLearner",
    "TrainingSample",
    "align_to_response",
    "build_deepspeed_config",
    "collate",
    "shard_for_rank",
    "split_response_values",
]
