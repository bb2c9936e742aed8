"""Tensor parallelism drawn: which slice of each weight a rank holds, and an all-reduce in parts.

`shard_ranges(model_config, tp_size, rank)` says, for one rank, which rows or columns of each
checkpoint tensor of a decoder layer (and of the embedding) it loads. It restates the rules of
the layers' `weight_loader`s (`minillm/layers/linear.py`, `minillm/layers/embedding.py`) as
plain arithmetic, because those layers take their rank from a live process group;
`tests/test_viz_sharding.py` checks it against what two real gloo ranks load.

Weights are drawn in PyTorch's layout, `[out_features, in_features]`: a column-parallel layer
(its outputs split) holds a band of *rows*, a row-parallel layer (its inputs split) a band of
*columns*. The names come from `Y = X·A` with `A = Wᵀ`, as in Megatron-LM.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from minillm.config import EngineConfig, ModelConfig
from minillm.viz.figure import new_figure, require
from minillm.viz.style import lighten, text_color

# One colour per rank (seaborn's "deep"), kept apart from the sequences' colours.
RANK_COLORS = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3",
               "#8c8c8c")


def rank_color(rank: int) -> str:
    """The colour of tensor-parallel rank `rank`, the same in every sharding figure."""
    return RANK_COLORS[rank % len(RANK_COLORS)]


@dataclass(frozen=True)
class Shard:
    """The part of one checkpoint tensor that one rank holds.

    `dim` 0 is a band of rows (output features: column-parallel), 1 a band of columns (input
    features: row-parallel). `[start, stop)` indexes the full tensor along `dim`; `padding`
    zero rows follow it (the vocabulary is padded to a multiple of the rank count).
    """

    tensor: str  # checkpoint name: "q_proj", ..., "down_proj", "embed_tokens", "lm_head"
    layer: str  # the minillm layer class that loads it
    shape: tuple[int, int]  # the full checkpoint tensor, [out_features, in_features]
    dim: int  # 0: rows are split, 1: columns are split
    start: int
    stop: int
    padding: int = 0
    heads: tuple[int, int] | None = None  # [first, last + 1) attention heads, for q/k/v/o
    replicas: int = 1  # how many ranks hold this same slice (kv heads fewer than ranks)

    @property
    def size(self) -> int:
        """Rows (or columns) this rank holds, padding included."""
        return self.stop - self.start + self.padding

    def slices(self) -> tuple[slice, slice]:
        """Index of this shard in the full tensor: `full[shard.slices()]`."""
        band = slice(self.start, self.stop)
        return (band, slice(None)) if self.dim == 0 else (slice(None), band)


def check_tp_size(model_config: ModelConfig, tp_size: int) -> None:
    """Raise the engine's own ValueError if `model_config` cannot split over `tp_size` ranks."""
    EngineConfig(model_config=model_config, tensor_parallel_size=tp_size)


def shard_ranges(model_config: ModelConfig, tp_size: int, rank: int) -> dict[str, Shard]:
    """What `rank` of `tp_size` loads of each tensor of a decoder layer and of the embeddings.

    The same rules as the layers' weight loaders:

    - q_proj (`QKVParallelLinear`): `num_heads / tp` query heads per rank, in order;
    - k_proj, v_proj: `num_kv_heads / tp` kv heads per rank; with fewer kv heads than ranks,
      one kv head each, and ranks `r` with the same `r // (tp / num_kv_heads)` share it;
    - o_proj, down_proj (`RowParallelLinear`): the matching band of input columns;
    - gate_proj, up_proj (`MergedColumnParallelLinear`): `intermediate / tp` rows each;
    - embed_tokens, lm_head (`VocabParallelEmbedding`): `ceil(vocab / tp)` token rows, the
      last rank's padded with zero rows. lm_head is listed only when it is not tied.

    Biases (Qwen2's on q/k/v) follow their weight's rows; o_proj's and down_proj's would be
    whole on every rank, added by rank 0 alone to its partial, so the sum counts it once.
    """
    mc = model_config
    check_tp_size(mc, tp_size)
    if mc.intermediate_size % tp_size:  # MergedColumnParallelLinear raises the same
        raise ValueError(f"intermediate_size={mc.intermediate_size} must divide by {tp_size} "
                         "ranks")
    if not 0 <= rank < tp_size:
        raise ValueError(f"rank={rank} is invalid: must be in [0, {tp_size - 1}]")
    hidden, hd = mc.hidden_size, mc.head_dim
    q_heads = mc.num_attention_heads // tp_size  # per rank
    kv_heads = max(1, mc.num_key_value_heads // tp_size)  # per rank
    replicas = max(1, tp_size // mc.num_key_value_heads)
    q0, kv0 = rank * q_heads, (rank // replicas) * kv_heads
    q_out, kv_out = mc.num_attention_heads * hd, mc.num_key_value_heads * hd
    inter = mc.intermediate_size // tp_size
    vocab_rows = -(-mc.vocab_size // tp_size)
    v0 = rank * vocab_rows
    v1 = min(mc.vocab_size, v0 + vocab_rows)
    vocab = dict(shape=(mc.vocab_size, hidden), dim=0, start=min(v0, v1), stop=v1,
                 padding=vocab_rows - max(0, v1 - v0), layer="VocabParallelEmbedding")
    shards = [
        Shard("q_proj", "QKVParallelLinear", (q_out, hidden), 0, q0 * hd, (q0 + q_heads) * hd,
              heads=(q0, q0 + q_heads)),
        *(Shard(name, "QKVParallelLinear", (kv_out, hidden), 0, kv0 * hd,
                (kv0 + kv_heads) * hd, heads=(kv0, kv0 + kv_heads), replicas=replicas)
          for name in ("k_proj", "v_proj")),
        Shard("o_proj", "RowParallelLinear", (hidden, q_out), 1, q0 * hd, (q0 + q_heads) * hd,
              heads=(q0, q0 + q_heads)),
        *(Shard(name, "MergedColumnParallelLinear", (mc.intermediate_size, hidden), 0,
                rank * inter, (rank + 1) * inter) for name in ("gate_proj", "up_proj")),
        Shard("down_proj", "RowParallelLinear", (hidden, mc.intermediate_size), 1,
              rank * inter, (rank + 1) * inter),
        Shard("embed_tokens", **vocab),
    ]
    if not mc.tie_word_embeddings:
        shards.append(Shard("lm_head", **{**vocab, "layer": "ParallelLMHead"}))
    return {s.tensor: s for s in shards}


def _count(n: int) -> str:
    """1234567 -> "1.23M"."""
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g}{unit}"
    return str(n)


def _heads_label(s: Shard) -> str | None:
    """"heads 0-7", "kv heads 0-3", "kv head 0"; None for tensors not split by heads."""
    if s.heads is None:
        return None
    kind = "kv head" if s.tensor in ("k_proj", "v_proj") else "head"
    a, b = s.heads
    return f"{kind} {a}" if b - a == 1 else f"{kind}s {a}-{b - 1}"


def _cell(s: Shard) -> str:
    """`start:stop`, then the heads, the padding and the replication of a shard."""
    parts = [f"{s.start}:{s.stop}"]
    if s.heads is not None:
        parts.append(f"({_heads_label(s)})")
    if s.padding:
        parts.append(f"+{s.padding} pad")
    if s.replicas > 1:
        parts.append(f"×{s.replicas}")
    return " ".join(parts)


def _parameters(shards: dict[str, Shard], num_layers: int, held: bool) -> int:
    """Parameters of these tensors over all layers: the whole tensors, or this rank's part."""
    total = 0
    for s in shards.values():
        n = s.size * s.shape[1 - s.dim] if held else s.shape[0] * s.shape[1]
        total += n if s.tensor in ("embed_tokens", "lm_head") else n * num_layers
    return total


def shards_text(model_config: ModelConfig, tp_size: int) -> str:
    """Each tensor's split as a table: one row per tensor, one column per rank.

    A cell is `start:stop` along the split dimension (rows or cols of the `[out, in]`
    checkpoint tensor), then the heads for q/k/v/o, `+p pad` for padded vocabulary rows, and
    `×n` when n ranks hold the same kv heads. The last line counts the parameters of these
    tensors, over all layers, in the checkpoint and on each rank.
    """
    mc = model_config
    per_rank = [shard_ranges(mc, tp_size, r) for r in range(tp_size)]
    first = list(per_rank[0].values())
    names = [f"{s.tensor} {list(s.shape)}" for s in first]
    cells = [[_cell(s) for s in shards.values()] for shards in per_rank]
    name_w = max(map(len, names))
    widths = [max(len(f"rank {r}"), *map(len, cells[r])) for r in range(tp_size)]
    kv = mc.num_key_value_heads
    lines = [f"{mc.architecture}: {mc.num_attention_heads} heads and {kv} kv "
             f"head{'s' if kv > 1 else ''} of {mc.head_dim}, hidden {mc.hidden_size}, "
             f"intermediate {mc.intermediate_size}, vocab {mc.vocab_size}; tp={tp_size}",
             f"{'tensor':<{name_w}}  split" + "".join(
                 f"  {f'rank {r}':<{w}}" for r, w in enumerate(widths)).rstrip()]
    for i, s in enumerate(first):
        row = "".join(f"  {cells[r][i]:<{w}}" for r, w in enumerate(widths))
        lines.append(f"{names[i]:<{name_w}}  {'rows' if s.dim == 0 else 'cols':<5}{row}".rstrip())
    total = _parameters(per_rank[0], mc.num_hidden_layers, held=False)
    held = [_count(_parameters(shards, mc.num_hidden_layers, held=True)) for shards in per_rank]
    lines.append(f"parameters of these tensors, {mc.num_hidden_layers} layers: {_count(total)}; "
                 f"held per rank: {', '.join(held)}")
    return "\n".join(lines)


def draw_shards(model_config: ModelConfig, tp_size: int, title: str | None = None):
    """Each weight of a decoder layer, and the embedding, with every rank's band coloured.

    Every matrix is drawn the same size (not to scale; its shape is written under it), rows
    being output features. Column-parallel weights are cut into horizontal bands, row-parallel
    ones into vertical bands; a kv head held by several ranks is striped in their colours and
    marked `×n`. Returns the matplotlib Figure.

    Each band is a Rectangle with gid ``shard-<tensor>-r<rank>``, so tests can find it.
    """
    require("matplotlib")
    from matplotlib.patches import Patch, Rectangle

    mc = model_config
    per_rank = [shard_ranges(mc, tp_size, r) for r in range(tp_size)]
    names = list(per_rank[0])
    box_w, box_h, gap = 1.0, 1.3, 0.45
    fig = new_figure(1.45 * len(names) + 1.3, 2.5)
    ax = fig.add_subplot()
    for i, name in enumerate(names):
        x0 = i * (box_w + gap)
        first = per_rank[0][name]
        full = first.shape[first.dim]
        for r, shards in enumerate(per_rank):
            s = shards[name]
            held = s.stop - s.start
            # ranks that share this slice split its band into stripes, one per rank
            k = r % s.replicas
            a, b = s.start / full, (s.start + held) / full
            if s.dim == 0:  # a band of rows, top to bottom
                xy = (x0 + k * box_w / s.replicas, a * box_h)
                w, h = box_w / s.replicas, (b - a) * box_h
            else:  # a band of columns, left to right
                xy, w, h = (x0 + a * box_w, 0.0), (b - a) * box_w, box_h
            color = rank_color(r)
            ax.add_patch(Rectangle(xy, w, h, facecolor=lighten(color, 0.35), edgecolor="white",
                                   lw=0.6, gid=f"shard-{name}-r{r}"))
            if k == 0:  # one label per distinct slice
                label = _heads_label(s) or (f"{s.start}:{s.stop}"
                                            + (f"\n+{s.padding} pad" if s.padding else ""))
                label += f"\n×{s.replicas}" if s.replicas > 1 else ""
                cx = x0 + (box_w / 2 if s.dim == 0 else (a + b) / 2 * box_w)
                cy = (a + b) / 2 * box_h if s.dim == 0 else box_h / 2
                vertical = s.dim == 1 and tp_size > 2
                ax.text(cx, cy, label, ha="center", va="center", fontsize=6.5,
                        rotation=90 if vertical else 0,
                        color=text_color(lighten(color, 0.35)))
        ax.add_patch(Rectangle((x0, 0), box_w, box_h, fill=False, edgecolor="#444444", lw=1.0))
        ax.text(x0 + box_w / 2, -0.08, name, ha="center", va="bottom", fontsize=8.5,
                fontweight="bold")
        split = "rows split" if first.dim == 0 else "cols split, all-reduce"
        if name in ("embed_tokens", "lm_head"):
            split = "rows split, all-reduce" if name == "embed_tokens" else "rows, gather"
        ax.text(x0 + box_w / 2, box_h + 0.06, f"{list(first.shape)}\n{split}\n{first.layer}",
                ha="center", va="top", fontsize=6.5, color="#333333")
    ax.set_xlim(-0.1, len(names) * (box_w + gap) - gap + 0.1)
    ax.set_ylim(box_h + 0.62, -0.35)  # row 0 at the top, as in a printed matrix
    ax.set_aspect("equal")
    ax.axis("off")
    handles = [Patch(facecolor=lighten(rank_color(r), 0.35), edgecolor="#444444",
                     label=f"rank {r}") for r in range(tp_size)]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7,
              frameon=False, handlelength=1.2)
    if title is None:
        tied = ", lm_head tied to embed_tokens" if mc.tie_word_embeddings else ""
        title = (f"{mc.architecture} over {tp_size} ranks: {mc.num_attention_heads} heads, "
                 f"{mc.num_key_value_heads} kv heads{tied} (shapes [out, in], not to scale)")
    ax.set_title(title, fontsize=9, loc="left")
    return fig


# ---- an all-reduce taken apart ----


def row_parallel_parts(x: torch.Tensor, weight: torch.Tensor, tp_size: int,
                       ) -> list[tuple[slice, torch.Tensor]]:
    """Each rank's input columns and partial product `x[:, cols] · W[:, cols]ᵀ` of a
    row-parallel matmul `x · Wᵀ` (`RowParallelLinear` before its all-reduce)."""
    in_features = weight.shape[1]
    if in_features % tp_size:
        raise ValueError(f"in_features={in_features} must divide by {tp_size} ranks")
    cols = in_features // tp_size
    parts = []
    for r in range(tp_size):
        band = slice(r * cols, (r + 1) * cols)
        parts.append((band, x[:, band] @ weight[:, band].T))  # [tokens, out_features]
    return parts


def _matrix_text(m: torch.Tensor, indent: str = "  ") -> str:
    whole = bool(torch.equal(m, m.round()))
    cells = [[f"{int(v)}" if whole else f"{v:.2f}" for v in row] for row in m.tolist()]
    w = max(len(c) for row in cells for c in row)
    return "\n".join(indent + " ".join(f"{c:>{w}}" for c in row) for row in cells)


def all_reduce_text(x: torch.Tensor, weight: torch.Tensor, tp_size: int) -> str:
    """Each rank's partial product of `x · Wᵀ`, their sum (what the all-reduce leaves on every
    rank) and the unsharded product, as text."""
    parts = row_parallel_parts(x, weight, tp_size)
    lines = []
    for r, (band, y) in enumerate(parts):
        lines.append(f"rank {r}: x[:, {band.start}:{band.stop}] · W[:, {band.start}:"
                     f"{band.stop}]ᵀ =")
        lines.append(_matrix_text(y))
    total = torch.stack([y for _, y in parts]).sum(0)
    full = x @ weight.T
    lines += ["all-reduce (sum over ranks), on every rank:", _matrix_text(total),
              "x · Wᵀ on one rank:", _matrix_text(full),
              f"equal: {torch.allclose(total, full)}"]
    return "\n".join(lines)


def draw_all_reduce(x: torch.Tensor, weight: torch.Tensor, tp_size: int,
                    title: str | None = None):
    """A row-parallel matmul on `tp_size` ranks: one line per rank, `x_r · W_rᵀ = y_r`, then
    the all-reduce `Σ y_r` beside the unsharded `x · Wᵀ`. Cells show their values.

    Matrices carry gids: ``x-r<rank>``, ``w-r<rank>``, ``partial-r<rank>``, ``sum``, ``full``.
    Returns the matplotlib Figure.
    """
    require("matplotlib")
    from matplotlib import colormaps
    from matplotlib.colors import Normalize, to_hex
    from matplotlib.patches import Rectangle

    parts = row_parallel_parts(x, weight, tp_size)
    total = torch.stack([y for _, y in parts]).sum(0)
    full = x @ weight.T
    tokens, out = full.shape
    cols = weight.shape[1] // tp_size
    everything = torch.cat([x.flatten(), weight.flatten(), total.flatten()])
    norm = Normalize(-float(everything.abs().max()), float(everything.abs().max()))
    cmap = colormaps["RdBu_r"]
    whole = bool(torch.equal(everything, everything.round()))

    row_h = max(tokens, cols) + 1.2
    width = cols + out * 3 + 8.5
    height = row_h * (tp_size + 1) + 0.5
    fig = new_figure(min(13.0, 0.36 * width + 0.6), 0.36 * height + 0.5)
    ax = fig.add_subplot()

    def matrix(m: torch.Tensor, x0: float, y0: float, edge: str, gid: str) -> None:
        for (i, j), v in zip([(i, j) for i in range(m.shape[0]) for j in range(m.shape[1])],
                             m.flatten().tolist()):
            face = to_hex(cmap(norm(v)))
            ax.add_patch(Rectangle((x0 + j, y0 + i), 1, 1, facecolor=face, edgecolor="white",
                                   lw=0.5))
            ax.text(x0 + j + 0.5, y0 + i + 0.5, f"{int(v)}" if whole else f"{v:.1f}",
                    ha="center", va="center", fontsize=6.5, color=text_color(face))
        ax.add_patch(Rectangle((x0, y0), m.shape[1], m.shape[0], fill=False, edgecolor=edge,
                               lw=2.0, gid=gid))

    def sign(x0: float, y0: float, s: str) -> None:
        ax.text(x0, y0, s, ha="center", va="center", fontsize=16 if s == "·" else 12)

    for r, (band, y) in enumerate(parts):
        top = r * row_h
        color = rank_color(r)
        ax.text(-0.4, top + tokens / 2, f"rank {r}", ha="right", va="center", fontsize=8,
                color=color, fontweight="bold")
        matrix(x[:, band], 0, top, color, f"x-r{r}")
        ax.text(cols / 2, top - 0.2, f"x[:, {band.start}:{band.stop}]", ha="center",
                va="bottom", fontsize=7)
        sign(cols + 0.75, top + tokens / 2, "·")
        wx = cols + 1.5
        matrix(weight[:, band].T, wx, top, color, f"w-r{r}")
        ax.text(wx + out / 2, top - 0.2, f"W[:, {band.start}:{band.stop}]ᵀ", ha="center",
                va="bottom", fontsize=7)
        sign(wx + out + 0.75, top + tokens / 2, "=")
        px = wx + out + 1.5
        matrix(y, px, top, color, f"partial-r{r}")
        ax.text(px + out / 2, top - 0.2, f"partial y{r}", ha="center", va="bottom", fontsize=7)
        sign(px + out + 0.9, top + tokens / 2, "+" if r < tp_size - 1 else "")
    top = tp_size * row_h
    sx = cols + 1.5 + out + 1.5
    ax.text(sx - 0.6, top + tokens / 2, "all-reduce  Σ", ha="right", va="center", fontsize=8,
            fontweight="bold")
    matrix(total, sx, top, "#222222", "sum")
    ax.text(sx + out / 2, top - 0.2, "on every rank", ha="center", va="bottom", fontsize=7)
    equal = torch.allclose(total, full)
    sign(sx + out + 0.75, top + tokens / 2, "=" if equal else "≠")
    fx = sx + out + 1.5
    matrix(full, fx, top, "#222222", "full")
    ax.text(fx + out / 2, top - 0.2, "x · Wᵀ (one rank)", ha="center", va="bottom", fontsize=7)
    ax.set_xlim(-4.0, fx + out + 0.5)
    ax.set_ylim(top + tokens + 0.3, -1.0)
    ax.set_aspect("equal")
    ax.axis("off")
    if title is None:
        title = (f"row-parallel x · Wᵀ over {tp_size} ranks: each rank multiplies its input "
                 f"columns, the all-reduce sums the partial products")
    ax.set_title(title, fontsize=9, loc="left")
    return fig
