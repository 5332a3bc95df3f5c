"""Chunked log-probs and entropies (mentor_ray/token_scoring.py), one temperature, and the
collectives' device rule (mentor_ray/distributed.py) on a real gloo process group."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from mentor_ray.core.mixture import policy_entropy
from mentor_ray.token_scoring import TokenScorer, score_chunk, score_positions

VOCAB = 97


def _tiny_causal_lm(tied: bool, seed: int = 0):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, head_dim=16, max_position_embeddings=64, tie_word_embeddings=tied,
        initializer_range=0.3,  # spread-out entropies, not all near log V
    )
    return Qwen2ForCausalLM(config).float()


def _batch(seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, VOCAB, (3, 12), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[2, 9:] = 0  # right padding
    score_mask = torch.zeros((3, 11), dtype=torch.bool)
    score_mask[0, 4:] = True
    score_mask[1, 2:7] = True
    score_mask[2, 3:8] = True
    return input_ids, attention_mask, score_mask


def _reference(model, input_ids, attention_mask, temperature):
    """log softmax(logits / T)[next token] and the entropy, from the model's own full logits."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1].float() / temperature
    log_probs = torch.log_softmax(logits, dim=-1).gather(-1, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    return log_probs, policy_entropy(logits)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("tied", [False, True])
def test_scores_equal_the_models_own_logits_at_the_temperature(tied, temperature):
    model = _tiny_causal_lm(tied)
    input_ids, attention_mask, score_mask = _batch()
    with torch.no_grad():
        log_probs, entropy = TokenScorer(model, temperature, chunk_tokens=4)(input_ids, attention_mask, score_mask)
        expected_log_probs, expected_entropy = _reference(model, input_ids, attention_mask, temperature)
    torch.testing.assert_close(log_probs[score_mask], expected_log_probs[score_mask], atol=1e-5, rtol=0)
    torch.testing.assert_close(entropy[score_mask], expected_entropy[score_mask], atol=1e-5, rtol=0)
    # Unscored positions (prompts, padding) are never sent through the output layer.
    assert bool((log_probs[~score_mask] == 0).all()) and bool((entropy[~score_mask] == 0).all())
    # The temperature matters: at 0.7 the distribution is sharper than the model's own.
    if temperature != 1.0:
        with torch.no_grad():
            untempered = _reference(model, input_ids, attention_mask, 1.0)[1]
        assert float((untempered - entropy)[score_mask].min()) > 0


@pytest.mark.parametrize("tied", [False, True])
def test_chunked_values_and_gradients_equal_the_unchunked_computation(tied):
    input_ids, attention_mask, score_mask = _batch()
    generator = torch.Generator().manual_seed(2)
    log_prob_weights = torch.randn(score_mask.shape, generator=generator)
    entropy_weights = torch.randn(score_mask.shape, generator=generator)

    def values_and_gradients(chunk_tokens):
        model = _tiny_causal_lm(tied)
        scorer = TokenScorer(model, 0.7, chunk_tokens)
        log_probs, entropy = scorer(input_ids, attention_mask, score_mask, entropy_requires_grad=True)
        ((log_probs * log_prob_weights).sum() + (entropy * entropy_weights).sum()).backward()
        return log_probs.detach(), entropy.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    full = values_and_gradients(None)
    for chunk_tokens in (1, 3, 7):
        chunked = values_and_gradients(chunk_tokens)
        # fp32: chunks change the matmul shapes, hence the summation order (measured <= 2e-6).
        torch.testing.assert_close(chunked[0], full[0], atol=1e-5, rtol=0)
        torch.testing.assert_close(chunked[1], full[1], atol=1e-5, rtol=0)
        assert chunked[2].keys() == full[2].keys()
        for name, gradient in full[2].items():
            assert float(gradient.abs().max()) > 0, f"{name} got no gradient"
            torch.testing.assert_close(chunked[2][name], gradient, atol=1e-5, rtol=1e-4, msg=name)


def test_chunks_bound_the_logits_that_exist_at_once():
    """Each chunk's logits are recomputed in backward, not kept: the tensors autograd saves
    hold chunk x V elements at most, whatever the number of scored tokens."""
    # Hidden width 4: the weight (4 x 1000, saved as a checkpoint input) is smaller than a chunk.
    hidden = torch.randn(50, 4, requires_grad=True)
    targets = torch.randint(0, 1000, (50,))
    layer = torch.nn.Linear(4, 1000, bias=False)
    largest = []

    def pack(tensor):
        largest.append(tensor.numel())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        log_probs, _ = score_positions(hidden, targets, layer, 1.0, chunk_tokens=8)
    log_probs.sum().backward()
    assert max(largest) < 8 * 1000 + 1
    # The probe sees logits when they are kept: the plain computation keeps all [N, V] of them.
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        largest.clear()
        score_chunk(hidden, targets, layer.weight, None, 1.0, False)[0].sum().backward()
    assert max(largest) >= 50 * 1000


def test_a_pass_with_nothing_to_score_still_reaches_every_parameter():
    """ZeRO needs every rank's pass to touch every parameter; an all-False mask scores one position."""
    model = _tiny_causal_lm(tied=False)
    input_ids, attention_mask, score_mask = _batch()
    log_probs, _ = TokenScorer(model, 1.0, 4)(input_ids, attention_mask, torch.zeros_like(score_mask))
    (log_probs.sum() * 0.0).backward()
    assert all(p.grad is not None for p in model.parameters())


def test_a_model_that_transforms_its_logits_is_refused():
    model = _tiny_causal_lm(tied=False)
    scorer = TokenScorer(model, 1.0, 4)
    probe = torch.arange(2, 8).unsqueeze(0)
    scorer.check_matches_model_logits(probe)  # a plain head passes
    model.register_forward_hook(lambda module, args, output: output.__setitem__("logits", output.logits * 0.5) or output)
    with pytest.raises(ValueError, match="transforms its logits"):
        scorer.check_matches_model_logits(probe)


# --- collectives on a real gloo group, the code path NCCL takes too --------------------------------


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _collectives_worker(rank: int, world_size: int, port: int, results) -> None:
    import torch.distributed as dist

    from mentor_ray.distributed import (
        all_gather_variable_length,
        all_reduce_values,
        broadcast_object,
        collective_device,
    )

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        local = torch.arange(rank + 2, dtype=torch.float32) + 10 * rank  # lengths 2 and 3
        gathered = all_gather_variable_length(local)
        summed = all_reduce_values([rank + 1, 0.5])
        largest = all_reduce_values([rank], dist.ReduceOp.MAX)
        obj = broadcast_object({"from": rank, "rows": [1, 2]} if rank == 0 else None)
        results[rank] = {
            "device": str(collective_device()),
            "gathered": gathered.tolist(),
            "gathered_device": str(gathered.device),
            "summed": summed,
            "largest": largest,
            "object": obj,
        }
    finally:
        dist.destroy_process_group()


def test_collectives_run_on_the_backends_device_and_return_cpu_results():
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_collectives_worker, args=(2, _free_port(), results), nprocs=2, join=True)
        results = dict(results)
    for rank in (0, 1):
        got = results[rank]
        assert got["device"] == "cpu"  # gloo; NCCL gives this rank's cuda device
        assert got["gathered"] == [0.0, 1.0, 10.0, 11.0, 12.0]  # rank order, unequal lengths
        assert got["gathered_device"] == "cpu"
        assert got["summed"] == [3.0, 1.0]
        assert got["largest"] == [1.0]
        assert got["object"] == {"from": 0, "rows": [1, 2]}


def test_collectives_without_a_process_group_are_local():
    from mentor_ray.distributed import all_gather_variable_length, all_reduce_values, broadcast_object

    assert all_gather_variable_length(torch.tensor([[1.0, 2.0]])).tolist() == [1.0, 2.0]
    assert all_reduce_values([3, 4]) == [3.0, 4.0]
    assert broadcast_object("x") == "x"


def test_the_gpu_check_script_runs_its_checks_on_the_cpu(tmp_path):
    """scripts/gpu_check.py is for a lent GPU machine; its CPU smoke run keeps it working here."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.py"
    out = tmp_path / "gpu_check.json"
    done = subprocess.run([sys.executable, str(script), "--device", "cpu", "--quick", "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(out.read_text())
    assert report["agreement"]["log_prob_max_abs_diff"] < 1e-4
    assert report["agreement"]["grad_max_rel_diff"] < 1e-4
    assert report["bf16_pass"]["finite"]
    # bf16 and fp32 passes of the same model agree to bf16 precision.
    assert abs(report["bf16_pass"]["mean_entropy_bf16"] - report["bf16_pass"]["mean_entropy_fp32"]) < 0.05
    assert "all checks passed" in done.stdout
