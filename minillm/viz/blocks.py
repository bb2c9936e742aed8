"""The KV block pool as a grid: who owns each block, how many tables share it, what is cached.

One square per physical block, numbered row by row. Fill colour is the owning sequence (a block
shared by several sequences is cut into one stripe per owner), "×n" is the ref count when a
block is shared, a black diamond marks blocks the prefix cache holds, and cached blocks that no
sequence uses any more (evictable) are hatched grey. Free blocks are white.
"""

from __future__ import annotations

from collections.abc import Iterable

from minillm.kvcache import BlockManager
from minillm.sequence import Sequence
from minillm.viz.figure import new_figure, require
from minillm.viz.style import (
    EVICTABLE_COLOR,
    FREE_COLOR,
    UNOWNED_COLOR,
    lighten,
    seq_color,
    text_color,
)


def block_owners(seqs: Iterable[Sequence]) -> dict[int, list[int]]:
    """Physical block -> the seq_ids whose block tables hold it, in the order given."""
    owners: dict[int, list[int]] = {}
    for seq in seqs:
        for b in seq.block_table:
            owners.setdefault(b, []).append(seq.seq_id)
    return owners


def block_pool_text(block_manager: BlockManager, seqs: Iterable[Sequence] = (),
                    cols: int = 8) -> str:
    """The pool as a text grid, one cell per block: `id owners`.

    Owners are `s<seq_id>`, or `s0,2` when sequences 0 and 2 share the block; `*` marks a
    block in the prefix cache, `~` a cached block nobody uses (evictable), `.` a free block,
    `?` a block in use by a sequence not passed in `seqs`.
    """
    bm = block_manager
    owners = block_owners(seqs)
    cols = min(cols or 8, bm.num_blocks)
    labels = []
    for b in range(bm.num_blocks):
        state = bm.block_state(b)
        if state == "free":
            label = "."
        elif state == "evictable":
            label = "~"
        else:
            ids = owners.get(b, [])
            label = ("s" + ",".join(map(str, ids))) if ids else "?"
            label += "*" if state == "cached" else ""
        labels.append(label)
    width = max(map(len, labels))
    idw = len(str(bm.num_blocks - 1))
    rows = []
    for start in range(0, bm.num_blocks, cols):
        stop = min(start + cols, bm.num_blocks)
        cells = [f"{b:>{idw}} {labels[b]:<{width}}" for b in range(start, stop)]
        rows.append("  ".join(cells).rstrip())
    return "\n".join(rows)


# Shade = ref count: a block one sequence holds is a light tint of its owner's colour, a block
# two hold is darker, three or more the full colour (with a "×n" label from two on).
REF_TINTS = {1: 0.45, 2: 0.2}


def ref_shade(color: str, ref_count: int) -> str:
    """`color` tinted by how many sequences hold the block (darker = more holders)."""
    return lighten(color, REF_TINTS.get(ref_count, 0.0))


def draw_block_pool(block_manager: BlockManager, seqs: Iterable[Sequence] = (), ax=None,
                    cols: int | None = None, title: str | None = None):
    """Draw the pool as a grid of blocks; returns the matplotlib Figure.

    Args:
        block_manager: the pool to draw.
        seqs: the live sequences, to colour blocks by owner (others show as "in use").
        ax: an Axes to draw into; a new Figure is made when None.
        cols: blocks per row (default: up to 16).
        title: the axes title (default: a summary of the pool).

    Colour = owning sequence (one stripe per owner when shared), shade = ref count (`ref_shade`),
    diamond = in the prefix cache, hatch = evictable. Each block is a Rectangle with gid
    ``block-<id>``, so tests and tools can find it.
    """
    require("matplotlib")
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch, Rectangle

    bm = block_manager
    seqs = list(seqs)
    owners = block_owners(seqs)
    cols = cols or min(16, bm.num_blocks)
    rows = -(-bm.num_blocks // cols)
    if ax is None:
        fig = new_figure(max(4.0, 0.55 * cols + 2.6), max(1.4, 0.55 * rows + 0.9))
        ax = fig.add_subplot()
    cached_xy = []
    for b in range(bm.num_blocks):
        x, y = b % cols, b // cols
        state = bm.block_state(b)
        ids = owners.get(b, [])
        face, hatch = FREE_COLOR, None
        if state == "evictable":
            face, hatch = EVICTABLE_COLOR, "///"
        elif state in ("used", "cached") and not ids:
            face = UNOWNED_COLOR
        elif len(ids) == 1:
            face = ref_shade(seq_color(ids[0]), bm.ref_counts[b])
        elif ids:  # shared: one vertical stripe per owner
            face = "none"
            w = 0.9 / len(ids)
            for k, s in enumerate(ids):
                ax.add_patch(Rectangle((x + 0.05 + k * w, y + 0.05), w, 0.9, lw=0,
                                       facecolor=ref_shade(seq_color(s), bm.ref_counts[b])))
        ax.add_patch(Rectangle((x + 0.05, y + 0.05), 0.9, 0.9, facecolor=face, hatch=hatch,
                               edgecolor="#444444", lw=1.0, gid=f"block-{b}"))
        ax.text(x + 0.1, y + 0.12, str(b), fontsize=6.5, va="top", ha="left",
                color=text_color(face) if face.startswith("#") else "black")
        if bm.ref_counts[b] > 1:
            ax.text(x + 0.5, y + 0.6, f"×{bm.ref_counts[b]}", fontsize=9, fontweight="bold",
                    ha="center", va="center", color="black",
                    bbox=dict(boxstyle="round,pad=0.1", fc="white", ec="none", alpha=0.75))
        if state in ("cached", "evictable"):
            cached_xy.append((x + 0.82, y + 0.18))
    if cached_xy:
        xs, ys = zip(*cached_xy, strict=True)
        ax.scatter(xs, ys, marker="D", s=16, color="black", edgecolors="white",
                   linewidths=0.5, zorder=3)

    ax.set_xlim(0, cols)
    ax.set_ylim(rows, 0)  # block 0 at the top left
    ax.set_aspect("equal")
    ax.axis("off")
    seq_ids = sorted({s for ids in owners.values() for s in ids})
    handles = [Patch(facecolor=seq_color(s), edgecolor="#444444", label=f"seq {s}")
               for s in seq_ids]
    if any(bm.block_state(b) in ("used", "cached") and b not in owners
           for b in range(bm.num_blocks)):
        handles.append(Patch(facecolor=UNOWNED_COLOR, edgecolor="#444444", label="in use"))
    handles += [
        Patch(facecolor=FREE_COLOR, edgecolor="#444444", label="free"),
        Patch(facecolor=EVICTABLE_COLOR, edgecolor="#444444", hatch="///",
              label="evictable (cached, ref 0)"),
        Line2D([], [], marker="D", color="black", ls="none", markersize=4,
               label="in prefix cache"),
    ]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7,
              frameon=False, handlelength=1.2)
    if title is None:
        title = (f"KV block pool: {bm.num_blocks} blocks × {bm.block_size} tokens, "
                 f"{bm.num_used_blocks} used, {bm.num_free_blocks} free, "
                 f"{bm.num_cached_blocks} cached")
    ax.set_title(title, fontsize=9, loc="left")
    return ax.figure
