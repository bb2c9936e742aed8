"""Block tables, drawn the way vLLM's PagedAttention figures draw them.

Left: each sequence's logical blocks with the tokens they hold, in order. Right: the physical
KV blocks those tables point at, by block id. An arrow per table entry: a block that several
sequences share (a cached prefix) receives several arrows and shows its ref count. Physical
blocks are not contiguous and not in order; that is the point of paging.

A slot whose token is known but whose KV is not computed yet (the token sampled last step, or
the rest of a prompt mid-prefill) is drawn dashed; the physical block holds only computed KV.
"""

from __future__ import annotations

from collections.abc import Iterable

from minillm.kvcache import BlockManager
from minillm.sequence import Sequence
from minillm.viz.blocks import block_owners
from minillm.viz.figure import new_figure, require
from minillm.viz.style import SHARED_COLOR, lighten, seq_color


def _slots(seq: Sequence, logical: int, block_size: int) -> list[tuple[int | None, bool]]:
    """(token or None, computed) for each slot of logical block `logical` of `seq`."""
    out = []
    for pos in range(logical * block_size, (logical + 1) * block_size):
        token = seq.token_ids[pos] if pos < seq.num_tokens else None
        out.append((token, pos < seq.num_computed_tokens))
    return out


def block_tables_text(seqs: Iterable[Sequence], block_manager: BlockManager) -> str:
    """Each sequence's block table as `L<i> -> P<b>` lines with the tokens of each block.

    `xN` after a physical block is its ref count when shared; tokens in parentheses are known
    but not computed yet (no KV stored); `_` is an empty slot.
    """
    bs = block_manager.block_size
    lines = []
    for seq in seqs:
        lines.append(f"seq {seq.seq_id}: {seq.num_tokens} tokens, {seq.num_computed_tokens} "
                     f"computed, {seq.num_cached_tokens} from cache, blocks {seq.block_table}")
        pw = max((len(str(b)) for b in seq.block_table), default=1)
        lw = len(str(max(len(seq.block_table) - 1, 0)))
        for i, b in enumerate(seq.block_table):
            refs = block_manager.ref_counts[b]
            shared = f"x{refs}" if refs > 1 else ""
            cells = [("_" if t is None else str(t) if done else f"({t})")
                     for t, done in _slots(seq, i, bs)]
            lines.append(f"  L{i:<{lw}} -> P{b:<{pw}} {shared:<3}| {' '.join(cells)}")
    return "\n".join(lines)


def draw_block_tables(seqs: Iterable[Sequence], block_manager: BlockManager, ax=None,
                      title: str | None = None):
    """Draw logical blocks -> physical blocks for `seqs`; returns the matplotlib Figure.

    Args:
        seqs: the sequences whose block tables to draw (in this order, top to bottom).
        block_manager: the pool they allocate from (block size and ref counts).
        ax: an Axes to draw into; a new Figure is made when None.
        title: the axes title.

    Each arrow is an annotation with gid ``table-<seq_id>-<logical>``; each physical block's
    outline a Rectangle with gid ``physical-<block id>``.
    """
    require("matplotlib")
    from matplotlib.patches import Patch, Rectangle

    bm = block_manager
    bs = bm.block_size
    seqs = [s for s in seqs if s.block_table]
    owners = block_owners(seqs)

    # Rows, top to bottom. Left: a heading row per sequence, then one row per logical block.
    left: list[tuple[str, Sequence, int]] = []
    for seq in seqs:
        left.append(("head", seq, -1))
        left += [("block", seq, i) for i in range(len(seq.block_table))]
    # Right: referenced physical blocks by id, with a gap row where ids skip.
    physical = sorted(owners)
    right: list[int | None] = []
    for b in physical:
        if right and right[-1] is not None and b != right[-1] + 1:
            right.append(None)
        right.append(b)
    height = max(len(left), len(right), 1)
    off_l, off_r = (height - len(left)) / 2, (height - len(right)) / 2
    gap = 4 + bs * 0.25
    xr = bs + gap  # left edge of the physical blocks
    width = 2 * bs + gap
    if ax is None:
        unit = min(0.38, 11 / (width + 5))
        fig = new_figure((width + 5) * unit, (height + 1.5) * unit + 0.3)
        ax = fig.add_subplot()
    fontsize = 7 if bs <= 8 else 5

    def cells(x0: float, y: float, slots, face: str) -> None:
        for k, (token, done) in enumerate(slots):
            pending = token is not None and not done
            ax.add_patch(Rectangle((x0 + k, y + 0.05), 1, 0.9, lw=0.6, edgecolor="#777777",
                                   facecolor=face if done else "white",
                                   linestyle="--" if pending else "-"))
            if token is not None:
                ax.text(x0 + k + 0.5, y + 0.5, str(token), ha="center", va="center",
                        fontsize=fontsize, color="black" if done else "#777777")

    y_logical: dict[tuple[int, int], float] = {}
    for row, (kind, seq, i) in enumerate(left):
        y = off_l + row
        if kind == "head":
            ax.text(0, y + 0.75, f"seq {seq.seq_id}", fontsize=8, fontweight="bold",
                    color=seq_color(seq.seq_id), ha="left", va="bottom")
            continue
        color = seq_color(seq.seq_id)
        cells(0, y, _slots(seq, i, bs), lighten(color))
        ax.add_patch(Rectangle((0, y + 0.05), bs, 0.9, fill=False, lw=1.2, edgecolor=color))
        ax.text(-0.3, y + 0.5, f"L{i}→P{seq.block_table[i]}", ha="right", va="center",
                fontsize=fontsize)
        y_logical[(seq.seq_id, i)] = y + 0.5

    y_physical: dict[int, float] = {}
    for row, b in enumerate(right):
        y = off_r + row
        if b is None:
            ax.text(xr + bs / 2, y + 0.5, "⋮", ha="center", va="center", fontsize=9)
            continue
        ids = owners[b]
        seq = next(s for s in seqs if s.seq_id == ids[0])
        face = SHARED_COLOR if len(set(ids)) > 1 else lighten(seq_color(ids[0]))
        cells(xr, y, [(t, done) if done else (None, False)
                      for t, done in _slots(seq, seq.block_table.index(b), bs)], face)
        shared = bm.ref_counts[b] > 1
        ax.add_patch(Rectangle((xr, y + 0.05), bs, 0.9, fill=False, lw=2.0 if shared else 1.0,
                               edgecolor="black", gid=f"physical-{b}"))
        label = f"P{b}" + (f"  ×{bm.ref_counts[b]}" if shared else "")
        ax.text(xr + bs + 0.3, y + 0.5, label, ha="left", va="center", fontsize=fontsize + 1,
                fontweight="bold" if shared else "normal")
        y_physical[b] = y + 0.5

    for seq in seqs:
        for i, b in enumerate(seq.block_table):
            ax.annotate("", xy=(xr - 0.1, y_physical[b]), xytext=(bs + 0.1,
                        y_logical[(seq.seq_id, i)]), gid=f"table-{seq.seq_id}-{i}",
                        arrowprops=dict(arrowstyle="-|>", color=seq_color(seq.seq_id), lw=1.1,
                                        shrinkA=0, shrinkB=0))

    top = -0.9
    ax.text(0, top, "logical blocks", fontsize=8, ha="left", va="bottom")
    ax.text(xr, top, "physical KV blocks", fontsize=8, ha="left", va="bottom")
    ax.set_xlim(-4.5, width + 3.5)
    ax.set_ylim(height + 0.2, top - 0.2)
    ax.axis("off")
    if any(len(set(v)) > 1 for v in owners.values()):
        ax.legend(handles=[Patch(facecolor=SHARED_COLOR, edgecolor="black", lw=2,
                                 label="shared (×ref count)")],
                  loc="lower right", fontsize=7, frameon=False)
    ax.set_title(title or f"block tables (block size {bs})", fontsize=9, loc="left")
    return ax.figure

