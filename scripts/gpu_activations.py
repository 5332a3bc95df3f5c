"""The learner's activation memory at the paper models' widths, for the capacity plan
(`mentor_ray/capacity.py`): a GPU measurement, run by hand through the device tool.

    python scripts/gpu_activations.py --out OUT/gpu_activations.json

Builds decoders of Qwen2.5-7B's and Llama-3.1-8B's width (hidden, MLP, heads, vocabulary) with
2 and 4 layers, and measures one forward + backward of the loss inputs through TokenScorer
(1,024-token chunks) with and without gradient checkpointing, in bf16: `max_memory_allocated`
minus what was allocated before the pass, less the parameters' gradients (the plan counts
those in the model states). Two layer counts and two lengths separate what each layer adds per
token from what one pass adds per token whatever the depth. Needs CUDA, torch, transformers.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mentor_ray.token_scoring import TokenScorer

WIDTHS = {
    "qwen2.5-7b": dict(family="qwen2", vocab_size=152064, hidden_size=3584, intermediate_size=18944,
                       num_attention_heads=28, num_key_value_heads=4, tie_word_embeddings=False),
    "llama-3.1-8b": dict(family="llama", vocab_size=128256, hidden_size=4096, intermediate_size=14336,
                         num_attention_heads=32, num_key_value_heads=8, tie_word_embeddings=False),
}


def _model(width: dict, layers: int):
    from transformers import (
        LlamaConfig,
        LlamaForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    shape = {k: v for k, v in width.items() if k != "family"}
    config_class, model_class = (Qwen2Config, Qwen2ForCausalLM) if width["family"] == "qwen2" else (LlamaConfig, LlamaForCausalLM)
    torch.manual_seed(0)
    config = config_class(**shape, num_hidden_layers=layers, max_position_embeddings=32768, initializer_range=0.02)
    config.use_cache = False
    return model_class(config).to(dtype=torch.bfloat16, device="cuda")


def measure(name: str, layers: int, response: int, batch: int, prompt: int, checkpointing: bool) -> dict:
    width = WIDTHS[name]
    model = _model(width, layers)
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    params = sum(p.numel() for p in model.parameters())
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(0, width["vocab_size"], (batch, prompt + response), generator=generator).cuda()
    score_mask = torch.zeros((batch, prompt + response - 1), dtype=torch.bool, device="cuda")
    score_mask[:, prompt - 1 :] = True
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    started = time.perf_counter()
    row = {"width": name, "layers": layers, "response_tokens": response, "batch": batch, "prompt_tokens": prompt,
           "tokens": batch * (prompt + response), "checkpointing": checkpointing, "parameters": params}
    try:
        log_probs, _ = TokenScorer(model, 1.0, 1024)(ids, torch.ones_like(ids), score_mask, entropy_requires_grad=False)
        log_probs.sum().backward()
        torch.cuda.synchronize()
        added = torch.cuda.max_memory_allocated() - before
        row.update(added_peak_bytes=added, gradient_bytes=2 * params, activation_bytes=added - 2 * params,
                   seconds=time.perf_counter() - started)
    except torch.OutOfMemoryError:
        row.update(added_peak_bytes=None)
    del model
    torch.cuda.empty_cache()
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("gpu_activations.json"))
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--prompt", type=int, default=128)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("needs a CUDA device")
    card = torch.cuda.get_device_name(0)
    print(f"card: {card}; torch {torch.__version__}", flush=True)
    rows = []
    print("| width | layers | response | GC | activations (GiB) | per token (KiB) | seconds |")
    print("|---|---|---|---|---|---|---|")
    for name in WIDTHS:
        for checkpointing in (True, False):
            for layers in (2, 4):
                for response in (1024, 4096):
                    row = measure(name, layers, response, args.batch, args.prompt, checkpointing)
                    rows.append(row)
                    if row["added_peak_bytes"] is None:
                        print(f"| {name} | {layers} | {response} | {checkpointing} | OOM | | |", flush=True)
                        continue
                    print(f"| {name} | {layers} | {response} | {checkpointing} | {row['activation_bytes'] / 2**30:.2f} | "
                          f"{row['activation_bytes'] / row['tokens'] / 1024:.1f} | {row['seconds']:.2f} |", flush=True)
    args.out.write_text(json.dumps({"card": card, "torch": torch.__version__, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
