"""The `flash_attn` backend (flash-attn-4) on a CUDA GPU: correct against `torch`, timed
against `triton`, and greedy tokens of whole generations against `triton`.

Run from the repo root on a GPU machine where `flash_attn.cute` imports:
    python scripts/flash_attn_check.py --out DIR
It prints one line per check and writes flash_attn_check.json into DIR. Throughput is
`minillm bench offline --attention-backend flash_attn`, not this script.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import traceback

import torch

sys.path.insert(0, os.getcwd())
sys.path.insert(0, os.path.join(os.getcwd(), "scripts"))

from kernel_bench import max_err, ms, paged_step  # noqa: E402

from minillm import LLM, SamplingParams  # noqa: E402
from minillm.attention import TorchBackend, get_backend  # noqa: E402
from tests.tiny import make_checkpoint  # noqa: E402

HEADS, KV_HEADS, HEAD_DIM = 16, 8, 128  # Qwen3-0.6B's attention


def check_steps(results: dict) -> None:
    """One layer's step, flash_attn against the torch reference: decodes, prefills over a
    cached prefix that ends mid-block, an empty prefix, mixed batches; block sizes 16 and 256."""
    flash = get_backend("flash_attn", "cuda")
    for block_size in (16, 128, 256):
        for prefix, query in (([999, 5, 0, 250], [1, 1, 1, 1]),
                              ([0, 40, 999, 17], [300, 1, 1, 64]), ([0, 0], [77, 1024])):
            name = f"block={block_size} prefix={prefix} query={query}"
            try:
                q, k, v, kc, vc, meta = paged_step(
                    prefix, query, block_size=block_size, num_heads=HEADS,
                    num_kv_heads=KV_HEADS, head_dim=HEAD_DIM, dtype=torch.bfloat16, seed=7)
                ref_kc, ref_vc = kc.clone(), vc.clone()
                ref = TorchBackend().forward(q, k, v, ref_kc, ref_vc, meta, HEAD_DIM**-0.5)
                out = flash.forward(q, k, v, kc, vc, meta, HEAD_DIM**-0.5)
                err = max_err(out, ref)
                results["steps"][name] = {"max_err": err, "ok": err < 2e-2,
                                          "same_cache": torch.equal(kc, ref_kc)}
            except Exception as e:  # record and go on: one shape must not hide the others
                results["steps"][name] = {"error": f"{type(e).__name__}: {e}"[:400]}
                traceback.print_exc()
            print(name, results["steps"][name], flush=True)


def time_steps(results: dict) -> None:
    """flash_attn against triton on the shapes of the offline benchmark's steps."""
    flash, triton = get_backend("flash_attn", "cuda"), get_backend("triton", "cuda")
    cases = {"decode 256 x 1000": ([999] * 256, [1] * 256),
             "decode 8 x 4096": ([4095] * 8, [1] * 8),
             "prefill 4 x 1024": ([0] * 4, [1024] * 4),
             "mixed 512-chunk + 255 decodes": ([0] + [999] * 255, [512] + [1] * 255)}
    for name, (prefix, query) in cases.items():
        q, k, v, kc, vc, meta = paged_step(prefix, query, block_size=16, num_heads=HEADS,
                                           num_kv_heads=KV_HEADS, head_dim=HEAD_DIM,
                                           dtype=torch.bfloat16, seed=1)
        try:
            t_flash = ms(flash.forward, q, k, v, kc, vc, meta, HEAD_DIM**-0.5)
            t_triton = ms(triton.forward, q, k, v, kc, vc, meta, HEAD_DIM**-0.5)
            results["timing"][name] = {"flash_attn_ms": t_flash, "triton_ms": t_triton,
                                       "triton_over_flash": t_triton / t_flash}
        except Exception as e:
            results["timing"][name] = {"error": f"{type(e).__name__}: {e}"[:400]}
        print(name, results["timing"][name], flush=True)


def check_generation(results: dict) -> None:
    """Whole generations on a tiny Qwen3, bf16: flash_attn against triton, eager and graphs."""
    path = make_checkpoint(os.path.join(tempfile.mkdtemp(), "qwen3"), "qwen3")
    gen = torch.Generator().manual_seed(5)
    prompts = [torch.randint(0, 384, (n,), generator=gen).tolist() for n in (3, 17, 40, 77, 9)]
    params = SamplingParams(temperature=0.0, max_tokens=32, ignore_eos=True)
    for eager in (True, False):
        tokens = {}
        for backend in ("triton", "flash_attn"):
            t0 = time.perf_counter()
            llm = LLM(path, device="cuda", dtype="bfloat16", attention_backend=backend,
                      max_model_len=256, num_kvcache_blocks=256, max_num_seqs=16,
                      enforce_eager=eager)
            tokens[backend] = [o.token_ids for o in llm.generate(prompts, params,
                                                                 use_tqdm=False)]
            print(f"  {backend} eager={eager}: {time.perf_counter() - t0:.1f} s", flush=True)
        same = sum(a == b for a, b in zip(tokens["triton"], tokens["flash_attn"]))
        results["generation"]["eager" if eager else "graphs"] = f"{same}/{len(prompts)}"
    print("greedy flash_attn == triton:", results["generation"], flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default=".")
    args = parser.parse_args()
    import flash_attn.cute

    results = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
               "flash_attn_cute": getattr(flash_attn.cute, "__version__", "?"),
               "steps": {}, "timing": {}, "generation": {}}
    for check in (check_steps, time_steps, check_generation):
        try:
            check(results)
        except Exception as e:
            results[check.__name__ + "_error"] = f"{type(e).__name__}: {e}"[:400]
            traceback.print_exc()
        with open(os.path.join(args.out, "flash_attn_check.json"), "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
