"""The sampler on hand-made logits: exact checks for greedy, penalties, masks and logprobs;
empirical distributions (one batched call over many copies of a row) for the filters."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from minillm.config import SamplingParams
from minillm.sampling import (
    Sampler,
    SamplingBatch,
    apply_min_p,
    apply_penalties,
    apply_top_k_top_p,
    token_seed,
)
from minillm.sequence import Sequence

VOCAB = 64
NUM_DRAWS = 20_000  # rows in an empirical-distribution test; 4 sigma of a frequency < 0.015
FREQ_TOL = 0.015


def make_seq(prompt=(1, 2, 3), output=(), **params) -> Sequence:
    seq = Sequence(list(prompt), SamplingParams(**params))
    seq.token_ids.extend(output)
    return seq


def sample(logits, seqs, eos_token_ids=(), step_seed=0):
    batch = SamplingBatch.from_sequences(seqs, logits.shape[-1], eos_token_ids, "cpu", step_seed)
    return Sampler()(logits, batch)


def random_logits(rows, vocab=VOCAB, seed=0, scale=3.0):
    return torch.randn(rows, vocab, generator=torch.Generator().manual_seed(seed)) * scale


def frequencies(tokens, vocab):
    return torch.bincount(tokens, minlength=vocab).double() / tokens.numel()


def draw(probs, num=NUM_DRAWS, **params):
    """Sample `num` times from one hand-made distribution, in one batched call."""
    logits = torch.tensor(probs).log().repeat(num, 1)  # [num, V]
    shared = SamplingParams(**params)  # one object for all rows, as `generate` does
    return sample(logits, [Sequence([1, 2, 3], shared) for _ in range(num)]).token_ids


# ---- greedy -----------------------------------------------------------------------------


def test_greedy_equals_argmax():
    logits = random_logits(16)
    out = sample(logits, [make_seq(temperature=0.0) for _ in range(16)])
    assert out.token_ids.dtype == torch.int64
    assert torch.equal(out.token_ids, logits.argmax(-1))
    assert out.logprobs is None


@pytest.mark.parametrize("temperature", [0.3, 1.0, 2.5, 50.0])
def test_top_k_1_equals_greedy_at_any_temperature(temperature):
    logits = random_logits(16, seed=1)
    seqs = [make_seq(temperature=temperature, top_k=1, seed=i if i % 2 else None)
            for i in range(16)]
    assert torch.equal(sample(logits, seqs, step_seed=7).token_ids, logits.argmax(-1))


def test_mixed_batch_gives_greedy_rows_their_argmax():
    logits = random_logits(6, seed=2)
    seqs = [make_seq(temperature=0.0),
            make_seq(temperature=1.5, top_p=0.9, min_p=0.05),
            make_seq(temperature=0.0, logprobs=2),
            make_seq(temperature=1.0, repetition_penalty=1.5, presence_penalty=1.0, seed=3),
            make_seq(temperature=0.0),
            make_seq(temperature=2.0, top_k=3)]
    tokens = sample(logits, seqs).token_ids
    for row in (0, 2, 4):
        assert tokens[row] == logits[row].argmax()
    assert tokens[5] in logits[5].topk(3).indices


def test_bf16_logits_are_accepted():
    logits = random_logits(8, seed=3).bfloat16()
    seqs = [make_seq(temperature=0.0, logprobs=1) for _ in range(4)]
    seqs += [make_seq(temperature=1.0, top_p=0.9, logprobs=1) for _ in range(4)]
    out = sample(logits, seqs)
    assert out.token_ids.dtype == torch.int64
    assert torch.equal(out.token_ids[:4], logits[:4].float().argmax(-1))
    ref = logits.float().log_softmax(-1)
    for row in range(8):
        assert out.logprobs[row].logprob == pytest.approx(ref[row, out.token_ids[row]].item())


# ---- seeds ------------------------------------------------------------------------------


def seeded_tokens(seed, logits, neighbours, row, num_steps=6):
    """Tokens a request with `seed` samples at `row` of a batch, over `num_steps` positions."""
    tokens = []
    for step in range(num_steps):
        seqs = list(neighbours)
        seqs.insert(row, make_seq(output=tokens, temperature=1.0, seed=seed))
        batch_logits = random_logits(len(seqs), seed=100 + step)  # neighbours' logits change
        batch_logits[row] = logits
        tokens.append(sample(batch_logits, seqs, step_seed=step).token_ids[row].item())
    return tokens


def test_same_seed_same_tokens_whatever_the_batch():
    logits = torch.zeros(VOCAB)  # flat: every token equally likely, so the seed decides
    alone = seeded_tokens(42, logits, [], row=0)
    neighbours = [make_seq(temperature=0.0), make_seq(temperature=0.7, top_k=5),
                  make_seq(temperature=1.3, top_p=0.5, min_p=0.1),
                  make_seq(temperature=1.0, repetition_penalty=2.0, frequency_penalty=1.0),
                  make_seq(temperature=1.0, seed=7), make_seq(temperature=1.0)]
    assert seeded_tokens(42, logits, neighbours, row=3) == alone
    assert seeded_tokens(42, logits, neighbours[::-1], row=6) == alone
    assert seeded_tokens(42, logits, neighbours[:2], row=1) == alone
    assert len(set(alone)) > 1  # the noise changes with the position


def test_different_seeds_differ_on_a_flat_distribution():
    logits = torch.zeros(VOCAB)
    runs = [tuple(seeded_tokens(seed, logits, [], row=0, num_steps=8)) for seed in range(4)]
    assert len(set(runs)) == len(runs)
    assert len({token_seed(1, 0), token_seed(1, 1), token_seed(2, 0), token_seed(-1, 0)}) == 4


def test_unseeded_rows_repeat_with_the_same_step_seed():
    logits = torch.zeros(32, VOCAB)
    seqs = [make_seq(temperature=1.0) for _ in range(32)]
    a = sample(logits, seqs, step_seed=5).token_ids
    assert torch.equal(a, sample(logits, seqs, step_seed=5).token_ids)
    assert not torch.equal(a, sample(logits, seqs, step_seed=6).token_ids)


# ---- temperature and filters ------------------------------------------------------------


PROBS = [0.5, 0.3, 0.15, 0.05]


def test_unfiltered_sampling_follows_softmax():
    freq = frequencies(draw(PROBS, temperature=1.0), len(PROBS))
    torch.testing.assert_close(freq, torch.tensor(PROBS, dtype=torch.float64),
                               atol=FREQ_TOL, rtol=0)


def test_top_p_keeps_the_smallest_set_reaching_p():
    # 0.5 < 0.75 <= 0.5 + 0.3: tokens 0 and 1, renormalised to 0.625 / 0.375.
    freq = frequencies(draw(PROBS, top_p=0.75), len(PROBS))
    assert freq[2] == 0 and freq[3] == 0
    torch.testing.assert_close(freq[:2], torch.tensor([0.625, 0.375], dtype=torch.float64),
                               atol=FREQ_TOL, rtol=0)


def test_min_p_drops_tokens_below_a_fraction_of_the_top():
    # min_p=0.25: threshold 0.125 drops only token 3; the rest renormalise over 0.95.
    freq = frequencies(draw(PROBS, min_p=0.25), len(PROBS))
    assert freq[3] == 0
    expected = torch.tensor([0.5, 0.3, 0.15], dtype=torch.float64) / 0.95
    torch.testing.assert_close(freq[:3], expected, atol=FREQ_TOL, rtol=0)


def test_top_k_keeps_exactly_k():
    logits = random_logits(1, seed=4)[0]
    k = 5
    kept = apply_top_k_top_p(logits[None], torch.tensor([k]), None)[0]
    assert torch.isfinite(kept).sum() == k
    top = set(logits.topk(k).indices.tolist())
    assert set(torch.isfinite(kept).nonzero().flatten().tolist()) == top
    torch.testing.assert_close(kept[list(top)], logits[list(top)])
    # Sampled at a high temperature, all k tokens come up and nothing else does.
    tokens = sample(logits.repeat(2000, 1),
                    [make_seq(temperature=5.0, top_k=k) for _ in range(2000)]).token_ids
    assert set(tokens.tolist()) == top


def test_higher_temperature_flattens_the_distribution():
    freqs = {t: frequencies(draw(PROBS, temperature=t), len(PROBS)) for t in (0.5, 1.0, 3.0)}
    entropy = {t: -(f[f > 0] * f[f > 0].log()).sum().item() for t, f in freqs.items()}
    assert entropy[0.5] < entropy[1.0] < entropy[3.0] < math.log(len(PROBS))
    for t, freq in freqs.items():  # and each is softmax(logits / t)
        expected = torch.softmax(torch.tensor(PROBS).log() / t, -1).double()
        torch.testing.assert_close(freq, expected, atol=FREQ_TOL, rtol=0)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**16), top_k=st.integers(1, 8), top_p=st.floats(0.01, 1.0),
       min_p=st.floats(0.0, 1.0))
def test_filters_always_keep_the_top_token(seed, top_k, top_p, min_p):
    logits = random_logits(3, vocab=8, seed=seed)
    kept = apply_min_p(apply_top_k_top_p(logits, torch.tensor([top_k] * 3),
                                         torch.tensor([top_p] * 3)), torch.tensor([min_p] * 3))
    rows = torch.arange(3)
    assert torch.equal(kept[rows, logits.argmax(-1)], logits.max(-1).values)
    assert (torch.isfinite(kept).sum(-1) <= top_k).all()
    assert (kept[torch.isfinite(kept)] == logits[torch.isfinite(kept)]).all()


# ---- penalties and min_tokens -----------------------------------------------------------


def penalised(logits, seq):
    batch = SamplingBatch.from_sequences([seq], logits.shape[-1])
    return apply_penalties(logits[None], batch)[0]


def test_repetition_penalty_divides_positive_and_multiplies_negative_logits():
    logits = torch.tensor([2.0, -2.0, 1.0, -1.0, 0.5, -0.5])
    # Token 0 in the prompt, token 1 in the output; 2 and 3 unseen; 4 and 5 in both.
    seq = make_seq(prompt=[0, 4, 5], output=[1, 4, 5], repetition_penalty=2.0)
    expected = torch.tensor([1.0, -4.0, 1.0, -1.0, 0.25, -1.0])
    torch.testing.assert_close(penalised(logits, seq), expected)
    # And the sampler uses the penalised logits: greedy moves off the repeated token.
    greedy = make_seq(prompt=[0], output=[], temperature=0.0, repetition_penalty=4.0)
    assert sample(torch.tensor([[2.0, 1.0, 0.0]]), [greedy]).token_ids.item() == 1


def test_presence_and_frequency_penalties_count_output_tokens_only():
    logits = torch.tensor([0.0, 1.0, 2.0, 3.0, -1.0])
    seq = make_seq(prompt=[2, 2, 2], output=[3, 3, 1, 3], presence_penalty=0.5,
                   frequency_penalty=0.25)
    # token 1: once -> 0.5 + 0.25; token 3: three times -> 0.5 + 0.75; prompt token 2 untouched.
    expected = torch.tensor([0.0, 0.25, 2.0, 1.75, -1.0])
    torch.testing.assert_close(penalised(logits, seq), expected)
    negative = make_seq(output=[0, 0], presence_penalty=-1.0, frequency_penalty=-0.5)
    torch.testing.assert_close(penalised(logits, negative),
                               torch.tensor([2.0, 1.0, 2.0, 3.0, -1.0]))


def test_penalty_rows_do_not_touch_their_neighbours():
    logits = random_logits(2, vocab=8, seed=5)
    seqs = [make_seq(prompt=[0, 1], output=[2], repetition_penalty=3.0, frequency_penalty=1.0),
            make_seq(prompt=[0, 1], output=[2])]
    batch = SamplingBatch.from_sequences(seqs, 8)
    out = apply_penalties(logits, batch)
    assert torch.equal(out[1], logits[1]) and not torch.equal(out[0], logits[0])


@pytest.mark.parametrize("ignore_eos", [False, True])
def test_min_tokens_masks_eos_and_stop_tokens_until_reached(ignore_eos):
    eos, stop = 0, 5
    logits = torch.full((1, 8), -1.0)
    logits[0, eos], logits[0, stop], logits[0, 3] = 10.0, 9.0, 1.0  # eos, then stop, then 3
    params = dict(temperature=0.0, min_tokens=2, stop_token_ids=[stop], ignore_eos=ignore_eos,
                  logprobs=0)
    for done, expected in [((), 3), ((3,), 3), ((3, 3), eos)]:
        out = sample(logits, [make_seq(output=done, **params)], eos_token_ids=(eos,))
        assert out.token_ids.item() == expected
    # Sampling too: masked tokens never come up (they hold nearly all the mass).
    seqs = [make_seq(temperature=1.0, min_tokens=1, stop_token_ids=[stop]) for _ in range(500)]
    tokens = sample(logits.repeat(500, 1), seqs, eos_token_ids=(eos,)).token_ids
    assert not ((tokens == eos) | (tokens == stop)).any()


# ---- logprobs ---------------------------------------------------------------------------


def test_logprobs_come_from_the_raw_logits():
    logits = random_logits(4, seed=6)
    seqs = [make_seq(temperature=0.5, top_k=10, logprobs=5, repetition_penalty=1.5),
            make_seq(temperature=0.0, logprobs=0),
            make_seq(temperature=1.0),
            make_seq(temperature=1.0, seed=1, logprobs=20)]
    out = sample(logits, seqs)
    ref = logits.log_softmax(-1)
    assert out.logprobs[2] is None and out.row_logprobs(2) is None
    for row, n in [(0, 5), (1, 0), (3, 20)]:
        entry = out.logprobs[row]
        token = out.token_ids[row].item()
        assert entry.token_id == token
        assert entry.logprob == pytest.approx(ref[row, token].item(), abs=1e-6)
        assert len(entry.top) == n
        values, ids = ref[row].topk(n)
        assert [i for i, _ in entry.top] == ids.tolist()
        assert [lp for _, lp in entry.top] == pytest.approx(values.tolist(), abs=1e-6)
        assert [lp for _, lp in entry.top] == sorted((lp for _, lp in entry.top), reverse=True)
        assert all(isinstance(i, int) for i, _ in entry.top)
    assert out.row_logprobs(0) == {"token_id": out.logprobs[0].token_id,
                                   "logprob": out.logprobs[0].logprob,
                                   "top": out.logprobs[0].top}


def test_empty_batch_and_shape_mismatch():
    out = sample(torch.zeros(0, VOCAB), [])
    assert out.token_ids.shape == (0,)
    with pytest.raises(ValueError, match="logits of shape"):
        Sampler()(torch.zeros(2, VOCAB), SamplingBatch.from_sequences([make_seq()], VOCAB))


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**16), top_ks=st.lists(st.integers(1, 40), min_size=3, max_size=3),
       top_p=st.floats(0.01, 1.0))
def test_partial_ranking_keeps_what_the_full_sort_keeps(seed, top_ks, top_p):
    """Ranking only the top max(top_k) tokens gives the full sort's result (top-p is applied
    after top-k, over the kept tokens only); random logits have no ties."""
    logits = random_logits(3, vocab=300, seed=seed)
    top_k, top_p = torch.tensor(top_ks), torch.tensor([top_p, 1.0, top_p])
    full = apply_top_k_top_p(logits, top_k, top_p)
    partial = apply_top_k_top_p(logits, top_k, top_p, max_top_k=max(top_ks))
    assert torch.equal(partial, full)
