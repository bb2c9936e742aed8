"""CUDA graphs for decode steps: capture the model's forward once per batch size, then replay.

A decode step of a small model is launch-bound: Qwen3-0.6B launches ~20 kernels per layer,
~600 per step, each taking a few microseconds of CPU time to launch while the GPU finishes
most of them faster than that. A CUDA graph records the whole launch sequence once; a replay
is one launch, so the GPU runs back to back and the CPU is free to prepare the next step.

A graph replays exactly what was captured: the same kernels, the same grid sizes, the same
memory addresses. So:

- **Buckets.** One graph per batch size in `graph_batch_sizes` (1, 2, 4, 8, then every 16 up
  to `max_num_seqs`). A step of `n` sequences replays the smallest bucket `>= n`.
- **Static buffers.** Inputs (ids, positions, slot mapping, sequence lengths, block tables)
  live in tensors allocated once at the largest bucket; a step copies its values into the
  first `n` rows, and every graph reads slices of those same tensors.
- **Padding.** Rows `n..bucket` are padding: slot `-1` (the KV store skips it) and sequence
  length 1 over whatever block id the table holds (a harmless read); their token ids and
  positions are whatever an earlier step left there. Their outputs are computed and ignored;
  rows never mix in a decoder, so padding cannot change a real row.
- **Fixed shapes inside kernels.** Split-KV decode picks its number of splits from the longest
  sequence; inside a graph it must not change, so capture passes `max_seq_len=max_model_len`
  and the split count is that of the longest possible sequence (empty splits exit at once).
- **One memory pool.** Graphs are captured largest first and share one pool: each graph's
  activations are dead once it returns, so the smaller graphs reuse the largest one's memory.
  Each graph writes its hidden states into one static output buffer.

Logits and sampling stay outside the graph (they are per step and cheap).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from minillm.attention import AttentionMetadata


def graph_batch_sizes(max_num_seqs: int) -> list[int]:
    """The batch-size buckets captured: 1, 2, 4, 8, 16, 32, 48, ... up to `max_num_seqs`."""
    sizes = [b for b in (1, 2, 4, 8) if b < max_num_seqs]
    sizes += list(range(16, max_num_seqs, 16))
    return sorted(set(sizes + [max_num_seqs]))


def bucket_for(batch_size: int, sizes: list[int]) -> int | None:
    """The smallest captured size that holds `batch_size`, or None if it is too large."""
    for size in sizes:
        if size >= batch_size:
            return size
    return None


class DecodeGraphs:
    """Captured decode forwards for every bucket, and the static buffers they read.

    `run(input_ids, positions, slots, seq_lens, block_tables)` takes a step's host tensors
    (CPU, length `n`) and returns the hidden states `[n, hidden_size]` of the replayed graph.
    """

    def __init__(self, model: torch.nn.Module, hidden_size: int, dtype: torch.dtype,
                 device: torch.device, max_num_seqs: int, max_model_len: int,
                 max_blocks_per_seq: int, block_size: int) -> None:
        self.model = model
        self.max_model_len = max_model_len
        self.block_size = block_size
        self.sizes = graph_batch_sizes(max_num_seqs)
        n = self.sizes[-1]
        with torch.device(device):
            self.input_ids = torch.zeros(n, dtype=torch.long)
            self.positions = torch.zeros(n, dtype=torch.long)
            self.slot_mapping = torch.full((n,), -1, dtype=torch.long)
            self.seq_lens = torch.ones(n, dtype=torch.int32)
            self.block_tables = torch.zeros(n, max_blocks_per_seq, dtype=torch.int32)
            self.cu_seqlens_q = torch.arange(n + 1, dtype=torch.int32)
            self.hidden = torch.zeros(n, hidden_size, dtype=dtype)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.replays = 0  # steps served by a graph (for checks and notebooks)
        self.pool = None
        self._capture_all(device)

    def _metadata(self, bs: int) -> AttentionMetadata:
        """Metadata over the first `bs` rows of the static buffers. Host fields are those of
        the longest possible decode, so that every kernel's launch shape is fixed."""
        return AttentionMetadata(
            slot_mapping=self.slot_mapping[:bs], cu_seqlens_q=self.cu_seqlens_q[: bs + 1],
            seq_lens=self.seq_lens[:bs], block_tables=self.block_tables[:bs],
            max_query_len=1, max_seq_len=self.max_model_len, block_size=self.block_size,
            seq_lens_cpu=[self.max_model_len] * bs, query_lens_cpu=[1] * bs)

    def _capture_all(self, device: torch.device) -> None:
        try:
            self._capture_buckets(device)
        except BaseException:  # e.g. out of memory: no half-captured graph may outlive this
            self.release(sync=False)
            raise

    @torch.inference_mode()
    def _capture_buckets(self, device: torch.device) -> None:
        for bs in reversed(self.sizes):  # largest first: the pool is sized by the first
            meta = self._metadata(bs)
            args = (self.input_ids[:bs], self.positions[:bs], meta)
            self.hidden[:bs] = self.model(*args)  # warm-up: compiles kernels, sets up NCCL
            torch.cuda.synchronize(device)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self.pool):
                self.hidden[:bs] = self.model(*args)
            if self.pool is None:
                self.pool = graph.pool()
            self.graphs[bs] = graph
        torch.cuda.synchronize(device)

    def release(self, sync: bool = True) -> None:
        """Free every graph and the shared pool; with `sync`, after the device is idle (a graph
        still running is otherwise freed by CUDA when it completes)."""
        if sync:
            torch.cuda.synchronize()
        for graph in self.graphs.values():
            graph.reset()
        self.graphs.clear()
        self.pool = None
        if sync:
            torch.cuda.empty_cache()

    def can_run(self, batch_size: int) -> bool:
        return batch_size <= self.sizes[-1]

    def run(self, input_ids: torch.Tensor, positions: torch.Tensor, slots: torch.Tensor,
            seq_lens: torch.Tensor, block_tables: torch.Tensor,
            fill: Callable[[torch.Tensor], None] | None = None) -> torch.Tensor:
        """Copy one decode step's inputs (host tensors, `n` rows; `block_tables` may be
        narrower than the static table) into the buffers, pad, replay; hidden [n, hidden].
        `fill` rewrites the input ids in their buffer first (overlap's placeholders)."""
        n = input_ids.shape[0]
        bs = bucket_for(n, self.sizes)
        self.input_ids[:n].copy_(input_ids, non_blocking=True)
        if fill is not None:
            fill(self.input_ids[:n])
        self.positions[:n].copy_(positions, non_blocking=True)
        self.slot_mapping[:n].copy_(slots, non_blocking=True)
        self.seq_lens[:n].copy_(seq_lens, non_blocking=True)
        self.block_tables[:n, : block_tables.shape[1]].copy_(block_tables, non_blocking=True)
        if bs > n:  # padding rows: store nothing, read one harmless key
            self.slot_mapping[n:bs].fill_(-1)
            self.seq_lens[n:bs].fill_(1)
        self.graphs[bs].replay()
        self.replays += 1
        return self.hidden[:n]
