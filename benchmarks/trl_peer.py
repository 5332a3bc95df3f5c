"""TRL's `GRPOTrainer` on the work of one `bench_step.py` configuration, as a user of TRL runs it.

    .venv/bin/python benchmarks/trl_peer.py --out FILE.json [--config RECIPE.yaml] [--steps 8]
        [--prompts 32] [--samples 8] [--new-tokens 96] [--seed 42] [--lr 1e-4]

Same model folder (the recipe's policy; the embedded toy recipe by default), same problems in
the same order (`PromptSchedule` over the run's filtered training set), same system prompt
and chat template, P prompts x G samples per step, at most
`--new-tokens` new tokens, temperature 1, top_p 1, one optimizer step per generation round,
no KL (beta 0), clip 0.2/0.28, token-mean loss over the batch, reward accuracy + format with
the recipe's weights and format rule, graded by this project's own functions in process. HF `generate` in one process.
Writes per-step wall time and time inside `generate` to --out. Needs `pip install -e .[bench]`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--config", default=None, help="recipe YAML (default: the embedded toy recipe)")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=96)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--lr", type=float, default=1e-4)
    args = parser.parse_args()

    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from mentor_ray.config import load_config
    from mentor_ray.data import load_problems
    from mentor_ray.data.prompt_schedule import PromptSchedule
    from mentor_ray.rewards import FORMAT_RULES, grade_accuracy, grade_plain_integers
    from mentor_ray.data.run_inputs import data_row_fields, load_tokenized_problems, resolve_run_paths

    run_config = load_config(args.config, [f"seed={args.seed}"])
    paths = resolve_run_paths(run_config, Path(tempfile.mkdtemp(prefix="trl-peer-run-")))
    tokenizer = AutoTokenizer.from_pretrained(paths.policy_dir)
    # The run's own training set: loaded, checked and length-filtered as the loop does it.
    kept, _ = load_tokenized_problems(paths.train_path, run_config, tokenizer, paths.system_prompt, "train", say=lambda _: None)
    fields = data_row_fields(paths.train_path, run_config, "data.train_path")
    texts = {
        p.problem_id: p.problem
        for p in load_problems(paths.train_path, problem_field=fields.problem_field, answer_field=fields.answer_field,
                               id_field=fields.id_field, answer_from=fields.answer_from).problems
    }
    schedule = PromptSchedule(len(kept), args.prompts, args.seed, run_config.data.shuffle)
    rows = [
        {
            "prompt": [{"role": "system", "content": paths.system_prompt}, {"role": "user", "content": texts[kept[i].problem_id]}],
            "answer": kept[i].answer,
        }
        for step in range(1, args.steps + 1)
        for i in schedule.indices_for_step(step)
    ]
    format_rule = FORMAT_RULES[run_config.reward.format_rule]
    weights = run_config.reward

    def reward(completions, answer, **_):
        scores = []
        for completion, reference in zip(completions, answer):
            text = completion[0]["content"] if isinstance(completion, list) else completion
            verdict = grade_plain_integers(text, reference) or grade_accuracy(text, reference)
            scores.append(weights.accuracy_weight * verdict[0] + weights.format_weight * format_rule(text))
        return scores

    model = AutoModelForCausalLM.from_pretrained(paths.policy_dir, dtype=torch.float32)
    tokenizer.padding_side = "left"
    generate_seconds: list[float] = []
    original_generate = model.generate

    def timed_generate(*a, **k):
        started = time.perf_counter()
        try:
            return original_generate(*a, **k)
        finally:
            generate_seconds.append(time.perf_counter() - started)

    model.generate = timed_generate

    class StepClock(TrainerCallback):
        def __init__(self) -> None:
            self.steps: list[dict[str, float]] = []
            self._started = 0.0
            self._generated = 0

        def on_step_begin(self, *_, **__):
            self._started = time.perf_counter()
            self._generated = len(generate_seconds)

        def on_step_end(self, *_, **__):
            self.steps.append(
                {"step_seconds": time.perf_counter() - self._started, "generate_seconds": sum(generate_seconds[self._generated:])}
            )

    batch = args.prompts * args.samples
    wanted = dict(
        output_dir=tempfile.mkdtemp(prefix="trl-peer-"), max_steps=args.steps, learning_rate=args.lr,
        lr_scheduler_type="constant", weight_decay=0.01, max_grad_norm=1.0, warmup_steps=0,
        per_device_train_batch_size=batch, gradient_accumulation_steps=1, steps_per_generation=1,
        num_iterations=1, num_generations=args.samples, max_completion_length=args.new_tokens,
        temperature=1.0, top_p=1.0, beta=0.0, epsilon=0.2, epsilon_high=0.28, loss_type="dapo",
        shuffle_dataset=False, seed=args.seed, use_cpu=True, bf16=False, fp16=False, report_to="none",
        logging_steps=1, save_strategy="no", disable_dropout=True, log_completions=False,
        dataloader_num_workers=0,
    )
    known = {f.name for f in dataclasses.fields(GRPOConfig)}
    config = GRPOConfig(**{k: v for k, v in wanted.items() if k in known})
    clock = StepClock()
    trainer = GRPOTrainer(
        model=model, reward_funcs=reward, args=config, train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer, callbacks=[clock],
    )
    started = time.perf_counter()
    trainer.train()
    total = time.perf_counter() - started
    with open(args.out, "w") as handle:
        json.dump(
            {"steps": clock.steps, "train_seconds": total, "torch_threads": torch.get_num_threads(),
             "log_history": trainer.state.log_history},
            handle,
        )


if __name__ == "__main__":
    main()
