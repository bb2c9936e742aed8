"""The shared look of every minillm figure: colours and short labels.

Plain data, no plotting import, so text forms and tests can use it too. A sequence keeps its
colour in every figure (`seq_color(seq_id)`), which is what lets a reader follow request 3 from
the block pool to the block tables to the timeline.
"""

from __future__ import annotations

from collections.abc import Sequence

# matplotlib's tab10, then tab20's light shades, without the greys (grey means "free").
SEQ_PALETTE = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#bcbd22",
    "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94", "#f7b6d2",
    "#dbdb8d", "#9edae5",
)

# Block states (BlockManager.block_state); "used" and "cached" blocks take their owner's colour.
FREE_COLOR = "#ffffff"
EVICTABLE_COLOR = "#d9d9d9"
UNOWNED_COLOR = "#969696"  # in use by a sequence the caller did not pass
SHARED_COLOR = "#ffe38a"  # a physical block held by several block tables

# Radix-tree events, in the colours of SGLang's RadixAttention figures.
RADIX_NEW_COLOR = "#7fc97f"  # green: created by this step's inserts
RADIX_HIT_COLOR = "#80b1d3"  # blue: matched by a lookup
RADIX_EVICTED_COLOR = "#fb8072"  # red: evicted, drawn as a dashed ghost
RADIX_NODE_COLOR = "#ffffff"  # untouched

# Scheduler timeline: what a sequence did in a step.
TIMELINE_COLORS = {
    "prefill": "#1f77b4",
    "decode": "#2ca02c",
    "finished": "#6a3d9a",
    "preempted": "#d62728",
    "waiting": "#d9d9d9",
    "idle": "#ffffff",
}

# KV usage over time.
KV_USED_COLOR = "#fdae6b"
KV_FREE_COLOR = "#e5f5e0"
KV_CACHED_COLOR = "#3182bd"


def seq_color(seq_id: int) -> str:
    """The colour of sequence `seq_id`, the same in every figure."""
    return SEQ_PALETTE[seq_id % len(SEQ_PALETTE)]


def lighten(color: str, amount: float = 0.6) -> str:
    """`color` ("#rrggbb") mixed with white by `amount`: cells with text stay readable."""
    r, g, b = (int(color[i : i + 2], 16) for i in (1, 3, 5))
    return "#" + "".join(f"{round(c + (255 - c) * amount):02x}" for c in (r, g, b))


def text_color(background: str) -> str:
    """Black or white, whichever reads better on `background` ("#rrggbb")."""
    r, g, b = (int(background[i : i + 2], 16) for i in (1, 3, 5))
    return "black" if 0.299 * r + 0.587 * g + 0.114 * b > 140 else "white"


def abbreviate_tokens(tokens: Sequence[int], max_tokens: int = 6) -> str:
    """`[11, 12, ..., 99]` as "11 12 13 … 98 99 (40)" when longer than `max_tokens`."""
    tokens = list(tokens)
    if len(tokens) <= max_tokens:
        return " ".join(map(str, tokens))
    head = (max_tokens + 1) // 2
    tail = max_tokens - head
    shown = [*map(str, tokens[:head]), "…", *map(str, tokens[len(tokens) - tail :])]
    return " ".join(shown) + f" ({len(tokens)})"
