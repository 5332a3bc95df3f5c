"""Statistical and exactness tests of the reference pi_mix samplers.

Two tiny random Qwen2 models (vocab 16, head_dim 32) of different shapes play policy and
expert. Their weights are drawn with init std 0.3, which gives the policy entropies of
~0.6-2.2 nats, so with entropy_threshold 2.0 the weights w_t sit strictly between 0 and 1 at
most positions and pi_mix differs clearly from both models (TV(policy, expert) ~ 0.8).

Every random draw uses a fixed seed, so each test is deterministic; the significance levels
below say how unlikely the observed statistic would be if the sampler were correct.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats
from transformers import Qwen2Config, Qwen2ForCausalLM

from mentor_ray.core.mixture import mixed_policy_log_probs
from mentor_ray.reference_sampler import (
    MixedSamples,
    SpeculativeMixedSamples,
    naive_mixed_sample,
    speculative_mixed_sample,
)

VOCAB = 16
ENTROPY_THRESHOLD = 2.0
PROMPT = [3, 1, 4, 1, 5]
EOS = 7
# A sampler is accepted when the chi-square p-value exceeds this, and "has power" when a
# wrong reference distribution gives p below POWER_P.
ACCEPT_P = 1e-3
POWER_P = 1e-6


def _tiny_qwen2(seed: int, num_layers: int, num_kv_heads: int) -> Qwen2ForCausalLM:
    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=num_layers,
        num_attention_heads=2,
        num_key_value_heads=num_kv_heads,
        head_dim=32,
        initializer_range=0.3,
        tie_word_embeddings=False,
        max_position_embeddings=128,
    )
    return Qwen2ForCausalLM(config).eval()


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    # These models are tiny: intra-op threads only add synchronisation, and on a shared
    # 2-core machine two spinning threads made each forward pass 30-100x slower (measured).
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def policy() -> Qwen2ForCausalLM:
    return _tiny_qwen2(seed=0, num_layers=2, num_kv_heads=1)


@pytest.fixture(scope="module")
def expert() -> Qwen2ForCausalLM:
    return _tiny_qwen2(seed=1, num_layers=3, num_kv_heads=2)


def _prompt(batch: int) -> torch.Tensor:
    return torch.tensor([PROMPT]).repeat(batch, 1)


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------- exact references


@torch.no_grad()
def _next_token_log_probs(policy, expert, prefixes: torch.Tensor, tau: float | None):
    """Exact next-token log-probs after each prefix, by full forward passes (no cache).

    tau=None -> policy alone; tau=0.0 -> expert alone; else pi_mix with that threshold.
    """
    policy_logits = policy(prefixes).logits[:, -1].float()
    expert_logits = expert(prefixes).logits[:, -1].float()
    if tau is None:
        return torch.log_softmax(policy_logits, -1)
    if tau == 0.0:
        return torch.log_softmax(expert_logits, -1)
    return mixed_policy_log_probs(policy_logits, expert_logits, tau)[0]


def _exact_joint_first_tokens(
    policy, expert, tau: float | None, num_tokens: int
) -> np.ndarray:
    """P(y_1..y_n) for every token tuple (no EOS), as a flat array of VOCAB**n entries."""
    joint = torch.ones(1, dtype=torch.float64)
    prefixes = torch.tensor([PROMPT])
    for _ in range(num_tokens):
        step = _next_token_log_probs(policy, expert, prefixes, tau).double().exp()
        joint = (joint[:, None] * step).reshape(-1)
        prefixes = torch.cat(
            [
                prefixes.repeat_interleave(VOCAB, 0),
                torch.arange(VOCAB).repeat(len(prefixes))[:, None],
            ],
            1,
        )
    return joint.numpy()


def _chisquare_p(
    counts: np.ndarray, probs: np.ndarray, min_expected: float = 5.0
) -> float:
    """Goodness-of-fit p-value; cells with expected count < min_expected are pooled into one."""
    expected = probs / probs.sum() * counts.sum()
    small = expected < min_expected
    if bool(counts[probs == 0].sum()):
        return 0.0  # a sample the reference says is impossible
    observed_cells = np.append(counts[~small], counts[small].sum())
    expected_cells = np.append(expected[~small], expected[small].sum())
    keep = expected_cells > 0
    return float(stats.chisquare(observed_cells[keep], expected_cells[keep]).pvalue)


def _total_variation(counts: np.ndarray, probs: np.ndarray) -> float:
    return 0.5 * float(np.abs(counts / counts.sum() - probs / probs.sum()).sum())


def _histogram(tokens: torch.Tensor) -> np.ndarray:
    return torch.bincount(tokens, minlength=VOCAB).numpy()


def _tuple_ids(token_ids: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """Index of the tuple (y_1..y_n) in the flat joint array (row-major, y_1 most significant)."""
    index = torch.zeros(token_ids.shape[0], dtype=torch.long)
    for position in range(num_tokens):
        index = index * VOCAB + token_ids[:, position]
    return index


@torch.no_grad()
def _teacher_forced_log_probs(
    policy, expert, prompt, prompt_mask, samples: MixedSamples, tau
):
    """Recompute log pi_mix and w of every generated token, one row at a time without padding."""
    log_probs = torch.zeros_like(samples.log_probs)
    weights = torch.zeros_like(samples.mixture_weights)
    for row in range(prompt.shape[0]):
        length = int(samples.lengths[row])
        sequence = torch.cat(
            [prompt[row][prompt_mask[row].bool()], samples.token_ids[row, :length]]
        )
        start = sequence.shape[0] - length - 1
        policy_logits = policy(sequence[None]).logits[0, start:-1]
        expert_logits = expert(sequence[None]).logits[0, start:-1]
        row_log_probs, row_weights = mixed_policy_log_probs(
            policy_logits, expert_logits, tau
        )
        log_probs[row, :length] = row_log_probs.gather(
            1, sequence[start + 1 :, None]
        ).squeeze(1)
        weights[row, :length] = row_weights
    return log_probs, weights


# ---------------------------------------------------------------- speculative vs exact pi_mix

NUM_JOINT_SAMPLES = 16_000
JOINT_TOKENS = 3


@pytest.fixture(scope="module")
def speculative_three_tokens(policy, expert) -> SpeculativeMixedSamples:
    # K = 2 with 3 tokens: a round boundary falls inside the sequence (tokens 1-2 or fewer in
    # round one, then the rest), so cache rollback after rejections is exercised.
    return speculative_mixed_sample(
        policy,
        expert,
        _prompt(NUM_JOINT_SAMPLES),
        JOINT_TOKENS,
        ENTROPY_THRESHOLD,
        _generator(1234),
        num_draft_tokens=2,
    )


def _assert_fits_mixture_and_not_either_model(counts, policy, expert, prompt, max_total_variation):
    """First-token counts fit pi_mix after `prompt`, and (power) reject the policy alone and the
    expert alone."""
    target = _next_token_log_probs(policy, expert, prompt, ENTROPY_THRESHOLD)[0].exp().double().numpy()
    assert _chisquare_p(counts, target) > ACCEPT_P
    assert _total_variation(counts, target) < max_total_variation
    for tau in (None, 0.0):
        wrong = _next_token_log_probs(policy, expert, prompt, tau)[0].exp().double().numpy()
        assert _chisquare_p(counts, wrong) < POWER_P


def test_speculative_first_token_matches_exact_mixture(
    policy, expert, speculative_three_tokens
):
    counts = _histogram(speculative_three_tokens.token_ids[:, 0])
    # 16,000 samples over 16 cells: sampling noise alone gives TV ~0.01; 0.03 is ~3x that.
    _assert_fits_mixture_and_not_either_model(counts, policy, expert, _prompt(1), max_total_variation=0.03)


def test_speculative_joint_of_three_tokens_matches_exact_mixture(
    policy, expert, speculative_three_tokens
):
    """P(y1, y2, y3) over all 16^3 tuples, exact by enumeration, vs the sampled tuples."""
    counts = np.bincount(
        _tuple_ids(speculative_three_tokens.token_ids, JOINT_TOKENS).numpy(),
        minlength=VOCAB**JOINT_TOKENS,
    )
    target = _exact_joint_first_tokens(policy, expert, ENTROPY_THRESHOLD, JOINT_TOKENS)
    assert _chisquare_p(counts, target) > ACCEPT_P
    # Third-token marginal: the position after a round boundary and after rollbacks.
    third_counts = _histogram(speculative_three_tokens.token_ids[:, 2])
    third_target = target.reshape(VOCAB, VOCAB, VOCAB).sum(axis=(0, 1))
    assert _chisquare_p(third_counts, third_target) > ACCEPT_P
    assert _total_variation(third_counts, third_target) < 0.03  # noise ~0.01, as above
    for tau in (None, 0.0):
        wrong = _exact_joint_first_tokens(policy, expert, tau, JOINT_TOKENS)
        assert _chisquare_p(counts, wrong) < POWER_P
        assert (
            _chisquare_p(
                third_counts, wrong.reshape(VOCAB, VOCAB, VOCAB).sum(axis=(0, 1))
            )
            < POWER_P
        )


def test_speculative_third_token_given_prefix_matches_exact_mixture(
    policy, expert, speculative_three_tokens
):
    """Start from prompt + a 2-token prefix: the first sampled token is then 'position 3'."""
    prefix = [int(t) for t in speculative_three_tokens.token_ids[0, :2]]
    prompt = torch.tensor([PROMPT + prefix])
    samples = speculative_mixed_sample(
        policy,
        expert,
        prompt.repeat(8000, 1),
        1,
        ENTROPY_THRESHOLD,
        _generator(99),
        num_draft_tokens=4,
    )
    counts = _histogram(samples.token_ids[:, 0])
    # 8,000 samples: noise TV ~0.015; bound ~3x.
    _assert_fits_mixture_and_not_either_model(counts, policy, expert, prompt, max_total_variation=0.045)


def test_speculative_draft_statistics_are_consistent(speculative_three_tokens):
    samples = speculative_three_tokens
    assert samples.lengths.eq(JOINT_TOKENS).all()
    assert (samples.accepted_drafts <= samples.verified_drafts).all()
    # Every generated token is either an accepted draft or the one resample of a rejection.
    assert samples.verified_drafts.eq(JOINT_TOKENS).all()
    # pi_mix is far from pi_theta here, so a fair share of drafts is rejected, but not all.
    assert 0.2 < samples.acceptance_rate < 0.95
    assert samples.rounds >= 2


# ---------------------------------------------------------------- naive vs speculative

NUM_AGREEMENT_SAMPLES = 4000
AGREEMENT_TOKENS = 8


@pytest.fixture(scope="module")
def naive_and_speculative_with_eos(
    policy, expert
) -> tuple[MixedSamples, SpeculativeMixedSamples]:
    naive = naive_mixed_sample(
        policy,
        expert,
        _prompt(NUM_AGREEMENT_SAMPLES),
        AGREEMENT_TOKENS,
        ENTROPY_THRESHOLD,
        _generator(7),
        eos_token_id=EOS,
    )
    # K = 3 with 8 tokens: the last round is cut to 2 drafts by max_new_tokens.
    speculative = speculative_mixed_sample(
        policy,
        expert,
        _prompt(NUM_AGREEMENT_SAMPLES),
        AGREEMENT_TOKENS,
        ENTROPY_THRESHOLD,
        _generator(8),
        eos_token_id=EOS,
        num_draft_tokens=3,
    )
    return naive, speculative


def _contingency_p(first: np.ndarray, second: np.ndarray) -> float:
    table = np.stack([first, second])
    table = table[:, table.sum(axis=0) > 0]
    return float(stats.chi2_contingency(table).pvalue)


def test_naive_and_speculative_agree_on_lengths_with_eos(
    naive_and_speculative_with_eos,
):
    naive, speculative = naive_and_speculative_with_eos
    naive_lengths, speculative_lengths = (
        naive.lengths.numpy(),
        speculative.lengths.numpy(),
    )
    # The EOS id was chosen so that both early stops and length-capped rows occur.
    assert 2.0 < naive_lengths.mean() < AGREEMENT_TOKENS - 0.5
    assert (naive_lengths == AGREEMENT_TOKENS).any() and (
        naive_lengths < AGREEMENT_TOKENS
    ).any()
    length_bins = np.arange(1, AGREEMENT_TOKENS + 2)
    p_lengths = _contingency_p(
        np.histogram(naive_lengths, length_bins)[0],
        np.histogram(speculative_lengths, length_bins)[0],
    )
    assert p_lengths > ACCEPT_P
    assert (
        stats.ttest_ind(naive_lengths, speculative_lengths, equal_var=False).pvalue
        > ACCEPT_P
    )
    for samples in (naive, speculative):
        ended = samples.lengths < AGREEMENT_TOKENS
        last = samples.token_ids.gather(1, (samples.lengths - 1)[:, None]).squeeze(1)
        assert (last[ended] == EOS).all(), "a row ended early without EOS"
        before_end = (
            torch.arange(AGREEMENT_TOKENS)[None, :] < (samples.lengths - 1)[:, None]
        )
        assert not (samples.token_ids[before_end] == EOS).any(), "EOS inside a sequence"
        after_end = torch.arange(AGREEMENT_TOKENS)[None, :] >= samples.lengths[:, None]
        assert (samples.token_ids[after_end] == EOS).all()  # pad id defaults to EOS
        assert (samples.log_probs[after_end] == 0).all() and (
            samples.mixture_weights[after_end] == 0
        ).all()


def test_naive_and_speculative_agree_on_token_statistics(
    naive_and_speculative_with_eos,
):
    naive, speculative = naive_and_speculative_with_eos
    # Per-position histograms (EOS-padded tails counted as EOS) for every position.
    for position in range(AGREEMENT_TOKENS):
        p = _contingency_p(
            _histogram(naive.token_ids[:, position]),
            _histogram(speculative.token_ids[:, position]),
        )
        assert p > ACCEPT_P / AGREEMENT_TOKENS, (
            f"position {position}: p = {p}"
        )  # Bonferroni
    # First three tokens as joint categories, pooling rare tuples (< 10 in both) together.
    naive_tuples = np.bincount(
        _tuple_ids(naive.token_ids, 3).numpy(), minlength=VOCAB**3
    )
    speculative_tuples = np.bincount(
        _tuple_ids(speculative.token_ids, 3).numpy(), minlength=VOCAB**3
    )
    common = (naive_tuples + speculative_tuples) >= 10
    naive_cells = np.append(naive_tuples[common], naive_tuples[~common].sum())
    speculative_cells = np.append(
        speculative_tuples[common], speculative_tuples[~common].sum()
    )
    assert _contingency_p(naive_cells, speculative_cells) > ACCEPT_P
    # Mean mixture weight of each sequence: a statistic of the visited states, not only of the
    # tokens (one value per row, so the values are independent, unlike per-token weights).
    naive_w = (naive.mixture_weights.sum(1) / naive.lengths).numpy()
    speculative_w = (speculative.mixture_weights.sum(1) / speculative.lengths).numpy()
    assert stats.ttest_ind(naive_w, speculative_w, equal_var=False).pvalue > ACCEPT_P


def test_naive_sampler_returns_exact_mixture_log_probs(
    policy, expert, naive_and_speculative_with_eos
):
    naive = naive_and_speculative_with_eos[0]
    rows = slice(0, 48)
    subset = MixedSamples(
        naive.token_ids[rows],
        naive.lengths[rows],
        naive.mixture_weights[rows],
        naive.log_probs[rows],
    )
    prompt = _prompt(48)
    log_probs, weights = _teacher_forced_log_probs(
        policy, expert, prompt, torch.ones_like(prompt), subset, ENTROPY_THRESHOLD
    )
    # fp32 cached vs uncached forward passes: differences are ~1e-6; 1e-4 is a safe margin
    # that still catches any wrong position or stale cache entry (errors of order 0.1-1).
    torch.testing.assert_close(subset.log_probs, log_probs, atol=1e-4, rtol=0)
    torch.testing.assert_close(subset.mixture_weights, weights, atol=1e-4, rtol=0)


@pytest.mark.parametrize("num_draft_tokens", [1, 3, 5])
def test_speculative_log_probs_exact_with_rollback_and_left_padding(
    policy, expert, num_draft_tokens
):
    """Batched rows with different prompt lengths, EOS and rejections at different draft
    positions: every returned log pi_mix and w must equal a per-row uncached recomputation.
    Any stale slot left in a cache after a rejection, or a wrong position, breaks this."""
    prompts = [[3, 1, 4, 1, 5], [9, 2], [6, 5, 3, 5, 8, 9, 7], [2], [11, 13, 4]] * 4
    width = max(map(len, prompts))
    prompt_ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    prompt_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    samples = speculative_mixed_sample(
        policy,
        expert,
        prompt_ids,
        12,
        ENTROPY_THRESHOLD,
        _generator(num_draft_tokens),
        eos_token_id=EOS,
        num_draft_tokens=num_draft_tokens,
        attention_mask=prompt_mask,
    )
    assert samples.accepted_drafts.sum() < samples.verified_drafts.sum(), (
        "no rejection exercised"
    )
    log_probs, weights = _teacher_forced_log_probs(
        policy, expert, prompt_ids, prompt_mask, samples, ENTROPY_THRESHOLD
    )
    torch.testing.assert_close(
        samples.log_probs, log_probs, atol=1e-4, rtol=0
    )  # as above
    torch.testing.assert_close(samples.mixture_weights, weights, atol=1e-4, rtol=0)


def test_naive_log_probs_exact_with_left_padding(policy, expert):
    prompts = [[3, 1, 4, 1, 5], [9, 2], [2], [6, 5, 3, 5, 8, 9, 7]] * 3
    width = max(map(len, prompts))
    prompt_ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    prompt_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    samples = naive_mixed_sample(
        policy,
        expert,
        prompt_ids,
        10,
        ENTROPY_THRESHOLD,
        _generator(5),
        eos_token_id=EOS,
        attention_mask=prompt_mask,
    )
    log_probs, weights = _teacher_forced_log_probs(
        policy, expert, prompt_ids, prompt_mask, samples, ENTROPY_THRESHOLD
    )
    torch.testing.assert_close(
        samples.log_probs, log_probs, atol=1e-4, rtol=0
    )  # as above
    torch.testing.assert_close(samples.mixture_weights, weights, atol=1e-4, rtol=0)


# ---------------------------------------------------------------- limits w = 0 and w = 1


@torch.no_grad()
def _single_model_sample(model, batch, max_new_tokens, generator, eos_token_id):
    """Plain ancestral sampling from one model, full forward each step (independent code)."""
    sequences = _prompt(batch)
    finished = torch.zeros(batch, dtype=torch.bool)
    generated = []
    for _ in range(max_new_tokens):
        probs = torch.softmax(model(sequences).logits[:, -1].float(), -1)
        token = torch.multinomial(probs, 1, generator=generator).squeeze(1)
        token = torch.where(finished, eos_token_id, token)
        generated.append(token)
        finished |= token == eos_token_id
        sequences = torch.cat([sequences, token[:, None]], 1)
        if finished.all():
            break
    return torch.stack(generated, 1)


@pytest.mark.parametrize(
    ("entropy_threshold", "which"),
    [(1e9, "policy"), (1e-9, "expert")],
    ids=["w0", "w1"],
)
def test_naive_limits_reproduce_single_model_samples(
    policy, expert, entropy_threshold, which
):
    """Same generator seed: w ~ 0 gives the policy's own samples, w = 1 the expert's.

    (Token-for-token equal: both draw one multinomial per step from distributions that agree
    to ~1e-6, so a draw could only differ if a uniform fell within ~1e-6 of a cell edge.)
    """
    batch, max_new = 200, 6
    samples = naive_mixed_sample(
        policy,
        expert,
        _prompt(batch),
        max_new,
        entropy_threshold,
        _generator(3),
        eos_token_id=EOS,
    )
    reference = _single_model_sample(
        policy if which == "policy" else expert, batch, max_new, _generator(3), EOS
    )
    assert torch.equal(samples.token_ids[:, : reference.shape[1]], reference)
    expected_weight = 0.0 if which == "policy" else 1.0
    real = torch.arange(max_new)[None, :] < samples.lengths[:, None]
    torch.testing.assert_close(  # w = H / 1e9 <= ~3e-9 for the policy limit
        samples.mixture_weights[real],
        torch.full_like(samples.mixture_weights[real], expected_weight),
        atol=1e-8,
        rtol=0,
    )


@pytest.mark.parametrize(
    ("entropy_threshold", "which"),
    [(1e9, "policy"), (1e-9, "expert")],
    ids=["w0", "w1"],
)
def test_speculative_limits_reproduce_single_model_distribution(
    policy, expert, entropy_threshold, which
):
    # 3 tokens with K = 2: at w ~ 0 every round accepts both drafts, so a wrongly added
    # "bonus" token (sampled from the expert) would be token 3 of every sequence.
    samples = speculative_mixed_sample(
        policy,
        expert,
        _prompt(6000),
        3,
        entropy_threshold,
        _generator(11),
        num_draft_tokens=2,
    )
    policy_joint = _exact_joint_first_tokens(policy, expert, None, 3)
    expert_joint = _exact_joint_first_tokens(policy, expert, 0.0, 3)
    target, other = (
        (policy_joint, expert_joint)
        if which == "policy"
        else (expert_joint, policy_joint)
    )
    counts = np.bincount(_tuple_ids(samples.token_ids, 3).numpy(), minlength=VOCAB**3)
    assert _chisquare_p(counts, target) > ACCEPT_P
    assert _chisquare_p(counts, other) < POWER_P
    if which == "policy":
        # pi_mix == pi_theta up to ~1e-9: a rejection needs a uniform within ~1e-7 of 1.
        assert samples.acceptance_rate > 0.999
    else:
        # pi_mix == pi_E: accepted with prob min(1, pi_E/pi_theta), far from always.
        assert samples.acceptance_rate < 0.9


# ---------------------------------------------------------------- bad input


def test_bad_inputs_are_rejected_with_clear_errors(policy, expert):
    prompt = _prompt(2)
    generator = _generator(0)
    for sampler in (naive_mixed_sample, speculative_mixed_sample):
        with pytest.raises(ValueError, match="prompt_ids must be"):
            sampler(policy, expert, torch.tensor(PROMPT), 3, 2.0, generator)
        with pytest.raises(ValueError, match="integer token ids"):
            sampler(policy, expert, prompt.float(), 3, 2.0, generator)
        with pytest.raises(ValueError, match="max_new_tokens"):
            sampler(policy, expert, prompt, 0, 2.0, generator)
        with pytest.raises(ValueError, match="entropy_threshold"):
            sampler(policy, expert, prompt, 3, 0.0, generator)
        right_padded = torch.ones_like(prompt)
        right_padded[0, -1] = 0
        with pytest.raises(ValueError, match=r"rows \[0\] end in padding"):
            sampler(
                policy, expert, prompt, 3, 2.0, generator, attention_mask=right_padded
            )
        holes = torch.ones_like(prompt)
        holes[1, 2] = 0
        with pytest.raises(ValueError, match="pad prompts on the left"):
            sampler(policy, expert, prompt, 3, 2.0, generator, attention_mask=holes)
    with pytest.raises(ValueError, match="num_draft_tokens"):
        speculative_mixed_sample(
            policy, expert, prompt, 3, 2.0, generator, num_draft_tokens=0
        )
    other_vocab = Qwen2ForCausalLM(
        Qwen2Config(
            vocab_size=VOCAB + 1,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=32,
        )
    ).eval()
    with pytest.raises(ValueError, match="vocabularies differ"):
        naive_mixed_sample(policy, other_vocab, prompt, 3, 2.0, generator)


def test_identical_models_never_reject(policy):
    """pi_E == pi_theta: acceptance ratio is 1 and the residual has no mass (guarded)."""
    samples = speculative_mixed_sample(
        policy,
        policy,
        _prompt(64),
        6,
        ENTROPY_THRESHOLD,
        _generator(2),
        num_draft_tokens=3,
    )
    assert samples.acceptance_rate > 0.99
    assert torch.isfinite(samples.log_probs).all()
