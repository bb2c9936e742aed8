"""Tensor parallelism on 2 GPUs (NCCL) against 1 GPU: same greedy tokens, close logprobs,
with CUDA graphs on and off, and clean shutdown.

Run from the repo root on a machine with 2 GPUs:  python scripts/tp_gpu_check.py --out DIR
NVLink multicast stays off (NCCL_NVLS_ENABLE=0 and friends), also in the spawned workers,
which inherit this environment.
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import multiprocessing as mp
import os
import sys
import tempfile
import time

os.environ.update(NCCL_NVLS_ENABLE="0", TORCH_SYMM_MEM_DISABLE_MULTICAST="1",
                  NVSHMEM_DISABLE_NVLS="1")

import torch  # noqa: E402

sys.path.insert(0, os.getcwd())

from minillm import LLM, SamplingParams  # noqa: E402
from tests.tiny import make_checkpoint  # noqa: E402


def gpu_processes() -> list[str]:
    """Processes other than this one that hold memory on a GPU (nvidia-smi)."""
    import subprocess

    out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory",
                          "--format=csv,noheader"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines()
            if line.strip() and int(line.split(",")[0]) != os.getpid()]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=".")
    parser.add_argument("--hang-after", type=int, default=200,
                        help="print every thread's stack if still running after this many s")
    parser.add_argument("--quick", action="store_true",
                        help="only tiny Qwen3 (2 kv heads), float32, with CUDA graphs")
    args = parser.parse_args()
    faulthandler.dump_traceback_later(args.hang_after, exit=False)
    results = {"devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]}
    tmp = tempfile.mkdtemp()
    gen = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, 384, (n,), generator=gen).tolist() for n in (3, 17, 40, 77)]
    # logprobs of the first sampled token stand in for the logits (rank 0 alone samples)
    params = SamplingParams(temperature=0.0, max_tokens=32, ignore_eos=True, logprobs=5)
    models = [("qwen3", 2)] if args.quick else [("qwen3", 2), ("qwen3", 1), ("llama", 2)]
    for arch, kv in models:
        path = make_checkpoint(os.path.join(tmp, f"{arch}-kv{kv}"), arch, num_key_value_heads=kv)
        for dtype in ("float32",) if args.quick else ("float32", "bfloat16"):
            for eager in (False,) if args.quick else (True, False):
                tokens, first = {}, {}
                for tp in (1, 2):
                    t0 = time.perf_counter()
                    with LLM(path, device="cuda", dtype=dtype, tensor_parallel_size=tp,
                             max_model_len=256, num_kvcache_blocks=256, max_num_seqs=16,
                             enforce_eager=eager) as llm:
                        print(f"  tp={tp} eager={eager}: started in "
                              f"{time.perf_counter() - t0:.1f} s", flush=True)
                        outs = llm.generate(prompts, params, use_tqdm=False)
                        tokens[tp] = [o.token_ids for o in outs]
                        first[tp] = [dict(o.logprobs[0]["top"]) for o in outs]
                same = sum(a == b for a, b in zip(tokens[1], tokens[2]))
                diff = max(abs(a[t] - b[t]) for a, b in zip(first[1], first[2])
                           for t in a.keys() & b.keys())
                name = f"{arch}-kv{kv}-{dtype}-{'eager' if eager else 'graphs'}"
                results[name] = {"greedy_equal": f"{same}/{len(prompts)} requests (32 steps)",
                                 "max_first_token_logprob_diff": diff}
                print(name, results[name], flush=True)
    results["processes_left"] = len(mp.active_children())
    print("processes left after close():", results["processes_left"])
    # An exception inside the `with` block ends the workers too, and frees both GPUs.
    path = os.path.join(tmp, "qwen3-kv2")
    try:
        with LLM(path, device="cuda", tensor_parallel_size=2, max_model_len=256,
                 num_kvcache_blocks=256, max_num_seqs=16) as llm:
            llm.generate(prompts[:1], SamplingParams(max_tokens=4), use_tqdm=False)
            raise RuntimeError("an error in the user's code")
    except RuntimeError:
        pass
    results["processes_left_after_exception"] = len(mp.active_children())
    results["gpu_processes_after_exception"] = gpu_processes()
    print("after an exception: processes left", results["processes_left_after_exception"],
          "| GPU processes other than this one:", results["gpu_processes_after_exception"])
    with open(os.path.join(args.out, "tp_gpu_check.json"), "w") as f:
        json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
