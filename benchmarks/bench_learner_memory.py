"""Learner peak memory against response length, at SmolLM2-135M's shape (49,152-token vocabulary).

    .venv/bin/python benchmarks/bench_learner_memory.py [--lengths 128 512 1024 2048] [--batch 1]

One training forward + backward of the policy-loss inputs (log pi(token) and entropy at every
response token, entropy with gradient), for each response length and each way of computing
them, each in a fresh process:

- `full logits` (before): the learner's former path: the model's [B, L, V] logits, an fp32
  log-softmax over all of them, gather and per-row entropy;
- `chunked`: `mentor_ray.token_scoring.TokenScorer`, response positions only, 1,024-token
  checkpointed chunks of the output layer;
- `chunked + GC`: the same with gradient checkpointing of the decoder layers;
- `decoder only + GC`: the decoder alone (no output layer, no log-probs), with gradient
  checkpointing: what any model of this shape holds at this length. `chunked + GC` minus it is
  what scoring over the vocabulary adds, the part the chunking bounds.

Memory is the process's peak resident set during the pass minus its resident set just before
(model built, one small warm-up pass done): what the pass itself adds. The model is
SmolLM2-135M-shaped (LlamaConfig below), randomly initialised: memory does not depend on the
weights' values. A prompt of 128 tokens precedes each response. fp32, CPU.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time

# SmolLM2-135M-Instruct's config.json (HuggingFaceTB), the shape that matters here.
SMOLLM2_135M = dict(
    vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
    num_key_value_heads=3, max_position_embeddings=8192, rms_norm_eps=1e-5, tie_word_embeddings=True,
    rope_theta=100000.0,
)
PROMPT_TOKENS = 128
MODES = ("full logits", "chunked", "chunked + GC", "decoder only + GC")


def _rss_mib() -> float:
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def measure(mode: str, response_tokens: int, batch: int) -> dict:
    """One pass in this process; returns its added peak memory and time."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from mentor_ray.core.mixture import policy_entropy
    from mentor_ray.token_scoring import TokenScorer

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**SMOLLM2_135M)).float()
    model.config.use_cache = False
    if mode.endswith("+ GC"):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    scorer = TokenScorer(model, temperature=1.0, chunk_tokens=1024)
    length = PROMPT_TOKENS + response_tokens
    input_ids = torch.randint(0, SMOLLM2_135M["vocab_size"], (batch, length))
    attention_mask = torch.ones_like(input_ids)
    score_mask = torch.zeros((batch, length - 1), dtype=torch.bool)
    score_mask[:, PROMPT_TOKENS - 1 :] = True

    def full_logits_pass(ids, mask):
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False).logits[:, :-1, :]
        log_probs = torch.log_softmax(logits.float(), dim=-1)
        token_log_probs = log_probs.gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
        entropy = torch.stack([policy_entropy(log_probs[row]) for row in range(log_probs.shape[0])])
        return token_log_probs * mask, entropy * mask

    def one_pass(ids, attention, mask):
        if mode == "full logits":
            token_log_probs, entropy = full_logits_pass(ids, mask)
        elif mode == "decoder only + GC":
            model.model(input_ids=ids, attention_mask=attention, use_cache=False).last_hidden_state.sum().backward()
            model.zero_grad(set_to_none=False)
            return
        else:
            token_log_probs, entropy = scorer(ids, attention, mask, entropy_requires_grad=True)
        (token_log_probs.sum() + 0.01 * entropy.sum()).backward()
        model.zero_grad(set_to_none=False)  # keep gradient buffers: they are part of any step

    warm = torch.randint(0, SMOLLM2_135M["vocab_size"], (1, 16))
    one_pass(warm, torch.ones_like(warm), torch.ones((1, 15), dtype=torch.bool))
    before = _rss_mib()
    started = time.perf_counter()
    one_pass(input_ids, attention_mask, score_mask)
    seconds = time.perf_counter() - started
    return {"mode": mode, "response_tokens": response_tokens, "batch": batch,
            "added_peak_mib": _peak_mib() - before, "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[128, 512, 1024, 2048])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--one", nargs=2, metavar=("MODE", "LENGTH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one[0], int(args.one[1]), args.batch)))
        return
    results = []
    for length in args.lengths:
        for mode in args.modes:
            # A fresh process per point: the peak resident set is a process-wide high-water mark.
            out = subprocess.run([sys.executable, __file__, "--batch", str(args.batch), "--one", mode, str(length)],
                                 check=True, capture_output=True, text=True)
            results.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"  {mode:>13} | {length:>5} response tokens | +{results[-1]['added_peak_mib']:8.0f} MiB | "
                  f"{results[-1]['seconds']:6.1f} s", flush=True)
    print(f"\nLearner pass memory, SmolLM2-135M shape (V = {SMOLLM2_135M['vocab_size']}), batch {args.batch}, "
          f"prompt {PROMPT_TOKENS} tokens, fp32 CPU; {platform.processor() or platform.machine()}")
    header = "| response tokens | " + " | ".join(f"{m} (MiB)" for m in args.modes) + " | full / chunked + GC (what scoring adds: chunked + GC - decoder only + GC) |"
    print(header)
    print("|" + "---|" * (len(args.modes) + 2))
    for length in args.lengths:
        row = {r["mode"]: r for r in results if r["response_tokens"] == length}
        cells = " | ".join(f"{row[m]['added_peak_mib']:.0f} ({row[m]['seconds']:.1f} s)" for m in args.modes)
        ratio = ""
        if "full logits" in row and "chunked + GC" in row:
            ratio = f"{row['full logits']['added_peak_mib'] / max(row['chunked + GC']['added_peak_mib'], 1):.1f}x"
        if "decoder only + GC" in row and "chunked + GC" in row:
            ratio += f" (scoring adds {row['chunked + GC']['added_peak_mib'] - row['decoder only + GC']['added_peak_mib']:.0f} MiB)"
        print(f"| {length} | {cells} | {ratio} |")


if __name__ == "__main__":
    main()
