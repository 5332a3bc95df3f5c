"""The learner's GPU-only checks, for a machine with CUDA, torch and transformers (no Ray, vLLM
or DeepSpeed, nothing downloaded). `scripts/gpu_check.sh` runs it; `--device cpu --quick`
runs the same code here, small, so the test suite keeps it working.

1. Agreement: TokenScorer's chunked log-probs, entropies and gradients on the device against
   the same computation in fp32 on the CPU (a small Qwen2-shaped model, temperature 0.7).
2. The learner's pass in bf16: forward and backward of the policy-loss inputs on a Qwen2-shaped
   model (Qwen2.5-0.5B's shape with its 151,936-token vocabulary), finite values and gradients.
3. Peak memory at that vocabulary against response length: TokenScorer (chunked, with and
   without gradient checkpointing) vs the former full-logits path, `max_memory_allocated`.

Prints one table per part and writes everything as JSON to --out.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mentor_ray.core.mixture import policy_entropy  # noqa: E402
from mentor_ray.token_scoring import TokenScorer  # noqa: E402

# Qwen2.5-0.5B's config.json shape (vocabulary and width are what the memory check is about).
QWEN2_0_5B = dict(
    vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
    num_key_value_heads=2, max_position_embeddings=32768, tie_word_embeddings=True, rope_theta=1000000.0,
)
SMALL = dict(
    vocab_size=1024, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=False,
)


def _model(shape: dict, dtype: torch.dtype, device: str, seed: int = 0):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    config = Qwen2Config(**shape, initializer_range=0.1)
    config.use_cache = False
    return Qwen2ForCausalLM(config).to(dtype=dtype, device=device)


def _inputs(vocab: int, batch: int, prompt: int, response: int, device: str, seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (batch, prompt + response), generator=generator).to(device)
    score_mask = torch.zeros((batch, prompt + response - 1), dtype=torch.bool, device=device)
    score_mask[:, prompt - 1 :] = True
    return ids, torch.ones_like(ids), score_mask


def _pass(scorer, ids, attention, score_mask, weights):
    log_probs, entropy = scorer(ids, attention, score_mask, entropy_requires_grad=True)
    ((log_probs * weights[0]).sum() + (entropy * weights[1]).sum()).backward()
    return log_probs.detach().float().cpu(), entropy.detach().float().cpu()


def agreement(device: str) -> dict:
    """Device fp32 (chunked) vs CPU fp32 (unchunked): values and gradients."""
    ids, attention, score_mask = _inputs(SMALL["vocab_size"], 3, 16, 48, "cpu")
    generator = torch.Generator().manual_seed(2)
    weights = (torch.randn(score_mask.shape, generator=generator), torch.randn(score_mask.shape, generator=generator))
    results = {}
    for name, where, chunk in (("cpu", "cpu", None), ("device", device, 16)):
        model = _model(SMALL, torch.float32, where)
        scorer = TokenScorer(model, 0.7, chunk)
        values = _pass(scorer, ids.to(where), attention.to(where), score_mask.to(where), [w.to(where) for w in weights])
        grads = {n: p.grad.float().cpu() for n, p in model.named_parameters()}
        results[name] = (values, grads)
    (cpu_values, cpu_grads), (dev_values, dev_grads) = results["cpu"], results["device"]
    return {
        "log_prob_max_abs_diff": float((cpu_values[0] - dev_values[0]).abs().max()),
        "entropy_max_abs_diff": float((cpu_values[1] - dev_values[1]).abs().max()),
        "grad_max_rel_diff": max(
            float((cpu_grads[n] - dev_grads[n]).norm() / cpu_grads[n].norm().clamp_min(1e-12)) for n in cpu_grads
        ),
    }


def bf16_pass(device: str, shape: dict, response: int) -> dict:
    """The learner's forward + backward in bf16: finite, and close to the same pass in fp32."""
    ids, attention, score_mask = _inputs(shape["vocab_size"], 2, 64, response, device)
    weights = (torch.ones(score_mask.shape, device=device), torch.full(score_mask.shape, 0.01, device=device))
    out = {}
    for dtype in (torch.float32, torch.bfloat16):
        model = _model(shape, dtype, device)
        scorer = TokenScorer(model, 1.0, 1024)
        started = time.perf_counter()
        log_probs, entropy = _pass(scorer, ids, attention, score_mask, weights)
        if device == "cuda":
            torch.cuda.synchronize()
        grad_norm = float(torch.sqrt(sum(p.grad.float().pow(2).sum() for p in model.parameters())))
        out[str(dtype)] = {"seconds": time.perf_counter() - started, "log_probs": log_probs[score_mask.cpu()],
                           "entropy": entropy[score_mask.cpu()], "grad_norm": grad_norm}
        del model, scorer
    full, half = out["torch.float32"], out["torch.bfloat16"]
    return {
        "finite": bool(torch.isfinite(half["log_probs"]).all() and torch.isfinite(half["entropy"]).all())
        and half["grad_norm"] == half["grad_norm"],
        "bf16_seconds": half["seconds"],
        "fp32_seconds": full["seconds"],
        "mean_log_prob_fp32": float(full["log_probs"].mean()),
        "mean_log_prob_bf16": float(half["log_probs"].mean()),
        "mean_entropy_fp32": float(full["entropy"].mean()),
        "mean_entropy_bf16": float(half["entropy"].mean()),
        "grad_norm_fp32": full["grad_norm"],
        "grad_norm_bf16": half["grad_norm"],
    }


def _full_logits_pass(model, ids, score_mask):
    """The learner's former path: all logits, an fp32 log-softmax over them, gather, entropy."""
    logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False).logits[:, :-1, :]
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    token_log_probs = log_probs.gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    entropy = torch.stack([policy_entropy(log_probs[row]) for row in range(log_probs.shape[0])])
    (token_log_probs * score_mask).sum().backward()
    del entropy


def peak_memory(device: str, shape: dict, lengths: list[int], batch: int) -> list[dict]:
    if device != "cuda":
        return []
    rows = []
    for response in lengths:
        for mode in ("full logits", "chunked", "chunked + GC"):
            model = _model(shape, torch.bfloat16, device)
            if mode == "chunked + GC":
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.train()
            ids, attention, score_mask = _inputs(shape["vocab_size"], batch, 128, response, device)
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
            started = time.perf_counter()
            try:
                if mode == "full logits":
                    _full_logits_pass(model, ids, score_mask)
                else:
                    scorer = TokenScorer(model, 1.0, 1024)
                    log_probs, entropy = scorer(ids, attention, score_mask, entropy_requires_grad=False)
                    log_probs.sum().backward()
                torch.cuda.synchronize()
                added = (torch.cuda.max_memory_allocated() - before) / 2**30
                rows.append({"mode": mode, "response_tokens": response, "batch": batch, "added_peak_gib": added,
                             "seconds": time.perf_counter() - started})
            except torch.OutOfMemoryError:
                rows.append({"mode": mode, "response_tokens": response, "batch": batch, "added_peak_gib": None,
                             "seconds": None})
            del model
            torch.cuda.empty_cache()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true", help="small shapes only (a CPU smoke run)")
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096, 8192])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--out", type=Path, default=Path("gpu_check.json"))
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --device cpu --quick for the CPU smoke run")
    card = torch.cuda.get_device_name(0) if args.device == "cuda" else platform.processor() or platform.machine()
    print(f"card: {card}; torch {torch.__version__}")
    report = {"card": card, "torch": torch.__version__}

    report["agreement"] = agreement(args.device)
    print("1. chunked on the device vs unchunked fp32 on the CPU (T = 0.7):", json.dumps(report["agreement"]))

    shape = SMALL if args.quick else QWEN2_0_5B
    report["bf16_pass"] = bf16_pass(args.device, shape, 64 if args.quick else 2048)
    print("2. learner pass, bf16 vs fp32:", json.dumps(report["bf16_pass"]))

    report["peak_memory"] = peak_memory(args.device, shape, args.lengths, args.batch)
    if report["peak_memory"]:
        print(f"3. added peak memory (GiB), bf16, vocabulary {shape['vocab_size']}, batch {args.batch}, prompt 128")
        print("| response tokens | full logits | chunked | chunked + GC |")
        print("|---|---|---|---|")
        for length in args.lengths:
            cells = []
            for mode in ("full logits", "chunked", "chunked + GC"):
                row = next(r for r in report["peak_memory"] if r["response_tokens"] == length and r["mode"] == mode)
                cells.append("OOM" if row["added_peak_gib"] is None else f"{row['added_peak_gib']:.2f} ({row['seconds']:.2f} s)")
            print(f"| {length} | " + " | ".join(cells) + " |")
    args.out.write_text(json.dumps(report, indent=1))
    problems = []
    if report["agreement"]["log_prob_max_abs_diff"] > 1e-3 or report["agreement"]["entropy_max_abs_diff"] > 1e-3:
        problems.append("chunked device values differ from the CPU's")
    if report["agreement"]["grad_max_rel_diff"] > 1e-3:
        problems.append("chunked device gradients differ from the CPU's")
    if not report["bf16_pass"]["finite"]:
        problems.append("the bf16 pass is not finite")
    print("FAILED: " + "; ".join(problems) if problems else "all checks passed")
    raise SystemExit(1 if problems else 0)


if __name__ == "__main__":
    main()
