"""The radix prefix cache as a tree, coloured the way SGLang's RadixAttention figures are.

Edges carry token runs (the node's `key`, abbreviated), nodes show their physical blocks.
Colours come from the cache's `events` since the last `clear_events()`: green for nodes the
inserts created, blue for nodes a lookup hit (blue wins when both: a leaf that was hit and then
grew), red dashed ghosts for what eviction removed.

Ghosts: `RadixEvents.evicted` records (parent node id, tokens). When only the tail of a leaf
was evicted, the parent is that leaf, still in the tree, and the ghost hangs below it. When the
parent was itself evicted later, its id is gone and the events do not say which ghost it
became, so the ghost is hung under the root and labelled "(parent gone)".

The layout is a small tidy-tree algorithm (`tidy_layout`): leaves side by side in depth-first
order, each parent centred over its children. No graph library needed.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import TypeVar

from minillm.kvcache import BlockManager, RadixNode, RadixPrefixCache
from minillm.viz.figure import new_figure, require
from minillm.viz.style import (
    RADIX_EVICTED_COLOR,
    RADIX_HIT_COLOR,
    RADIX_NEW_COLOR,
    RADIX_NODE_COLOR,
    abbreviate_tokens,
    lighten,
)

K = TypeVar("K", bound=Hashable)


def tidy_layout(children: Mapping[K, Sequence[K]], root: K) -> dict[K, tuple[float, int]]:
    """Positions (x, depth) for a tree given as node -> ordered children.

    Leaves take x = 0, 1, 2, ... in depth-first order; a parent sits midway between its first
    and last child. Subtrees thus occupy disjoint x ranges and never overlap.
    """
    pos: dict[K, tuple[float, int]] = {}
    next_leaf = 0
    stack: list[tuple[K, int, bool]] = [(root, 0, False)]  # (node, depth, children placed)
    while stack:
        node, depth, placed = stack.pop()
        kids = children.get(node, ())
        if not kids:
            pos[node] = (float(next_leaf), depth)
            next_leaf += 1
        elif placed:
            pos[node] = ((pos[kids[0]][0] + pos[kids[-1]][0]) / 2, depth)
        else:
            stack.append((node, depth, True))
            stack.extend((k, depth + 1, False) for k in reversed(kids))
    return pos


def _ghosts(cache: RadixPrefixCache) -> list[tuple[int, tuple[int, ...], bool]]:
    """(parent id to hang under, tokens, orphaned) for each evicted run, in eviction order."""
    live = {n.node_id for n in cache.nodes()}
    return [(p, tokens, False) if p in live else (cache.root.node_id, tokens, True)
            for p, tokens in cache.events.evicted]


def _node_state(cache: RadixPrefixCache, node: RadixNode) -> str:
    if node.node_id in cache.events.hit:
        return "hit"
    if node.node_id in cache.events.inserted:
        return "new"
    return "cached"


def radix_events_text(cache: RadixPrefixCache, max_tokens: int = 8) -> str:
    """What the events since the last `clear_events()` did, in a few lines."""
    live = {n.node_id for n in cache.nodes()}
    ev = cache.events
    lines = [f"hit nodes: {sorted(ev.hit & live)}", f"new nodes: {sorted(ev.inserted & live)}"]
    for parent, tokens, orphan in _ghosts(cache):
        if orphan:
            where = "(parent evicted too)"
        elif parent == cache.root.node_id:
            where = "from below the root"
        else:
            where = f"from below node {parent}"
        lines.append(f"evicted {len(tokens) // cache.block_size} block(s) {where}: "
                     f"{abbreviate_tokens(tokens, max_tokens)}")
    return "\n".join(lines)


def draw_radix_tree(cache: RadixPrefixCache, block_manager: BlockManager | None = None,
                    ax=None, max_tokens: int = 6, title: str | None = None):
    """Draw the radix tree with SGLang's colours; returns the matplotlib Figure.

    Args:
        cache: the radix cache; its `events` choose the colours.
        block_manager: when given, each node shows the ref count of its blocks (0: evictable).
        ax: an Axes to draw into; a new Figure is made when None.
        max_tokens: edge labels show at most this many tokens ("a b … y z (n)").
        title: the axes title.

    Each node is a FancyBboxPatch with gid ``radix-node-<node_id>``; each evicted ghost one
    with gid ``radix-ghost-<k>`` (k: its index in `cache.events.evicted`).
    """
    require("matplotlib")
    from matplotlib.lines import Line2D
    from matplotlib.patches import FancyBboxPatch, Patch

    nodes = cache.nodes()
    by_id = {n.node_id: n for n in nodes}
    children: dict[object, list[object]] = {
        n.node_id: [c.node_id for c in sorted(n.children.values(), key=lambda c: c.node_id)]
        for n in nodes}
    ghosts = _ghosts(cache)
    for k, (parent, _, _) in enumerate(ghosts):
        children[parent].append(("ghost", k))
    pos = tidy_layout(children, cache.root.node_id)
    num_leaves = int(max(x for x, _ in pos.values())) + 1
    depth = max(d for _, d in pos.values())
    if ax is None:
        fig = new_figure(max(4.5, 1.9 * num_leaves + 1.5), max(2.4, 1.15 * depth + 1.6))
        ax = fig.add_subplot()

    w, h = 0.8, 0.46  # node box, in layout units (leaf spacing 1, depth 1)
    colors = {"hit": RADIX_HIT_COLOR, "new": RADIX_NEW_COLOR, "cached": RADIX_NODE_COLOR}

    def box(key, face: str, label: str, gid: str, dashed: bool = False, bold: bool = False):
        x, y = pos[key]
        ax.add_patch(FancyBboxPatch((x - w / 2, y - h / 2), w, h, gid=gid,
                                    boxstyle="round,pad=0,rounding_size=0.08", facecolor=face,
                                    edgecolor=RADIX_EVICTED_COLOR if dashed else "black",
                                    linestyle="--" if dashed else "-",
                                    lw=2.0 if bold else 1.0, zorder=2))
        ax.text(x, y, label, ha="center", va="center", fontsize=6.5, zorder=3,
                color="#555555" if dashed else "black")

    def edge(parent, child, tokens, gid: str, dashed: bool = False):
        """An elbow from the parent's bottom to the child's top; tokens just above the child."""
        (x0, y0), (x1, y1) = pos[parent], pos[child]
        ymid = y0 + h / 2 + 0.12
        ax.plot([x0, x0, x1, x1], [y0 + h / 2, ymid, ymid, y1 - h / 2], zorder=1, lw=1.0,
                color=RADIX_EVICTED_COLOR if dashed else "#555555", ls="--" if dashed else "-")
        ax.text(x1, (ymid + y1 - h / 2) / 2, abbreviate_tokens(tokens, max_tokens), zorder=3,
                ha="center", va="center", fontsize=6, gid=gid,
                bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.9))

    for node in nodes:
        if node is cache.root:
            box(node.node_id, "#eeeeee", "root", f"radix-node-{node.node_id}")
            continue
        edge(node.parent.node_id, node.node_id, node.key, f"radix-edge-{node.node_id}")
        label = f"#{node.node_id}\nblocks {_short_list(node.blocks)}"
        in_use = False
        if block_manager is not None:
            refs = [block_manager.ref_counts[b] for b in node.blocks]
            in_use = max(refs) > 0
            label += "\nref " + (str(refs[0]) if min(refs) == max(refs)
                                 else f"{max(refs)}..{min(refs)}")
        box(node.node_id, colors[_node_state(cache, node)], label,
            f"radix-node-{node.node_id}", bold=in_use)
    for k, (parent, tokens, orphan) in enumerate(ghosts):
        edge(parent, ("ghost", k), tokens, f"radix-ghost-edge-{k}", dashed=True)
        label = f"evicted\n{len(tokens) // cache.block_size} block(s)"
        box(("ghost", k), lighten(RADIX_EVICTED_COLOR), label + ("\n(parent gone)" if orphan
            else ""), f"radix-ghost-{k}", dashed=True)

    handles = [Patch(facecolor=RADIX_NEW_COLOR, edgecolor="black", label="new (inserted)"),
               Patch(facecolor=RADIX_HIT_COLOR, edgecolor="black", label="cache hit"),
               Patch(facecolor=lighten(RADIX_EVICTED_COLOR), edgecolor=RADIX_EVICTED_COLOR,
                     ls="--", label="evicted"),
               Patch(facecolor=RADIX_NODE_COLOR, edgecolor="black", label="cached")]
    if block_manager is not None:
        handles.append(Line2D([], [], color="black", lw=2.0, label="in use (ref > 0)"))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7,
              frameon=False)
    ax.set_xlim(-0.6, num_leaves - 0.4)
    ax.set_ylim(depth + 0.45, -0.45)
    ax.axis("off")
    n = len(by_id) - 1
    ax.set_title(title or f"radix tree: {n} node{'s' * (n != 1)}, {cache.num_cached_blocks} "
                 f"blocks cached, {cache.num_evictable_blocks} evictable", fontsize=9, loc="left")
    return ax.figure


def _short_list(items: Sequence[int], max_items: int = 4) -> str:
    if len(items) <= max_items:
        return ",".join(map(str, items))
    return f"{items[0]},{items[1]},…,{items[-1]} ({len(items)})"
