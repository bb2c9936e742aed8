"""One model-runner step drawn: the packed input tensors over the KV pool, and the sampler.

`draw_step_inputs` takes what `ModelRunner.prepare` returns (flat input ids and positions, and
the `AttentionMetadata`): the step's tokens in one row, no padding, each sequence a run of
columns (`cu_seqlens_q`), and below them the KV pool, slot by slot, with the slots this step
writes (`slot_mapping`) and the earlier slots it reads through each block table.

`draw_sampler_filters` runs one row of real logits through the sampler's stages (temperature,
top-k, top-p, min-p: `minillm.sampling`'s own functions, in the `Sampler`'s order) and draws
the distribution after each.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from minillm.config import SamplingParams
from minillm.viz.figure import new_figure, require
from minillm.viz.style import FREE_COLOR, SHARED_COLOR, lighten, seq_color, text_color

if TYPE_CHECKING:  # the functions import torch themselves: `import minillm.viz` stays light
    import torch

    from minillm.attention import AttentionMetadata

# ---- the step's inputs ----


def _ranges(values: list[int]) -> str:
    """[12, 13, 14, 20, 21] as "12-14 20-21"."""
    runs: list[list[int]] = []
    for v in values:
        if runs and v == runs[-1][1] + 1:
            runs[-1][1] = v
        else:
            runs.append([v, v])
    return " ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def _seq_slots(meta: AttentionMetadata, i: int) -> tuple[list[int], list[int]]:
    """(block table entries in use, slot of each key position) of sequence row `i`."""
    bs = meta.block_size
    seq_len = meta.seq_lens_cpu[i]
    table = meta.block_tables[i, : -(-seq_len // bs)].tolist()
    return table, [table[p // bs] * bs + p % bs for p in range(seq_len)]


def _seq_ids(meta: AttentionMetadata, seq_ids) -> list[int]:
    seq_ids = list(range(meta.num_seqs)) if seq_ids is None else list(seq_ids)
    if len(seq_ids) != meta.num_seqs:
        raise ValueError(f"seq_ids has {len(seq_ids)} ids, the step has {meta.num_seqs} "
                         "sequences")
    return seq_ids


def step_inputs_text(input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata,
                     seq_ids=None) -> str:
    """The step's tensors as lists, then one line per sequence: its query rows, the slots its
    new tokens are written to, and the keys it attends to through its block table."""
    seq_ids = _seq_ids(meta, seq_ids)
    rows = [("input_ids", input_ids.tolist()), ("positions", positions.tolist()),
            ("slot_mapping", meta.slot_mapping.tolist()),
            ("cu_seqlens_q", meta.cu_seqlens_q.tolist()), ("seq_lens", meta.seq_lens.tolist()),
            ("block_tables", meta.block_tables.tolist())]
    lines = [f"{name:<13}{values}" for name, values in rows]
    cu = meta.cu_seqlens_q.tolist()
    slots = meta.slot_mapping.tolist()
    for i, sid in enumerate(seq_ids):
        a, b = cu[i], cu[i + 1]
        table, _ = _seq_slots(meta, i)
        pos = positions[a:b].tolist()
        where = f"positions {pos[0]}-{pos[-1]}" if len(pos) > 1 else f"position {pos[0]}"
        word = "slot" if b - a == 1 else "slots"
        lines.append(f"seq {sid}: rows {a}:{b}, {where} -> {word} {_ranges(slots[a:b])}; "
                     f"attends to {meta.seq_lens_cpu[i]} keys in blocks {table}")
    return "\n".join(lines)


def draw_step_inputs(input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata,
                     num_blocks: int | None = None, seq_ids=None, cols: int | None = None,
                     max_arrows: int = 8, title: str | None = None):
    """Draw one step's packed inputs above the KV pool they write and read.

    Args:
        input_ids: the step's flat token ids, as `ModelRunner.prepare(step_inputs)` returns.
        positions: their positions, from the same call.
        meta: the step's `AttentionMetadata`, from the same call.
        num_blocks: blocks in the KV pool (default: enough for the largest block id used).
        seq_ids: the sequence id of each row, for the colours every minillm figure uses.
        cols: blocks per row of the pool (default: about 40 slots per row).
        max_arrows: draw an arrow from each token to its slot when the step has at most this
            many tokens (a decode step); a prefill shows the slot numbers instead.
        title: the figure title.

    Token cells are Rectangles with gid ``token-<row>``; every slot of the pool a Rectangle
    with gid ``slot-<slot>``; arrows have gid ``arrow-<row>``.
    """
    require("matplotlib")
    from matplotlib.patches import Patch, Rectangle

    seq_ids = _seq_ids(meta, seq_ids)
    bs = meta.block_size
    ids, pos = input_ids.tolist(), positions.tolist()
    slots_new = meta.slot_mapping.tolist()
    cu = meta.cu_seqlens_q.tolist()
    num_tokens = len(ids)
    used_blocks = [b for i in range(meta.num_seqs) for b in _seq_slots(meta, i)[0]]
    if num_blocks is None:
        num_blocks = max(used_blocks, default=0) + 1
    cols = cols or max(1, min(num_blocks, 40 // (bs + 1)))
    pool_rows = -(-num_blocks // cols)

    # Who reads each slot in this step: [(row of the sequence, position, written now?)].
    slot_info: dict[int, list[tuple[int, int, bool]]] = {}
    block_users: dict[int, list[tuple[int, int]]] = {}  # block -> [(seq_id, logical index)]
    for i in range(meta.num_seqs):
        table, slots = _seq_slots(meta, i)
        first_new = meta.seq_lens_cpu[i] - meta.query_lens_cpu[i]
        for p, s in enumerate(slots):
            slot_info.setdefault(s, []).append((i, p, p >= first_new))
        for logical, b in enumerate(table):
            block_users.setdefault(b, []).append((seq_ids[i], logical))
    block_label = {b: ",".join(f"s{sid}" for sid, _ in users) + f" L{users[0][1]}"
                   for b, users in block_users.items()}
    any_shared = any(len(users) > 1 for users in block_users.values())

    # The strip: one column per token, each sequence's run of columns at least `min_run` wide.
    cell_w, seq_gap, min_run, block_gap = 1.7, 0.6, 4.5, 0.8
    run_x, xs, x = [], [0.0] * num_tokens, 0.0
    for i in range(meta.num_seqs):
        a, b = cu[i], cu[i + 1]
        run_x.append(x)
        for j in range(a, b):
            xs[j] = x + (j - a) * cell_w
        x += max((b - a) * cell_w, min_run) + seq_gap
    strip_w = x - seq_gap if run_x else 0.0
    pool_w = cols * (bs + block_gap)
    width = max(strip_w, pool_w)
    pool_y = 7.3  # top of the pool
    row_h = 1.9  # a row of blocks with its label line
    height = pool_y + pool_rows * row_h
    margin = 5.5  # room for the row names on the left
    unit = min(0.3, 12.0 / (width + margin + 1))
    fig = new_figure((width + margin + 1) * unit, (height + 1.6) * unit + 0.6)
    ax = fig.add_subplot()
    fs = 6.5 if unit > 0.22 else 5.5

    for name, y in (("seq_lens", 1), ("block_tables", 2), ("input_ids", 3), ("positions", 4),
                    ("slot_mapping", 5), ("cu_seqlens_q", 6.2)):
        ax.text(-0.3, y + 0.5, name, ha="right", va="center", fontsize=fs + 0.5)
    for i, sid in enumerate(seq_ids):
        a, b = cu[i], cu[i + 1]
        color = seq_color(sid)
        run_w = max((b - a) * cell_w, min_run)
        ax.text(run_x[i], 0.85, f"seq {sid}", fontsize=fs + 1, color=color, fontweight="bold",
                ha="left", va="bottom")
        for j in range(a, b):
            for y, value, face in ((3, ids[j], color), (4, pos[j], lighten(color)),
                                   (5, slots_new[j], lighten(color))):
                ax.add_patch(Rectangle((xs[j], y + 0.05), cell_w, 0.9, facecolor=face,
                                       edgecolor="#555555", lw=0.6,
                                       gid=f"token-{j}" if y == 3 else None))
                ax.text(xs[j] + cell_w / 2, y + 0.5, str(value), ha="center", va="center",
                        fontsize=fs, color=text_color(face))
        table, _ = _seq_slots(meta, i)
        for y, value in ((1, meta.seq_lens_cpu[i]), (2, table)):  # one cell per sequence
            ax.add_patch(Rectangle((run_x[i], y + 0.05), run_w, 0.9, facecolor="white",
                                   edgecolor=color, lw=1.0))
            ax.text(run_x[i] + run_w / 2, y + 0.5, str(value), ha="center", va="center",
                    fontsize=fs)
    for k, offset in enumerate(cu):  # a boundary line where each sequence's rows begin
        x = run_x[k] - (seq_gap / 2 if k else 0) if k < len(run_x) else strip_w
        ax.plot([x, x], [0.9, 6.1], color="black", lw=1.0)
        ax.text(x, 6.7, str(offset), ha="center", va="center", fontsize=fs)

    # The pool: blocks of `bs` slots, `cols` blocks per row.
    def slot_xy(s: int) -> tuple[float, float]:
        b, k = divmod(s, bs)
        return (b % cols) * (bs + block_gap) + k, pool_y + (b // cols) * row_h + 0.6

    ax.text(-0.3, pool_y + 1.1, "KV pool", ha="right", va="center", fontsize=fs + 1,
            fontweight="bold")
    for b in range(num_blocks):
        x0, y0 = slot_xy(b * bs)
        ax.text(x0, y0 - 0.05, f"P{b}" + (f" {block_label[b]}" if b in block_label else ""),
                fontsize=fs - 0.5, ha="left", va="bottom",
                color="black" if b in block_label else "#999999")
        for k in range(bs):
            s = b * bs + k
            x, y = slot_xy(s)
            face, label, label_color = FREE_COLOR, "", "black"
            if s in slot_info:
                i, p, new = slot_info[s][0]
                color = seq_color(seq_ids[i])
                face = color if new else lighten(color)
                if len(slot_info[s]) > 1:  # a shared prefix block, read by several sequences
                    face = SHARED_COLOR
                label, label_color = str(p), text_color(face)
            ax.add_patch(Rectangle((x, y), 1, 0.9, facecolor=face, edgecolor="#888888", lw=0.5,
                                   gid=f"slot-{s}"))
            if label:
                ax.text(x + 0.5, y + 0.45, label, ha="center", va="center", fontsize=fs - 1,
                        color=label_color)
        ax.add_patch(Rectangle((x0, y0), bs, 0.9, fill=False, edgecolor="#333333", lw=1.0))

    if num_tokens <= max_arrows:
        for j in range(num_tokens):
            x, y = slot_xy(slots_new[j])
            i = next(k for k in range(meta.num_seqs) if cu[k + 1] > j)
            ax.annotate("", xy=(x + 0.5, y), xytext=(xs[j] + cell_w / 2, 6.0),
                        gid=f"arrow-{j}", arrowprops=dict(arrowstyle="-|>", lw=1.0,
                                                          color=seq_color(seq_ids[i])))

    handles = [Patch(facecolor="#777777", edgecolor="#555555",
                     label="slot written this step (slot_mapping)"),
               Patch(facecolor=lighten("#777777"), edgecolor="#555555",
                     label="earlier KV it reads (block table)"),
               Patch(facecolor=FREE_COLOR, edgecolor="#555555", label="not touched this step")]
    if any_shared:
        handles.insert(2, Patch(facecolor=SHARED_COLOR, edgecolor="#555555",
                                label="shared prefix, read by several"))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(0.0, 0.0), ncols=len(handles),
              fontsize=fs + 0.5, frameon=False, handlelength=1.2)
    ax.set_xlim(-margin, width + 1)
    ax.set_ylim(height + 0.1, 0.0)
    ax.set_aspect("equal")
    ax.axis("off")
    if title is None:
        kind = ("decode" if meta.is_decode_only else
                "mixed" if 1 in meta.query_lens_cpu else "prefill")
        title = (f"{kind} step: {num_tokens} tokens of {meta.num_seqs} sequences; KV pool "
                 f"{num_blocks} blocks × {bs} slots (numbers in slots: token positions)")
    ax.set_title(title, fontsize=9, loc="left")
    return fig


# ---- the sampler's filters ----


def sampler_stages(logits: torch.Tensor, params: SamplingParams) -> list[tuple[str, torch.Tensor]]:
    """The probabilities [V] after each stage the `Sampler` applies for `params`, in its order.

    Stages: the model's own distribution, then temperature, top-k, top-p and min-p, each only
    when `params` turns it on, each computed by `minillm.sampling`'s functions on the previous
    stage's logits (top-p runs with top-k as the sampler runs them: in one call). A greedy
    request ends with all the mass on the argmax. Penalties need a token history and are not
    drawn here.
    """
    import torch

    from minillm.sampling import apply_min_p, apply_top_k_top_p

    logits = logits.detach().float().reshape(1, -1)  # [1, V]
    vocab_size = logits.shape[-1]
    stages = [("model", logits.softmax(-1)[0])]
    if params.greedy:
        greedy = torch.zeros(vocab_size)
        greedy[logits.argmax(-1)] = 1.0
        return [*stages, ("greedy (argmax)", greedy)]
    if params.temperature != 1.0:
        logits = logits / params.temperature
        stages.append((f"temperature {params.temperature:g}", logits.softmax(-1)[0]))
    top_k = None
    if params.top_k != -1 and params.top_k < vocab_size:
        top_k = torch.tensor([params.top_k])
        stages.append((f"top-k {params.top_k}",
                       apply_top_k_top_p(logits, top_k, None).softmax(-1)[0]))
    if params.top_p < 1.0:
        logits = apply_top_k_top_p(logits, top_k, torch.tensor([params.top_p]))
        stages.append((f"top-p {params.top_p:g}", logits.softmax(-1)[0]))
    elif top_k is not None:
        logits = apply_top_k_top_p(logits, top_k, None)
    if params.min_p > 0.0:
        logits = apply_min_p(logits, torch.tensor([params.min_p]))
        stages.append((f"min-p {params.min_p:g}", logits.softmax(-1)[0]))
    return stages


def _label(token_label: Callable[[int], str] | None, token: int) -> str:
    return str(token) if token_label is None else token_label(token)


def sampler_filters_text(logits: torch.Tensor, params: SamplingParams, n: int = 10,
                         token_label: Callable[[int], str] | None = None) -> str:
    """The `n` most likely tokens' probabilities after each stage (`-`: filtered out), and how
    many tokens each stage keeps."""
    stages = sampler_stages(logits, params)
    top = stages[0][1].topk(min(n, stages[0][1].numel())).indices.tolist()
    labels = [_label(token_label, t) for t in top]
    lw = max(len("kept tokens"), *(len(s) for s in labels))
    widths = [max(6, len(name)) for name, _ in stages]
    lines = [f"{'token':<{lw}}  " + "  ".join(f"{name:>{w}}" for (name, _), w in
                                             zip(stages, widths, strict=True))]
    for t, label in zip(top, labels, strict=True):
        cells = [f"{float(p[t]):.3f}" if p[t] > 0 else "-" for _, p in stages]
        lines.append(f"{label:<{lw}}  " + "  ".join(f"{c:>{w}}" for c, w in
                                                  zip(cells, widths, strict=True)))
    kept = [str(int((p > 0).sum())) for _, p in stages]
    lines.append(f"{'kept tokens':<{lw}}  " + "  ".join(f"{c:>{w}}" for c, w in
                                                        zip(kept, widths, strict=True)))
    return "\n".join(line.rstrip() for line in lines)


def draw_sampler_filters(logits: torch.Tensor, params: SamplingParams, n: int = 12,
                         token_label: Callable[[int], str] | None = None,
                         title: str | None = None):
    """One panel per sampler stage: the `n` most likely tokens' probabilities after it.

    Args:
        logits: one row of logits, [V] or [1, V] (e.g. `ModelRunner.forward`'s output row).
        params: the request's `SamplingParams` (temperature, top_k, top_p, min_p).
        n: how many of the model's most likely tokens to show; the rest of the vocabulary is
            one more bar, "other".
        token_label: token id -> label (e.g. the tokenizer's decode); default the id.
        title: the figure title.

    Kept tokens are bars with gid ``kept-<stage>-<token>``; a token a stage cuts is a hatched
    grey bar, as tall as its probability before the cut, with gid ``cut-<stage>-<token>``.
    """
    require("matplotlib")
    stages = sampler_stages(logits, params)
    top = stages[0][1].topk(min(n, stages[0][1].numel())).indices.tolist()
    labels = [_label(token_label, t) for t in top]
    rest = stages[0][1].numel() - len(top)
    fig = new_figure(min(2.3 * len(stages) + 1.2, 13), 0.26 * (len(top) + 1) + 1.3)
    axes = fig.subplots(1, len(stages), sharey=True, squeeze=False)[0]
    ys = list(range(len(top) + 1))
    xmax = 1.05 * max(float(p[top].max()) for _, p in stages)  # the "other" bar may pass it
    previous, previous_other = None, 0.0
    for k, (ax, (name, probs)) in enumerate(zip(axes, stages, strict=True)):
        color = seq_color(k)
        for y, t in zip(ys, top, strict=False):
            p = float(probs[t])
            if p > 0:
                ax.barh(y, p, color=color, height=0.75, gid=f"kept-{k}-{t}")
            elif previous is not None and previous[t] > 0:  # cut here: what it had before
                ax.barh(y, float(previous[t]), color="#eeeeee", edgecolor="#999999",
                        hatch="////", height=0.75, lw=0.5, gid=f"cut-{k}-{t}")
        other = max(float(1.0 - probs[top].sum()), 0.0) if rest else 0.0
        if other > 0 or not previous_other:
            ax.barh(ys[-1], min(other, xmax), color=lighten(color, 0.5), height=0.75)
            ax.text(min(other, xmax * 0.75), ys[-1], f" {other:.2f}", fontsize=7, va="center")
        else:  # the whole rest of the vocabulary was cut here
            ax.barh(ys[-1], min(previous_other, xmax), color="#eeeeee", edgecolor="#999999",
                    hatch="////", height=0.75, lw=0.5)
        previous_other = other
        kept = int((probs > 0).sum())
        ax.set_title(f"{name}\nkeeps {kept} of {probs.numel()}", fontsize=8, loc="left")
        ax.tick_params(labelsize=7)
        ax.set_xlim(0, xmax)
        ax.spines[["top", "right"]].set_visible(False)
        previous = probs
    axes[0].set_yticks(ys, [*labels, f"other ({rest})"], fontsize=7)
    axes[0].invert_yaxis()
    fig.supxlabel("probability", fontsize=8)
    if title is None:
        title = "the sampler's stages on one distribution (hatched: cut by this stage)"
    fig.suptitle(title, fontsize=9, x=0.01, ha="left")
    return fig
