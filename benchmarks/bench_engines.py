"""Throughput of the rollout engines and cost of an in-place weight update vs a rebuild.

    python benchmarks/bench_engines.py [--prompts 64] [--samples 8] [--new-tokens 128]

Builds tiny random Qwen2 models (policy: 2 layers, hidden 64, tied head; expert: 3 layers,
hidden 128) in a temporary folder, then measures, each engine in this process:
- generated tokens/s of PolicyEngine and MixedEngine at prompts x samples x new tokens
  (temperature 1; responses may stop early at EOS, so tokens/s counts the tokens actually
  generated);
- update_weights seconds vs building a fresh PolicyEngine.
Prints a table with ratios. Numbers from a shared 2-core machine are noisy: run it alone.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

for _key, _value in {
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "VLLM_CPU_OMP_THREADS_BIND": "nobind",
}.items():
    os.environ.setdefault(_key, _value)


def _build_models(root: str) -> tuple[str, str, object]:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    vocab_size = 512
    vocab = {"<eos>": 0, "<pad>": 1, "<unk>": 2} | {f"w{i}": i for i in range(3, vocab_size)}

    def save(seed: int, hidden: int, layers: int, kv_heads: int, tied: bool, name: str):
        torch.manual_seed(seed)
        config = Qwen2Config(
            vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
            num_hidden_layers=layers, num_attention_heads=2, num_key_value_heads=kv_heads,
            max_position_embeddings=1024, tie_word_embeddings=tied, eos_token_id=0,
            pad_token_id=1,
        )
        model = Qwen2ForCausalLM(config).float()
        folder = os.path.join(root, name)
        model.save_pretrained(folder)
        tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
        tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        tokenizer.decoder = decoders.WordPiece()
        PreTrainedTokenizerFast(
            tokenizer_object=tokenizer, eos_token="<eos>", pad_token="<pad>", unk_token="<unk>"
        ).save_pretrained(folder)
        return folder, model

    policy_dir, policy = save(0, 64, 2, 1, True, "policy")
    expert_dir, _ = save(1, 128, 3, 2, False, "expert")
    return policy_dir, expert_dir, policy


def _throughput(engine, prompts, spec, repeats: int) -> tuple[float, int]:
    engine.generate(prompts[:2], spec)  # warm-up
    rates, tokens = [], 0
    for repeat in range(repeats):
        started = time.perf_counter()
        results = engine.generate(prompts, spec)
        seconds = time.perf_counter() - started
        tokens = sum(len(r.response_token_ids) for r in results)
        rates.append(tokens / seconds)
    return statistics.median(rates), tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import torch

    from mentor_ray.rollout.engines import (
        EngineSettings,
        MixedEngine,
        PolicyEngine,
        SamplingSpec,
    )

    settings = EngineSettings(max_model_len=args.prompt_len + args.new_tokens + 8)
    spec = SamplingSpec(n=args.samples, max_new_tokens=args.new_tokens, seed=0)
    generator = torch.Generator().manual_seed(0)
    prompts = torch.randint(3, 512, (args.prompts, args.prompt_len), generator=generator).tolist()
    rows: list[tuple[str, str]] = []
    with tempfile.TemporaryDirectory() as root:
        policy_dir, expert_dir, policy = _build_models(root)

        engine = PolicyEngine(policy_dir, settings)
        build_seconds = engine.stats().build_seconds
        policy_rate, policy_tokens = _throughput(engine, prompts, spec, args.repeats)
        weights = list(policy.named_parameters())
        update_times = [engine.update_weights(weights) for _ in range(5)]
        engine.close()
        started = time.perf_counter()
        PolicyEngine(policy_dir, settings).close()
        rebuild_seconds = time.perf_counter() - started

        mixed = MixedEngine(policy_dir, expert_dir, settings, entropy_threshold=4.0)
        mixed_rate, mixed_tokens = _throughput(mixed, prompts, spec, args.repeats)
        mixed_update = statistics.median(mixed.update_weights(weights) for _ in range(5))
        mixed.close()

    update = statistics.median(update_times)
    shape = f"{args.prompts} prompts x {args.samples} samples x {args.new_tokens} new tokens"
    rows += [
        ("policy engine tokens/s", f"{policy_rate:,.0f} ({policy_tokens} tokens/call)"),
        ("mixed engine tokens/s", f"{mixed_rate:,.0f} ({mixed_tokens} tokens/call)"),
        ("mixed / policy throughput", f"{mixed_rate / policy_rate:.2f}"),
        ("policy update_weights s (median of 5)", f"{update:.3f}"),
        ("mixed update_weights s (median of 5)", f"{mixed_update:.3f}"),
        ("policy engine first build s", f"{build_seconds:.1f}"),
        ("policy engine rebuild s", f"{rebuild_seconds:.1f}"),
        ("rebuild / update_weights", f"{rebuild_seconds / update:.0f}x"),
    ]
    width = max(len(name) for name, _ in rows)
    print(f"\n{shape}, fp32, CPU in-process engines")
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


if __name__ == "__main__":
    main()
