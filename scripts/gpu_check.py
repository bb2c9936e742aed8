"""Correctness of minillm on a CUDA GPU against transformers, and a first throughput figure.

Run from the repo root on a machine with a GPU:  python scripts/gpu_check.py --out DIR
It prints one line per check and writes gpu_check.json into DIR. Checks:

1. tiny Qwen3 and Llama checkpoints, float32 on CUDA: minillm's logits for a mixed batch match
   transformers' (atol 1e-3), and 32 greedy steps give the same tokens;
2. the same in bfloat16: logits within bf16 tolerance, and greedy agreement reported;
3. scheduling invariance on CUDA: preemption / chunked prefill / prefix caching give the same
   greedy tokens as a plain run;
4. CUDA graphs against eager (`enforce_eager=True`): identical greedy tokens for batches on
   and between the captured sizes, and a count of the replays that ran;
5. overlap scheduling on against off, with graphs and eager, in float32 and bfloat16: the
   same tokens, texts and finish reasons for a batch that mixes every sampling feature
   (seeded sampling, stop ids and strings that hit, penalties, logprobs), also under
   preemption and chunked prefill.

Throughput is `minillm bench offline` (`--random-weights qwen3-0.6b`), not this script.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

import torch

sys.path.insert(0, os.getcwd())

from minillm import LLM, SamplingParams  # noqa: E402
from tests.tiny import make_checkpoint  # noqa: E402


def check_against_transformers(path: str, dtype: str, results: dict) -> None:
    from transformers import AutoModelForCausalLM

    torch_dtype = getattr(torch, dtype)
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype).cuda().eval()
    llm = LLM(path, device="cuda", dtype=dtype, max_model_len=256, num_kvcache_blocks=256,
              kvcache_block_size=16)
    gen = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, 384, (n,), generator=gen).tolist() for n in (3, 17, 40, 77)]
    outs = llm.generate(prompts, SamplingParams(temperature=0.0, max_tokens=32, ignore_eos=True),
                        use_tqdm=False)
    agree, worst = 0, 0.0
    for p, o in zip(prompts, outs):
        with torch.no_grad():
            ref = hf.generate(torch.tensor([p], device="cuda"), max_new_tokens=32,
                              do_sample=False, eos_token_id=None, pad_token_id=0)
        ref_tokens = ref[0, len(p):].tolist()
        agree += ref_tokens == o.token_ids
        # logits of the full sequence's last position, both engines
        seq = p + o.token_ids[:-1]
        with torch.no_grad():
            hf_logits = hf(torch.tensor([seq], device="cuda")).logits[0, -1].float()
        runner, sched = llm.engine.runner, llm.engine.scheduler
        from minillm.sequence import Sequence

        s = Sequence(seq, SamplingParams(temperature=0.0))
        sched.add(s)
        batch = sched.schedule()
        mine = runner.forward(batch.step_inputs(), batch.sampled)[0].float()
        sched.finish(s, "abort")
        worst = max(worst, (mine - hf_logits).abs().max().item())
    name = f"{os.path.basename(path)}-{dtype}"
    results[name] = {"greedy_agree": f"{agree}/{len(prompts)}", "max_logit_diff": worst}
    print(f"{name}: greedy {agree}/{len(prompts)} equal, max |logit diff| {worst:.2e}")


def check_scheduling(path: str, results: dict) -> None:
    gen = torch.Generator().manual_seed(1)
    system = torch.randint(0, 384, (21,), generator=gen).tolist()
    prompts = [system + torch.randint(0, 384, (n,), generator=gen).tolist()
               for n in (3, 9, 30, 1, 17, 44)]
    params = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)
    base = dict(device="cuda", dtype="float32", kvcache_block_size=4, max_model_len=128)
    runs = {"plain": dict(num_kvcache_blocks=512, enable_prefix_caching=False),
            "preempt": dict(num_kvcache_blocks=40), "chunked": dict(max_num_batched_tokens=16,
                                                                     max_num_seqs=8,
                                                                     num_kvcache_blocks=512),
            "radix": dict(num_kvcache_blocks=512, max_num_seqs=2),
            "hash": dict(num_kvcache_blocks=512, max_num_seqs=2, prefix_cache="hash")}
    tokens = {}
    for name, kw in runs.items():
        llm = LLM(path, **base, **kw)
        tokens[name] = [o.token_ids for o in llm.generate(prompts, params, use_tqdm=False)]
    same = {name: tokens[name] == tokens["plain"] for name in runs}
    results["scheduling_invariance"] = same
    print("scheduling invariance on CUDA:", same)


def check_graphs(path: str, dtype: str, results: dict) -> None:
    """CUDA graphs against eager on the same prompts: batch sizes that land on a bucket and
    between buckets (padding), greedy tokens identical, and the graphs really replayed."""
    gen = torch.Generator().manual_seed(2)
    params = SamplingParams(temperature=0.0, max_tokens=32, ignore_eos=True)
    report = {}
    for n in (1, 3, 8, 13):
        prompts = [torch.randint(0, 384, (int(k),), generator=gen).tolist()
                   for k in torch.randint(2, 90, (n,), generator=gen)]
        tokens = {}
        for eager in (True, False):
            llm = LLM(path, device="cuda", dtype=dtype, max_model_len=256,
                      num_kvcache_blocks=256, max_num_seqs=16, enforce_eager=eager)
            tokens[eager] = [o.token_ids for o in llm.generate(prompts, params, use_tqdm=False)]
            graphs = llm.engine.runner.graphs
            if not eager:
                replays = graphs.replays if graphs is not None else 0
        same = sum(a == b for a, b in zip(tokens[True], tokens[False]))
        report[f"batch_{n}"] = {"greedy_equal": f"{same}/{n}", "graph_replays": replays}
    name = f"graphs_vs_eager-{os.path.basename(path)}-{dtype}"
    results[name] = report
    print(name, report, flush=True)


def check_overlap(path: str, results: dict) -> None:
    from tests.test_overlap import mixed_params

    gen = torch.Generator().manual_seed(3)
    prompts = [torch.randint(0, 384, (n,), generator=gen).tolist()
               for n in (3, 9, 30, 1, 17, 44, 60, 5)]
    report = {}
    for dtype in ("float32", "bfloat16"):
        base = dict(device="cuda", dtype=dtype, kvcache_block_size=4, max_model_len=128,
                    max_num_seqs=16)
        greedy = SamplingParams(temperature=0.0, max_tokens=30, ignore_eos=True)
        first = LLM(path, **base, num_kvcache_blocks=512, overlap_schedule=False).generate(
            prompts, greedy, use_tqdm=False)
        params = mixed_params([first[3].token_ids[3]], first[7].text[5:8])
        for name, kw in {"graphs": dict(num_kvcache_blocks=512),
                         "eager": dict(num_kvcache_blocks=512, enforce_eager=True),
                         "preempt": dict(num_kvcache_blocks=40),
                         "chunked": dict(num_kvcache_blocks=512,
                                         max_num_batched_tokens=16)}.items():
            outs = {}
            for overlap in (False, True):
                llm = LLM(path, **base, **kw, overlap_schedule=overlap)
                outs[overlap] = [(o.token_ids, o.text, o.finish_reason)
                                 for o in llm.generate(prompts, params, use_tqdm=False)]
            same = sum(a == b for a, b in zip(outs[False], outs[True]))
            report[f"{dtype}-{name}"] = f"{same}/{len(prompts)}"
    results[f"overlap_vs_serial-{os.path.basename(path)}"] = report
    print("overlap vs serial:", report, flush=True)


def check_syncs(path: str, results: dict) -> None:
    """Where the engine makes the host wait for the GPU during steps (torch's sync debug
    mode): with overlap scheduling only the wait for the previous step's tokens should be
    left, and that one is an event, which the debug mode does not flag."""
    import collections
    import warnings

    gen = torch.Generator().manual_seed(4)
    prompts = [torch.randint(0, 384, (n,), generator=gen).tolist() for n in (5, 40, 17, 90)]
    report = {}
    for eager in (False, True):
        llm = LLM(path, device="cuda", dtype="bfloat16", max_model_len=256,
                  num_kvcache_blocks=256, max_num_seqs=16, enforce_eager=eager)
        params = SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                llm.generate(prompts, params, use_tqdm=False)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        where = collections.Counter(f"{os.path.relpath(w.filename)}:{w.lineno}" for w in caught
                                    if "synchroniz" in str(w.message))
        report["eager" if eager else "graphs"] = {
            "syncs": sum(where.values()), "steps": llm.engine.scheduler.num_steps,
            "where": dict(where.most_common(8))}
    results["host_syncs-overlap"] = report
    print("host syncs during generate (overlap on):", report, flush=True)


CHECKS = ("transformers", "graphs", "scheduling", "overlap", "syncs")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default=".")
    parser.add_argument("--checks", nargs="+", choices=CHECKS, default=list(CHECKS))
    parser.add_argument("--name", default="gpu_check", help="of the JSON file written")
    args = parser.parse_args()
    results = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
               "fused_kernels": os.environ.get("MINILLM_FUSED_KERNELS", "1") != "0"}
    tmp = tempfile.mkdtemp()
    for arch in ("qwen3", "llama"):
        path = make_checkpoint(os.path.join(tmp, arch), arch)
        for dtype in ("float32", "bfloat16"):
            if "transformers" in args.checks:
                check_against_transformers(path, dtype, results)
        for dtype in ("float32", "bfloat16"):
            if "graphs" in args.checks:
                check_graphs(path, dtype, results)
    if "scheduling" in args.checks:
        check_scheduling(os.path.join(tmp, "qwen3"), results)
    if "overlap" in args.checks:
        check_overlap(os.path.join(tmp, "qwen3"), results)
    if "syncs" in args.checks:
        check_syncs(os.path.join(tmp, "qwen3"), results)
    with open(os.path.join(args.out, f"{args.name}.json"), "w") as f:
        json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
