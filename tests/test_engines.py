"""The vLLM rollout engines (mentor_ray.rollout.engines) against transformers references.

Tiny random Qwen2 models built here: the policy has tied embeddings (exercises the tied-head
reload trap), head_dim 32, 2 layers, 1 KV head; the expert is wider and deeper (head_dim 64,
3 layers, 2 KV heads). Same word-level tokenizer (96 ids; id 0 is EOS).

Engines run in-process on CPU (CPU_ENGINE_ENV). Tolerances: log-prob equality 1e-4 in fp32
(vLLM vs transformers differ by ~1e-6 here); statistical tests use fixed seeds, accept a
goodness-of-fit p-value > 1e-3, and require p < 1e-6 against the wrong distribution (power).
"""

from __future__ import annotations

import os

from mentor_ray.rollout.requests import CPU_ENGINE_ENV  # noqa: E402 - no vLLM import

for _key, _value in CPU_ENGINE_ENV.items():
    os.environ.setdefault(_key, _value)

import numpy as np
import pytest
import torch
from scipy import stats
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

from mentor_ray.core.mixture import mixed_policy_log_probs
from mentor_ray.rollout.engines import (
    PROMPT_TOO_LONG,
    EngineSettings,
    MixedEngine,
    PolicyEngine,
    SamplingSpec,
    build_engine,
    check_same_vocabulary,
)
from mentor_ray.rollout.reference import naive_mixed_sample

VOCAB = 96
EOS = 0
TAU = 4.0  # policy entropy here is ~2.4 nats, so w ~ 0.6: a real mixture of both models
SETTINGS = EngineSettings(max_model_len=256, seed=0)
LOG_PROB_TOLERANCE = 1e-4


# ---- tiny models ------------------------------------------------------------------------


def _save_tokenizer(folder: str, token_prefix: str = "w") -> None:
    vocab = {"<eos>": 0, "<pad>": 1, "<unk>": 2}
    vocab.update({f"{token_prefix}{i}": i for i in range(3, VOCAB)})
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.decoder = decoders.WordPiece()  # joins tokens with spaces
    PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, eos_token="<eos>", pad_token="<pad>", unk_token="<unk>"
    ).save_pretrained(folder)


def _random_qwen2(seed: int, hidden: int, heads: int, kv_heads: int, layers: int, tied: bool):
    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=VOCAB,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=512,
        tie_word_embeddings=tied,
        eos_token_id=EOS,
        bos_token_id=EOS,
        pad_token_id=1,
    )
    model = Qwen2ForCausalLM(config).float().eval()
    _randomize(model, seed)
    return model


@torch.no_grad()
def _randomize(model, seed: int) -> None:
    # std 0.3 and unit-ish norms give entropies of ~2 nats: distinct, peaked distributions.
    generator = torch.Generator().manual_seed(seed)
    for name, parameter in model.named_parameters():
        noise = torch.randn(parameter.shape, generator=generator)
        if "norm" in name:
            parameter.copy_(1.0 + 0.1 * noise)
        else:
            parameter.copy_(noise * (0.3 if parameter.dim() > 1 else 0.1))


def _save(model, folder: str, token_prefix: str = "w") -> str:
    model.save_pretrained(folder)
    _save_tokenizer(folder, token_prefix)
    return folder


class Models:
    def __init__(self, root):
        self.policy = _random_qwen2(0, hidden=64, heads=2, kv_heads=1, layers=2, tied=True)
        self.expert = _random_qwen2(1, hidden=128, heads=2, kv_heads=2, layers=3, tied=False)
        self.policy_dir = _save(self.policy, str(root / "policy"))
        self.expert_dir = _save(self.expert, str(root / "expert"))
        # The same architecture as the policy with fresh weights: "the learner's next step".
        self.updated_policy = _random_qwen2(7, hidden=64, heads=2, kv_heads=1, layers=2, tied=True)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Models:
    return Models(tmp_path_factory.mktemp("engine_models"))


# ---- references -------------------------------------------------------------------------


@torch.no_grad()
def _hf_log_probs(model, sequence: list[int]) -> torch.Tensor:
    """log p(sequence[i+1] | sequence[:i+1]) for every i."""
    logits = model(torch.tensor([sequence])).logits[0, :-1].float()
    return torch.log_softmax(logits, -1).gather(1, torch.tensor(sequence[1:])[:, None])[:, 0]


@torch.no_grad()
def _hf_mixture(policy, expert, sequence: list[int], tau: float, temperature: float = 1.0):
    """(log pi_mix of each next token, w at each position) for a sequence, at a temperature."""
    ids = torch.tensor([sequence])
    log_probs, weight = mixed_policy_log_probs(
        policy(ids).logits[0] / temperature, expert(ids).logits[0] / temperature, tau
    )
    targets = torch.tensor(sequence[1:])[:, None]
    return log_probs[:-1].gather(1, targets)[:, 0], weight[:-1]


def _max_gap_to_reference(results, reference_log_probs) -> float:
    """Largest |engine log-prob - reference| over all response tokens of all results."""
    gap = 0.0
    for result in results:
        sequence = result.prompt_token_ids + result.response_token_ids
        reference = reference_log_probs(sequence)[len(result.prompt_token_ids) - 1 :]
        engine = torch.tensor(result.response_log_probs)
        assert len(engine) == len(reference) == len(result.response_token_ids)
        gap = max(gap, float((engine - reference).abs().max()))
    return gap


def _chisquare_p(counts: np.ndarray, probs: np.ndarray, min_expected: float = 5.0) -> float:
    """Goodness-of-fit p-value; cells with expected count < min_expected are pooled."""
    expected = probs / probs.sum() * counts.sum()
    small = expected < min_expected
    observed_cells = np.append(counts[~small], counts[small].sum())
    expected_cells = np.append(expected[~small], expected[small].sum())
    keep = expected_cells > 0
    return float(stats.chisquare(observed_cells[keep], expected_cells[keep]).pvalue)


# Prompts share a 130-token prefix (one full KV block: vLLM's CPU backend uses 128-token
# blocks), so after the first call the prefix cache serves it: a stale cache after a weight
# update shows up in generated log-probs.
SHARED_PREFIX = [3 + (i * 7) % (VOCAB - 3) for i in range(130)]
PROMPTS = [SHARED_PREFIX + [10 + k, 20 + k, 30 + k] for k in range(4)]


# ---- policy engine ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def policy_engine(tiny):
    engine = PolicyEngine(tiny.policy_dir, SETTINGS)
    yield engine
    engine.close()


def test_policy_engine_log_probs_match_transformers_before_and_after_update(tiny, policy_engine):
    spec = SamplingSpec(n=3, max_new_tokens=12, seed=11)
    before = policy_engine.generate(PROMPTS, spec)
    assert [(r.prompt_index, r.sample_index) for r in before] == [
        (i, j) for i in range(len(PROMPTS)) for j in range(3)
    ]
    assert _max_gap_to_reference(before, lambda s: _hf_log_probs(tiny.policy, s)) < LOG_PROB_TOLERANCE

    # The learner's parameters as named_parameters gives them: the tied head is not listed.
    seconds = policy_engine.update_weights(tiny.updated_policy.named_parameters())
    assert seconds > 0
    after = policy_engine.generate(PROMPTS, spec)
    gap = _max_gap_to_reference(after, lambda s: _hf_log_probs(tiny.updated_policy, s))
    assert gap < LOG_PROB_TOLERANCE, f"engine log-probs differ from the updated model by {gap}"
    # Same seeds, different weights: the samples themselves changed.
    assert [r.response_token_ids for r in after] != [r.response_token_ids for r in before]

    sequence = PROMPTS[0] + after[0].response_token_ids
    teacher_forced = torch.tensor(policy_engine.prompt_log_probs([sequence])[0])
    reference = _hf_log_probs(tiny.updated_policy, sequence)
    assert float((teacher_forced - reference).abs().max()) < LOG_PROB_TOLERANCE

    stats_now = policy_engine.stats()
    assert stats_now.weight_updates == 1
    assert stats_now.generated_tokens == sum(len(r.response_token_ids) for r in before + after)


def test_texts_are_what_vllms_own_detokenizer_gives(policy_engine):
    """The engine asks vLLM for token ids only and decodes once at the end; the texts must be
    exactly vLLM's streaming detokenizer's (the reward reads them)."""
    from vllm import SamplingParams

    spec = SamplingSpec(n=4, max_new_tokens=24, seed=5)
    ours = policy_engine.generate(PROMPTS, spec)
    outputs = policy_engine._llm.generate(
        [{"prompt_token_ids": p} for p in PROMPTS],
        [SamplingParams(n=4, max_tokens=24, seed=5 + i * 4, logprobs=0) for i in range(len(PROMPTS))],
        use_tqdm=False,
    )
    reference = [c for o in outputs for c in sorted(o.outputs, key=lambda c: c.index)]
    assert [r.response_token_ids for r in ours] == [list(c.token_ids) for c in reference]
    assert [r.response_text for r in ours] == [c.text for c in reference]
    assert any(r.response_text for r in ours)


def test_policy_engine_update_with_state_dict_including_tied_head(tiny, policy_engine):
    # state_dict() lists lm_head.weight too (an alias of the embedding): accepted, same result.
    fresh = _random_qwen2(8, hidden=64, heads=2, kv_heads=1, layers=2, tied=True)
    policy_engine.update_weights(fresh.state_dict().items())
    results = policy_engine.generate(PROMPTS[:2], SamplingSpec(n=2, max_new_tokens=10, seed=3))
    assert _max_gap_to_reference(results, lambda s: _hf_log_probs(fresh, s)) < LOG_PROB_TOLERANCE


def test_update_weights_refuses_incomplete_or_unknown_tensors(tiny, policy_engine):
    weights = dict(tiny.updated_policy.named_parameters())
    missing = {k: v for k, v in weights.items() if k != "model.layers.1.mlp.up_proj.weight"}
    with pytest.raises(ValueError, match="missing.*up_proj"):
        policy_engine.update_weights(missing.items())
    with pytest.raises(ValueError, match="unknown.*not_a_layer"):
        policy_engine.update_weights([*weights.items(), ("model.not_a_layer.weight", torch.zeros(2))])


def test_prompts_that_do_not_fit_are_reported_and_bad_tokens_refused(policy_engine):
    spec = SamplingSpec(n=2, max_new_tokens=16, seed=0)
    too_long = [5] * (SETTINGS.max_model_len - 10)  # 246 + 16 > 256
    fits = [5] * (SETTINGS.max_model_len - 16)  # exactly fills the context
    results = policy_engine.generate([too_long, fits], spec)
    assert [r.finish_reason for r in results[:2]] == [PROMPT_TOO_LONG] * 2
    assert all(r.response_token_ids == [] and r.prompt_index == 0 for r in results[:2])
    assert all(r.finish_reason in ("stop", "length") and r.prompt_index == 1 for r in results[2:])
    with pytest.raises(ValueError, match="prompt 1, position 2: token id 96"):
        policy_engine.generate([[4, 5], [4, 5, VOCAB]], spec)
    with pytest.raises(ValueError, match="prompt 0 is empty"):
        policy_engine.generate([[]], spec)
    assert policy_engine.stats().prompts_too_long >= 1


# ---- mixed engine -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def mixed_engine(tiny):
    engine = MixedEngine(tiny.policy_dir, tiny.expert_dir, SETTINGS, entropy_threshold=TAU)
    yield engine
    engine.close()


@pytest.mark.parametrize(
    ("tau", "which"), [(TAU, "mixture"), (1e9, "policy"), (1e-9, "expert")]
)
def test_mixed_engine_prompt_log_probs_are_the_mixture_and_its_limits(tiny, mixed_engine, tau, which):
    mixed_engine.set_entropy_threshold(tau)
    mixed_engine.mixture_weight_summary(reset=True)
    try:
        sequence = PROMPTS[1] + [40, 41, 42, 43]
        engine_log_probs = torch.tensor(mixed_engine.prompt_log_probs([sequence])[0])
        mixture, weight = _hf_mixture(tiny.policy, tiny.expert, sequence, tau)
        reference = {
            "mixture": mixture,
            "policy": _hf_log_probs(tiny.policy, sequence),
            "expert": _hf_log_probs(tiny.expert, sequence),
        }[which]
        assert float((engine_log_probs - reference).abs().max()) < LOG_PROB_TOLERANCE
        if which == "mixture":
            assert 0.3 < float(weight.mean()) < 0.9  # really a mixture, not a limit
            summary = mixed_engine.mixture_weight_summary(reset=True)
            # prompt_log_probs scores every prompt position (the last one too).
            assert summary["scored_positions"] == len(sequence)
            _, all_weights = _hf_mixture(tiny.policy, tiny.expert, sequence + [0], tau)
            assert summary["mixture_weight_mean"] == pytest.approx(float(all_weights.mean()), abs=1e-5)
    finally:
        mixed_engine.set_entropy_threshold(TAU)


@torch.no_grad()
def _exact_next_token(model_log_probs: torch.Tensor) -> np.ndarray:
    return model_log_probs.exp().double().numpy()


def test_mixed_engine_next_token_frequencies_match_pi_mix(tiny, mixed_engine):
    prompt = PROMPTS[2]
    num_samples = 4000
    results = mixed_engine.generate([prompt] * 40, SamplingSpec(n=100, max_new_tokens=1, seed=5))
    counts = np.bincount([r.response_token_ids[0] for r in results], minlength=VOCAB)
    assert counts.sum() == num_samples
    ids = torch.tensor([prompt])
    with torch.no_grad():
        policy_logits = tiny.policy(ids).logits[0, -1]
        expert_logits = tiny.expert(ids).logits[0, -1]
    mixture, weight = mixed_policy_log_probs(policy_logits, expert_logits, TAU)
    assert 0.3 < float(weight) < 0.9
    p_mixture = _chisquare_p(counts, _exact_next_token(mixture))
    p_policy = _chisquare_p(counts, _exact_next_token(torch.log_softmax(policy_logits, -1)))
    p_expert = _chisquare_p(counts, _exact_next_token(torch.log_softmax(expert_logits, -1)))
    assert p_mixture > 1e-3, f"samples do not follow pi_mix (p = {p_mixture})"
    assert p_policy < 1e-6 and p_expert < 1e-6, (p_policy, p_expert)
    # The returned log-probs are log pi_mix of the sampled token.
    for r in results[:50]:
        assert r.response_log_probs[0] == pytest.approx(float(mixture[r.response_token_ids[0]]), abs=1e-4)


def test_mixed_engine_at_a_temperature_mixes_the_tempered_distributions(tiny, mixed_engine):
    """At T = 0.7 the engine samples (1 - w) softmax(z_policy / T) + w softmax(z_expert / T), w
    from the tempered policy's entropy, and reports that mixture's log-probs; T = 1 after it
    is the untempered mixture again."""
    for temperature in (0.7, 1.0):
        results = mixed_engine.generate(PROMPTS[:2], SamplingSpec(n=3, max_new_tokens=6, temperature=temperature, seed=3))
        gap_here = gap_other = 0.0
        for r in results:
            sequence = list(r.prompt_token_ids) + list(r.response_token_ids)
            start = len(r.prompt_token_ids) - 1
            engine = torch.tensor(r.response_log_probs)
            expected = _hf_mixture(tiny.policy, tiny.expert, sequence, TAU, temperature)[0][start:]
            other = _hf_mixture(tiny.policy, tiny.expert, sequence, TAU, 1.7 - temperature)[0][start:]
            gap_here = max(gap_here, float((engine - expected).abs().max()))
            gap_other = max(gap_other, float((engine - other).abs().max()))
        assert gap_here < 1e-4, (temperature, gap_here)
        assert gap_other > 1e-2, (temperature, gap_other)  # the check can tell the temperatures apart


def test_mixed_engine_sequences_match_reference_sampler(tiny, mixed_engine):
    prompt = PROMPTS[3]
    max_new_tokens, num_samples = 4, 2000
    mixed_engine.mixture_weight_summary(reset=True)
    results = mixed_engine.generate(
        [prompt] * 20, SamplingSpec(n=num_samples // 20, max_new_tokens=max_new_tokens, seed=9)
    )
    summary = mixed_engine.mixture_weight_summary(reset=True)
    reference = naive_mixed_sample(
        tiny.policy,
        tiny.expert,
        torch.tensor([prompt] * num_samples),
        max_new_tokens,
        TAU,
        torch.Generator().manual_seed(0),
        eos_token_id=EOS,
    )
    # Every engine sample's log-probs are exactly log pi_mix along its own path (decode-time
    # KV caches of both stacks are right), for a subset to keep the test short.
    gap = _max_gap_to_reference(
        results[:40], lambda s: _hf_mixture(tiny.policy, tiny.expert, s, TAU)[0]
    )
    assert gap < LOG_PROB_TOLERANCE
    # Distribution-level agreement with the reference sampler (two-sample tests):
    engine_lengths = np.array([len(r.response_token_ids) for r in results])
    reference_lengths = reference.lengths.numpy()
    engine_last = np.array([r.response_token_ids[-1] for r in results])
    reference_last = reference.token_ids[torch.arange(num_samples), reference.lengths - 1].numpy()
    for engine_values, reference_values, what in (
        (engine_lengths, reference_lengths, "lengths"),
        (engine_last, reference_last, "last tokens"),
    ):
        table = np.stack([np.bincount(engine_values, minlength=VOCAB), np.bincount(reference_values, minlength=VOCAB)])
        table = table[:, table.sum(0) >= 10]  # drop rare cells so the chi-square is valid
        p = stats.chi2_contingency(table).pvalue
        assert p > 1e-3, f"{what}: engine and reference sampler differ (p = {p})"
    engine_sum = np.array([sum(r.response_log_probs) for r in results])
    reference_sum = (reference.log_probs.sum(1)).numpy()
    assert stats.ttest_ind(engine_sum, reference_sum, equal_var=False).pvalue > 1e-3
    # Mean w over sampled positions: the engine counts one scored position per token.
    assert summary["scored_positions"] == engine_lengths.sum()
    reference_mean_weight = float(reference.mixture_weights.sum() / reference.lengths.sum())
    assert summary["mixture_weight_mean"] == pytest.approx(reference_mean_weight, abs=0.02)


def test_mixed_engine_update_weights_moves_the_policy_half(tiny, mixed_engine):
    spec = SamplingSpec(n=2, max_new_tokens=10, seed=4)
    mixed_engine.generate(PROMPTS, spec)  # fills the prefix cache with old-policy KV
    mixed_engine.update_weights(tiny.updated_policy.named_parameters())
    results = mixed_engine.generate(PROMPTS, spec)
    gap = _max_gap_to_reference(
        results, lambda s: _hf_mixture(tiny.updated_policy, tiny.expert, s, TAU)[0]
    )
    assert gap < LOG_PROB_TOLERANCE, f"mixed engine does not use the updated policy ({gap})"
    mixed_engine.update_weights(tiny.policy.named_parameters())  # back, for other tests


def test_different_vocabularies_are_refused(tiny, tmp_path):
    other = _save(
        _random_qwen2(3, hidden=64, heads=2, kv_heads=1, layers=1, tied=False),
        str(tmp_path / "other_tokenizer"),
        token_prefix="x",
    )
    with pytest.raises(ValueError, match="tokenizers differ.*share the policy's tokenizer"):
        MixedEngine(tiny.policy_dir, other, SETTINGS)
    check_same_vocabulary(tiny.policy_dir, tiny.expert_dir)  # the real pair passes


# ---- Ray actors -------------------------------------------------------------------------


def test_engines_work_as_the_runs_ray_actors(tiny):
    """The actor a run uses (pipelines/roles.py): weights arrive through the store, tau with
    each request, and the mixture it samples is the reference mixture of the new weights."""
    import ray

    from mentor_ray.config import load_config
    from pipelines.roles import WeightStore, start_engine_actor

    ray.init(num_cpus=4, include_dashboard=False)
    try:
        store = ray.remote(WeightStore).remote()
        engine_kwargs = {"policy_dir": tiny.policy_dir, "expert_dir": tiny.expert_dir, "settings": SETTINGS}
        actor = start_engine_actor("mixed", engine_kwargs, store, load_config(None, []))
        assert ray.get(actor.stats.remote()).weight_updates == 0  # built, on the weights it was built from
        weights_ref = ray.put({name: p.detach() for name, p in tiny.updated_policy.named_parameters()})
        ray.get(store.publish.remote(1, [weights_ref]))
        ray.get(actor.sync_weights.remote(1, [weights_ref]))
        spec = SamplingSpec(n=2, max_new_tokens=8, seed=1)
        results, summary = ray.get(actor.generate_for_step.remote(PROMPTS[:2], spec, 1, TAU))
        gap = _max_gap_to_reference(
            results, lambda s: _hf_mixture(tiny.updated_policy, tiny.expert, s, TAU)[0]
        )
        assert gap < LOG_PROB_TOLERANCE
        assert summary["scored_positions"] == sum(len(r.response_token_ids) for r in results)
        assert ray.get(actor.stats.remote()).weight_updates == 1
        with pytest.raises(ray.exceptions.RayTaskError, match="needs the step's entropy_threshold"):
            ray.get(actor.generate_for_step.remote(PROMPTS[:1], spec, 1, None))
        with pytest.raises(ray.exceptions.RayTaskError, match="asked for policy weights v2, but the store holds v1"):
            ray.get(actor.generate_for_step.remote(PROMPTS[:1], spec, 2, TAU))
    finally:
        ray.shutdown()


def test_unknown_engine_kind_is_refused():
    with pytest.raises(ValueError, match="engine kind"):
        build_engine("draft", {"model_dir": "unused"})


# ---- speculative mixed engine (EngineSettings.speculative_tokens, rollout.speculative_tokens) ----

DRAFT_TOKENS = 4


def test_the_cpu_expand_shim_is_mended():
    """vLLM's CPU stand-in for the rejection sampler's expand kernel leaves float outputs
    unwritten (vllm issue 55005); mentor_ray.rollout.vllm_patches replaces it."""
    import vllm._custom_ops  # noqa: F401 - loads vLLM's C++ ops, which the original shim calls
    from vllm.utils import cpu_triton_utils

    from mentor_ray.rollout import vllm_patches

    vllm_patches.apply()
    cumulative = torch.tensor([2, 3, 5], dtype=torch.int32)
    for values, output, expected in (
        (torch.tensor([0.7, 0.0, 1.3]), torch.full((5,), float("nan")), [0.7, 0.7, 1.0, 1.3, 1.3]),
        (torch.tensor([5, 0, 7], dtype=torch.int32), torch.full((5,), -1, dtype=torch.int32), [5, 5, 1, 7, 7]),
    ):
        cpu_triton_utils._expand_kernel_impl(output, values, cumulative, 0, 1)
        assert output.tolist() == pytest.approx(expected)
    # vLLM's own version still fails: when this assert does, the installed vLLM has the upstream
    # fix (PR 55006) and vllm_patches can go.
    unwritten = torch.full((5,), float("nan"))
    vllm_patches.original_expand_kernel_impl()(unwritten, torch.tensor([0.7, 0.0, 1.3]), cumulative, 0, 1)
    assert torch.isnan(unwritten).all()


@pytest.fixture(scope="module")
def speculative_engine(tiny):
    from dataclasses import replace

    engine = MixedEngine(tiny.policy_dir, tiny.expert_dir, replace(SETTINGS, speculative_tokens=DRAFT_TOKENS), entropy_threshold=TAU)
    yield engine
    engine.close()


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_speculative_first_tokens_follow_pi_mix(tiny, speculative_engine, temperature):
    """The first token after prefill comes from the mixture too (not the expert, not the draft)."""
    prompt = PROMPTS[2]
    results = speculative_engine.generate([prompt] * 40, SamplingSpec(n=100, max_new_tokens=1, temperature=temperature, seed=5))
    counts = np.bincount([r.response_token_ids[0] for r in results], minlength=VOCAB)
    ids = torch.tensor([prompt])
    with torch.no_grad():
        policy_logits = tiny.policy(ids).logits[0, -1] / temperature
        expert_logits = tiny.expert(ids).logits[0, -1] / temperature
    mixture, _ = mixed_policy_log_probs(policy_logits, expert_logits, TAU)
    assert _chisquare_p(counts, _exact_next_token(mixture)) > 1e-3
    assert _chisquare_p(counts, _exact_next_token(torch.log_softmax(policy_logits, -1))) < 1e-6


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_speculative_sequences_are_the_mixed_engines(tiny, mixed_engine, speculative_engine, temperature):
    """Whole 6-token samples: each returned log-prob is log pi_mix at T along its own path; the
    distribution of lengths, last tokens and summed log-probs equals the non-speculative
    engine's (two-sample tests, p > 1e-3); the measured draft acceptance is the expected
    1 - E[w TV(pi_E, pi_theta)] along the samples, within 0.04."""
    prompt, max_new_tokens, num_samples = PROMPTS[3], 6, 2000
    spec = SamplingSpec(n=num_samples // 20, max_new_tokens=max_new_tokens, temperature=temperature, seed=9)
    before = speculative_engine.stats()
    drafted = speculative_engine.generate([prompt] * 20, spec)
    after = speculative_engine.stats()
    plain = mixed_engine.generate([prompt] * 20, replace_seed(spec, 11))
    gap = _max_gap_to_reference(drafted[:40], lambda s: _hf_mixture(tiny.policy, tiny.expert, s, TAU, temperature)[0])
    assert gap < LOG_PROB_TOLERANCE
    for values, what in (
        (lambda rs: np.array([len(r.response_token_ids) for r in rs]), "lengths"),
        (lambda rs: np.array([r.response_token_ids[-1] for r in rs]), "last tokens"),
    ):
        table = np.stack([np.bincount(values(drafted), minlength=VOCAB), np.bincount(values(plain), minlength=VOCAB)])
        table = table[:, table.sum(0) >= 10]
        assert stats.chi2_contingency(table).pvalue > 1e-3, what
    summed = [np.array([sum(r.response_log_probs) for r in rs]) for rs in (drafted, plain)]
    assert stats.ttest_ind(*summed, equal_var=False).pvalue > 1e-3
    # Acceptance: a draft token at a position is kept with probability 1 - TV(pi_mix, pi_theta)
    # = 1 - w TV(pi_E, pi_theta) there (the draft samples the policy at T).
    expected = []
    with torch.no_grad():
        for r in drafted[:200]:
            ids = torch.tensor([list(r.prompt_token_ids) + list(r.response_token_ids)])
            start = len(r.prompt_token_ids)
            policy = torch.softmax(tiny.policy(ids).logits[0, start:-1] / temperature, -1)
            expert = torch.softmax(tiny.expert(ids).logits[0, start:-1] / temperature, -1)
            _, weight = mixed_policy_log_probs(torch.log(policy), torch.log(expert), TAU)
            expected += (1 - weight * 0.5 * (expert - policy).abs().sum(-1)).tolist()
    kept = after.accepted_draft_tokens - before.accepted_draft_tokens
    accepted = kept / (kept + after.draft_rejections - before.draft_rejections)  # per draft token tested
    assert 0.05 < accepted < 0.98, (accepted, float(np.mean(expected)))  # drafts neither all kept nor all refused
    assert accepted == pytest.approx(float(np.mean(expected)), abs=0.04)
    # Fewer composite passes than tokens: each pass keeps its accepted drafts plus one token.
    tokens = sum(len(r.response_token_ids) for r in drafted)
    assert after.verify_passes - before.verify_passes < tokens


def replace_seed(spec: SamplingSpec, seed: int) -> SamplingSpec:
    from dataclasses import replace

    return replace(spec, seed=seed)


def test_speculative_greedy_equals_the_mixed_engines_greedy(mixed_engine, speculative_engine):
    spec = SamplingSpec(n=1, max_new_tokens=12, temperature=0.0)
    drafted = speculative_engine.generate(PROMPTS, spec)
    plain = mixed_engine.generate(PROMPTS, spec)
    assert [r.response_token_ids for r in drafted] == [r.response_token_ids for r in plain]
    assert all(len(r.response_token_ids) > 1 for r in drafted)


def test_speculative_engine_drafts_with_the_updated_policy(tiny, speculative_engine):
    """After a weight update both the mixture's policy half and the draft hold the new weights:
    log-probs are the new mixture's, and acceptance matches the new policy as the draft."""
    draft_before, policy_before = speculative_engine._llm.collective_rpc("mentor_draft_weight_norms")[0]
    assert draft_before == pytest.approx(policy_before, rel=1e-9)
    speculative_engine.update_weights(tiny.updated_policy.named_parameters())
    try:
        results = speculative_engine.generate(PROMPTS, SamplingSpec(n=4, max_new_tokens=8, seed=4))
        gap = _max_gap_to_reference(results, lambda s: _hf_mixture(tiny.updated_policy, tiny.expert, s, TAU)[0])
        assert gap < LOG_PROB_TOLERANCE
        draft_after, policy_after = speculative_engine._llm.collective_rpc("mentor_draft_weight_norms")[0]
        assert draft_after == pytest.approx(policy_after, rel=1e-9) and draft_after != pytest.approx(draft_before, rel=1e-6)
    finally:
        speculative_engine.update_weights(tiny.policy.named_parameters())


def test_speculative_drafts_sample_the_policy_at_the_runs_temperature(tiny, speculative_engine):
    """At T = 0.3 a draft sampled from the untempered policy would be kept far less often than
    one from the policy at T: the measured acceptance tells the two apart."""
    temperature = 0.3
    before = speculative_engine.stats()
    results = speculative_engine.generate([PROMPTS[1]] * 10, SamplingSpec(n=40, max_new_tokens=6, temperature=temperature, seed=21))
    after = speculative_engine.stats()
    kept = after.accepted_draft_tokens - before.accepted_draft_tokens
    accepted = kept / (kept + after.draft_rejections - before.draft_rejections)
    expected = {1.0: [], temperature: []}
    with torch.no_grad():
        for r in results[:200]:
            ids = torch.tensor([list(r.prompt_token_ids) + list(r.response_token_ids)])
            start = len(r.prompt_token_ids)
            policy_logits, expert_logits = tiny.policy(ids).logits[0, start:-1], tiny.expert(ids).logits[0, start:-1]
            mixture, _ = mixed_policy_log_probs(policy_logits / temperature, expert_logits / temperature, TAU)
            for draft_temperature in expected:
                draft = torch.softmax(policy_logits / draft_temperature, -1)
                # Kept with probability sum_y min(pi_mix(y), q(y)) = 1 - TV(pi_mix, q).
                expected[draft_temperature] += torch.minimum(mixture.exp(), draft).sum(-1).tolist()
    at_t, untempered = float(np.mean(expected[temperature])), float(np.mean(expected[1.0]))
    assert abs(at_t - untempered) > 0.1, (at_t, untempered)  # the test can tell them apart
    assert accepted == pytest.approx(at_t, abs=0.05), (accepted, at_t, untempered)


def test_a_seeded_speculative_call_repeats(speculative_engine):
    """Probabilistic drafts are drawn with each seeded request's own generator
    (vllm_patches.seeded_draft_sampler): the same seed gives the same tokens however much the
    process sampled in between; vLLM's own draft sampler uses the global RNG, and the second
    call would differ."""
    spec = SamplingSpec(n=8, max_new_tokens=10, temperature=1.0, seed=33)
    first = speculative_engine.generate(PROMPTS, spec)
    speculative_engine.generate(PROMPTS, replace_seed(spec, 34))  # moves every RNG but seed 33's
    before = speculative_engine.stats()
    second = speculative_engine.generate(PROMPTS, spec)
    after = speculative_engine.stats()
    assert after.draft_tokens > before.draft_tokens  # the drafts really ran
    assert [r.response_token_ids for r in second] == [r.response_token_ids for r in first]
    other = speculative_engine.generate(PROMPTS, replace_seed(spec, 35))
    assert [r.response_token_ids for r in other] != [r.response_token_ids for r in first]
