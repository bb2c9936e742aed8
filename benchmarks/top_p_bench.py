"""The top-p threshold kernel against the sort on a GPU: device time by candidates per pass
and chunk size, and how its cut differs from the sort's (rows, kept tokens, float64 mass).

    python benchmarks/top_p_bench.py --out DIR
"""

from __future__ import annotations

import argparse
import json
import os

import torch
from triton.testing import do_bench

from minillm.kernels.top_p import top_p_threshold, top_p_threshold_reference


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default=".")
    args = parser.parse_args()
    x = torch.randn(256, 151936, device="cuda", generator=None) * 3
    p = torch.full((256,), 0.95, device="cuda")
    ref = top_p_threshold_reference(x, p)
    probs = x.double().softmax(-1)
    result = {"device": torch.cuda.get_device_name(), "rows": 256, "vocab": 151936,
              "top_p": 0.95, "sort_ms": do_bench(lambda: x.sort(dim=-1, descending=True),
                                                 return_mode="median"), "kernel": {}}
    for c in (1, 2, 4, 8, 16):
        for chunk in (4096, 8192, 16384):
            ms = do_bench(lambda c=c, chunk=chunk: top_p_threshold(x, p, chunk, c),
                          return_mode="median")
            got = top_p_threshold(x, p, chunk, c)
            bad = (got != ref).nonzero()[:, 0].tolist()
            worst = max((abs(probs[r][x[r] >= got[r]].sum().item() - 0.95) for r in bad),
                        default=0.0)
            result["kernel"][f"candidates={c} chunk={chunk}"] = {
                "ms": ms, "rows_differing_from_sort": len(bad),
                "their_kept_mass_off_top_p_at_most": worst}
            print(f"candidates {c:2d} chunk {chunk:5d}: {ms:.3f} ms, {len(bad)} rows differ "
                  f"(kept mass within {worst:.1e} of top_p)", flush=True)
    with open(os.path.join(args.out, "top_p_bench.json"), "w") as f:
        json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
