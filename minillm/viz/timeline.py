"""The scheduler's trace over time: what each sequence did in each step, and KV usage.

Input is `Scheduler.trace` (a list of `StepTrace`, recorded with `Scheduler(..., trace=True)`).
A cell (step, sequence) is one of:

- prefill: computed a chunk of its prompt (the chunk size is written in the cell);
- decode: computed one token;
- finished: computed its last token and left (a decode or a prefill, then done);
- preempted: lost its KV blocks this step and went back to the waiting queue;
- waiting: queued, holding no blocks;
- idle: running (holds blocks) but got no tokens this step: the step's token budget ran out.

Blank cells: not yet arrived, or gone.
"""

from __future__ import annotations

from collections.abc import Sequence

from minillm.scheduler import StepTrace
from minillm.viz.figure import new_figure, require
from minillm.viz.style import (
    KV_CACHED_COLOR,
    KV_FREE_COLOR,
    KV_USED_COLOR,
    TIMELINE_COLORS,
    seq_color,
)

STATES = ("prefill", "decode", "finished", "preempted", "waiting", "idle")
SYMBOLS = {"prefill": "P", "decode": "D", "finished": "F", "preempted": "X", "waiting": ".",
           "idle": "-", None: " "}
Cell = tuple[str | None, int]  # (state or None for blank, prompt tokens prefilled this step)


def timeline_cells(trace: Sequence[StepTrace]) -> dict[int, list[Cell]]:
    """seq_id -> one (state, prefill tokens) per step of `trace`, seq_ids in ascending order."""
    rows: dict[int, list[Cell]] = {}
    done: set[int] = set()
    for t, step in enumerate(trace):
        this: dict[int, Cell] = {}
        for sid in step.waiting:
            this[sid] = ("waiting", 0)
        for sid in step.preempted:
            this[sid] = ("preempted", 0)
        for sid in step.decode:
            this[sid] = ("decode", 0)
        for sid, n in step.prefill.items():
            this[sid] = ("prefill", n)
        for sid in step.finished:
            this[sid] = ("finished", this.get(sid, (None, 0))[1])
        for sid in rows.keys() - this.keys() - done:
            this[sid] = ("idle", 0)
        for sid, cell in this.items():
            rows.setdefault(sid, [(None, 0)] * t).append(cell)
        done.update(step.finished)
        for sid in done - this.keys():
            if len(rows[sid]) == t:
                rows[sid].append((None, 0))
    for cells in rows.values():  # a sequence that vanished without finishing (aborted)
        i = len(cells)
        while i and cells[i - 1][0] in ("idle", None):
            i -= 1
        cells[i:] = [(None, 0)] * (len(cells) - i)
    return dict(sorted(rows.items()))


def timeline_text(trace: Sequence[StepTrace]) -> str:
    """A compact ASCII timeline: one row per sequence, one column per step.

    `P` prefill chunk, `D` decode, `F` finished, `X` preempted, `.` waiting, `-` running but
    not scheduled. After each row, its prefill chunks as `tokens@step`.
    """
    rows = timeline_cells(trace)
    steps = [s.step for s in trace]
    name_w = len(f"seq {max(rows, default=0)}")
    pad = " " * (name_w + 2)
    tens = "".join(str(s // 10 % 10) if s % 10 == 0 else " " for s in steps)
    lines = [f"{'step':<{name_w}}  {tens}".rstrip(), pad + "".join(str(s % 10) for s in steps)]
    for sid, cells in rows.items():
        marks = "".join(SYMBOLS[state] for state, _ in cells)
        chunks = " ".join(f"{n}@{steps[i]}" for i, (state, n) in enumerate(cells) if n)
        lines.append(f"{f'seq {sid}':<{name_w}}  {marks}  {chunks and 'prefill ' + chunks}"
                     .rstrip())
    lines.append("P prefill  D decode  F finished  X preempted  . waiting  - not scheduled")
    return "\n".join(lines)


def draw_timeline(trace: Sequence[StepTrace], ax=None, title: str | None = None):
    """Steps × sequences, coloured by what each sequence did; returns the matplotlib Figure.

    Prefill cells carry their chunk size. Each cell is a Rectangle with gid
    ``cell-<step>-<seq_id>``.
    """
    require("matplotlib")
    from matplotlib.patches import Patch, Rectangle

    rows = timeline_cells(trace)
    steps = [s.step for s in trace]
    if ax is None:
        fig = new_figure(_width(len(steps)), 0.3 * len(rows) + 1.2)
        ax = fig.add_subplot()
    fontsize = 6 if len(steps) <= 60 else 4.5
    for r, (sid, cells) in enumerate(rows.items()):
        for i, (state, n) in enumerate(cells):
            if state is None:
                continue
            ax.add_patch(Rectangle((steps[i] - 0.45, r - 0.4), 0.9, 0.8, lw=0.5,
                                   facecolor=TIMELINE_COLORS[state], gid=f"cell-{steps[i]}-{sid}",
                                   edgecolor="#bbbbbb" if state == "idle" else "none"))
            if n:
                ax.text(steps[i], r, str(n), ha="center", va="center", fontsize=fontsize,
                        color="white", fontweight="bold")
    ax.set_yticks(range(len(rows)), [f"seq {sid}" for sid in rows], fontsize=7)
    for label, sid in zip(ax.get_yticklabels(), rows, strict=True):
        label.set_color(seq_color(sid))  # the sequence's colour in every other figure
        label.set_fontweight("bold")
    ax.set_ylim(len(rows) - 0.5, -0.5)
    lo, hi = (steps[0], steps[-1]) if steps else (0, 0)
    ax.set_xlim(lo - 0.6, hi + 0.6)
    ax.set_xlabel("step", fontsize=8)
    ax.tick_params(axis="x", labelsize=7)
    ax.spines[["top", "right"]].set_visible(False)
    used = {state for cells in rows.values() for state, _ in cells}
    labels = {"prefill": "prefill chunk (tokens)", "idle": "running, not scheduled"}
    handles = [Patch(facecolor=TIMELINE_COLORS[s], edgecolor="#bbbbbb" if s == "idle" else "none",
                     label=labels.get(s, s)) for s in STATES if s in used]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7,
              frameon=False)
    ax.set_title(title or "scheduler timeline", fontsize=9, loc="left")
    return ax.figure


def draw_kv_usage(trace: Sequence[StepTrace], ax=None, title: str | None = None):
    """KV blocks used and free after each step, and how many the prefix cache holds.

    Used + free is the pool size. Cached blocks overlap both: in use by a sequence, or
    evictable (counted as free, since an allocation can take them). The cached line is left
    out when it is zero throughout (prefix caching off).
    """
    require("matplotlib")
    steps = [s.step for s in trace]
    if ax is None:
        fig = new_figure(_width(len(steps)), 2.2)
        ax = fig.add_subplot()
    used = [s.blocks_used for s in trace]
    free = [s.blocks_free for s in trace]
    ax.stackplot(steps, used, free, labels=["used", "free (incl. evictable)"],
                 colors=[KV_USED_COLOR, KV_FREE_COLOR], step="mid")
    cached = [s.blocks_cached for s in trace]
    if any(cached):  # always 0 when prefix caching is off
        ax.step(steps, cached, where="mid", color=KV_CACHED_COLOR, lw=1.5,
                label="in prefix cache")
    total = max((u + f for u, f in zip(used, free, strict=True)), default=0)
    ax.set_ylim(0, total * 1.05 or 1)
    if steps:
        ax.set_xlim(steps[0] - 0.6, steps[-1] + 0.6)
    ax.set_xlabel("step", fontsize=8)
    ax.set_ylabel("KV blocks", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.spines[["top", "right"]].set_visible(False)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7, frameon=False)
    ax.set_title(title or "KV cache usage", fontsize=9, loc="left")
    return ax.figure


def draw_scheduler_trace(trace: Sequence[StepTrace], title: str | None = None):
    """The timeline above the KV usage, sharing the step axis; returns the Figure."""
    require("matplotlib")
    rows = len(timeline_cells(trace))
    fig = new_figure(_width(len(trace)), 0.3 * rows + 3.4)
    top, bottom = fig.subplots(2, 1, sharex=True,
                               gridspec_kw={"height_ratios": [max(rows, 2) * 0.3 + 0.6, 1.8]})
    draw_timeline(trace, ax=top, title=title)
    top.set_xlabel("")
    draw_kv_usage(trace, ax=bottom)
    return fig


def _width(num_steps: int) -> float:
    """Figure width: about 0.2 inch per step, between 5 and 14 inches."""
    return min(14.0, max(5.0, 0.2 * num_steps + 2.5))
