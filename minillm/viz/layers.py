"""Two layers drawn: rotary position embedding (RoPE) and grouped-query attention (GQA).

`draw_rope` reads a real `RotaryEmbedding`'s cos/sin tables: the rotation angle of every
dimension pair at every position (a cyclic colour map, since an angle wraps at 2π), and the path
a few pairs trace on the unit circle as the position grows. `draw_rope_wavelengths` compares the
per-pair wavelengths of several rotaries, which is what Llama-3's `llama3` scaling changes.
`draw_gqa` shows which key/value head each query head reads.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from minillm.viz.figure import new_figure, require
from minillm.viz.style import lighten, seq_color

if TYPE_CHECKING:  # the functions import torch themselves: `import minillm.viz` stays light
    import torch


def rope_angles(rotary, positions) -> torch.Tensor:
    """Rotation angle in radians, wrapped to (-π, π], of each pair at each position.

    Read from the rotary's own cos/sin tables: [len(positions), head_dim // 2].
    """
    import torch

    positions = torch.as_tensor(positions, dtype=torch.long)
    return torch.atan2(rotary.sin[positions].float(), rotary.cos[positions].float())


def rope_frequencies(rotary) -> torch.Tensor:
    """Radians per position of each pair, [head_dim // 2]: the angle at position 1.

    Every frequency is at most 1 radian per position (pair 0 turns fastest, by exactly 1), so
    the angle at position 1 has not wrapped yet and is the frequency itself.
    """
    return rope_angles(rotary, [1])[0]


def rope_text(rotary, positions, pairs=None) -> str:
    """A table of the chosen pairs: θ_i (radians per position), wavelength (positions per turn),
    and the angle in whole degrees, wrapped to [0, 360), at each of `positions`.

    `pairs` defaults to the fastest, two in between and the slowest.
    """
    import torch

    freqs = rope_frequencies(rotary)
    pairs = _default_pairs(freqs.numel()) if pairs is None else list(pairs)
    positions = [int(p) for p in positions]
    degrees = torch.rad2deg(rope_angles(rotary, positions)).round().long().remainder(360)
    w = max(3, *(len(str(p)) for p in positions))
    lines = [f"{'':<31}| angle in degrees at position",
             "pair  θ (rad/pos)  wavelength  | " + " ".join(f"{p:>{w}}" for p in positions)]
    for i in pairs:
        f = float(freqs[i])
        cells = " ".join(f"{int(degrees[k, i]):>{w}}" for k in range(len(positions)))
        lines.append(f"{i:>4}  {f:<11.4g}  {2 * math.pi / f:<10.4g}  | {cells}")
    return "\n".join(lines)


def _default_pairs(num_pairs: int) -> list[int]:
    return sorted({0, num_pairs // 4, num_pairs // 2, num_pairs - 1})


def draw_rope(rotary, positions, pairs=None, title: str | None = None):
    """Draw a `RotaryEmbedding`: angle per pair over positions, and pairs turning on a circle.

    Args:
        rotary: a `minillm.layers.RotaryEmbedding` (its cos/sin tables are what is drawn).
        positions: the positions to show (e.g. `range(64)`).
        pairs: the dimension pairs whose rotation is drawn on the right (default: fastest,
            two in between, slowest).
        title: the figure title.

    The heat map is an AxesImage with gid ``rope-angles``; each pair's path on the right is a
    Line2D with gid ``rope-pair-<i>``.
    """
    import torch

    require("matplotlib")
    positions = [int(p) for p in positions]
    angles = rope_angles(rotary, positions)  # [P, num_pairs]
    num_pairs = angles.shape[1]
    pairs = _default_pairs(num_pairs) if pairs is None else list(pairs)
    freqs = rope_frequencies(rotary)

    fig = new_figure(10.5, 4.2)
    left, right = fig.subplots(1, 2, width_ratios=[1.35, 1])
    image = left.imshow(angles.numpy(), aspect="auto", cmap="twilight", vmin=-math.pi,
                        vmax=math.pi, interpolation="nearest", origin="upper",
                        extent=(-0.5, num_pairs - 0.5, positions[-1] + 0.5, positions[0] - 0.5))
    image.set_gid("rope-angles")
    bar = fig.colorbar(image, ax=left, ticks=[-math.pi, 0, math.pi], fraction=0.05)
    bar.ax.set_yticklabels(["-π", "0", "π"])
    bar.set_label("rotation angle", fontsize=8)
    left.set_xlabel(f"dimension pair i  (dims i and i + {num_pairs}; fast → slow)", fontsize=8)
    left.set_ylabel("position", fontsize=8)
    left.set_title("angle = position × θ_i, wrapped to (-π, π]", fontsize=9, loc="left")
    for i in pairs:
        left.axvline(i, color=seq_color(pairs.index(i)), lw=1.2, ls=":")

    circle = torch.linspace(0, 2 * math.pi, 200)
    for k, i in enumerate(pairs):
        radius = 1.0 - 0.18 * k
        color = seq_color(k)
        right.plot((radius * circle.cos()).numpy(), (radius * circle.sin()).numpy(),
                   color="#dddddd", lw=0.8)
        xs = (radius * torch.cos(angles[:, i])).numpy()
        ys = (radius * torch.sin(angles[:, i])).numpy()
        wavelength = 2 * math.pi / float(freqs[i])
        right.plot(xs, ys, marker="o", ms=3, lw=0, color=color, gid=f"rope-pair-{i}",
                   label=f"pair {i}: θ = {float(freqs[i]):.3g} rad/pos, "
                         f"one turn per {wavelength:.3g} positions")
        right.annotate("", xy=(xs[-1], ys[-1]), xytext=(0, 0),
                       arrowprops=dict(arrowstyle="-|>", color=color, lw=1.2))
        if k == 0:  # number the first steps of the fastest pair
            for p, x, y in list(zip(positions, xs, ys, strict=True))[:4]:
                right.text(1.13 * x, 1.13 * y, str(p), fontsize=7, ha="center", va="center")
    right.text(0, -1.32, f"points: positions {positions[0]}–{positions[-1]}; "
               f"arrows: position {positions[-1]}", fontsize=7, ha="center")
    right.set_aspect("equal")
    right.set_xlim(-1.2, 1.2)
    right.set_ylim(-1.4, 1.2)
    right.axis("off")
    right.legend(loc="upper left", bbox_to_anchor=(0.0, -0.02), fontsize=7, frameon=False)
    right.set_title(f"pair (x_i, x_i+{num_pairs}) turns θ_i per position", fontsize=9,
                    loc="left")
    fig.suptitle(title or f"RoPE: head_dim {2 * num_pairs}, {num_pairs} pairs", fontsize=10,
                 x=0.01, ha="left")
    return fig


def draw_rope_wavelengths(rotaries: dict, context: int | None = None, title: str | None = None):
    """Wavelength (positions per full turn) of each pair, one line per rotary, log scale.

    Args:
        rotaries: label -> `RotaryEmbedding` (e.g. default vs `llama3`-scaled).
        context: draw a horizontal line at this many positions (e.g. the original context).
        title: the axes title.

    Each rotary is a Line2D with gid ``wavelengths-<label>``.
    """
    require("matplotlib")
    fig = new_figure(6.5, 3.2)
    ax = fig.add_subplot()
    for k, (label, rotary) in enumerate(rotaries.items()):
        wavelengths = 2 * math.pi / rope_frequencies(rotary)
        ax.plot(range(wavelengths.numel()), wavelengths.numpy(), marker="o", ms=3,
                lw=1.5 - 0.5 * k, color=seq_color(k), label=label, gid=f"wavelengths-{label}")
    if context is not None:
        ax.axhline(context, color="#777777", ls="--", lw=0.8)
        ax.text(0, context * 1.3, f"{context} positions", fontsize=7, color="#555555")
    ax.set_yscale("log")
    ax.set_xlabel("dimension pair i", fontsize=8)
    ax.set_ylabel("wavelength 2π / θ_i (positions)", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=7, frameon=False)
    ax.set_title(title or "RoPE wavelengths per pair", fontsize=9, loc="left")
    return fig


def gqa_groups(num_heads: int, num_kv_heads: int) -> list[list[int]]:
    """The query heads that read each kv head: query head h reads kv head h // group."""
    if num_heads % num_kv_heads:
        raise ValueError(f"num_heads={num_heads} must divide by num_kv_heads={num_kv_heads}")
    group = num_heads // num_kv_heads
    return [list(range(g * group, (g + 1) * group)) for g in range(num_kv_heads)]


def gqa_text(num_heads: int, num_kv_heads: int) -> str:
    """One line per kv head: the query heads that share it."""
    groups = gqa_groups(num_heads, num_kv_heads)
    kind = ("multi-head (MHA)" if num_kv_heads == num_heads
            else "multi-query (MQA)" if num_kv_heads == 1 else "grouped-query (GQA)")
    lines = [f"{num_heads} query heads, {num_kv_heads} kv heads: {kind}, "
             f"{len(groups[0])} query heads per kv head"]
    w = len(str(num_kv_heads - 1))
    lines += [f"  kv head {g:>{w}} <- q heads {' '.join(map(str, heads))}"
              for g, heads in enumerate(groups)]
    return "\n".join(lines)


def draw_gqa(num_heads: int, num_kv_heads: int, title: str | None = None):
    """Query heads (top) joined to the key/value head each reads (bottom), one colour per group.

    Each query head is a Rectangle with gid ``q-<h>``, each kv head ``kv-<g>``, each link a
    Line2D with gid ``link-<h>-<g>``.
    """
    require("matplotlib")
    from matplotlib.patches import Rectangle

    groups = gqa_groups(num_heads, num_kv_heads)
    group = len(groups[0])
    fig = new_figure(max(4.0, 0.55 * num_heads + 1.5), 2.4)
    ax = fig.add_subplot()
    for g, heads in enumerate(groups):
        color = seq_color(g)
        kx = (heads[0] + heads[-1]) / 2  # the kv head sits under the middle of its group
        ax.add_patch(Rectangle((kx - 0.4, 0), 0.8, 0.8, facecolor=color, edgecolor="#444444",
                               gid=f"kv-{g}"))
        ax.text(kx, 0.4, f"kv{g}", ha="center", va="center", fontsize=7, color="white",
                fontweight="bold")
        for h in heads:
            ax.add_patch(Rectangle((h - 0.4, 2.2), 0.8, 0.8, facecolor=lighten(color, 0.55),
                                   edgecolor="#444444", gid=f"q-{h}"))
            ax.text(h, 2.6, f"q{h}", ha="center", va="center", fontsize=7)
            ax.plot([h, kx], [2.2, 0.8], color=color, lw=1.0, gid=f"link-{h}-{g}")
    ax.text(-0.7, 2.6, "query heads", ha="right", va="center", fontsize=8)
    ax.text(-0.7, 0.4, "k/v heads\n(in the KV cache)", ha="right", va="center", fontsize=8)
    ax.set_xlim(-3.2, num_heads - 0.4)
    ax.set_ylim(-0.2, 3.2)
    ax.set_aspect("equal")
    ax.axis("off")
    if title is None:
        title = (f"{num_heads} query heads, one k/v head each (MHA)" if group == 1 else
                 f"{num_heads} query heads share {num_kv_heads} k/v heads (groups of {group}):\n"
                 f"a KV cache {group}× smaller than with one k/v head per query head")
    ax.set_title(title, fontsize=9, loc="left")
    return fig
