"""Top-p (nucleus) filtering without sorting the vocabulary: one threshold per row.

Top-p keeps the smallest set of most likely tokens whose probability reaches `top_p`. Sorting a
151,936-token row to find it costs about 5 ms for 256 rows on an H200, most of a decode step.
The set is also "every token whose logit is at least t", for the largest t whose tokens carry
a mass of at least `top_p`, and t can be found by search instead of by sorting: one program
per row computes the row's softmax normaliser in one pass, then narrows t by a 16-way search
over the logits' float32 bit patterns (read as ordered integers), each pass over the row
testing 16 candidates at once. Eight or nine passes pin t to one float exactly.

Tokens tied with the threshold are all kept (the sorting reference keeps the lowest ids among
them); rows with `top_p >= 1` keep everything. Logits: [B, V] float32 (the sampler's
temperature-scaled copy), unit stride along V.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK = 1024  # logits per iteration of a pass
CANDIDATES = 16  # thresholds tested per pass


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
def _top_p_threshold_kernel(logits_ptr, top_p_ptr, out_ptr, stride, V,
                            BLOCK: tl.constexpr, CANDIDATES: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    base = logits_ptr + row * stride
    p = tl.load(top_p_ptr + row)
    offs = tl.arange(0, BLOCK)

    # Pass 1: the row's max and softmax normaliser (online).
    m = float("-inf")
    s = 0.0
    for start in range(0, V, BLOCK):
        x = tl.load(base + start + offs, mask=start + offs < V, other=float("-inf"))
        new_m = tl.maximum(m, tl.max(x, axis=0))
        s = s * tl.exp(m - new_m) + tl.sum(tl.exp(x - new_m), axis=0)
        m = new_m
    target = p * s

    # Search: `lo` always has mass(logit >= lo) >= target, `hi` never; stop when adjacent.
    lo = tl.full((), -2147483648, tl.int64)  # below every key: the whole row's mass
    hi = _key(m).to(tl.int64) + 1  # above the max: no mass
    steps = tl.arange(1, CANDIDATES + 1).to(tl.int64)
    while hi - lo > 1:
        cand = lo + ((hi - lo) * steps) // (CANDIDATES + 1)  # [C], ascending, in (lo, hi)
        mass = tl.zeros((CANDIDATES,), tl.float32)
        for start in range(0, V, BLOCK):
            x = tl.load(base + start + offs, mask=start + offs < V, other=float("-inf"))
            e = tl.exp(x - m)  # 0 for the padding
            k = _key(x).to(tl.int64)
            hit = k[:, None] >= cand[None, :]  # [BLOCK, C]
            mass += tl.sum(tl.where(hit, e[:, None], 0.0), axis=0)
        ok = mass >= target  # True for a prefix of the ascending candidates
        lo = tl.maximum(lo, tl.max(tl.where(ok, cand, lo), axis=0))
        hi = tl.minimum(hi, tl.min(tl.where(ok, hi, cand), axis=0))

    key = lo.to(tl.int32)
    bits = tl.where(key >= 0, key, key ^ 0x7FFFFFFF)
    threshold = bits.to(tl.float32, bitcast=True)
    tl.store(out_ptr + row, tl.where(p >= 1.0, float("-inf"), threshold))


def top_p_threshold(logits: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Per row, the smallest logit that top-p keeps ([B] float32; -inf where top_p >= 1).
    Keep `logits >= threshold[:, None]`."""
    assert logits.dtype == torch.float32 and logits.stride(-1) == 1
    rows, vocab = logits.shape
    out = torch.empty(rows, dtype=torch.float32, device=logits.device)
    _top_p_threshold_kernel[(rows,)](logits, top_p.float().contiguous(), out, logits.stride(0),
                                     vocab, BLOCK=BLOCK, CANDIDATES=CANDIDATES)
    return out
