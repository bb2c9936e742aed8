"""minillm's Triton kernels on a CUDA GPU: bf16 correctness against their references, and speed.

Run from the repo root on a machine with a GPU:  python scripts/kernel_bench.py --out DIR
It prints one line per check and per timing and writes kernel_bench.json into DIR.

1. Correctness in bfloat16 (and float16) on CUDA: every kernel against its PyTorch reference
   (GQA ratios 1, 2, 4, 8; block sizes 1, 16, 256; head_dim 64 and 128; prefixes ending
   mid-block; q_len 1 and longer in one batch), and the `triton` backend against `torch` on a
   decode-only and a mixed step.
2. Timings (`triton.testing.do_bench`, median, L2 flushed between runs), with the attention
   shape of Qwen3-0.6B (16 query heads, 8 KV heads, head_dim 128), one layer:
   - the device's copy bandwidth (bytes read + written), the yardstick for memory-bound kernels;
   - decode at batch 256 x context 1000: achieved HBM bandwidth = bytes of K and V read / time,
     block sizes 16 and 256, against the `torch` backend, and a sweep of tile sizes / warps /
     stages to check the defaults; decode at small batch with and without split-KV;
   - prefill of 4 x 1024 fresh tokens and 4 x 512 tokens over a 512-token cached prefix
     (TFLOP/s counting the causal half only), against the `torch` backend, with a sweep;
   - store_kv and the fused kernels (residual + RMSNorm, QK-norm + rotary, SiLU-and-mul)
     against their PyTorch forms.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import traceback

import torch

sys.path.insert(0, os.getcwd())

import triton  # noqa: E402
from triton.testing import do_bench  # noqa: E402

from minillm.attention import AttentionMetadata, TorchBackend  # noqa: E402
from minillm.attention.torch_backend import store_kv as torch_store_kv  # noqa: E402
from minillm.attention.triton_backend import TritonBackend  # noqa: E402
from minillm.kernels import (  # noqa: E402
    decode_attention,
    decode_attention_reference,
    prefill_attention,
    prefill_attention_reference,
    qk_norm_rope,
    qk_norm_rope_reference,
    rms_norm,
    rms_norm_reference,
    silu_and_mul,
    silu_and_mul_reference,
    store_kv,
    store_kv_reference,
)
from minillm.kernels.decode_attention import choose_num_splits  # noqa: E402
from minillm.layers.rotary import RotaryEmbedding  # noqa: E402

DEV = "cuda"
HEADS, KV_HEADS, HEAD_DIM = 16, 8, 128  # Qwen3-0.6B's attention, one layer
TOL = {torch.bfloat16: 2e-2, torch.float16: 4e-3}  # on |error| / (1 + |reference|)


def ms(fn, *args, rep: int = 200, **kwargs) -> float:
    """Median milliseconds of `fn(*args, **kwargs)` (CUDA events, L2 flushed between runs)."""
    return do_bench(lambda: fn(*args, **kwargs), warmup=25, rep=rep, return_mode="median")


def paged_step(prefix_lens, query_lens, *, block_size, num_heads, num_kv_heads, head_dim,
               dtype, seed=0):
    """A random step as the runner lays it out: shuffled blocks, cached prefixes written, the
    new tokens' q/k/v and slots. Block 0 is never used (tables are padded with it)."""
    gen = torch.Generator().manual_seed(seed)
    seq_lens = [p + n for p, n in zip(prefix_lens, query_lens)]
    needed = [-(-n // block_size) for n in seq_lens]
    num_blocks = 1 + sum(needed)
    order = 1 + torch.randperm(num_blocks - 1, generator=gen)
    width = max(needed) + 1
    tables = torch.zeros(len(seq_lens), width, dtype=torch.int32)
    at = 0
    for i, n in enumerate(needed):
        tables[i, :n] = order[at:at + n]
        at += n
    shape = (num_blocks, block_size, num_kv_heads, head_dim)
    k_cache = torch.randn(shape, dtype=dtype, device=DEV)  # prefixes and junk alike
    v_cache = torch.randn(shape, dtype=dtype, device=DEV)
    slots = []
    for i, (p, total) in enumerate(zip(prefix_lens, seq_lens)):
        t = torch.arange(p, total)
        slots.append(tables[i, t // block_size].long() * block_size + t % block_size)
    num_tokens = sum(query_lens)
    q = torch.randn(num_tokens, num_heads, head_dim, generator=gen).to(dtype).to(DEV)
    k = torch.randn(num_tokens, num_kv_heads, head_dim, generator=gen).to(dtype).to(DEV)
    v = torch.randn(num_tokens, num_kv_heads, head_dim, generator=gen).to(dtype).to(DEV)
    cu = [0, *itertools.accumulate(query_lens)]
    meta = AttentionMetadata(
        slot_mapping=torch.cat(slots).to(DEV),
        cu_seqlens_q=torch.tensor(cu, dtype=torch.int32, device=DEV),
        seq_lens=torch.tensor(seq_lens, dtype=torch.int32, device=DEV),
        block_tables=tables.to(DEV), max_query_len=max(query_lens),
        max_seq_len=max(seq_lens), block_size=block_size, seq_lens_cpu=seq_lens,
        query_lens_cpu=list(query_lens))
    return q, k, v, k_cache, v_cache, meta


def record(results: dict, section: str, name: str, **values) -> None:
    results.setdefault(section, {})[name] = values
    shown = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                      for k, v in values.items())
    print(f"[{section}] {name}: {shown}", flush=True)


def max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest |a - b| / (1 + |b|): absolute near zero, relative for large values."""
    return ((a.float() - b.float()).abs() / (1 + b.float().abs())).max().item()


# ---- 1. correctness ----

def check_correctness(results: dict) -> bool:
    ok_all = True

    def check(name, err, tol, **extra):
        nonlocal ok_all
        ok = err <= tol
        ok_all &= ok
        record(results, "correctness", name, max_err=err, tol=tol, ok=ok, **extra)

    gen = torch.Generator().manual_seed(0)
    cases = [(torch.bfloat16, group, block_size, head_dim) for group, block_size, head_dim
             in itertools.product((1, 2, 4, 8), (1, 16, 256), (64, 128))]
    for dtype, group, block_size, head_dim in cases + [(torch.float16, 4, 16, 128)]:
        seed = group * 1000 + block_size + head_dim
        prefix = torch.randint(0, 700, (6,), generator=gen).tolist() + [0, 255]
        q, k, v, kc, vc, meta = paged_step(
            prefix, [1] * len(prefix), block_size=block_size, num_heads=2 * group,
            num_kv_heads=2, head_dim=head_dim, dtype=dtype, seed=seed)
        store_kv(k, v, kc, vc, meta.slot_mapping)
        ref = decode_attention_reference(q, kc, vc, meta.block_tables, meta.seq_lens, 0.1)
        for splits in (None, 1, 7):
            out = decode_attention(q, kc, vc, meta.block_tables, meta.seq_lens, 0.1,
                                   max_seq_len=meta.max_seq_len, num_splits=splits)
            check(f"decode {str(dtype)[6:]} group={group} block={block_size} dim={head_dim} "
                  f"splits={splits}", max_err(out, ref), TOL[dtype])
        query = [1, 37, 300, 1, 64, 5, 1, 129]
        prefix = [100, 0, 17, 1000, 256, 3, 0, 64]
        q, k, v, kc, vc, meta = paged_step(
            prefix, query, block_size=block_size, num_heads=2 * group, num_kv_heads=2,
            head_dim=head_dim, dtype=dtype, seed=seed)
        ref_kc, ref_vc = kc.clone(), vc.clone()
        store_kv_reference(k, v, ref_kc, ref_vc, meta.slot_mapping)
        store_kv(k, v, kc, vc, meta.slot_mapping)
        check(f"store_kv {str(dtype)[6:]} block={block_size} dim={head_dim}",
              float(not (torch.equal(kc, ref_kc) and torch.equal(vc, ref_vc))), 0.0)
        ref = prefill_attention_reference(q, kc, vc, meta.cu_seqlens_q, meta.seq_lens,
                                          meta.block_tables, 0.1)
        out = prefill_attention(q, kc, vc, meta.cu_seqlens_q, meta.seq_lens, meta.block_tables,
                                0.1, max_query_len=meta.max_query_len)
        check(f"prefill {str(dtype)[6:]} group={group} block={block_size} dim={head_dim}",
              max_err(out, ref), TOL[dtype])

    for prefix, query in (([999, 5, 0, 250], [1, 1, 1, 1]), ([0, 40, 999, 17], [300, 1, 1, 64])):
        q, k, v, kc, vc, meta = paged_step(prefix, query, block_size=16, num_heads=HEADS,
                                           num_kv_heads=KV_HEADS, head_dim=HEAD_DIM,
                                           dtype=torch.bfloat16, seed=7)
        ref_kc, ref_vc = kc.clone(), vc.clone()
        ref = TorchBackend().forward(q, k, v, ref_kc, ref_vc, meta, HEAD_DIM**-0.5)
        out = TritonBackend().forward(q, k, v, kc, vc, meta, HEAD_DIM**-0.5)
        same_cache = torch.equal(kc, ref_kc) and torch.equal(vc, ref_vc)
        kind = "decode-only" if meta.is_decode_only else "mixed"
        check(f"backend triton vs torch, {kind} step", max_err(out, ref), TOL[torch.bfloat16],
              same_cache=same_cache)
        ok_all &= same_cache

    for tokens in (7, 300):
        x, res = torch.randn(2, tokens, 1024, device=DEV, dtype=torch.bfloat16).unbind(0)
        w = torch.randn(1024, device=DEV, dtype=torch.bfloat16)
        y_ref, h_ref = rms_norm_reference(x, w, 1e-6, res)
        y, h = rms_norm(x, w, 1e-6, res)
        check(f"rms_norm+residual bf16 tokens={tokens}", max_err(y, y_ref), 2e-2,
              residual_exact=torch.equal(h, h_ref))
        q, k, cos, sin, qw, kw, pos = qk_inputs(tokens)
        for norm in (True, False):
            weights = (qw, kw) if norm else (None, None)
            q_ref, k_ref = qk_norm_rope_reference(q, k, pos, cos, sin, *weights, 1e-6)
            q_out, k_out = qk_norm_rope(q, k, pos, cos, sin, *weights, 1e-6)
            check(f"qk_norm_rope bf16 tokens={tokens} norm={norm}",
                  max(max_err(q_out, q_ref), max_err(k_out, k_ref)), 2e-2)
        x = torch.randn(tokens, 2 * 3072, device=DEV, dtype=torch.bfloat16)
        check(f"silu_and_mul bf16 tokens={tokens}",
              max_err(silu_and_mul(x), silu_and_mul_reference(x)), 2e-2)
    return ok_all


def qk_inputs(tokens: int):
    """Qwen3-0.6B's q and k for `tokens` tokens, as views into one packed qkv activation."""
    qkv = torch.randn(tokens, (HEADS + 2 * KV_HEADS) * HEAD_DIM, device=DEV,
                      dtype=torch.bfloat16)
    q, k, _ = qkv.split([HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM], dim=-1)
    rope = RotaryEmbedding(HEAD_DIM, 4096, 1e6).to(DEV)
    qw, kw = torch.randn(2, HEAD_DIM, device=DEV, dtype=torch.bfloat16).unbind(0)
    pos = torch.randint(0, 4096, (tokens,), device=DEV)
    return (q.view(tokens, HEADS, HEAD_DIM), k.view(tokens, KV_HEADS, HEAD_DIM), rope.cos,
            rope.sin, qw, kw, pos)


# ---- 2. timings ----

def time_copy(results: dict) -> float:
    x = torch.empty(2**30, dtype=torch.uint8, device=DEV)  # 1 GiB
    y = torch.empty_like(x)
    t = ms(y.copy_, x)
    bw = 2 * x.numel() / (t * 1e-3)  # bytes read + written
    record(results, "bandwidth", "device copy 1 GiB", ms=t, read_plus_write_GBps=bw / 1e9)
    return bw


def time_decode(results: dict, copy_bw: float, sweep: bool) -> None:
    batch, context = 256, 1000
    for block_size in (16, 256):
        q, k, v, kc, vc, meta = paged_step(
            [context - 1] * batch, [1] * batch, block_size=block_size, num_heads=HEADS,
            num_kv_heads=KV_HEADS, head_dim=HEAD_DIM, dtype=torch.bfloat16)
        store_kv(k, v, kc, vc, meta.slot_mapping)
        kv_bytes = 2 * batch * context * KV_HEADS * HEAD_DIM * kc.element_size()  # K and V
        args = (q, kc, vc, meta.block_tables, meta.seq_lens, HEAD_DIM**-0.5)
        t = ms(decode_attention, *args, max_seq_len=context)
        t_torch = ms(TorchBackend().decode, q, kc, vc, meta, HEAD_DIM**-0.5)
        name = f"batch {batch} x context {context}, block {block_size}"
        record(results, "decode", name, triton_ms=t, torch_ms=t_torch,
               speedup=t_torch / t, kv_GBps=kv_bytes / (t * 1e-3) / 1e9,
               fraction_of_copy_bw=kv_bytes / (t * 1e-3) / copy_bw,
               num_splits=choose_num_splits(batch, KV_HEADS, context, 132))
        if not sweep or block_size != 16:
            continue
        best = None
        for block_n, warps, stages in itertools.product((32, 64, 128), (2, 4, 8), (1, 2, 3, 4)):
            try:
                tc = ms(decode_attention, *args, max_seq_len=context, block_n=block_n,
                        num_warps=warps, num_stages=stages, rep=50)
            except Exception:  # a config that does not fit (shared memory, registers)
                continue
            if best is None or tc < best[0]:
                best = (tc, block_n, warps, stages)
        record(results, "decode sweep", name, best_ms=best[0], block_n=best[1],
               num_warps=best[2], num_stages=best[3],
               best_fraction_of_copy_bw=kv_bytes / (best[0] * 1e-3) / copy_bw)

    for batch, context in ((1, 8192), (8, 4096), (32, 2048)):
        q, k, v, kc, vc, meta = paged_step(
            [context - 1] * batch, [1] * batch, block_size=16, num_heads=HEADS,
            num_kv_heads=KV_HEADS, head_dim=HEAD_DIM, dtype=torch.bfloat16)
        args = (q, kc, vc, meta.block_tables, meta.seq_lens, HEAD_DIM**-0.5)
        kv_bytes = 2 * batch * context * KV_HEADS * HEAD_DIM * kc.element_size()
        splits = choose_num_splits(batch, KV_HEADS, context, torch.cuda.get_device_properties(
            DEV).multi_processor_count)
        t_split = ms(decode_attention, *args, max_seq_len=context)
        t_one = ms(decode_attention, *args, max_seq_len=context, num_splits=1)
        record(results, "decode small batch", f"batch {batch} x context {context}",
               split_kv_ms=t_split, num_splits=splits, one_split_ms=t_one,
               split_kv_GBps=kv_bytes / (t_split * 1e-3) / 1e9)


def attention_flops(prefix_lens, query_lens) -> float:
    """QK^T and PV over the visible (causal) keys only: 4 * head_dim flops per (query, key)."""
    pairs = sum(q * p + q * (q + 1) // 2 for p, q in zip(prefix_lens, query_lens))
    return 4.0 * HEADS * HEAD_DIM * pairs


def time_prefill(results: dict, sweep: bool) -> None:
    for name, prefix, query in (("4 x 1024 fresh", [0] * 4, [1024] * 4),
                                ("4 x 512 over a 512 prefix", [512] * 4, [512] * 4),
                                ("mixed: 1 chunk of 512 + 255 decodes at 1000",
                                 [0] + [999] * 255, [512] + [1] * 255)):
        q, k, v, kc, vc, meta = paged_step(prefix, query, block_size=16, num_heads=HEADS,
                                           num_kv_heads=KV_HEADS, head_dim=HEAD_DIM,
                                           dtype=torch.bfloat16)
        store_kv(k, v, kc, vc, meta.slot_mapping)
        args = (q, kc, vc, meta.cu_seqlens_q, meta.seq_lens, meta.block_tables, HEAD_DIM**-0.5)
        t = ms(prefill_attention, *args, max_query_len=meta.max_query_len)
        t_torch = ms(TorchBackend().prefill, q, k, v, kc, vc, meta, HEAD_DIM**-0.5)
        flops = attention_flops(prefix, query)
        record(results, "prefill", name, triton_ms=t, torch_ms=t_torch, speedup=t_torch / t,
               triton_TFLOPs=flops / (t * 1e-3) / 1e12)
        if not sweep or prefix[0] != 0 or query[0] != 1024:
            continue  # the sweep only on the fresh 4 x 1024 prefill
        best = None
        for block_m, block_n, warps, stages in itertools.product(
                (64, 128), (32, 64, 128), (4, 8), (1, 2, 3)):
            try:
                tc = ms(prefill_attention, *args, max_query_len=meta.max_query_len,
                        block_m=block_m, block_n=block_n, num_warps=warps, num_stages=stages,
                        rep=50)
            except Exception:  # a config that does not fit (shared memory, registers)
                continue
            if best is None or tc < best[0]:
                best = (tc, block_m, block_n, warps, stages)
        record(results, "prefill sweep", name, best_ms=best[0], block_m=best[1],
               block_n=best[2], num_warps=best[3], num_stages=best[4],
               best_TFLOPs=flops / (best[0] * 1e-3) / 1e12)


def time_small_ops(results: dict) -> None:
    for tokens in (256, 4096):
        q, k, v, kc, vc, meta = paged_step([0] * (tokens // 256), [256] * (tokens // 256),
                                           block_size=16, num_heads=HEADS,
                                           num_kv_heads=KV_HEADS, head_dim=HEAD_DIM,
                                           dtype=torch.bfloat16)
        t = ms(store_kv, k, v, kc, vc, meta.slot_mapping)
        t_torch = ms(torch_store_kv, k, v, kc, vc, meta.slot_mapping)
        record(results, "store_kv", f"{tokens} tokens", triton_ms=t, torch_index_copy_ms=t_torch,
               speedup=t_torch / t)

        # Each fused kernel against its PyTorch reference: the layers' arithmetic as eager
        # PyTorch ops (what the layers ran on CUDA before they called the kernels).
        x, res = torch.randn(2, tokens, 1024, device=DEV, dtype=torch.bfloat16).unbind(0)
        w = torch.ones(1024, device=DEV, dtype=torch.bfloat16)
        t = ms(rms_norm, x, w, 1e-6, res)
        t_torch = ms(rms_norm_reference, x, w, 1e-6, res)
        record(results, "rms_norm+residual", f"{tokens} tokens x 1024", triton_ms=t,
               torch_eager_ms=t_torch, speedup=t_torch / t)
        q, k, cos, sin, qw, kw, pos = qk_inputs(tokens)
        t = ms(qk_norm_rope, q, k, pos, cos, sin, qw, kw, 1e-6)
        t_torch = ms(qk_norm_rope_reference, q, k, pos, cos, sin, qw, kw, 1e-6)
        record(results, "qk_norm+rope", f"{tokens} tokens, 16+8 heads x 128", triton_ms=t,
               torch_eager_ms=t_torch, speedup=t_torch / t)
        x = torch.randn(tokens, 2 * 3072, device=DEV, dtype=torch.bfloat16)
        t = ms(silu_and_mul, x)
        t_torch = ms(silu_and_mul_reference, x)
        record(results, "silu_and_mul", f"{tokens} tokens x 3072", triton_ms=t,
               torch_eager_ms=t_torch, speedup=t_torch / t)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="directory for kernel_bench.json")
    parser.add_argument("--skip-sweeps", action="store_true", help="defaults only (faster)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("kernel_bench.py needs a CUDA GPU")
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    props = torch.cuda.get_device_properties(0)
    results: dict = {"device": props.name, "sms": props.multi_processor_count,
                     "torch": torch.__version__, "triton": triton.__version__,
                     "commit": commit, "command": " ".join(sys.argv)}
    print(f"{props.name}, torch {torch.__version__}, triton {triton.__version__}", flush=True)
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "kernel_bench.json")

    def section(name, fn, *fn_args):
        """Run one part; a failure is recorded and the others still run. The JSON is written
        after each part, so a crash keeps what was measured."""
        try:
            return fn(*fn_args)
        except Exception as e:
            traceback.print_exc()
            results.setdefault("errors", {})[name] = repr(e)
        finally:
            with open(path, "w") as f:
                json.dump(results, f, indent=2)

    sweep = not args.skip_sweeps
    results["all_correct"] = section("correctness", check_correctness, results)
    copy_bw = section("bandwidth", time_copy, results) or 3.0e12  # H100's, if it failed
    section("decode", time_decode, results, copy_bw, sweep)
    section("prefill", time_prefill, results, sweep)
    section("small ops", time_small_ops, results)
    print(f"wrote {path}; all correct: {results['all_correct']}; "
          f"errors: {results.get('errors', {})}")


if __name__ == "__main__":
    main()
