"""Statistical and exactness tests of the torch oracle `naive_mixed_sample` against exact pi_mix.

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
from mentor_ray.rollout.reference import MixedSamples, naive_mixed_sample

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
    policy, expert, tau: float | None, num_tokens: int, eos_token_id: int | None = None
) -> np.ndarray:
    """P(y_1..y_n) for every token tuple, as a flat array of VOCAB**n entries.

    With `eos_token_id` a sequence ends at EOS and every later token is EOS (the sampler's
    default padding), so a tuple with anything else after an EOS has probability 0.
    """
    joint = torch.ones(1, dtype=torch.float64)
    prefixes = torch.tensor([PROMPT])
    ended = torch.zeros(1, dtype=torch.bool)
    for _ in range(num_tokens):
        step = _next_token_log_probs(policy, expert, prefixes, tau).double().exp()
        if eos_token_id is not None:
            step[ended] = torch.nn.functional.one_hot(torch.tensor(eos_token_id), VOCAB).double()
        joint = (joint[:, None] * step).reshape(-1)
        tokens = torch.arange(VOCAB).repeat(len(prefixes))
        ended = ended.repeat_interleave(VOCAB) | (tokens == eos_token_id)
        prefixes = torch.cat([prefixes.repeat_interleave(VOCAB, 0), tokens[:, None]], 1)
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


# ---------------------------------------------------------------- naive sampler vs exact pi_mix

NUM_SAMPLES = 16_000
MAX_NEW_TOKENS = 8
# The first tokens whose law is enumerated exactly (VOCAB**3 tuples); later positions would need
# VOCAB**7 prefixes, and the teacher-forced test below checks every position's log pi_mix.
EXACT_TOKENS = 3


@pytest.fixture(scope="module")
def naive_with_eos(policy, expert) -> MixedSamples:
    return naive_mixed_sample(
        policy,
        expert,
        _prompt(NUM_SAMPLES),
        MAX_NEW_TOKENS,
        ENTROPY_THRESHOLD,
        _generator(7),
        eos_token_id=EOS,
    )


@pytest.fixture(scope="module")
def exact_joints(policy, expert) -> dict[str, np.ndarray]:
    """Exact EOS-padded joints of the first EXACT_TOKENS tokens under pi_mix and each model alone."""
    taus = {"mixture": ENTROPY_THRESHOLD, "policy": None, "expert": 0.0}
    return {
        name: _exact_joint_first_tokens(policy, expert, tau, EXACT_TOKENS, EOS)
        for name, tau in taus.items()
    }


def _assert_fits_mixture_and_not_either_model(counts, policy, expert, prompt, max_total_variation):
    """First-token counts fit pi_mix after `prompt`, and (power) reject the policy alone and the
    expert alone."""
    target = _next_token_log_probs(policy, expert, prompt, ENTROPY_THRESHOLD)[0].exp().double().numpy()
    assert _chisquare_p(counts, target) > ACCEPT_P
    assert _total_variation(counts, target) < max_total_variation
    for tau in (None, 0.0):
        wrong = _next_token_log_probs(policy, expert, prompt, tau)[0].exp().double().numpy()
        assert _chisquare_p(counts, wrong) < POWER_P


def _length_distribution(joint: np.ndarray) -> np.ndarray:
    """P(length = 1), ..., P(length = EXACT_TOKENS), P(length > EXACT_TOKENS) from a joint."""
    tuples = np.arange(VOCAB**EXACT_TOKENS)
    digits = np.stack(
        [(tuples // VOCAB ** (EXACT_TOKENS - 1 - k)) % VOCAB for k in range(EXACT_TOKENS)], 1
    )
    is_eos = np.append(digits == EOS, np.ones((len(tuples), 1), dtype=bool), axis=1)
    return np.bincount(is_eos.argmax(axis=1), weights=joint, minlength=EXACT_TOKENS + 1)


def test_naive_stops_at_eos_and_lengths_match_exact_mixture(naive_with_eos, exact_joints):
    samples = naive_with_eos
    lengths = samples.lengths.numpy()
    # The EOS id was chosen so that both early stops and length-capped rows occur.
    assert 2.0 < lengths.mean() < MAX_NEW_TOKENS - 0.5
    assert (lengths == MAX_NEW_TOKENS).any() and (lengths < MAX_NEW_TOKENS).any()
    counts = np.bincount(np.minimum(lengths, EXACT_TOKENS + 1) - 1, minlength=EXACT_TOKENS + 1)
    assert _chisquare_p(counts, _length_distribution(exact_joints["mixture"])) > ACCEPT_P
    for wrong in ("policy", "expert"):
        assert _chisquare_p(counts, _length_distribution(exact_joints[wrong])) < POWER_P
    ended = samples.lengths < MAX_NEW_TOKENS
    last = samples.token_ids.gather(1, (samples.lengths - 1)[:, None]).squeeze(1)
    assert (last[ended] == EOS).all(), "a row ended early without EOS"
    before_end = torch.arange(MAX_NEW_TOKENS)[None, :] < (samples.lengths - 1)[:, None]
    assert not (samples.token_ids[before_end] == EOS).any(), "EOS inside a sequence"
    after_end = torch.arange(MAX_NEW_TOKENS)[None, :] >= samples.lengths[:, None]
    assert (samples.token_ids[after_end] == EOS).all()  # pad id defaults to EOS
    assert (samples.log_probs[after_end] == 0).all() and (
        samples.mixture_weights[after_end] == 0
    ).all()


def test_naive_tokens_match_exact_mixture(policy, expert, naive_with_eos, exact_joints):
    """First token, each of the first EXACT_TOKENS positions, and their joint (EOS-padded tails
    counted as EOS) fit exact pi_mix and reject the policy alone and the expert alone."""
    token_ids = naive_with_eos.token_ids
    # 16,000 samples over 16 cells: sampling noise alone gives TV ~0.01; 0.03 is ~3x that.
    _assert_fits_mixture_and_not_either_model(
        _histogram(token_ids[:, 0]), policy, expert, _prompt(1), max_total_variation=0.03
    )
    counts = np.bincount(
        _tuple_ids(token_ids, EXACT_TOKENS).numpy(), minlength=VOCAB**EXACT_TOKENS
    )
    assert _chisquare_p(counts, exact_joints["mixture"]) > ACCEPT_P
    for wrong in ("policy", "expert"):
        assert _chisquare_p(counts, exact_joints[wrong]) < POWER_P
    for position in range(1, EXACT_TOKENS):
        # Marginal of one position: sum the joint over every other position.
        others = tuple(k for k in range(EXACT_TOKENS) if k != position)
        position_counts = _histogram(token_ids[:, position])
        marginals = {
            name: joint.reshape((VOCAB,) * EXACT_TOKENS).sum(axis=others)
            for name, joint in exact_joints.items()
        }
        assert _chisquare_p(position_counts, marginals["mixture"]) > ACCEPT_P, position
        assert _total_variation(position_counts, marginals["mixture"]) < 0.03  # as above
        for wrong in ("policy", "expert"):
            assert _chisquare_p(position_counts, marginals[wrong]) < POWER_P, (position, wrong)


def test_naive_sampler_returns_exact_mixture_log_probs(
    policy, expert, naive_with_eos
):
    naive = naive_with_eos
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


# ---------------------------------------------------------------- bad input


def test_bad_inputs_are_rejected_with_clear_errors(policy, expert):
    prompt = _prompt(2)
    generator = _generator(0)
    with pytest.raises(ValueError, match="prompt_ids must be"):
        naive_mixed_sample(policy, expert, torch.tensor(PROMPT), 3, 2.0, generator)
    with pytest.raises(ValueError, match="integer token ids"):
        naive_mixed_sample(policy, expert, prompt.float(), 3, 2.0, generator)
    with pytest.raises(ValueError, match="max_new_tokens"):
        naive_mixed_sample(policy, expert, prompt, 0, 2.0, generator)
    with pytest.raises(ValueError, match="entropy_threshold"):
        naive_mixed_sample(policy, expert, prompt, 3, 0.0, generator)
    right_padded = torch.ones_like(prompt)
    right_padded[0, -1] = 0
    with pytest.raises(ValueError, match=r"rows \[0\] end in padding"):
        naive_mixed_sample(
            policy, expert, prompt, 3, 2.0, generator, attention_mask=right_padded
        )
    holes = torch.ones_like(prompt)
    holes[1, 2] = 0
    with pytest.raises(ValueError, match="pad prompts on the left"):
        naive_mixed_sample(policy, expert, prompt, 3, 2.0, generator, attention_mask=holes)
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

