# ---
# jupyter:
#   jupytext:
#     cell_metadata_filter: -all
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 08 · CUDA graphs: a decode step launched as one
#
# A decode step computes one token for every running sequence. On a GPU, each operator of the
# forward pass is a kernel that the CPU launches: Python runs the module's `forward`, PyTorch
# picks the kernel, the driver queues it, a few microseconds each. At a small batch the GPU
# finishes most of these kernels about as fast as they arrive, so it spends the step waiting
# for the next launch: the step is **launch-bound**, and a faster GPU would not help.
#
# A **CUDA graph** records a sequence of launches once; replaying it is one launch, after
# which the GPU runs the kernels back to back and the CPU is free. The catch: a replay runs
# exactly what was recorded, with the same shapes and the same memory addresses. So minillm
# captures one graph per **batch-size bucket**, keeps the inputs in **static buffers** that
# every graph reads, and pads a step of `n` sequences up to the nearest bucket with rows that
# store nothing. Only decode steps replay graphs; prefills and mixed steps, whose shapes
# change every step, run eagerly.
#
# Capturing and replaying need an NVIDIA GPU. On a CPU this notebook runs everything else: the
# buckets, a real decode step's inputs copied into the static buffers with their padding rows,
# and what graphs bought on an H200, read from the result files in `benchmarks/results/` (each
# with the device, commit and command that recorded it). One section runs only on a GPU: it
# captures and replays a graph with PyTorch's API, then checks graphs against eager decoding.
#
# **What you will see:** the operators of one decode step counted (as many for one sequence as
# for five); the bucket ladder for `max_num_seqs=256`, with a batch of 37 padded to 48; a
# decode step's ids, positions, slots, lengths and block tables in the static buffers, padding
# rows and all; why the split-KV attention kernel is told the longest possible sequence; the
# recorded H200 throughput with and without graphs, beside transformers' continuous batching;
# and where a step's time goes once graphs are on.
#
# **Open `minillm/cuda_graph.py` beside this notebook** (about 140 lines): `graph_batch_sizes` and
# `bucket_for` choose the graph, `DecodeGraphs` captures them and its `run` feeds one. In
# `minillm/runner.py`, `ModelRunner._capture_graphs` decides whether there are graphs at all
# (on CUDA, with a backend that declares `supports_cuda_graphs`, unless `enforce_eager=True`),
# and `uses_graph`, `prepare_decode` and `forward` use them. Three exercises at the end.

# %%
from minillm.notebook import is_installed, need, require

require("matplotlib")  # for the figures; if missing, it says what to pip install
# %matplotlib inline
import functools
import json
import tempfile
from pathlib import Path
from types import SimpleNamespace

import matplotlib.pyplot as plt
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import Qwen3Config, Qwen3ForCausalLM
from transformers.utils import logging as hf_logging

import minillm
from minillm import LLM
from minillm.config import EngineConfig, SamplingParams
from minillm.cuda_graph import DecodeGraphs, bucket_for, graph_batch_sizes
from minillm.runner import ModelRunner, fill_placeholders
from minillm.scheduler import Scheduler
from minillm.sequence import Sequence
from minillm.viz.style import lighten, seq_color

torch.manual_seed(0)
hf_logging.disable_progress_bar()
# Recorded GPU results: read from the repository's files, never re-measured or retyped here.
RESULTS = Path(minillm.__file__).resolve().parent.parent / "benchmarks" / "results"


def recorded(name: str) -> dict:
    """One JSON file of benchmarks/results/, as the benchmark wrote it."""
    return json.loads((RESULTS / name).read_text())


# %% [markdown]
# ## A tiny model, one decode step
#
# transformers makes a tiny Qwen3 (2 layers, hidden size 64, 4 query and 2 key/value heads),
# with the shape and seed of the tests' tiny checkpoint (`tests/tiny.py`), and saves it as any
# checkpoint is saved. The real `ModelRunner` loads it on the CPU with small KV blocks of 4
# tokens and `max_num_seqs=16`. Five prompts of 3, 4, 5, 11 and 7 tokens: the first step
# prefills them, the second decodes one token for each. That second step is what a graph
# would replay.

# %%
# NBVAL_CHECK_OUTPUT
checkpoint = tempfile.mkdtemp(prefix="minillm-08-")
Qwen3ForCausalLM(Qwen3Config(
    vocab_size=384, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=512,
    initializer_range=0.1)).save_pretrained(checkpoint)  # peaky logits: greedy has no near-ties
config = EngineConfig(model=checkpoint, device="cpu", dtype="float32", kvcache_block_size=4,
                      num_kvcache_blocks=64, max_model_len=64, max_num_seqs=16, seed=0)
runner, scheduler = ModelRunner(config), Scheduler(config)
print("backend:", runner.backend.name, "| graphs:", runner.graphs)

for i, length in enumerate((3, 4, 5, 11, 7)):
    prompt = list(range(10 * i + 1, 10 * i + 1 + length))
    scheduler.add(Sequence(prompt, SamplingParams(temperature=0.0, max_tokens=8), seq_id=i))
batch = scheduler.schedule()
prefill = batch.step_inputs()
scheduler.postprocess(batch, runner.run(batch).token_ids.tolist())
batch = scheduler.schedule()
decode = batch.step_inputs()  # one StepInput per sequence, one token each
print(batch)

# %% [markdown]
# `graphs` is `None`: the CPU never captures. Nor does a GPU with the `torch` backend, which
# takes its shapes from each step's lengths on the host, so a recorded launch would not fit
# the next step; the `triton` backend's class says `supports_cuda_graphs = True`.
#
# ## Why a decode step is launch-bound
#
# Count the operators of that decode step's forward pass. A `TorchDispatchMode` sees every
# operator PyTorch runs; views are left out, since they only relabel memory. On a GPU each
# counted operator is at least one kernel launch.

# %%
class CountOperators(TorchDispatchMode):
    """Counts the operators that compute (not views): on a GPU, each launches a kernel."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not func.is_view and torch.Tag.inplace_view not in func.tags:
            self.count += 1
        return func(*args, **(kwargs or {}))


for n in (1, 5):
    with CountOperators() as ops:
        runner.forward(decode[:n], [True] * n)  # logits of the first n sequences
    print(f"decode step of {n} sequence(s): {ops.count} operators, "
          f"about {ops.count // config.model_config.num_hidden_layers} per layer")

# %% [markdown]
# The count does not depend on the batch: one sequence or five (or 256), the same kernels
# launch, each over more rows. Qwen3-0.6B has 28 layers; on a GPU minillm fuses some of these
# operators into Triton kernels, and a step still launches hundreds. At a few microseconds of
# host time per launch that is milliseconds per step, while at a small batch the GPU's own
# work per kernel (read the weights once, multiply a few rows) takes about as long as the
# launch. A graph pays the launch cost once per step instead of once per kernel.
#
# ## Buckets: one graph per batch size
#
# A graph replays fixed shapes, so a batch of 37 needs a graph captured at a batch of (at
# least) 37. One graph per size up to `max_num_seqs` would mean 256 captures, each taking time
# at start-up; minillm captures a ladder instead (`graph_batch_sizes`): 1, 2, 4 and 8, then
# every 16, and `max_num_seqs` itself. A step of `n` sequences replays the smallest bucket
# that holds it (`bucket_for`); the scheduler never runs more than `max_num_seqs`, so one
# always does.

# %%
# NBVAL_CHECK_OUTPUT
sizes = graph_batch_sizes(256)
print(f"max_num_seqs=256: {len(sizes)} graphs:", sizes)
for n in (1, 3, 16, 17, 37, 200, 256):
    print(f"{n:3d} sequences replay the graph of {bucket_for(n, sizes):3d}")

# %% [markdown]
# The ladder drawn, with a batch of 37: 37 real rows and 11 rows of padding in bucket 48.
# Below, the share of each bucket's rows that is padding, for every batch size: it is largest
# just above a bucket (17 sequences leave 15 of bucket 32's rows to padding). That costs less
# than it looks: at a small batch the step is bound by launches and by reading the weights,
# which do not grow with the rows.

# %%
n = 37
bucket = bucket_for(n, sizes)
fig, (ladder, waste) = plt.subplots(2, 1, figsize=(10, 3.8), sharex=True, layout="constrained",
                                    height_ratios=[1, 1.3])
ladder.vlines(sizes, 0, 1, color="#1f77b4", lw=1)
ladder.barh(0.5, n, height=0.45, color=seq_color(0), label=f"{n} real rows")
ladder.barh(0.5, bucket - n, left=n, height=0.45, color="white", edgecolor="grey", hatch="//",
            label=f"{bucket - n} padding rows")
ladder.annotate(f"bucket {bucket}", (bucket, 0.78), xytext=(bucket + 12, 0.78),
                arrowprops=dict(arrowstyle="->"), va="center", fontsize=8)
ladder.set(yticks=[], ylim=(0, 1), title=f"graph_batch_sizes(256): {len(sizes)} buckets "
           f"(blue lines); a step of {n} sequences replays bucket {bucket}")
ladder.legend(loc="upper right", fontsize=8)
batch_sizes = range(1, 257)
padding = [(bucket_for(k, sizes) - k) / bucket_for(k, sizes) for k in batch_sizes]
waste.step(batch_sizes, padding, where="mid", color="grey")
waste.plot(n, (bucket - n) / bucket, "o", color=seq_color(0))
waste.set(xlabel="sequences in the decode step", ylabel="padding share\nof the bucket",
          xlim=(0, 260))
plt.show()

# %% [markdown]
# ## The static buffers, and the padding rows
#
# A graph reads the tensors it was captured with, at their addresses. So the inputs of every
# graph live in tensors that `DecodeGraphs` allocates once, at the largest bucket: token ids,
# positions, the slot mapping, sequence lengths and block tables (`[max_num_seqs,
# max_blocks_per_seq]`), and the output hidden states. The graph of bucket `b` reads their
# first `b` rows.
#
# Each decode step, `ModelRunner.prepare_decode` builds five small host tensors from the
# scheduler's `StepInput`s: for each sequence, the token it just sampled, its position, the
# slot where that token's key and value go (`block_table[p // 4] * 4 + p % 4`), its length
# after this token, and its block table padded with 0. Seq 1's 4-token prompt filled block 1,
# so position 4 went to a new block, 9.

# %%
# NBVAL_CHECK_OUTPUT
for inp in decode:
    print(inp)
ids, positions, slots, seq_lens, tables = runner.prepare_decode(decode)
print("input_ids   ", ids.tolist())
print("positions   ", positions.tolist())
print("slots       ", slots.tolist())
print("seq_lens    ", seq_lens.tolist())
print("block_tables", tables.tolist())

# %% [markdown]
# `DecodeGraphs.run` copies these into the first `n` rows of the static buffers, marks rows
# `n` to the bucket as padding, and replays the bucket's graph. On a GPU the buffers live in
# GPU memory and the copies are host-to-device transfers. Here, a subclass that
# leaves out only the capture (`_capture_all`) lets the rest of the real class run on the CPU:
# `__init__` allocates the same buffers, `run` copies, pads and counts. Each bucket's "graph"
# is a stand-in whose `replay` notes the bucket instead of launching anything.

# %%
# NBVAL_CHECK_OUTPUT
class BuffersOnly(DecodeGraphs):
    """`DecodeGraphs` without capture: its buffers, bucket choice and padding, on any device.
    A stand-in per bucket records its replays (a real replay needs a GPU)."""

    def _capture_all(self, device):
        self.replayed = []  # the bucket of every replay, in order
        self.graphs = {bs: SimpleNamespace(replay=functools.partial(self.replayed.append, bs))
                       for bs in self.sizes}


buffers = BuffersOnly(runner.model, config.model_config.hidden_size, runner.dtype,
                      runner.device, config.max_num_seqs, config.max_model_len,
                      config.max_blocks_per_seq, config.kvcache_block_size)
print("buckets:", buffers.sizes)
for name in ("input_ids", "positions", "slot_mapping", "seq_lens", "block_tables", "hidden"):
    print(f"{name:<12} {tuple(getattr(buffers, name).shape)}")

# %% [markdown]
# One decode step through `run`: 5 sequences, bucket 8. The figure shows the buffers' rows
# after the copy: the five real rows in their sequences' colours, the padding rows hatched,
# and the rows beyond the bucket, which graph 8 never reads, blank.

# %%
# NBVAL_CHECK_OUTPUT
hidden = buffers.run(*runner.prepare_decode(decode))
print(f"replayed bucket {buffers.replayed[-1]}, replays so far {buffers.replays}, "
      f"hidden states returned for the real rows: {tuple(hidden.shape)}")


def buffer_rows(graphs: DecodeGraphs, rows: int) -> list[list[int]]:
    """The first `rows` rows of the static buffers: id, position, slot, length, table[:3]."""
    return [[graphs.input_ids[r].item(), graphs.positions[r].item(),
             graphs.slot_mapping[r].item(), graphs.seq_lens[r].item(),
             *graphs.block_tables[r, :3].tolist()] for r in range(rows)]


def print_rows(graphs: DecodeGraphs, n: int, rows: int) -> None:
    bucket = bucket_for(n, graphs.sizes)
    print("row   id  pos  slot  len  table[:3]")
    for r, (tok, pos, slot, length, *table) in enumerate(buffer_rows(graphs, rows)):
        kind = "real" if r < n else "padding" if r < bucket else "outside the bucket"
        print(f"{r:3d} {tok:4d} {pos:4d} {slot:5d} {length:4d}  {table}  {kind}")


print_rows(buffers, n=5, rows=9)

# %%
def draw_buffers(graphs: DecodeGraphs, n: int, seq_ids: list[int], rows: int, ax=None):
    """The static buffers' first `rows` rows as a table: real rows, padding, outside."""
    bucket = bucket_for(n, graphs.sizes)
    ax = ax or plt.subplots(figsize=(6, 0.3 * rows + 0.8), layout="constrained")[1]
    columns = ["input_ids", "positions", "slot", "seq_len", "table[0]", "[1]", "[2]"]
    for r, values in enumerate(buffer_rows(graphs, rows)):
        real, pad = r < n, n <= r < bucket
        color = lighten(seq_color(seq_ids[r]), 0.5) if real else "white"
        for c, value in enumerate(values):
            ax.add_patch(plt.Rectangle((c, r), 1, 1, facecolor=color, edgecolor="grey",
                                       hatch="//" if pad else None, lw=0.5))
            bold = pad and columns[c] in ("slot", "seq_len")  # the two values padding sets
            ax.text(c + 0.5, r + 0.5, value, ha="center", va="center", fontsize=8,
                    weight="bold" if bold else None, color="black" if real or pad else "grey")
        label = f"seq {seq_ids[r]}" if real else "padding" if pad else "unread"
        ax.text(-0.1, r + 0.5, f"row {r}: {label}", ha="right", va="center", fontsize=8)
    ax.set(xlim=(0, len(columns)), ylim=(rows, 0), xticks=[c + 0.5 for c in range(7)],
           yticks=[], title=f"static buffers: {n} sequences in bucket {bucket}")
    ax.set_xticklabels(columns, fontsize=8)
    ax.xaxis.tick_top()
    for side in ax.spines.values():
        side.set_visible(False)
    return ax


draw_buffers(buffers, 5, [inp.seq_id for inp in decode], rows=10)
plt.show()

# %% [markdown]
# A padding row does nothing harmful, by two values only: slot `-1`, which the Triton store
# kernel skips (no key or value is written), and length 1, so attention reads one key from
# whatever block the row's table names (a block that exists; its output is thrown away). Its
# token id and position are whatever the buffers held. Watch a following step of only three
# sequences, bucket 4: row 3 becomes padding with slot -1 and length 1, but keeps seq 3's id,
# position and table from the step before. Row 4 is outside bucket 4, and graph 4 never reads
# it.

# %%
# NBVAL_CHECK_OUTPUT
buffers.run(*runner.prepare_decode(decode[:3]))
print("replayed buckets:", buffers.replayed, "| replays:", buffers.replays)
print_rows(buffers, n=3, rows=5)

# %% [markdown]
# Why padding cannot change a real row: in a decoder, rows never mix. Every matrix product,
# norm and activation works row by row, and each row's attention reads only its own block
# table's keys. The same three sequences, alone and in a batch of five, get the same logits
# (within float32 rounding: a matrix product over a different number of rows may sum in a
# different order).

# %%
# NBVAL_CHECK_OUTPUT
alone = runner.forward(decode[:3], [True] * 3)  # [3, vocab_size]
together = runner.forward(decode, [True] * 5)[:3]
print("logits of seqs 0-2, alone vs in a batch of 5, equal:",
      torch.allclose(alone, together, atol=1e-5))
print("their greedy tokens:", alone.argmax(-1).tolist(), together.argmax(-1).tolist())

# %% [markdown]
# ## Which steps replay a graph
#
# `ModelRunner.forward` asks `uses_graph`: there must be graphs, the step must be decode only
# (one token per sequence) and fit the largest bucket. Then `prepare_decode` and
# `graphs.run` replace `prepare` and the eager forward; the logits and the sampler run after
# the replay, outside the graph. With the stand-in plugged in for a moment (and taken out
# again, since its replays compute nothing):

# %%
# NBVAL_CHECK_OUTPUT
runner.graphs = buffers
try:
    print("decode step of 5:", runner.uses_graph(decode))
    print("the prefill step:", runner.uses_graph(prefill))
finally:
    runner.graphs = None

# %% [markdown]
# ## Capture: fixed shapes inside the kernels too
#
# `DecodeGraphs._capture_all` captures every bucket, largest first. For each: one eager
# forward on the buffers' first `b` rows (a warm-up: it compiles the Triton kernels and, with
# tensor parallelism, sets up NCCL), then the same forward inside
# `torch.cuda.graph(graph, pool=...)`, which records the launches without running them. All
# graphs share one memory pool: a graph's activations are dead once it returns, and the
# largest graph, captured first, sized the pool for all.
#
# The attention metadata a graph captures with comes from `_metadata(b)`. Its host fields are
# those of the longest possible decode: `max_seq_len` is `max_model_len`, whatever the real
# lengths will be.

# %%
# NBVAL_CHECK_OUTPUT
meta = buffers._metadata(8)
print("max_seq_len", meta.max_seq_len, "= max_model_len", config.max_model_len)
print("seq_lens_cpu", meta.seq_lens_cpu)
print("cu_seqlens_q", meta.cu_seqlens_q.tolist())
print("max_query_len", meta.max_query_len, "| decode only:", meta.is_decode_only)

# %% [markdown]
# Why: the Triton decode kernel cuts each sequence's keys into ranges handled by separate
# programs (split-KV, so that a small batch still fills the GPU), and picks the number of
# splits, its grid size, from `max_seq_len` on the host. A graph launches the grid it
# recorded on every replay. Each split covers its share of the sequence's real length (read
# on the GPU), so any split count reads every key; but a count chosen for short sequences
# would leave long ones with too few programs to keep the GPU busy. With `max_model_len` the
# graph has the split count of the longest possible sequence, and for a short one the splits
# past its end find no keys and exit at once. Qwen3-0.6B's 8 key/value heads at batch 8, on a
# GPU with the H200's 132 multiprocessors:

# %%
if is_installed("triton"):
    from minillm.kernels.decode_attention import choose_num_splits

    for max_seq_len in (100, 300, 1000, 4096):
        splits = choose_num_splits(batch=8, num_kv_heads=8, max_seq_len=max_seq_len, num_sms=132)
        print(f"longest sequence {max_seq_len:4d}: {splits} splits")
else:
    print("skipped: triton is not installed (pip install \"minillm[gpu]\"); "
          "the split count grows with max_seq_len")

# %% [markdown]
# ## On a GPU: capture and replay
#
# This section needs an NVIDIA GPU; on a CPU its cells say so and skip. First a toy, with
# PyTorch's API alone: 32 rounds of a small matrix product and a `tanh`, 64 tiny kernels, as
# launch-bound as a decode step. Warm up on a side stream (as PyTorch's documentation
# advises), capture into a `torch.cuda.CUDAGraph`, then give the graph new input by copying
# it into the captured input tensor, and replay.

# %%
if torch.cuda.is_available():
    weight = torch.randn(256, 256, device="cuda") / 16
    x = torch.randn(8, 256, device="cuda")  # the static input: the graph reads this memory

    def small_kernels(x):
        for _ in range(32):
            x = torch.tanh(x @ weight)
        return x

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        small_kernels(x)  # warm-up: cuBLAS handles and workspaces, the allocator
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):  # records the launches; nothing runs yet
        y = small_kernels(x)  # y: the static output, rewritten by every replay
    x.copy_(torch.randn(8, 256))  # a new input, into the same memory
    graph.replay()
    print("replay equals eager on the new input:", torch.allclose(y, small_kernels(x)))

    def ms_per_call(fn, calls: int = 200) -> float:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(calls):
            fn()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / calls

    print(f"{torch.cuda.get_device_name()}: eager {ms_per_call(lambda: small_kernels(x)):.3f} "
          f"ms per call, replay {ms_per_call(graph.replay):.3f} ms")
else:
    print("skipped: no CUDA GPU here (capture and replay need one)")

# %% [markdown]
# Then the engine: the tiny model generates 32 greedy tokens for 13 prompts, once with
# `enforce_eager=True` and once with graphs (13 sequences replay bucket 16, with 3 padding
# rows). The tokens must be identical, and the graphs must really have replayed: one replay
# per decode step.

# %%
if torch.cuda.is_available():
    gen = torch.Generator().manual_seed(2)
    prompts = [torch.randint(0, 384, (int(k),), generator=gen).tolist()
               for k in torch.randint(2, 90, (13,), generator=gen)]
    params = SamplingParams(temperature=0.0, max_tokens=32, ignore_eos=True)
    tokens = {}
    for eager in (True, False):
        llm = LLM(checkpoint, device="cuda", dtype="float32", max_model_len=256,
                  num_kvcache_blocks=256, max_num_seqs=16, enforce_eager=eager,
                  skip_tokenizer_init=True)
        tokens[eager] = [o.token_ids for o in llm.generate(prompts, params, use_tqdm=False)]
        graphs = llm.engine.runner.graphs
        print(f"enforce_eager={eager}: backend {llm.engine.runner.backend.name}, graphs for "
              f"{None if graphs is None else graphs.sizes}, "
              f"replays {0 if graphs is None else graphs.replays}")
        del llm, graphs
    print("same greedy tokens, eager and graphs:", tokens[True] == tokens[False])
else:
    print("skipped: no CUDA GPU here (the recorded check of the same thing is below)")

# %% [markdown]
# ## What graphs bought on an H200 (recorded)
#
# These figures were measured on an NVIDIA H200 by `minillm bench offline` with nano-vllm's
# workload: Qwen3-0.6B's architecture with random weights, 256 requests with prompts and
# outputs of 100 to 1,024 tokens, the same engine steps in every run. The cell reads each
# result file and prints where it came from: device, commit and the command that wrote it.

# %%
runs = {
    "eager (--enforce-eager)": recorded("offline_qwen3-0.6b_tp1_eager_h200_4032f34.json"),
    "CUDA graphs": recorded("offline_qwen3-0.6b_tp1_h200_4032f34.json"),
    "CUDA graphs, later run": recorded("offline_qwen3-0.6b_tp1_h200_peer-cb_5c12888.json"),
}
for name, r in runs.items():
    ms_per_step = 1000 * r["elapsed_s"] / r["stats"]["steps"]
    print(f"{name}: {r['device']}, commit {r['commit']}, cuda_graphs={r['cuda_graphs']}, "
          f"attention {r['attention_backend']}\n  $ {r['command']}\n"
          f"  {r['output_tokens_per_s']:,.0f} output tok/s, {r['stats']['steps']} steps, "
          f"{ms_per_step:.1f} ms per step")
peer = runs["CUDA graphs, later run"]
print(f"peer in that run: {peer['peer_engine']}, first {peer['peer_num_requests']} requests: "
      f"{peer['peer_output_tokens_per_s']:,.0f} output tok/s")

# %%
labels = [f"minillm, {name}\n{r['commit']}" for name, r in runs.items()]
labels.append(f"transformers continuous batching\n({peer['peer_num_requests']} requests) "
              f"{peer['commit']}")
values = [r["output_tokens_per_s"] for r in runs.values()] + [peer["peer_output_tokens_per_s"]]
colors = ["#969696", "#1f77b4", "#1f77b4", "#ff7f0e"]
fig, ax = plt.subplots(figsize=(9, 2.8), layout="constrained")
ax.barh(labels, values, color=colors)
for y, value in enumerate(values):
    ax.text(value, y, f" {value:,.0f}", va="center", fontsize=8)
ax.invert_yaxis()
ax.set_xlim(0, max(values) * 1.12)
ax.set_xlabel("output tokens/s (recorded)")
ax.set_title(f"Qwen3-0.6B architecture, 256 requests, {peer['device']}: read from "
             "benchmarks/results/", fontsize=9)
plt.show()

# %% [markdown]
# The same steps, the same kernels; only how they are launched changed, and the mean step
# became much shorter (the two graph runs differ by the run-to-run spread). The graphs were
# checked against eager decoding on the same H200 by `scripts/gpu_check.py`: greedy tokens of
# batches on a bucket (1, 8) and between buckets (3, 13: padding rows), float32 and bfloat16,
# Qwen3 and Llama.

# %%
check = recorded("gpu_check_h200_graphs_4032f34.json")
print(f"{check['device']}, commit {check['commit']}, torch {check['torch']}\n"
      f"  $ {check['command']}")
for name, batches in check.items():
    if name.startswith("graphs_vs_eager"):
        print(f"{name}: " + ", ".join(f"{b}: {v['greedy_equal']} equal, {v['graph_replays']} "
                                      "replays" for b, v in batches.items()))

# %% [markdown]
# ## Where a step goes now (recorded)
#
# With graphs, is the step still waiting on the host? `benchmarks/step_breakdown.py` times
# the parts of every engine step over the same workload: the scheduler, the runner (inputs,
# graph replay, logits, sampling, up to the GPU finishing: the device-bound part), the
# scheduler's postprocess, the per-request outputs, and the rest of the engine loop.

# %%
breakdown = recorded("step_breakdown_qwen3-0.6b_h200_5c12888.json")
print(f"{breakdown['device']}, commit {breakdown['commit']}, cuda_graphs="
      f"{breakdown['cuda_graphs']}, {breakdown['steps']} steps\n  $ {breakdown['command']}")
for part, p in breakdown["parts"].items():
    print(f"  {part:<36} {p['ms_per_step']:6.3f} ms per step  {p['share']:6.1%}")

# %%
parts = breakdown["parts"]
part_colors = ["#9ecae1", "#1f77b4", "#fdae6b", "#fd8d3c", "#d9d9d9"]
fig, ax = plt.subplots(figsize=(10, 1.9), layout="constrained")
left = 0.0
for (part, p), color in zip(parts.items(), part_colors):
    ax.barh(0, p["ms_per_step"], left=left, color=color, edgecolor="white",
            label=f"{part}: {p['share']:.0%}")
    if p["share"] > 0.1:
        ax.text(left + p["ms_per_step"] / 2, 0, f"{part}\n{p['share']:.0%}", ha="center",
                va="center", fontsize=8, color="white")
    left += p["ms_per_step"]
ax.set(yticks=[], xlabel="ms per engine step (recorded)", xlim=(0, left))
ax.set_title(f"one step with CUDA graphs, {breakdown['device']}, commit {breakdown['commit']}",
             fontsize=9)
ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.55), ncol=3, fontsize=8, frameon=False)
plt.show()

# %% [markdown]
# With graphs, most of a step is the device-bound runner; what is left on the host between
# runner calls (scheduling, bookkeeping, building outputs) is a share during which the GPU
# idles. Overlap scheduling, as mini-sglang does it, hides that share.
#
# ## Overlap scheduling: the next step launched over placeholders
#
# The engine could build step N+1 while the GPU runs step N, if it did not need step N's
# tokens first. It needs surprisingly little of them: which sequences run next, their
# positions, slots and block tables depend only on *how many* tokens each sequence has. So
# `Scheduler.advance` does the half of the bookkeeping that needs no token values and leaves
# a placeholder `-(row + 1)` where each sampled token will go; step N+1 is scheduled and
# launched over the placeholders; the runner swaps each for row `row` of step N's sampled
# tokens on the device (`fill_placeholders`); and only then does the host read step N's
# tokens and `commit` them (EOS, stop strings, detokenizing) while the GPU computes N+1.
#
# The cell below does one round by hand with the real scheduler and runner on the CPU.

# %%
# NBVAL_CHECK_OUTPUT

need(globals(), "runner", "config")
sched = Scheduler(config)
for i, length in enumerate((3, 6, 4)):
    sched.add(Sequence(list(range(40 + 10 * i, 40 + 10 * i + length)),
                       SamplingParams(temperature=0.0, max_tokens=8), seq_id=100 + i))
step_n = sched.schedule()
out_n = runner.run(step_n)  # launched: on a GPU its tokens would still be computing
pending = sched.advance(step_n)  # no token values needed: counts, cache, placeholders
print("after advance:", {s.seq_id: s.token_ids[-2:] for s in step_n.seqs})
step_next = sched.schedule()  # scheduled over the placeholders
inputs_next = step_next.step_inputs()
print("step N+1 inputs:", [inp.token_ids for inp in inputs_next])
out_next = runner.run(step_next, inputs_next, prev_tokens=out_n.token_ids)
sched.commit(step_n, pending, out_n.token_ids.tolist())  # meanwhile, on the host
print("after commit: ", {s.seq_id: s.token_ids[-2:] for s in step_n.seqs})
swapped = torch.tensor([t for inp in inputs_next for t in inp.token_ids])
fill_placeholders(swapped, out_n.token_ids)
print("what step N+1 computed on:", swapped.tolist())

# %% [markdown]
# The placeholders `-1, -2, -3` are the rows of step N's token tensor; after `commit` each
# sequence holds its real token, the same one the runner put in step N+1's input ids. A
# sequence that reaches `max_tokens` is not scheduled again while its last token is in flight;
# one that stops on a token's value (EOS, a stop string) has already been launched into step
# N+1, so that step's token for it is dropped. Batches with repetition or frequency penalties,
# which read the token history, commit first. Scheduling choices never change greedy tokens,
# and overlap is one of them:

# %%
# NBVAL_CHECK_OUTPUT
prompts = [list(range(1 + 7 * i, 1 + 7 * i + n)) for i, n in enumerate((3, 9, 5, 12, 4))]
params = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
tokens = {}
for overlap in (False, True):
    with LLM(checkpoint, device="cpu", dtype="float32", kvcache_block_size=4,
             num_kvcache_blocks=64, max_model_len=64, skip_tokenizer_init=True,
             overlap_schedule=overlap) as llm_overlap:
        outs = llm_overlap.generate(prompts, params, use_tqdm=False)
        tokens[overlap] = [o.token_ids for o in outs]
print("overlap on == off:", tokens[True] == tokens[False], "| first request:", tokens[True][0])
assert tokens[True] == tokens[False]

# %% [markdown]
# On the CPU there is nothing to gain: the CPU computes as it launches. On a GPU the step
# becomes a pipeline. The drawing takes the recorded step breakdown above: in the serial
# engine the GPU waits for the host's part of every step; with overlap, the host's part of
# step N runs while the GPU computes step N+1.

# %%
host_ms = sum(p["ms_per_step"] for part, p in parts.items() if not part.startswith("runner"))
device_ms = parts["runner (device-bound)"]["ms_per_step"]
fig, axes = plt.subplots(2, 1, figsize=(10, 2.8), sharex=True, layout="constrained")
for ax, overlap in zip(axes, (False, True)):
    t = 0.0
    for step in range(4):
        color = seq_color(step)
        if overlap:  # the GPU runs back to back; the host's part of step N sits under N+1
            ax.broken_barh([(step * device_ms, device_ms)], (1, 0.8), color=color)
            if step:
                ax.broken_barh([((step) * device_ms, host_ms)], (0, 0.8),
                               color=lighten(seq_color(step - 1)))
        else:  # the host's part, then the device's, one after the other
            ax.broken_barh([(t, host_ms)], (0, 0.8), color=lighten(color))
            ax.broken_barh([(t + host_ms, device_ms)], (1, 0.8), color=color)
            t += host_ms + device_ms
    ax.set(yticks=[0.4, 1.4], yticklabels=["host", "GPU"],
           title="overlap scheduling" if overlap else "serial engine")
axes[1].set_xlabel("ms (recorded step breakdown, 4 steps)")
plt.show()

# %% [markdown]
# What it bought on the H200, measured with the runs alternating in one call (the sync-free
# uploads of `minillm/transfer.py` came with it: a plain `torch.tensor(..., device="cuda")`
# waits for the running step, which had made the first version slower than serial):

# %%
for mode in ("overlap", "serial"):
    for run in ("a", "b"):
        r = recorded(f"offline_qwen3-0.6b_tp1_{mode}_{run}_h200_a4a2666.json")
        print(f"{mode:8} run {run}: {r['output_tokens_per_s']:>9,.0f} output tok/s  "
              f"({r['device']}, commit {r['commit']}, overlap_schedule={r['overlap_schedule']})")
print("  $", recorded("offline_qwen3-0.6b_tp1_overlap_a_h200_a4a2666.json")["command"])

# %% [markdown]
# `benchmarks/NOTES.md` says what the rest of the device time is thought to be.
#
# ## Exercises
#
# Work out each answer by hand first; the solution cells check it with the real functions
# and files.
#
# ### 1 · Which bucket serves 100 sequences?
#
# A decode step holds 100 sequences. Which graph replays it when the engine was started with
# `max_num_seqs=100`, and which with `max_num_seqs=256`? How many padding rows does each run?
#
# <details><summary>Solution</summary>
#
# The ladder is 1, 2, 4, 8, then every 16 below `max_num_seqs`, then `max_num_seqs` itself.
# With `max_num_seqs=100` it ends 80, 96, 100: the step fits bucket 100 exactly, no padding.
# With 256 it goes on 96, 112, …: 100 sequences replay bucket 112, with 12 padding rows.
#
# </details>

# %%
# NBVAL_CHECK_OUTPUT
for max_num_seqs in (100, 256):
    ladder_sizes = graph_batch_sizes(max_num_seqs)
    chosen = bucket_for(100, ladder_sizes)
    near = [size for size in ladder_sizes if 64 <= size <= 128]
    print(f"max_num_seqs={max_num_seqs}: buckets ...{near}..., 100 sequences replay bucket "
          f"{chosen}, {chosen - 100} padding rows")
assert bucket_for(100, graph_batch_sizes(100)) == 100
assert bucket_for(100, graph_batch_sizes(256)) == 112

# %% [markdown]
# ### 2 · How many graphs for `max_num_seqs=64`?
#
# An engine started with `max_num_seqs=64` captures how many graphs, of which batch sizes?
# How many rows do its static buffers have, and which graph is captured first?
#
# <details><summary>Solution</summary>
#
# 1, 2, 4, 8, then 16, 32, 48 (every 16 below 64), then 64: 8 graphs. The buffers are
# allocated at the largest bucket, 64 rows, and every graph reads a prefix of them. Capture
# goes largest first, so graph 64 is captured first and sizes the memory pool that the
# smaller ones reuse.
#
# </details>

# %%
# NBVAL_CHECK_OUTPUT
need(globals(), "runner", "config")
engine_64 = BuffersOnly(runner.model, config.model_config.hidden_size, runner.dtype,
                        runner.device, 64, config.max_model_len, config.max_blocks_per_seq,
                        config.kvcache_block_size)
print(f"{len(engine_64.graphs)} graphs: {engine_64.sizes}; buffers of "
      f"{engine_64.input_ids.shape[0]} rows; captured first: {max(engine_64.sizes)}")
assert engine_64.sizes == [1, 2, 4, 8, 16, 32, 48, 64] and engine_64.input_ids.shape[0] == 64

# %% [markdown]
# ### 3 · The most overlap scheduling could save
#
# From the recorded step breakdown above: if overlap scheduling hid all the host work outside
# the runner behind the GPU's work, what share of a step would it save at most, and what
# throughput would the recorded run reach?
#
# <details><summary>Solution</summary>
#
# At best a step shrinks to the runner alone: it saves the shares of every other part, which
# is 1 minus the runner's share. Throughput grows by the inverse of the runner's share, so
# the bound is the recorded output tokens per second divided by the runner's share. It is
# only a bound: the runner itself also builds the step's inputs on the host. The measured
# gain (above) came out higher, 1.3x, because the sync-free uploads built for overlap also
# shortened the serial engine's runner.
#
# </details>

# %%
# NBVAL_CHECK_OUTPUT
need(globals(), "breakdown")
shares = {part: p["share"] for part, p in breakdown["parts"].items()}
runner_share = shares.pop("runner (device-bound)")
saving = sum(shares.values())  # every part outside the runner
print("outside the runner:", ", ".join(f"{part} {share:.1%}" for part, share in shares.items()))
print(f"overlap could save at most {saving:.1%} of a step: throughput x{1 / runner_share:.2f}, "
      f"at most {breakdown['output_tokens_per_s'] / runner_share:,.0f} output tok/s")
assert abs(saving - (1 - runner_share)) < 0.005  # the shares add up to one step

# %% [markdown]
# The tests that hold this together: `tests/test_cuda_graph.py` (every batch size finds the
# smallest bucket that holds it; graphs are off on the CPU and with `enforce_eager`; what a
# replay is fed equals what the eager path builds) and, on a GPU, `scripts/gpu_check.py`
# (graphs against eager, recorded above). Next: the [server](09_server.ipynb) puts the engine
# behind the OpenAI API.
