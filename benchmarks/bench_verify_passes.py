"""What one speculative step of the mixed engine costs, pass by pass, at the recipes' model sizes.

    python benchmarks/bench_verify_passes.py --device cuda --pairs Qwen/Qwen2.5-7B:open-r1/OpenR1-Qwen-7B \
        --batch 1 64 256 --context 1024 --out OUT/verify_passes.json
    python benchmarks/bench_verify_passes.py --device cpu --pairs HuggingFaceTB/SmolLM2-135M-Instruct:HuggingFaceTB/SmolLM2-135M-Instruct

With `rollout.speculative_tokens = K` the mixed engine makes K draft passes of the policy (one
new position each), then one composite pass (policy and expert) over K + 1 positions; without
it, one composite pass per token. This times each of those passes with the decoders of the
named models (shapes from `mentor_ray/model_shapes.json`, random weights: the cost of a pass
does not depend on the values), at a batch of sequences with `--context` tokens already in
their KV cache, and turns them into the speed of drafting relative to not drafting:

    speed ratio = composite(1) * tokens per step / (K * draft(1) + composite(K + 1))

where tokens per step = 1 + a + ... + a^K for a per-token acceptance a (`--acceptance`: the
hesitant toy world's measured 0.84 and the ceiling 1.0). It also times the expert alone over
K + 1 positions: verification without the duplicate policy pass, the saving the official code
gets by reusing the draft's probabilities.

These are plain transformers forward passes (no CUDA graphs, no paged attention): they show the
relative cost of the passes, not vLLM's absolute speed; on a GPU at batch 1 launch overheads
dominate every pass and make the ratio pessimistic.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mentor_ray.model_shapes import ModelShape, shipped_shapes


def build_decoder(shape: ModelShape, device: str, dtype: torch.dtype, seed: int):
    from transformers import (
        LlamaConfig,
        LlamaForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    config_class, model_class = (Qwen2Config, Qwen2ForCausalLM) if shape.family == "qwen2" else (LlamaConfig, LlamaForCausalLM)
    config = config_class(
        vocab_size=shape.vocab, hidden_size=shape.hidden, intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers, num_attention_heads=shape.heads, num_key_value_heads=shape.kv_heads,
        tie_word_embeddings=shape.tied_embeddings, max_position_embeddings=max(shape.max_positions, 4096),
    )
    torch.manual_seed(seed)
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # built in its dtype: a 7B model in float32 first would need 30 GB
    try:
        with torch.device(device):
            model = model_class(config)
    finally:
        torch.set_default_dtype(default_dtype)
    return model.eval()


def filled_cache(model, shape: ModelShape, batch: int, context: int, device: str, dtype: torch.dtype):
    """A KV cache holding `context` positions per sequence, filled with noise (no prefill pass)."""
    from transformers import DynamicCache

    try:
        cache = DynamicCache(config=model.config)
    except TypeError:  # older transformers
        cache = DynamicCache()
    for layer in range(shape.layers):
        keys = torch.randn(batch, shape.kv_heads, context, shape.head_width, device=device, dtype=dtype)
        cache.update(keys, torch.randn_like(keys), layer)
    return cache


def _synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


@torch.inference_mode()
def pass_seconds(model, cache, batch: int, context: int, positions: int, vocab: int, device: str, repeats: int) -> float:
    """Median wall time of one forward over `positions` new positions per sequence, logits included."""
    ids = torch.randint(0, vocab, (batch, positions), device=device)
    cache_position = torch.arange(context, context + positions, device=device)
    times = []
    for _ in range(repeats + 1):  # the first is a warm-up
        _synchronize(device)
        started = time.perf_counter()
        model(input_ids=ids, past_key_values=cache, cache_position=cache_position, use_cache=True)
        _synchronize(device)
        times.append(time.perf_counter() - started)
        cache.crop(context)
    return statistics.median(times[1:])


def tokens_per_step(acceptance: float, drafts: int) -> float:
    """Expected tokens one verify pass yields: accepted drafts plus the pass's own token."""
    return sum(acceptance ** i for i in range(drafts + 1))


def measure_pair(policy: ModelShape, expert: ModelShape, args: argparse.Namespace, dtype: torch.dtype) -> list[dict]:
    rows = []
    policy_model = build_decoder(policy, args.device, dtype, seed=0)
    expert_model = build_decoder(expert, args.device, dtype, seed=1)
    for batch in args.batch:
        policy_cache = filled_cache(policy_model, policy, batch, args.context, args.device, dtype)
        expert_cache = filled_cache(expert_model, expert, batch, args.context, args.device, dtype)

        timed = {
            "policy": lambda positions, c=policy_cache, b=batch: pass_seconds(
                policy_model, c, b, args.context, positions, policy.vocab, args.device, args.repeats),
            "expert": lambda positions, c=expert_cache, b=batch: pass_seconds(
                expert_model, c, b, args.context, positions, expert.vocab, args.device, args.repeats),
        }
        draft_one = timed["policy"](1)
        composite_one = draft_one + timed["expert"](1)
        for drafts in args.drafts:
            policy_verify, expert_verify = timed["policy"](drafts + 1), timed["expert"](drafts + 1)
            step = drafts * draft_one + policy_verify + expert_verify
            step_expert_only = drafts * draft_one + expert_verify
            row = {
                "policy": policy.name, "expert": expert.name, "batch": batch, "context": args.context, "drafts": drafts,
                "draft_pass_ms": 1e3 * draft_one, "composite_pass_ms": 1e3 * composite_one,
                "verify_policy_ms": 1e3 * policy_verify, "verify_expert_ms": 1e3 * expert_verify,
                "duplicate_share_of_step": policy_verify / step,
            }
            for acceptance in args.acceptance:
                tokens = tokens_per_step(acceptance, drafts)
                row[f"speed_ratio_a{acceptance:g}"] = composite_one * tokens / step
                row[f"speed_ratio_expert_only_a{acceptance:g}"] = composite_one * tokens / step_expert_only
            rows.append(row)
            print(json.dumps(row), flush=True)
        del timed, policy_cache, expert_cache
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
    return rows


def print_table(rows: list[dict], acceptances: list[float]) -> None:
    heads = ["policy : expert", "batch", "K", "draft pass ms", "composite pass ms", "verify (K+1): policy + expert ms",
             "duplicate share"] + [f"speed vs no drafting, a={a:g} (expert-only verify)" for a in acceptances]
    print("| " + " | ".join(heads) + " |")
    print("|" + "---|" * len(heads))
    for row in rows:
        cells = [f"{row['policy'].split('/')[-1]} : {row['expert'].split('/')[-1]}", str(row["batch"]), str(row["drafts"]),
                 f"{row['draft_pass_ms']:.2f}", f"{row['composite_pass_ms']:.2f}",
                 f"{row['verify_policy_ms']:.2f} + {row['verify_expert_ms']:.2f}", f"{row['duplicate_share_of_step']:.2f}"]
        cells += [f"{row[f'speed_ratio_a{a:g}']:.2f}x ({row[f'speed_ratio_expert_only_a{a:g}']:.2f}x)" for a in acceptances]
        print("| " + " | ".join(cells) + " |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, help="default: bfloat16 on CUDA, float32 on CPU")
    parser.add_argument("--pairs", nargs="+", default=["Qwen/Qwen2.5-7B:open-r1/OpenR1-Qwen-7B"],
                        help="policy:expert, names from mentor_ray/model_shapes.json")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--context", type=int, default=1024)
    parser.add_argument("--drafts", type=int, nargs="+", default=[2, 4, 6])
    parser.add_argument("--acceptance", type=float, nargs="+", default=[0.84, 1.0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if args.device.startswith("cuda") else torch.float32)
    shapes = {name.lower(): shape for name, shape in shipped_shapes().items()}
    rows = []
    for pair in args.pairs:
        policy_name, expert_name = pair.split(":")
        rows += measure_pair(shapes[policy_name.lower()], shapes[expert_name.lower()], args, dtype)
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else args.device
    print(f"\n{device}, torch {torch.__version__}, {dtype}, context {args.context}, median of {args.repeats}\n")
    print_table(rows, args.acceptance)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"device": device, "torch": torch.__version__, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
