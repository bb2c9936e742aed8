"""A dashboard of a running engine, live in JupyterLab or replayed from a recorded `Trace`.

One frame shows, for one step:

- the KV block pool: one cell per block, in the colour of the sequence whose block table
  holds it (stripes when shared), hatched grey when cached but unused (evictable), a black
  corner when the prefix cache holds it, a red ring when it left the cache this step;
- the queues: every running and waiting sequence as a bar of its tokens (prompt light,
  completion dark, the prefix-cache hit hatched);
- the batch of each step: prefill-chunk tokens and decode tokens, against the token budget;
- tokens per second (engine time) and the prefix-cache hit rate so far.

`draw_dashboard(trace, step)` returns that frame as a matplotlib Figure (what saved notebooks
and the docs show; widgets do not render in static HTML) and `dashboard_text` is its text twin.
`Dashboard(llm)` records the engine's steps (`minillm.trace.TraceRecorder`) and redraws the
frame into an ipywidgets view while generation runs; `Dashboard.replay(trace)` puts a slider
and a play button over a recorded trace.

The widget's frame is HTML (`dashboard_html`: a CSS grid for the pool, inline SVG for the
curves), not a matplotlib image: it is built in about a millisecond, where rendering the
matplotlib frame to PNG takes a few hundred on a laptop CPU. Drawing runs in the engine's
thread, between steps, and is rationed by a `Throttle`: at most `max_fps` frames a second,
and never more than `max_overhead` of the wall time (a frame that took 5 ms waits at least
5 ms / max_overhead before the next). `benchmarks/dashboard_overhead.py` measures the cost.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from minillm.trace import Trace, TraceRecorder, TraceStep
from minillm.viz.figure import new_figure, require
from minillm.viz.style import (
    EVICTABLE_COLOR,
    FREE_COLOR,
    RADIX_EVICTED_COLOR,
    TIMELINE_COLORS,
    UNOWNED_COLOR,
    lighten,
    seq_color,
)

CACHED_MARK_COLOR = "#000000"
GAP_COLOR = "#c8c8c8"  # the lines between pool cells
MAX_QUEUE_ROWS = 16  # sequences listed in the queue panel; the rest are counted
RATE_WINDOW = 8  # steps averaged for the tokens/s curve


# ---- throttle ----


class Throttle:
    """Rations an action by time: at most `max_per_second`, at most `max_busy` of wall time.

    `ready()` says whether the action may run now; `done(started, cost)` books a run that
    began at `started` and took `cost` seconds. The next run may start after
    `max(1 / max_per_second, cost / max_busy)`: slow actions are spaced out so that their
    share of the time stays below `max_busy`.
    """

    def __init__(self, max_per_second: float = 2.0, max_busy: float = 0.03,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        if not max_per_second > 0:
            raise ValueError(f"max_per_second={max_per_second} is invalid: must be > 0")
        if not 0 < max_busy <= 1:
            raise ValueError(f"max_busy={max_busy} is invalid: must be in (0, 1]")
        self.max_per_second, self.max_busy, self.clock = max_per_second, max_busy, clock
        self.next_time = -math.inf
        self.count = 0  # runs booked
        self.busy = 0.0  # seconds spent in them

    def ready(self) -> bool:
        return self.clock() >= self.next_time

    def done(self, started: float, cost: float) -> None:
        self.count += 1
        self.busy += cost
        self.next_time = started + max(1.0 / self.max_per_second, cost / self.max_busy)


# ---- one frame, static ----


def _step_index(trace: Trace, step: int | None) -> int:
    """A position in `trace.steps` (negative counts from the end; None is the last)."""
    if not trace.steps:
        raise ValueError("the trace has no steps yet: run some generation while recording")
    i = len(trace.steps) - 1 if step is None else step
    i = i + len(trace.steps) if i < 0 else i
    if not 0 <= i < len(trace.steps):
        raise ValueError(f"step={step} is invalid: the trace has {len(trace.steps)} steps "
                         f"(0 to {len(trace.steps) - 1})")
    return i


def dashboard_text(trace: Trace, step: int | None = None, timings: bool = True,
                   pool: bool = True) -> str:
    """The frame of step `step` (an index into `trace.steps`; default the last) as text.

    `timings=False` leaves out the times and rates, which vary from run to run; the rest is
    a function of the workload only. `pool=False` leaves out the pool grid.
    """
    from minillm.viz.blocks import block_pool_text

    i = _step_index(trace, step)
    s = trace.steps[i]
    cfg = trace.config
    pre = " ".join(f"{sid}:{n}" for sid, n in s.prefill.items()) or "-"
    dec = " ".join(map(str, s.decode)) or "-"
    share = f" ({s.num_tokens / s.budget:.0%} of the budget)" if s.budget else ""
    lines = [f"step {s.step} ({i + 1} of {len(trace)} recorded): {len(s.running)} running, "
             f"{len(s.waiting)} waiting",
             f"batch: prefill {pre} | decode {dec} | {s.num_tokens}/{s.budget} tokens{share}",
             f"queues: running {s.running or '-'} | waiting {s.waiting or '-'}"
             + (f" | preempted {s.preempted}" if s.preempted else "")
             + (f" | finished {s.finished}" if s.finished else ""),
             f"kv: {s.blocks_used} used, {s.blocks_free} free, {s.blocks_cached} cached of "
             f"{cfg.get('num_blocks')}; evicted so far {s.evicted_blocks}"
             + (f" (this step: {' '.join(map(str, s.evicted))})" if s.evicted else ""),
             f"prefix cache: {s.hit_tokens} of {s.queried_tokens} prompt tokens hit "
             f"({s.hit_rate:.1%}); tokens: {s.prefill_tokens} prefilled, "
             f"{s.generated_tokens} generated"]
    if timings:
        lines.append(f"time: {s.time:.3f} s; this step {s.seconds * 1e3:.1f} ms; "
                     f"{trace.tokens_per_second(i + 1, RATE_WINDOW):.1f} tokens/s over the last"
                     f" {min(i + 1, RATE_WINDOW)} steps, {trace.tokens_per_second(i + 1):.1f} "
                     "tokens/s overall")
    if pool and s.pool is not None:
        view = s.pool_view(cfg["num_blocks"], cfg["block_size"])
        for cols in (16, 8, 4, 2, 1):  # as many columns as fit in 100 characters
            grid = block_pool_text(view, view.seqs, cols=cols)
            if max(map(len, grid.splitlines())) <= 100:
                break
        lines.append(grid)
    return "\n".join(lines)


def _rgb(color: str) -> tuple[int, int, int]:
    return tuple(int(color[k : k + 2], 16) for k in (1, 3, 5))


def _pool_image(s: TraceStep, num_blocks: int, cols: int, px: int):
    """The pool as an RGB array, `px` pixels a cell (the last row and column are the gap)."""
    import numpy as np

    rows = -(-num_blocks // cols)
    img = np.empty((rows * px, cols * px, 3), dtype=np.uint8)
    img[:] = _rgb("#ffffff")
    owners: dict[int, list[int]] = {}
    for sid, table in s.block_tables.items():
        for b in table:
            owners.setdefault(b, []).append(sid)
    inner = px - 1
    hatch = (np.add.outer(np.arange(inner), np.arange(inner)) % 4 == 0)
    evicted = set(s.evicted)
    corner = max(1, px // 5)
    for b in range(num_blocks):
        y, x = (b // cols) * px, (b % cols) * px
        img[y : y + px, x : x + px] = _rgb(GAP_COLOR)
        cell = img[y : y + inner, x : x + inner]
        state = s.pool[b]
        ids = owners.get(b)
        if state == ".":
            cell[:] = _rgb(FREE_COLOR)
        elif state == "e":
            cell[:] = _rgb(EVICTABLE_COLOR)
            cell[hatch] = _rgb("#b0b0b0")
        elif not ids:
            cell[:] = _rgb(UNOWNED_COLOR)
        else:  # one vertical stripe per owner
            edges = [round(k * inner / len(ids)) for k in range(len(ids) + 1)]
            for k, sid in enumerate(ids):
                cell[:, edges[k] : edges[k + 1]] = _rgb(seq_color(sid))
        if state in "ce":
            cell[:corner, inner - corner :] = _rgb(CACHED_MARK_COLOR)
        if b in evicted:
            ring = _rgb(RADIX_EVICTED_COLOR)
            cell[0, :] = cell[-1, :] = cell[:, 0] = cell[:, -1] = ring
    return img


def _draw_pool(ax, s: TraceStep, cfg: dict) -> None:
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    n = cfg["num_blocks"]
    cols = min(n, 8 * max(1, math.ceil(math.sqrt(4 * n) / 8)))
    rows = -(-n // cols)
    px = 12 if n <= 256 else 8 if n <= 4096 else 4
    if s.pool is None:
        ax.text(0.5, 0.5, "pool not recorded", ha="center", va="center", transform=ax.transAxes)
        ax.axis("off")
        return
    ax.imshow(_pool_image(s, n, cols, px), interpolation="nearest", aspect="equal",
              extent=(0, cols, rows, 0), gid="pool")
    if n <= 128:
        for b in range(n):
            ax.text(b % cols + 0.06, b // cols + 0.08, str(b), fontsize=5, va="top",
                    ha="left", color="#555555")
    ax.set_xlim(0, cols)
    ax.set_ylim(rows, 0)
    ax.axis("off")
    holders = sorted(s.block_tables)
    handles = [Patch(facecolor=seq_color(sid), label=f"seq {sid}") for sid in holders[:10]]
    if len(holders) > 10:
        handles.append(Patch(facecolor="none", edgecolor="none",
                             label=f"+{len(holders) - 10} more"))
    handles += [Patch(facecolor=FREE_COLOR, edgecolor="#444444", label="free"),
                Patch(facecolor=EVICTABLE_COLOR, hatch="///", edgecolor="#444444",
                      label="evictable"),
                Line2D([], [], marker="s", color=CACHED_MARK_COLOR, ls="none", markersize=4,
                       label="in prefix cache"),
                Patch(facecolor="none", edgecolor=RADIX_EVICTED_COLOR, lw=1.5,
                      label="evicted this step")]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=6.5,
              frameon=False, handlelength=1.2)
    ax.set_title(f"KV pool: {n} blocks × {cfg['block_size']} tokens — {s.blocks_used} used, "
                 f"{s.blocks_free} free, {s.blocks_cached} cached", fontsize=8, loc="left")


def _draw_queues(ax, s: TraceStep) -> None:
    """One bar per sequence: running (oldest first), then waiting (head first)."""
    from matplotlib.patches import Rectangle

    rows = [(sid, True) for sid in s.running] + [(sid, False) for sid in s.waiting]
    shown, hidden = rows[:MAX_QUEUE_ROWS], len(rows) - MAX_QUEUE_ROWS
    if not rows:
        ax.text(0.5, 0.5, "no sequence running or waiting", ha="center", va="center",
                fontsize=7, color="#777777", transform=ax.transAxes)
        ax.axis("off")
        ax.set_title("queues: empty", fontsize=8, loc="left")
        return
    longest = max((s.seqs.get(sid, [0, 1, 0])[1] for sid, _ in shown), default=1)
    for r, (sid, running) in enumerate(shown):
        prompt, tokens, cached = s.seqs.get(sid, [0, 0, 0])
        color = seq_color(sid) if running else "#b0b0b0"
        ax.add_patch(Rectangle((0, r - 0.35), prompt, 0.7, facecolor=lighten(color, 0.5),
                               edgecolor="none", gid=f"queue-{sid}"))
        ax.add_patch(Rectangle((prompt, r - 0.35), tokens - prompt, 0.7, facecolor=color,
                               edgecolor="none"))
        if cached:
            ax.add_patch(Rectangle((0, r - 0.35), cached, 0.7, facecolor="none", hatch="////",
                                   edgecolor="#333333", lw=0))
        tag = "" if running else f", waiting #{r - len(s.running) + 1}"
        if sid in s.prefill:
            tag += f"  +{s.prefill[sid]} prefill"
        ax.text(tokens + longest * 0.02, r, f"{tokens}{tag}", va="center", fontsize=6)
    ax.set_yticks(range(len(shown)), [f"seq {sid}" for sid, _ in shown], fontsize=6.5)
    for label, (sid, running) in zip(ax.get_yticklabels(), shown):
        label.set_color(seq_color(sid) if running else "#777777")
    ax.set_ylim(max(len(shown), 4) - 0.5, -0.5)
    ax.set_xlim(0, longest * 1.45 or 1)
    ax.tick_params(axis="x", labelsize=6)
    ax.spines[["top", "right"]].set_visible(False)
    more = f", {hidden} more not shown" if hidden > 0 else ""
    ax.set_title(f"queues: {len(s.running)} running, {len(s.waiting)} waiting{more}",
                 fontsize=8, loc="left")
    ax.set_xlabel("tokens (light: prompt, hatched: from prefix cache)", fontsize=6.5)


def _draw_batches(ax, trace: Trace, i: int, window: int) -> None:
    """Tokens per step, prefill chunks stacked on decodes, for the last `window` steps."""
    lo = max(0, i + 1 - window)
    steps = trace.steps[lo : i + 1]
    xs = [s.step for s in steps]
    dec = [len(s.decode) for s in steps]
    pre = [sum(s.prefill.values()) for s in steps]
    ax.bar(xs, dec, width=0.85, color=TIMELINE_COLORS["decode"], label="decode tokens")
    ax.bar(xs, pre, width=0.85, bottom=dec, color=TIMELINE_COLORS["prefill"],
           label="prefill-chunk tokens")
    cur = trace.steps[i]
    ax.bar([cur.step], [cur.num_tokens], width=0.85, facecolor="none", edgecolor="black",
           lw=1.2, gid="current-step")
    top = max([d + p for d, p in zip(dec, pre)] + [1])
    budget = cur.budget
    if budget and budget <= top * 1.5:
        ax.axhline(budget, color="#555555", ls="--", lw=0.8, label=f"budget {budget}")
        top = budget
    ax.set_ylim(0, top * 1.15)
    span = min(window, len(trace.steps))  # a whole short trace fills the axis
    ax.set_xlim(xs[0] - 0.6, max(xs[-1], xs[0] + span - 1) + 0.6)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.tick_params(labelsize=6.5)
    ax.spines[["top", "right"]].set_visible(False)
    ax.legend(fontsize=6.5, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    off = "" if not budget or budget <= top else f" (budget {budget} is off the scale)"
    ax.set_title(f"batch per step: step {cur.step} computes {cur.num_tokens} tokens "
                 f"({sum(cur.prefill.values())} prefill, {len(cur.decode)} decode){off}",
                 fontsize=8, loc="left")
    ax.set_xlabel("step", fontsize=6.5)


def _draw_rates(ax, trace: Trace, i: int, window: int) -> None:
    lo = max(0, i + 1 - window)
    xs = [trace.steps[k].step for k in range(lo, i + 1)]
    rates = [trace.tokens_per_second(k + 1, RATE_WINDOW) for k in range(lo, i + 1)]
    hits = [100 * trace.steps[k].hit_rate for k in range(lo, i + 1)]
    ax.plot(xs, rates, color="#4c72b0", lw=1.2)
    ax.set_ylabel("tokens/s", fontsize=6.5, color="#4c72b0")
    ax.set_ylim(0, max(rates + [1]) * 1.2)
    ax.tick_params(labelsize=6.5)
    ax.set_xlabel("step", fontsize=6.5)
    twin = ax.twinx()
    twin.plot(xs, hits, color="#dd8452", lw=1.2, ls="--")
    twin.set_ylim(0, 105)
    twin.set_ylabel("prefix hit %", fontsize=6.5, color="#dd8452")
    twin.tick_params(labelsize=6.5)
    ax.set_title(f"{rates[-1]:.0f} tokens/s, hit rate {hits[-1]:.0f}%", fontsize=8, loc="left")
    ax.set_xlim(xs[0] - 0.6, max(xs[-1], xs[0] + 1) + 0.6)
    ax.xaxis.get_major_locator().set_params(integer=True)


def draw_dashboard(trace: Trace, step: int | None = None, window: int = 60,
                   title: str | None = None):
    """The dashboard frame of step `step` (an index into `trace.steps`; default the last).

    Returns a matplotlib Figure: the KV pool and the queues after the step on top, the
    batches and the rates of the last `window` steps below.
    """
    require("matplotlib")
    i = _step_index(trace, step)
    s = trace.steps[i]
    fig = new_figure(11.0, 5.6)
    grid = fig.add_gridspec(2, 2, width_ratios=[1.7, 1.0], height_ratios=[1.25, 1.0])
    _draw_pool(fig.add_subplot(grid[0, 0]), s, trace.config)
    _draw_queues(fig.add_subplot(grid[0, 1]), s)
    _draw_batches(fig.add_subplot(grid[1, 0]), trace, i, window)
    _draw_rates(fig.add_subplot(grid[1, 1]), trace, i, window)
    model = trace.config.get("model")
    fig.suptitle(title or f"{model + ' · ' if model else ''}step {s.step} ({i + 1} of "
                 f"{len(trace)}) · {s.time:.2f} s · {s.generated_tokens} tokens generated"
                 f" · {s.evicted_blocks} blocks evicted", fontsize=9, x=0.01, ha="left")
    return fig


# ---- one frame as HTML, for the widget ----

# The live view is HTML (a CSS grid for the pool, inline SVG for the curves): building it
# takes well under a millisecond for a small pool, where a matplotlib frame takes hundreds.
_CSS = """<style>
.mdb{font-family:monospace;font-size:11px;line-height:1.35;color:#222}
.mdb-row{display:flex;gap:18px;align-items:flex-start;flex-wrap:wrap;margin-top:4px}
.mdb-pool{display:grid;gap:1px;padding:1px;width:max-content;margin:2px 0}
.mdb-pool div{position:relative;background:#fff;box-shadow:0 0 0 1px #c8c8c8}
.mdb-pool .e{background:repeating-linear-gradient(45deg,#d9d9d9 0 2px,#9a9a9a 2px 3px)}
.mdb-pool .k::after{content:"";position:absolute;top:0;right:0;width:30%;height:30%;
 background:#000}
.mdb-pool .x{outline:2px solid #fb8072;outline-offset:-2px}
.mdb-q{display:flex;align-items:center;height:12px}
.mdb-q span{display:inline-block;height:8px}
.mdb-chip{color:#fff;padding:0 3px;border-radius:3px;margin-right:2px}
</style>"""


def _block_div(state: str, owners: list[int] | None, evicted: bool, title: bool,
               b: int) -> str:
    classes = ("e" if state == "e" else "") + (" k" if state in "ce" else "") + \
        (" x" if evicted else "")
    style = ""
    if state in "uc":
        colors = [seq_color(sid) for sid in owners] if owners else [UNOWNED_COLOR]
        if len(colors) == 1:
            style = f"background:{colors[0]}"
        else:
            w = 100 / len(colors)
            stops = ",".join(f"{c} {k * w:.0f}% {(k + 1) * w:.0f}%" for k, c in enumerate(colors))
            style = f"background:linear-gradient(90deg,{stops})"
    tip = ""
    if title:
        what = {".": "free", "u": "used", "c": "used, cached", "e": "evictable"}[state]
        who = f" by seq {','.join(map(str, owners))}" if owners else ""
        tip = f' title="block {b}: {what}{who}{", evicted this step" if evicted else ""}"'
    cls = f' class="{classes.strip()}"' if classes.strip() else ""
    st = f' style="{style}"' if style else ""
    return f"<div{cls}{st}{tip}></div>"


def _pool_html(s: TraceStep, cfg: dict) -> str:
    n = cfg["num_blocks"]
    if s.pool is None:
        return "<div>pool not recorded</div>"
    cols = min(n, 8 * max(1, math.ceil(math.sqrt(4 * n) / 8)))
    size = 12 if n <= 256 else 8 if n <= 1024 else 5
    owners: dict[int, list[int]] = {}
    for sid, table in s.block_tables.items():
        for b in table:
            owners.setdefault(b, []).append(sid)
    evicted = set(s.evicted)
    cells = "".join(_block_div(s.pool[b], owners.get(b), b in evicted, n <= 512, b)
                    for b in range(n))
    return (f"<div style='max-width:460px'><b>KV pool</b>: {n} blocks × {cfg['block_size']} "
            f"tokens — {s.blocks_used} used, {s.blocks_free} free, {s.blocks_cached} cached"
            f"<div class='mdb-pool' style='grid-template-columns:repeat({cols},{size}px);"
            f"grid-auto-rows:{size}px'>{cells}</div>"
            "<div style='color:#666'>colour: owning sequence · hatched: evictable · black "
            "corner: in prefix cache · red ring: evicted this step</div></div>")


def _queues_html(s: TraceStep) -> str:
    rows = [(sid, True) for sid in s.running] + [(sid, False) for sid in s.waiting]
    shown = rows[:MAX_QUEUE_ROWS]
    longest = max((s.seqs.get(sid, [0, 1, 0])[1] for sid, _ in shown), default=1) or 1
    scale = 160 / longest
    out = [f"<div style='max-width:320px'><b>queues</b>: {len(s.running)} running, "
           f"{len(s.waiting)} waiting"]
    for sid, running in shown:
        prompt, tokens, cached = s.seqs.get(sid, [0, 0, 0])
        color = seq_color(sid) if running else "#b0b0b0"
        light = lighten(color, 0.5)
        tag = "" if running else " waiting"
        if sid in s.prefill:
            tag += f" +{s.prefill[sid]} prefill"
        out.append(
            f"<div class='mdb-q'><span style='width:48px;height:auto;color:{color}'>seq {sid}"
            f"</span><span style='width:{cached * scale:.0f}px;background:repeating-linear-"
            f"gradient(45deg,{light} 0 2px,#333 2px 3px)'></span>"
            f"<span style='width:{(prompt - cached) * scale:.0f}px;background:{light}'></span>"
            f"<span style='width:{(tokens - prompt) * scale:.0f}px;background:{color}'></span>"
            f"&nbsp;{tokens}{tag}</div>")
    if len(rows) > len(shown):
        out.append(f"<div>… {len(rows) - len(shown)} more</div>")
    out.append("<div style='color:#666'>hatched: prefix-cache hit · light: prompt · "
               "dark: completion</div></div>")
    return "".join(out)


def _batches_svg(trace: Trace, i: int, window: int, width: int = 420,
                 height: int = 90) -> str:
    lo = max(0, i + 1 - window)
    steps = trace.steps[lo : i + 1]
    cur = trace.steps[i]
    top = max([s.num_tokens for s in steps] + [1])
    budget_line = bool(cur.budget) and cur.budget <= top * 1.5
    top = max(top, cur.budget) if budget_line else top
    bw = width / window
    y = (height - 12) / (top * 1.1)
    parts = [f"<svg width='{width}' height='{height}' style='background:#fafafa'>"]
    for k, s in enumerate(steps):
        x, d, p = k * bw, len(s.decode), sum(s.prefill.values())
        parts.append(f"<rect x='{x:.1f}' y='{height - d * y:.1f}' width='{bw * 0.85:.1f}' "
                     f"height='{d * y:.1f}' fill='{TIMELINE_COLORS['decode']}'/>"
                     f"<rect x='{x:.1f}' y='{height - (d + p) * y:.1f}' width='{bw * 0.85:.1f}'"
                     f" height='{p * y:.1f}' fill='{TIMELINE_COLORS['prefill']}'/>")
    x = (len(steps) - 1) * bw
    parts.append(f"<rect x='{x:.1f}' y='{height - cur.num_tokens * y:.1f}' "
                 f"width='{bw * 0.85:.1f}' height='{cur.num_tokens * y:.1f}' fill='none' "
                 "stroke='black'/>")
    if budget_line:
        yb = height - cur.budget * y
        parts.append(f"<line x1='0' x2='{width}' y1='{yb:.1f}' y2='{yb:.1f}' stroke='#555' "
                     f"stroke-dasharray='4 3'/><text x='2' y='{yb - 2:.1f}' font-size='9'>"
                     f"budget {cur.budget}</text>")
    parts.append("</svg>")
    return (f"<div><b>batch per step</b>: step {cur.step} computes {cur.num_tokens} tokens "
            f"(<span style='color:{TIMELINE_COLORS['prefill']}'>prefill "
            f"{sum(cur.prefill.values())}</span>, <span style='color:"
            f"{TIMELINE_COLORS['decode']}'>decode {len(cur.decode)}</span>) of {cur.budget}"
            f"<br>{''.join(parts)}</div>")


def _rates_svg(trace: Trace, i: int, window: int, width: int = 220, height: int = 90) -> str:
    lo = max(0, i + 1 - window)
    rates = [trace.tokens_per_second(k + 1, RATE_WINDOW) for k in range(lo, i + 1)]
    hits = [trace.steps[k].hit_rate for k in range(lo, i + 1)]
    top = max(rates + [1e-9]) * 1.15
    dx = width / max(1, window - 1)

    def line(values, scale, color, dash=""):
        pts = " ".join(f"{k * dx:.1f},{height - v * scale:.1f}" for k, v in enumerate(values))
        return (f"<polyline points='{pts}' fill='none' stroke='{color}' stroke-width='1.5' "
                f"{dash}/>")

    rate_line = line(rates, (height - 6) / top, "#4c72b0")
    hit_line = line(hits, height - 6, "#dd8452", "stroke-dasharray='4 3'")
    return (f"<div><b>rates</b>: <span style='color:#4c72b0'>{rates[-1]:.0f} tokens/s</span>, "
            f"<span style='color:#dd8452'>hit rate {hits[-1]:.0%}</span><br>"
            f"<svg width='{width}' height='{height}' style='background:#fafafa'>"
            f"{rate_line}{hit_line}</svg></div>")


def dashboard_html(trace: Trace, step: int | None = None, window: int = 60,
                   mode: str = "replay") -> str:
    """The frame of step `step` (an index into `trace.steps`; default the last) as HTML.

    `mode` is the word the header starts with: "live", "done" (a live run that ended) or
    "replay".
    """
    i = _step_index(trace, step)
    s = trace.steps[i]

    def chips(ids: list[int], color=None) -> str:
        return "".join(f"<span class='mdb-chip' style='background:{color or seq_color(sid)}'>"
                       f"{sid}</span>" for sid in ids[:24]) or "–"

    events = "".join(f" · {name} {ids}" for name, ids in
                     (("preempted", s.preempted), ("finished", s.finished)) if ids)
    return (f"{_CSS}<div class='mdb'><b>{mode}</b> · step {s.step} "
            f"({i + 1} of {len(trace)}) · {s.time:.2f} s · "
            f"{trace.tokens_per_second(i + 1, RATE_WINDOW):.1f} tokens/s · "
            f"{s.generated_tokens} generated · hit rate {s.hit_rate:.0%} · "
            f"{s.evicted_blocks} evicted{events}<br>running {chips(s.running)} waiting "
            f"{chips(s.waiting, '#999999')}"
            f"<div class='mdb-row'>{_pool_html(s, trace.config)}{_queues_html(s)}</div>"
            f"<div class='mdb-row'>{_batches_svg(trace, i, window)}"
            f"{_rates_svg(trace, i, window)}</div></div>")


# ---- the widget ----


class Dashboard:
    """The dashboard as an ipywidgets view: live over an `LLM`, or a replayed `Trace`.

    Live: ``Dashboard(llm)`` starts recording at once and redraws while generation runs, until
    `detach()` (or the end of a ``with`` block); display it as a cell's last expression or
    with `display`. `llm.generate(..., show=True)` does all of that for one call.
    Replay: ``Dashboard.replay(trace)`` (or ``Dashboard(trace=trace)``) adds a slider and a
    play button. `trace` holds the steps either way; `figure()` is a frame as a static
    matplotlib Figure, for saved notebooks and the docs (widgets do not render there).

    Args:
        llm: an `LLM` or `LLMEngine` to watch (None for replay).
        trace: a recorded trace to replay (None for live).
        max_fps: most frames drawn per second while live.
        max_overhead: most share of wall time spent drawing frames while live.
        window: steps shown in the batch and rate panels.
    """

    def __init__(self, llm=None, *, trace: Trace | None = None, max_fps: float = 4.0,
                 max_overhead: float = 0.02, window: int = 60) -> None:
        require("ipywidgets")
        import ipywidgets as w

        if (llm is None) == (trace is None):
            raise ValueError("Dashboard needs exactly one of llm= (live) or trace= (replay)")
        self.window = window
        self.throttle = Throttle(max_fps, max_overhead)
        self.view = w.HTML()
        self.current = -1  # index of the step on screen
        self.recorder: TraceRecorder | None = None
        self.engine = None
        self.slider = self.play = None
        if llm is not None:
            self.recorder = TraceRecorder(llm)
            self.trace, self.engine = self.recorder.trace, self.recorder.engine
            if self.engine is None:
                raise ValueError("Dashboard(llm) watches an LLM or LLMEngine; for a Scheduler "
                                 "record a Trace and use Dashboard.replay(trace)")
            self.view.value = "<i>dashboard: waiting for the first step…</i>"
            self.widget = w.VBox([self.view])
            self.attach()
        else:
            if not trace.steps:
                raise ValueError("trace has no steps: nothing to replay")
            self.trace = trace
            n = len(trace.steps) - 1
            self.slider = w.IntSlider(value=n, min=0, max=n, description="step index",
                                      layout=w.Layout(width="60%"))
            self.play = w.Play(value=n, min=0, max=n, interval=400)
            w.jslink((self.play, "value"), (self.slider, "value"))
            self.slider.observe(lambda change: self.show_step(change["new"]), names="value")
            self.widget = w.VBox([w.HBox([self.play, self.slider]), self.view])
            self.show_step(n)

    @classmethod
    def replay(cls, trace: Trace, **kwargs) -> Dashboard:
        """A dashboard with a slider over the steps of a recorded trace."""
        return cls(trace=trace, **kwargs)

    # ---- live ----

    @property
    def live(self) -> bool:
        return self.recorder is not None and self.recorder.attached

    def attach(self) -> Dashboard:
        """Start (or resume) recording and drawing the engine's steps."""
        if self.recorder is not None and not self.recorder.attached:
            self.recorder.attach()  # its observer records; ours, registered after it, draws
            self.engine.step_observers.append(self._on_step)
        return self

    def detach(self) -> Trace:
        """Stop watching the engine and draw the last step if it is not on screen yet."""
        if self.live:
            self.engine.step_observers.remove(self._on_step)
            self.recorder.detach()
            if self.trace.steps and self.current != len(self.trace.steps) - 1:
                self.redraw()
        return self.trace

    def __enter__(self) -> Dashboard:
        return self.attach()

    def __exit__(self, *exc) -> None:
        self.detach()

    def _on_step(self, engine, batch, outputs, seconds: float) -> None:
        if self.throttle.ready() or not engine.has_unfinished():  # always show the last step
            self.redraw()

    # ---- drawing ----

    def redraw(self, step: int | None = None) -> None:
        """Draw step index `step` (default the last recorded) into the widget now."""
        if not self.trace.steps:
            return
        started = time.perf_counter()
        i = _step_index(self.trace, step)
        mode = "replay" if self.recorder is None else "live" if self.live else "done"
        if self.live and self.engine is not None and not self.engine.has_unfinished():
            mode = "done"
        self.view.value = dashboard_html(self.trace, i, self.window, mode)
        self.current = i
        self.throttle.done(started, time.perf_counter() - started)

    def show_step(self, i: int) -> None:
        """Replay: draw step index `i` (what moving the slider does)."""
        self.redraw(i)
        if self.slider is not None and self.slider.value != self.current:
            self.slider.value = self.current

    def figure(self, step: int | None = None):
        """A frame (default: the one on screen) as a static matplotlib Figure."""
        i = self.current if step is None and self.current >= 0 else step
        return draw_dashboard(self.trace, i, window=self.window)

    @property
    def num_redraws(self) -> int:
        return self.throttle.count

    def display(self) -> None:
        """Show the widget in the notebook (what ending a cell with the dashboard does)."""
        from IPython.display import display

        display(self.widget)

    def _ipython_display_(self) -> None:
        self.display()

    def __repr__(self) -> str:
        mode = "live" if self.live else "replay" if self.slider is not None else "detached"
        return f"Dashboard({mode}, {len(self.trace)} steps, {self.num_redraws} frames drawn)"
