"""Top-p (nucleus) filtering without sorting the vocabulary: one threshold per row.

Top-p keeps the smallest set of most likely tokens whose probability reaches `top_p`. Sorting a
151,936-token row to find it costs about 5 ms for 256 rows on an H200, most of a decode step.
The set is also "every token whose logit is at least t", for the largest t whose tokens carry
a mass of at least `top_p`, and t can be found by search instead of by sorting. Each row is cut
into chunks, one program per (row, chunk), so the whole GPU reads the logits:

1. `_chunk_stats`: each chunk's max and softmax sum; combined per row into the normaliser.
2. Fourteen passes of a 4-way search over the logits' float32 bit patterns (read as ordered
   integers): `_chunk_mass` sums, per chunk, the probability of the tokens at or above each
   of 4 candidate thresholds; `_narrow` adds the chunks up and keeps the candidates that
   bracket the cut. 5^14 > 2^32, so fourteen passes pin t to one float, with no host sync
   between them. (A pass is bound by its compares, not by reading the row: on an H200, 4
   candidates a pass took 1.1-1.5 ms in all, 16 took 1.8, 1 took 1.8-2.3, the sort 2.8;
   `benchmarks/top_p_bench.py`.)

Tokens tied with the threshold are all kept (the sorting reference keeps the lowest ids among
them); rows with `top_p >= 1` keep everything. The mass is summed in another order than the
sort's cumulative sum, so where a row's cut lands within float32 rounding of `top_p` the two
can differ by the one token at the edge (12 of 256 rows at top_p 0.95 over 151,936 tokens, all
within 5e-6 of 0.95 in float64). Logits: [B, V] float32 (the sampler's
temperature-scaled copy), unit stride along V.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

CHUNK = 8192  # logits per program
BLOCK = 1024  # logits per iteration inside a program
CANDIDATES = 4  # thresholds tested per pass


def top_p_threshold_reference(logits: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """What `top_p_threshold` computes, by sorting: per row, the smallest logit that top-p
    keeps (-inf where `top_p >= 1`)."""
    ranked = logits.sort(dim=-1, descending=True).values  # [B, V]
    probs = ranked.softmax(dim=-1)
    mass_above = probs.cumsum(dim=-1) - probs
    kept = mass_above < top_p[:, None]  # a prefix of each row
    last = kept.sum(dim=-1) - 1  # [B]
    threshold = ranked.gather(-1, last[:, None])[:, 0]
    return torch.where(top_p >= 1.0, float("-inf"), threshold)


@triton.jit
def _key(x):
    """Float32 values as int32 keys in the same order (negative floats have their bits flipped)."""
    bits = x.to(tl.int32, bitcast=True)
    return tl.where(bits >= 0, bits, bits ^ 0x7FFFFFFF)


@triton.jit
def _chunk_stats(logits_ptr, max_ptr, sum_ptr, stride, V, CHUNK: tl.constexpr,
                 BLOCK: tl.constexpr):
    row, chunk = tl.program_id(0).to(tl.int64), tl.program_id(1)
    num_chunks = tl.num_programs(1)
    base = logits_ptr + row * stride
    offs = tl.arange(0, BLOCK)
    m = float("-inf")
    s = 0.0
    for start in range(chunk * CHUNK, chunk * CHUNK + CHUNK, BLOCK):
        x = tl.load(base + start + offs, mask=start + offs < V, other=float("-inf"))
        new_m = tl.maximum(m, tl.max(x, axis=0))
        shift = tl.where(new_m == float("-inf"), 0.0, new_m)  # all -inf so far: no NaN
        s = s * tl.exp(m - shift) + tl.sum(tl.exp(x - shift), axis=0)  # exp(-inf) = 0
        m = new_m
    tl.store(max_ptr + row * num_chunks + chunk, m)
    tl.store(sum_ptr + row * num_chunks + chunk, s)


@triton.jit
def _candidates(lo, hi, CANDIDATES: tl.constexpr):
    """CANDIDATES keys spread over the open interval (lo, hi), ascending."""
    steps = tl.arange(1, CANDIDATES + 1).to(tl.int64)
    return lo + ((hi - lo) * steps) // (CANDIDATES + 1)


@triton.jit
def _chunk_mass(logits_ptr, row_max_ptr, lo_ptr, hi_ptr, mass_ptr, stride, V,
                CHUNK: tl.constexpr, BLOCK: tl.constexpr, CANDIDATES: tl.constexpr):
    row, chunk = tl.program_id(0).to(tl.int64), tl.program_id(1)
    num_chunks = tl.num_programs(1)
    base = logits_ptr + row * stride
    m = tl.load(row_max_ptr + row)
    # In (lo, hi), so int32 holds them (the interval arithmetic needs int64).
    cand = _candidates(tl.load(lo_ptr + row), tl.load(hi_ptr + row), CANDIDATES).to(tl.int32)
    offs = tl.arange(0, BLOCK)
    mass = tl.zeros((CANDIDATES,), tl.float32)
    for start in range(chunk * CHUNK, chunk * CHUNK + CHUNK, BLOCK):
        x = tl.load(base + start + offs, mask=start + offs < V, other=float("-inf"))
        e = tl.exp(x - m)  # 0 for the padding
        hit = _key(x)[:, None] >= cand[None, :]  # [BLOCK, C], int32 compares
        mass += tl.sum(tl.where(hit, e[:, None], 0.0), axis=0)
    out = mass_ptr + (row * num_chunks + chunk) * CANDIDATES + tl.arange(0, CANDIDATES)
    tl.store(out, mass)


@triton.jit
def _narrow(mass_ptr, target_ptr, lo_ptr, hi_ptr, num_chunks,
            CANDIDATES: tl.constexpr, CHUNKS: tl.constexpr):
    """Per row: `lo` keeps mass(key >= lo) >= target, `hi` keeps it below; both move in."""
    row = tl.program_id(0).to(tl.int64)
    lo, hi = tl.load(lo_ptr + row), tl.load(hi_ptr + row)
    cand = _candidates(lo, hi, CANDIDATES)
    chunks = tl.arange(0, CHUNKS)
    tile = tl.load(mass_ptr + (row * num_chunks + chunks[:, None]) * CANDIDATES
                   + tl.arange(0, CANDIDATES)[None, :], mask=chunks[:, None] < num_chunks,
                   other=0.0)  # [CHUNKS, C]
    ok = tl.sum(tile, axis=0) >= tl.load(target_ptr + row)  # True on a prefix of candidates
    tl.store(lo_ptr + row, tl.maximum(lo, tl.max(tl.where(ok, cand, lo), axis=0)))
    tl.store(hi_ptr + row, tl.minimum(hi, tl.min(tl.where(ok, hi, cand), axis=0)))


def num_passes(candidates: int) -> int:
    """Search passes that narrow the 2**32 + 1 keys of the first interval down to one."""
    size, passes = 2**32 + 1, 0
    while size > 1:
        size, passes = -(-size // (candidates + 1)), passes + 1
    return passes


def top_p_threshold(logits: torch.Tensor, top_p: torch.Tensor, chunk: int = CHUNK,
                    candidates: int = CANDIDATES) -> torch.Tensor:
    """Per row, the smallest logit that top-p keeps ([B] float32; -inf where top_p >= 1).
    Keep `logits >= threshold[:, None]`. No host sync."""
    assert logits.dtype == torch.float32 and logits.stride(-1) == 1
    rows, vocab = logits.shape
    num_chunks = triton.cdiv(vocab, chunk)
    grid = (rows, num_chunks)
    dev = logits.device
    chunk_max = torch.empty(rows, num_chunks, dtype=torch.float32, device=dev)
    chunk_sum = torch.empty_like(chunk_max)
    _chunk_stats[grid](logits, chunk_max, chunk_sum, logits.stride(0), vocab, CHUNK=chunk,
                       BLOCK=BLOCK)
    row_max = chunk_max.amax(dim=1)  # [B]
    target = top_p.float() * (chunk_sum * (chunk_max - row_max[:, None]).exp()).sum(dim=1)
    lo = torch.full((rows,), -(2**31), dtype=torch.int64, device=dev)  # all of the mass
    bits = row_max.view(torch.int32).long()
    hi = torch.where(bits >= 0, bits, bits ^ 0x7FFFFFFF) + 1  # above the max: none of it
    mass = torch.empty(rows, num_chunks, candidates, dtype=torch.float32, device=dev)
    for _ in range(num_passes(candidates)):
        _chunk_mass[grid](logits, row_max, lo, hi, mass, logits.stride(0), vocab, CHUNK=chunk,
                          BLOCK=BLOCK, CANDIDATES=candidates)
        _narrow[(rows,)](mass, target, lo, hi, num_chunks, CANDIDATES=candidates,
                         CHUNKS=triton.next_power_of_2(num_chunks))
    key = lo.int()
    threshold = torch.where(key >= 0, key, key ^ 0x7FFFFFFF).view(torch.float32)
    return torch.where(top_p >= 1.0, float("-inf"), threshold)
