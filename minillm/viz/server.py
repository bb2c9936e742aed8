"""The server's process model and a request's messages, drawn and as text.

Every name here comes from the real protocol in `minillm.server.messages`: the channels list the
message dataclasses themselves, the sockets are the fields of `Addresses`, and a message's label
is its class name (its fields, in the text form), so the pictures cannot drift from the code.

- `server_channels_text` / `draw_server_processes`: who sends what to whom, over which socket.
- `server_messages_text` / `draw_server_sequence`: one request's messages in time order, as a
  sequence diagram: a streamed chat ("stream"), a prompt the tokenizer refuses ("error"), a
  client that goes away mid-stream ("abort").
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from minillm.server.messages import (
    AbortRequest,
    Addresses,
    BatchOutput,
    GenerateRequest,
    Ready,
    RequestError,
    SchedulerStats,
    TokenizedRequest,
)
from minillm.viz.figure import new_figure, require

CLIENT, API, TOKENIZER, SCHEDULER = "client", "API process", "tokenizer worker", "scheduler process"
PROCESSES = (CLIENT, API, TOKENIZER, SCHEDULER)  # the lifelines, left to right
SOCKET_OF = {API: "api", TOKENIZER: "tokenizer", SCHEDULER: "scheduler"}  # Addresses' fields
PROCESS_NOTES = {
    CLIENT: "openai, minillm.Client, curl",
    API: "FastAPI + uvicorn\nEngineClient",
    TOKENIZER: "chat template\nencode_prompt checks",
    SCHEDULER: "LLMEngine (rank 0)\nstep, detokenize",
}
SCENARIOS = ("stream", "error", "abort")
HTTP_COLOR, ZMQ_COLOR, ERROR_COLOR = "#7f7f7f", "#1f77b4", "#d62728"


@dataclass(frozen=True)
class Channel:
    """One ZMQ PUSH/PULL pipe: `sender` pushes `messages` to the socket `receiver` binds."""

    sender: str
    receiver: str
    messages: tuple[type, ...]

    @property
    def socket(self) -> str:
        return SOCKET_OF[self.receiver]


CHANNELS = (
    Channel(API, TOKENIZER, (GenerateRequest, AbortRequest)),
    Channel(TOKENIZER, SCHEDULER, (TokenizedRequest, AbortRequest)),
    Channel(TOKENIZER, API, (RequestError, Ready)),
    Channel(SCHEDULER, API, (BatchOutput, SchedulerStats, RequestError, Ready)),
)
assert set(SOCKET_OF.values()) == {f.name for f in fields(Addresses)}


@dataclass(frozen=True)
class Message:
    """One arrow of the sequence diagram: a message dataclass (`kind`) or an HTTP exchange."""

    sender: str
    receiver: str
    kind: type | str  # a class of minillm.server.messages, or HTTP text
    note: str = ""

    @property
    def label(self) -> str:
        return self.kind if isinstance(self.kind, str) else self.kind.__name__

    @property
    def is_http(self) -> bool:
        return isinstance(self.kind, str)


def message_fields(cls: type) -> str:
    """`Name(field, field, ...)`: a message dataclass with its fields, as declared."""
    return f"{cls.__name__}({', '.join(f.name for f in fields(cls))})"


def request_messages(scenario: str = "stream", decode_steps: int = 2) -> list[Message]:
    """The messages of one request, in order. `decode_steps`: the streamed steps after the
    first token, before the one that finishes ("stream")."""
    if scenario not in SCENARIOS:
        raise ValueError(f"scenario must be one of {SCENARIOS}, not {scenario!r}")
    post = Message(CLIENT, API, "POST /v1/chat/completions", "stream: true" if scenario !=
                   "error" else "a prompt longer than max_model_len")
    ask = [post, Message(API, TOKENIZER, GenerateRequest, "validated fields, rid assigned")]
    if scenario == "error":
        return [*ask,
                Message(TOKENIZER, API, RequestError, "param names the field at fault"),
                Message(API, CLIENT, "400 {error: {message, type, param, code}}", "OpenAI JSON")]
    ask.append(Message(TOKENIZER, SCHEDULER, TokenizedRequest, "prompt token ids"))
    first = [Message(SCHEDULER, API, BatchOutput, "step 1: prefill, first token"),
             Message(API, CLIENT, "200, data: {first chunk}", "headers sent only now")]
    if scenario == "abort":
        return [*ask, *first,
                Message(CLIENT, API, "(disconnects)", "the stream is cancelled"),
                Message(API, TOKENIZER, AbortRequest, "same pipe: never overtakes"),
                Message(TOKENIZER, SCHEDULER, AbortRequest, "engine.abort: KV blocks freed"),
                Message(SCHEDULER, API, SchedulerStats, "idle: blocks back in /metrics")]
    steps = []
    for i in range(decode_steps):
        steps += [Message(SCHEDULER, API, BatchOutput, f"step {i + 2}: one more token"),
                  Message(API, CLIENT, "data: {chunk}", "Server-Sent Event")]
    return [*ask, *first, *steps,
            Message(SCHEDULER, API, BatchOutput, f"step {decode_steps + 2}: finished=True"),
            Message(API, CLIENT, "data: {last chunk}, data: [DONE]", "finish_reason"),
            Message(SCHEDULER, API, SchedulerStats, "idle: counters for /metrics")]


def server_channels_text() -> str:
    """Each pipe with the socket it ends on and its messages' fields; then the HTTP edge."""
    lines = [f"{CLIENT} ──HTTP (OpenAI API, SSE)──▶ {API}"]
    for ch in CHANNELS:
        lines.append(f"{ch.sender} ──PUSH → PULL {ch.socket}──▶ {ch.receiver}")
        lines += [f"    {message_fields(cls)}" for cls in ch.messages]
    return "\n".join(lines)


def server_messages_text(scenario: str = "stream", decode_steps: int = 2) -> str:
    """The sequence diagram as numbered lines: `n  sender → receiver  Message  (note)`."""
    msgs = request_messages(scenario, decode_steps)
    w_from = max(len(m.sender) for m in msgs)
    w_to = max(len(m.receiver) for m in msgs)
    w_label = max(len(m.label) for m in msgs)
    return "\n".join(
        f"{i:>2}  {m.sender:<{w_from}} → {m.receiver:<{w_to}}  {m.label:<{w_label}}  ({m.note})"
        for i, m in enumerate(msgs, 1))


# ---- figures ----

_BOX_W, _BOX_H = 2.5, 1.0
_BOXES = {CLIENT: (0.0, 3.2), API: (4.2, 3.2), TOKENIZER: (1.8, 0.4), SCHEDULER: (7.0, 0.4)}
# Each channel's arrow (start, end) and where its label goes (x, y, horizontal alignment).
_ARROWS = {
    (API, TOKENIZER): (((3.3, 2.7), (2.1, 0.9)), (2.5, 1.85, "right")),
    (TOKENIZER, API): (((2.8, 0.9), (4.1, 2.7)), (3.6, 1.55, "left")),
    (TOKENIZER, SCHEDULER): (((3.05, 0.4), (5.75, 0.4)), (4.4, 0.47, "center")),
    (SCHEDULER, API): (((6.6, 0.9), (5.1, 2.7)), (6.05, 1.85, "left")),
}


def _box(ax, xy, title: str, note: str, color: str, gid: str = "process"):
    from matplotlib.patches import FancyBboxPatch

    x, y = xy
    ax.add_patch(FancyBboxPatch((x - _BOX_W / 2, y - _BOX_H / 2), _BOX_W, _BOX_H,
                                boxstyle="round,pad=0.05", facecolor=color, edgecolor="#333333",
                                gid=gid))
    ax.text(x, y + 0.22, title, ha="center", va="center", fontsize=9, fontweight="bold")
    ax.text(x, y - 0.15, note, ha="center", va="center", fontsize=7, color="#333333",
            linespacing=1.1)


def draw_server_processes(tensor_parallel_size: int = 3, ax=None):
    """The process model: the API process, the tokenizer worker and the scheduler process
    (with its tensor-parallel ranks 1..N-1), each ZMQ pipe labelled with the socket it ends on
    and the message types it carries. Returns the Figure."""
    require("matplotlib")
    from matplotlib.patches import FancyArrowPatch

    fig = ax.figure if ax is not None else new_figure(9.5, 5.2)
    ax = ax if ax is not None else fig.add_subplot()
    colors = {CLIENT: "#f2f2f2", API: "#deebf7", TOKENIZER: "#e5f5e0", SCHEDULER: "#fee6ce"}
    for name, xy in _BOXES.items():
        _box(ax, xy, name, PROCESS_NOTES[name], colors[name])
        if name in SOCKET_OF:  # the PULL socket it binds, on a top corner clear of arrows
            side = -1 if name == TOKENIZER else 1
            ax.text(xy[0] + side * _BOX_W / 2, xy[1] + _BOX_H / 2 + 0.05,
                    f"PULL {SOCKET_OF[name]}", ha="right" if side > 0 else "left",
                    va="bottom", fontsize=6.5, color=ZMQ_COLOR, family="monospace", gid="socket")

    def arrow(start, end, color, style="-|>", gid="channel"):
        ax.add_patch(FancyArrowPatch(start, end, arrowstyle=style, mutation_scale=12,
                                     color=color, linewidth=1.4, gid=gid))

    # The HTTP edge, both ways.
    arrow((1.3, 3.2), (2.9, 3.2), HTTP_COLOR, "<|-|>", gid="http")
    ax.text(2.1, 3.3, "HTTP\nOpenAI API, SSE", ha="center", va="bottom", fontsize=7,
            color=HTTP_COLOR)
    for ch in CHANNELS:
        (start, end), (lx, ly, ha) = _ARROWS[ch.sender, ch.receiver]
        arrow(start, end, ZMQ_COLOR)
        ax.text(lx, ly, "\n".join(cls.__name__ for cls in ch.messages), ha=ha,
                va="bottom" if ch.receiver == SCHEDULER else "center",
                fontsize=7, color=ZMQ_COLOR, family="monospace", gid="channel_label")
    # Tensor-parallel ranks: children of the scheduler process, driven through torch.distributed.
    sx, sy = _BOXES[SCHEDULER]
    n_workers = max(0, tensor_parallel_size - 1)
    for i in range(n_workers):
        x, y = sx - 0.9 + 0.15 * i, sy - 1.55 - 0.12 * i
        ax.add_patch(_worker_patch(x, y))
    if n_workers:
        ranks = "rank 1" if n_workers == 1 else f"ranks 1..{n_workers}"
        front = n_workers - 1  # the text goes on the front box, drawn last
        ax.text(sx + 0.15 * front, sy - 1.55 - 0.12 * front,
                f"tensor-parallel {ranks}\nModelRunner workers", ha="center", va="center",
                fontsize=7.5)
        arrow((sx, sy - _BOX_H / 2), (sx, sy - 1.1), "#6a3d9a", "<|-|>", gid="tp_link")
        ax.text(sx + 0.1, sy - 0.8, "torch.distributed\n(gloo / NCCL)", ha="left",
                va="center", fontsize=6.5, color="#6a3d9a")
    ax.set_xlim(-1.5, 8.6)
    ax.set_ylim(-2.3 if n_workers else -0.4, 4.1)
    ax.set_aspect("equal")
    ax.axis("off")
    ax.set_title("minillm serve: three processes, ZMQ PUSH/PULL pipes over ipc://", fontsize=9)
    return fig


def _worker_patch(x: float, y: float):
    from matplotlib.patches import FancyBboxPatch

    return FancyBboxPatch((x, y - 0.3), 1.8, 0.6, boxstyle="round,pad=0.04",
                          facecolor="#efedf5", edgecolor="#6a3d9a", gid="tp_worker")


def draw_server_sequence(scenario: str = "stream", decode_steps: int = 2, ax=None):
    """One request's messages as a sequence diagram: a lifeline per process, time going down,
    one arrow per message (blue: a ZMQ message dataclass, grey: HTTP). Returns the Figure."""
    require("matplotlib")
    from matplotlib.patches import FancyArrowPatch

    msgs = request_messages(scenario, decode_steps)
    fig = ax.figure if ax is not None else new_figure(9.5, 1.2 + 0.42 * len(msgs))
    ax = ax if ax is not None else fig.add_subplot()
    xs = {name: 2.6 * i for i, name in enumerate(PROCESSES)}
    bottom = -len(msgs) - 0.2
    for name, x in xs.items():
        ax.plot([x, x], [0.3, bottom], color="#bbbbbb", linewidth=1, linestyle="--",
                zorder=0, gid="lifeline")
        ax.text(x, 0.55, name, ha="center", va="center", fontsize=9, fontweight="bold",
                bbox=dict(boxstyle="round,pad=0.3", facecolor="#f2f2f2", edgecolor="#333333"))
    for i, m in enumerate(msgs, 1):
        y = -i + 0.2
        color = (ERROR_COLOR if m.kind is RequestError or m.label.startswith("400")
                 else HTTP_COLOR if m.is_http else ZMQ_COLOR)
        x0, x1 = xs[m.sender], xs[m.receiver]
        ax.add_patch(FancyArrowPatch((x0, y), (x1, y), arrowstyle="-|>", mutation_scale=10,
                                     color=color, linewidth=1.3, gid="message"))
        ax.text((x0 + x1) / 2, y + 0.06, m.label, ha="center", va="bottom", fontsize=7.5,
                color=color, family="monospace" if not m.is_http else None)
        ax.text((x0 + x1) / 2, y - 0.06, m.note, ha="center", va="top", fontsize=6.5,
                color="#555555")
        ax.text(-0.9, y, str(i), ha="right", va="center", fontsize=7, color="#999999")
    ax.set_xlim(-1.3, xs[SCHEDULER] + 1.3)
    ax.set_ylim(bottom - 0.1, 0.9)
    ax.axis("off")
    ax.set_title(f"one request's messages ({scenario})", fontsize=9)
    return fig
