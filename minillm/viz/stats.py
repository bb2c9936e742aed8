"""Side-by-side counters of several runs, e.g. the hash and the radix prefix cache.

Input is `{run name: Scheduler.stats()}`; the same keys are compared across runs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from minillm.viz.figure import new_figure, require

Stats = Mapping[str, float]
RUN_COLORS = ("#4c72b0", "#dd8452", "#55a868", "#c44e52")  # not the sequences' colours


def _fmt(value: float) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def stats_table_text(runs: Mapping[str, Stats], keys: Sequence[str]) -> str:
    """A table with one row per key and one column per run."""
    names = list(runs)
    key_w = max(map(len, keys))
    cols = [[_fmt(runs[n][k]) for k in keys] for n in names]
    widths = [max(len(n), *map(len, c)) for n, c in zip(names, cols, strict=True)]
    lines = [" " * key_w + "".join(f"  {n:>{w}}" for n, w in zip(names, widths, strict=True))]
    for i, k in enumerate(keys):
        cells = "".join(f"  {c[i]:>{w}}" for c, w in zip(cols, widths, strict=True))
        lines.append(f"{k:<{key_w}}{cells}")
    return "\n".join(lines)


def draw_stats(runs: Mapping[str, Stats], keys: Sequence[str], title: str | None = None):
    """One small bar chart per key, a bar per run; returns the matplotlib Figure."""
    require("matplotlib")
    names = list(runs)
    fig = new_figure(min(14.0, 2.3 * len(keys) + 0.5), 2.4)
    axes = fig.subplots(1, len(keys), squeeze=False)[0]
    colors = [RUN_COLORS[i % len(RUN_COLORS)] for i in range(len(names))]
    for ax, key in zip(axes, keys, strict=True):
        values = [runs[n][key] for n in names]
        bars = ax.bar(range(len(names)), values, color=colors)
        ax.bar_label(bars, labels=[_fmt(v) for v in values], fontsize=7)
        ax.set_xticks(range(len(names)), names, fontsize=8)
        ax.set_title(key, fontsize=8)
        ax.tick_params(axis="y", labelsize=7)
        ax.spines[["top", "right"]].set_visible(False)
        ax.margins(y=0.2)
    if title:
        fig.suptitle(title, fontsize=9)
    return fig
