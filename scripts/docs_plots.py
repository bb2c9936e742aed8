"""Draw the benchmark plots of the docs from benchmarks/results/*.json.

    python scripts/docs_plots.py        # writes docs/assets/benchmarks/*.png (committed)

Each result file is a JSON object written by a benchmark (`minillm bench offline|serve`,
scripts/gpu_check.py, scripts/kernel_bench.py, ...) with at least `command`, `device` and
`commit`. The files differ in what else they hold, so each plot takes the files that have
what it draws and ignores the rest; a plot with nothing to draw is not written (and an old
copy of it is removed). The benchmarks page lists every file, plotted or not
(`results_table`, used by scripts/docs_hooks.py at build time).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
OUT = ROOT / "docs" / "assets" / "benchmarks"

# The plots this script owns, in page order: file name -> caption.
PLOTS = {
    "throughput.png": "Offline output throughput (tokens/s), and the peer's where the run "
                      "measured one on the same machine",
    "serve_latency.png": "Online serving latency (`minillm bench serve`): mean, median, p90 "
                         "and p99 of TTFT, TPOT, ITL and end-to-end latency",
    "kernels.png": "Triton kernels against the PyTorch reference on the same GPU (speedup)",
}
LATENCIES = ("ttft", "tpot", "itl", "e2el")
STATS = ("mean", "median", "p90", "p99")


@dataclass
class Result:
    """One results file: its name and its JSON object (None when it could not be read)."""

    name: str
    data: dict | None

    def get(self, key: str, default=None):
        return (self.data or {}).get(key, default)

    @property
    def device(self) -> str:
        if self.get("device"):
            return str(self.get("device"))
        devices = self.get("devices")
        if isinstance(devices, list) and devices:
            return f"{len(devices)}x {devices[0]}" if len(set(devices)) == 1 else ", ".join(
                map(str, devices))
        return "unknown"

    @property
    def throughput(self) -> float | None:
        """Output tokens/s: top level (`bench offline`) or under `throughput` (gpu_check)."""
        for holder in (self.data or {}, self.get("throughput") or {}):
            value = holder.get("output_tokens_per_s") if isinstance(holder, dict) else None
            if isinstance(value, (int, float)):
                return float(value)
        return None

    @property
    def peer_throughput(self) -> float | None:
        value = self.get("peer_output_tokens_per_s")
        return float(value) if isinstance(value, (int, float)) else None

    @property
    def is_serve(self) -> bool:
        return isinstance(self.get("median_ttft_ms"), (int, float))

    def kernel_speedups(self) -> dict[str, float]:
        """'section: case' -> speedup, for kernel benchmarks (triton against torch)."""
        out: dict[str, float] = {}
        for section, cases in (self.data or {}).items():
            if not isinstance(cases, dict):
                continue
            for case, row in cases.items():
                if isinstance(row, dict) and isinstance(row.get("speedup"), (int, float)):
                    out[f"{section}: {case}"] = float(row["speedup"])
        return out


def load_results(results_dir: Path = RESULTS) -> list[Result]:
    """Every *.json in `results_dir`, sorted by name; unreadable ones with data None."""
    results = []
    for path in sorted(Path(results_dir).glob("*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            data = None
        results.append(Result(path.name, data if isinstance(data, dict) else None))
    return results


# ---- the listing on the page ----

def _fmt(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:,.3g}"


def headline(r: Result) -> str:
    """The one figure a reader wants from this file, in words."""
    if r.data is None:
        return "unreadable JSON"
    if r.is_serve:
        return (f"{_fmt(r.get('output_throughput', 0))} output tok/s; median TTFT "
                f"{_fmt(r.get('median_ttft_ms'))} ms, ITL {_fmt(r.get('median_itl_ms', 0))} ms")
    if r.throughput is not None:
        text = f"{_fmt(r.throughput)} output tok/s"
        if r.peer_throughput is not None:
            peer = str(r.get("peer_engine") or "peer").split(" (")[0]
            text += f" vs {peer} {_fmt(r.peer_throughput)}"
        backend = (r.get("throughput") or {}).get("attention_backend") \
            if isinstance(r.get("throughput"), dict) else r.get("attention_backend")
        return text + (f" ({backend} attention)" if backend else "")
    steps = r.get("steps")
    if isinstance(steps, list) and steps and "wall_ms_median" in steps[0]:
        wall = [s["wall_ms_median"] for s in steps]
        device = [s["device_ms"] for s in steps]
        return (f"prefill step: {min(wall):.1f}-{max(wall):.1f} ms wall for "
                f"{min(device):.1f}-{max(device):.1f} ms on the device")
    speedups = r.kernel_speedups()
    if speedups:
        return (f"Triton vs torch: {min(speedups.values()):.1f}x to "
                f"{max(speedups.values()):.0f}x over {len(speedups)} cases")
    if isinstance(r.get("broadcast"), dict):
        shares = r.get("overhead_share_of_forward") or {}
        worst = max(shares.values()) if shares else None
        return "per-step control message" + (
            f": at most {worst:.1%} of a forward pass" if worst is not None else "")
    checks = [f"{k}: {v}" for k, v in r.data.items() if isinstance(v, str) and "/" in v
              and k not in ("command", "commit", "device", "machine", "note", "date")]
    if checks:
        return "; ".join(checks[:2]) + (" …" if len(checks) > 2 else "")
    # Otherwise name what it compares: a section whose entries are all dicts ("modes": ...).
    for key, value in r.data.items():
        if isinstance(value, dict) and value and all(isinstance(v, dict) for v in value.values()):
            return f"{key}: {', '.join(map(str, value))}"
    return "—"


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def results_table(results_dir: Path = RESULTS) -> str:
    """A markdown table of every results file: what it shows, device, commit, command."""
    results = load_results(results_dir)
    if not results:
        return "_No results in `benchmarks/results/` yet._"
    rows = ["| result | headline | device | commit | command |", "|---|---|---|---|---|"]
    for r in results:
        command = r.get("command", "not recorded")
        rows.append(f"| `{r.name}` | {_cell(headline(r))} | {_cell(r.device)} | "
                    f"`{_cell(r.get('commit', 'unknown'))}` | `{_cell(command)}` |")
    return "\n".join(rows)


def speed_table(results_dir: Path = RESULTS) -> str:
    """A markdown table of the throughput results only: minillm's tokens/s, the peer's, and
    the command to reproduce them."""
    rows = ["| device | model | minillm output tok/s | peer on the same run | command |",
            "|---|---|--:|---|---|"]
    for r in load_results(results_dir):
        if r.data is None or r.is_serve or r.throughput is None:
            continue
        held = r.get("throughput") if isinstance(r.get("throughput"), dict) else r.data
        model = str(r.get("model") or held.get("model", "")).split(" architecture")[0]
        peer = "—"
        if r.peer_throughput is not None:
            peer = f"{str(r.get('peer_engine') or 'peer').split(' (')[0]}: " \
                   f"{_fmt(r.peer_throughput)} tok/s"
        rows.append(f"| {_cell(r.device)} | {_cell(model)} | {_fmt(r.throughput)} | {peer} | "
                    f"`{_cell(r.get('command', 'not recorded'))}` |")
    return "\n".join(rows) if len(rows) > 2 else "_No throughput results yet._"


# ---- the plots ----

def _commit(r: Result) -> str:
    """The commit id alone (some files add a note after it)."""
    return str(r.get("commit", "unknown")).split()[0].split("+")[0]


def _label(r: Result) -> str:
    held = r.get("throughput") if isinstance(r.get("throughput"), dict) else r.data or {}
    model = str(r.get("model") or held.get("model", "")).split(" architecture")[0]
    backend = held.get("attention_backend")
    how = [backend] if backend else []
    if held.get("tensor_parallel_size", 1) > 1:
        how.append(f"TP={held['tensor_parallel_size']}")
    if held.get("cuda_graphs") is False and r.device.startswith("NVIDIA"):
        how.append("eager")
    if "MINILLM_FUSED_KERNELS=0" in str(r.get("command", "")):
        how.append("unfused")
    if "overlap_schedule" in held:
        how.append("overlap" if held["overlap_schedule"] else "serial")
    run = ", ".join([f"commit {_commit(r)}", *how])
    return "\n".join(x for x in (model, r.device, run) if x)


def plot_throughput(results: list[Result], path: Path) -> bool:
    runs = [r for r in results if r.throughput is not None and not r.is_serve]
    if not runs:
        return False
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 1.0 + 0.9 * len(runs)))
    h = 0.38
    for i, r in enumerate(runs):
        y = len(runs) - 1 - i
        bars = [(r.throughput, "minillm", "#4051b5", y + (h / 2 if r.peer_throughput else 0))]
        if r.peer_throughput is not None:
            peer = str(r.get("peer_engine") or "peer").split(" (")[0]
            bars.append((r.peer_throughput, peer, "#9e9e9e", y - h / 2))
        for value, name, color, yy in bars:
            ax.barh(yy, value, height=h, color=color)
            ax.text(value, yy, f" {_fmt(value)} ({name})", va="center", fontsize=8)
    ax.set_yticks(range(len(runs)), [_label(r) for r in reversed(runs)], fontsize=8)
    values = [v for r in runs for v in (r.throughput, r.peer_throughput) if v]
    if max(values) / min(values) > 30:
        ax.set_xscale("log")
    ax.set_xlim(right=max(values) * (4 if ax.get_xscale() == "log" else 1.45))
    ax.set_xlabel("output tokens/s (higher is better)")
    ax.set_title("Offline throughput", fontsize=10)
    ax.spines[["top", "right"]].set_visible(False)
    _save(fig, path)
    return True


def plot_serve_latency(results: list[Result], path: Path) -> bool:
    runs = [r for r in results if r.is_serve]
    if not runs:
        return False
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(runs), 1, figsize=(8, 3.2 * len(runs)), squeeze=False)
    colors = ("#4051b5", "#7986cb", "#ff8f00", "#d84315")
    w = 0.2
    for ax, r in zip(axes[:, 0], runs):
        for j, stat in enumerate(STATS):
            xs, ys = [], []
            for i, lat in enumerate(LATENCIES):
                value = r.get(f"{stat}_{lat}_ms")
                if isinstance(value, (int, float)) and value > 0:
                    xs.append(i + (j - 1.5) * w)
                    ys.append(value)
            ax.bar(xs, ys, width=w, color=colors[j], label=stat)
        ax.set_xticks(range(len(LATENCIES)), [x.upper() for x in LATENCIES])
        ax.set_yscale("log")
        ax.set_ylabel("ms (lower is better)")
        rate = r.get("request_rate", "inf")
        ax.set_title(f"{r.get('engine', 'minillm')} serve: {r.get('model', '')} on {r.device}, "
                     f"{r.get('num_requests', '?')} requests, rate {rate}, "
                     f"commit {_commit(r)}", fontsize=9)
        ax.legend(fontsize=8, ncols=4, loc="upper left")
        ax.spines[["top", "right"]].set_visible(False)
    _save(fig, path)
    return True


def plot_kernels(results: list[Result], path: Path) -> bool:
    runs = [(r, r.kernel_speedups()) for r in results]
    runs = [(r, s) for r, s in runs if s]
    if not runs:
        return False
    import matplotlib.pyplot as plt

    n = sum(len(s) for _, s in runs)
    fig, axes = plt.subplots(len(runs), 1, figsize=(8, 0.8 + 0.32 * n + 0.6 * len(runs)),
                             squeeze=False)
    for ax, (r, speedups) in zip(axes[:, 0], runs):
        names = list(speedups)[::-1]
        ax.barh(range(len(names)), [speedups[k] for k in names], color="#4051b5")
        for i, k in enumerate(names):
            ax.text(speedups[k], i, f" {speedups[k]:.1f}x", va="center", fontsize=8)
        ax.set_yticks(range(len(names)), names, fontsize=8)
        ax.axvline(1.0, color="#9e9e9e", lw=1)
        ax.set_xscale("log")
        ax.set_xlim(right=max(speedups.values()) * 3)
        ax.set_xlabel("speedup over the PyTorch reference (log scale)")
        ax.set_title(f"{r.name}: {r.device}, commit {_commit(r)}", fontsize=9)
        ax.spines[["top", "right"]].set_visible(False)
    _save(fig, path)
    return True


def _save(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    # No "Software" text chunk: the PNG bytes then depend only on what is drawn.
    fig.savefig(path, dpi=110, metadata={"Software": None})
    plt.close(fig)


def make_plots(results_dir: Path = RESULTS, out_dir: Path = OUT) -> list[Path]:
    """Write every plot that has data into `out_dir`; remove owned plots that have none."""
    import matplotlib

    matplotlib.use("Agg")
    results = [r for r in load_results(results_dir) if r.data is not None]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    drawers = {"throughput.png": plot_throughput, "serve_latency.png": plot_serve_latency,
               "kernels.png": plot_kernels}
    written = []
    for name, draw in drawers.items():
        path = out_dir / name
        if draw(results, path):
            written.append(path)
        elif path.exists():
            path.unlink()
    return written


def plots_markdown(out_dir: Path = OUT, prefix: str = "assets/benchmarks/") -> str:
    """Markdown images of the plots present in `out_dir`, with their captions."""
    parts = [f"![{PLOTS[name]}]({prefix}{name})\n\n_{PLOTS[name]}._"
             for name in PLOTS if (Path(out_dir) / name).is_file()]
    return "\n\n".join(parts) or "_No plots yet: run `python scripts/docs_plots.py`._"


if __name__ == "__main__":
    for p in make_plots(*(Path(a) for a in sys.argv[1:3])):
        print(p.relative_to(ROOT) if p.is_relative_to(ROOT) else p)
