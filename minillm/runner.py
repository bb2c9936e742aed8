"""The model runner: turns a scheduled `Batch` into tensors, runs the model, samples.

It owns the model, the KV cache tensor and the sampler. One step:

1. `prepare(batch)`: pack the step's new tokens of all sequences into flat input ids and
   positions, and build the `AttentionMetadata` (slot mapping, block tables, lengths);
2. `forward(batch)`: run the model and compute logits for the sampled rows only;
3. `sample(...)`: pick the next token of each sampled sequence.

With overlap scheduling (`LLMEngine`), a step is launched before the previous step's tokens
reach the host: its input ids then hold placeholders `-(row + 1)` that `fill_placeholders`
swaps, on the device, for row `row` of the previous step's sampled tokens; every upload goes
through `minillm.transfer`, so building a step never waits for the one running.
"""

from __future__ import annotations

import contextlib
import itertools

import torch

from minillm.attention import AttentionMetadata, get_backend
from minillm.config import DTYPE_BYTES, EngineConfig
from minillm.cuda_graph import DecodeGraphs
from minillm.distributed import local_rank, min_over_ranks
from minillm.loader import init_dummy_weights, load_weights
from minillm.models import build_model
from minillm.sampling import Sampler, SamplerOutput, SamplingBatch
from minillm.scheduler import Batch
from minillm.sequence import StepInput
from minillm.transfer import host_tensor, to_device

TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(device: str) -> torch.device:
    """'auto' is CUDA when a GPU is visible, else the CPU. Tensor-parallel rank r on CUDA uses
    the GPU of its local rank."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' is invalid here: no CUDA GPU is visible (use 'cpu')")
    if device == "cuda":
        return torch.device("cuda", local_rank())
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> str:
    """'auto' is bfloat16 on a GPU and float32 on the CPU (fast and exact there)."""
    if dtype == "auto":
        return "bfloat16" if device.type == "cuda" else "float32"
    return dtype


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype):
    """Create parameters directly in `dtype` (no float32 copy of the whole model first)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def fill_placeholders(input_ids: torch.Tensor, prev_tokens: torch.Tensor | None) -> None:
    """In place: each id `-(row + 1)` becomes `prev_tokens[row]` (the previous step's sampled
    token of that sequence, still on the device); other ids stay. No host sync."""
    if prev_tokens is None:
        return
    rows = (-1 - input_ids).clamp_(min=0)
    input_ids.copy_(torch.where(input_ids < 0, prev_tokens[rows], input_ids))


class ModelRunner:
    """Owns the model, its paged KV cache and the sampler for one rank."""

    def __init__(self, config: EngineConfig) -> None:
        if config.model_config is None or config.model is None:
            raise ValueError("ModelRunner needs a model directory (EngineConfig.model)")
        self.config = config
        self.device = resolve_device(config.device)
        self.dtype_name = resolve_dtype(config.dtype, self.device)
        self.dtype = TORCH_DTYPES[self.dtype_name]
        self.backend = get_backend(config.attention_backend, self.device.type)
        self.block_size = config.kvcache_block_size
        torch.manual_seed(config.seed)
        with torch.device(self.device), default_dtype(self.dtype):
            self.model = build_model(config.model_config, config.max_model_len, self.backend)
        if config.load_format == "dummy":
            init_dummy_weights(self.model, config.seed)
        else:
            load_weights(self.model, config.model)
        self.model.eval()
        self.attention_layers = [m for m in self.model.modules() if hasattr(m, "k_cache")]
        config.num_kvcache_blocks = min_over_ranks(self._num_kv_blocks())  # same on all ranks
        self.kv_cache = self._allocate_kv_cache(config.num_kvcache_blocks)
        self.graphs = self._capture_graphs()
        self.sampler = Sampler()
        self._step_seeds = itertools.count()

    # ---- the KV cache ----

    def _num_kv_blocks(self) -> int:
        """Blocks that fit the memory budget: the CPU byte budget, or the GPU's free memory
        (times `gpu_memory_utilization`) after a profiling pass at the full token budget."""
        cfg = self.config
        if cfg.num_kvcache_blocks is not None:
            return cfg.num_kvcache_blocks
        per_block = cfg.kv_bytes_per_block(self.dtype_name)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self._profile_pass()
            free, total = torch.cuda.mem_get_info(self.device)
            peak_extra = torch.cuda.max_memory_allocated() - torch.cuda.memory_allocated()
            budget = int(total * cfg.gpu_memory_utilization) - (total - free) - peak_extra
        else:
            budget = cfg.cpu_kvcache_bytes
        useful = cfg.max_num_seqs * cfg.max_blocks_per_seq  # more could never be used at once
        blocks = min(budget // per_block, useful)
        if blocks < cfg.max_blocks_per_seq:
            raise ValueError(
                f"the KV cache budget holds {max(blocks, 0)} blocks of {self.block_size} tokens, "
                f"fewer than one sequence of max_model_len={cfg.max_model_len} needs "
                f"({cfg.max_blocks_per_seq}): lower max_model_len or raise the memory budget")
        return int(blocks)

    @torch.inference_mode()
    def _profile_pass(self) -> None:
        """A forward over the largest step the scheduler can build, to measure activations."""
        cfg = self.config
        total = cfg.max_num_batched_tokens
        lens = [min(cfg.max_model_len, total - i) for i in range(0, total, cfg.max_model_len)]
        ids = torch.zeros(total, dtype=torch.long, device=self.device)
        positions = torch.cat([torch.arange(n, device=self.device) for n in lens])
        meta = self._metadata(lens, lens, [], [[0]] * len(lens))
        self.model(ids, positions, meta)
        torch.cuda.synchronize(self.device)

    def _allocate_kv_cache(self, num_blocks: int) -> torch.Tensor:
        """One tensor for all layers: [2 (k, v), layers, blocks, block_size, kv_heads, head_dim].
        Zeroed: padded reads of a block table must never meet NaN garbage."""
        mc = self.config.model_config
        kv_heads = self.attention_layers[0].num_kv_heads if self.attention_layers else 1
        cache = torch.zeros(2, mc.num_hidden_layers, num_blocks, self.block_size, kv_heads,
                            mc.head_dim, dtype=self.dtype, device=self.device)
        for i, layer in enumerate(self.attention_layers):
            layer.k_cache, layer.v_cache = cache[0, i], cache[1, i]
        return cache

    def _capture_graphs(self) -> DecodeGraphs | None:
        """CUDA graphs of decode steps (on CUDA, with a backend whose launches are fixed by the
        buffers' shapes), unless `enforce_eager`. Captured after the KV cache exists, since the
        graphs read it. Every tensor-parallel rank captures the same buckets in the same order."""
        cfg = self.config
        if (cfg.enforce_eager or self.device.type != "cuda"
                or not getattr(self.backend, "supports_cuda_graphs", False)):
            return None
        return DecodeGraphs(self.model, cfg.model_config.hidden_size, self.dtype, self.device,
                            cfg.max_num_seqs, cfg.max_model_len, cfg.max_blocks_per_seq,
                            self.block_size)

    def release_graphs(self, sync: bool = True) -> None:
        """Drop the captured graphs and their pool. Graphs that captured NCCL all-reduces
        must be gone before the process group is destroyed (pytorch/pytorch#115388), so
        tensor parallelism's shutdown calls this first. `sync=False` on an unclean shutdown:
        waiting for a step whose peer died could block forever."""
        if self.graphs is not None:
            self.graphs.release(sync)
            self.graphs = None

    def kv_cache_bytes(self) -> int:
        return self.kv_cache.numel() * DTYPE_BYTES[self.dtype_name]

    # ---- one step ----

    def _metadata(self, query_lens: list[int], seq_lens: list[int], slots: list[int],
                  tables: list[list[int]]) -> AttentionMetadata:
        dev = self.device
        width = max(len(t) for t in tables)
        padded = [t + [0] * (width - len(t)) for t in tables]
        cu = [0, *itertools.accumulate(query_lens)]
        return AttentionMetadata(
            slot_mapping=to_device(slots, torch.long, dev),
            cu_seqlens_q=to_device(cu, torch.int32, dev),
            seq_lens=to_device(seq_lens, torch.int32, dev),
            block_tables=to_device(padded, torch.int32, dev),
            max_query_len=max(query_lens), max_seq_len=max(seq_lens),
            block_size=self.block_size, seq_lens_cpu=seq_lens, query_lens_cpu=query_lens)

    def prepare(self, inputs: list[StepInput],
                ) -> tuple[torch.Tensor, torch.Tensor, AttentionMetadata]:
        """Flat input ids and positions of the step's new tokens, and their attention metadata."""
        bs = self.block_size
        input_ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        for inp in inputs:
            start, table = inp.start_pos, inp.block_table
            end = start + len(inp.token_ids)
            input_ids.extend(inp.token_ids)
            positions.extend(range(start, end))
            for i in range(start // bs, (end - 1) // bs + 1):  # the blocks this chunk touches
                lo, hi = max(start, i * bs), min(end, (i + 1) * bs)
                base = table[i] * bs - i * bs
                slots.extend(range(base + lo, base + hi))
        query_lens = [len(inp.token_ids) for inp in inputs]
        seq_lens = [inp.start_pos + len(inp.token_ids) for inp in inputs]
        meta = self._metadata(query_lens, seq_lens, slots,
                              [list(inp.block_table) for inp in inputs])
        dev = self.device
        return to_device(input_ids, torch.long, dev), to_device(positions, torch.long, dev), meta

    def prepare_decode(self, inputs: list[StepInput]) -> tuple[torch.Tensor, ...]:
        """Host tensors of a decode step (one new token per sequence) for the CUDA graphs:
        input ids, positions, slots, sequence lengths, block tables (padded with 0)."""
        bs, dev = self.block_size, self.device
        positions = [inp.start_pos for inp in inputs]
        slots = [inp.block_table[p // bs] * bs + p % bs for inp, p in zip(inputs, positions)]
        width = max(len(inp.block_table) for inp in inputs)
        tables = [inp.block_table + (0,) * (width - len(inp.block_table)) for inp in inputs]
        return (host_tensor([inp.token_ids[0] for inp in inputs], torch.long, dev),
                host_tensor(positions, torch.long, dev), host_tensor(slots, torch.long, dev),
                host_tensor([p + 1 for p in positions], torch.int32, dev),
                host_tensor(tables, torch.int32, dev))

    def uses_graph(self, inputs: list[StepInput]) -> bool:
        """Whether this step replays a CUDA graph: a decode-only step that fits a bucket."""
        return (self.graphs is not None and self.graphs.can_run(len(inputs))
                and all(len(inp.token_ids) == 1 for inp in inputs))

    @torch.inference_mode()
    def forward(self, inputs: list[StepInput], sampled: list[bool],
                prev_tokens: torch.Tensor | None = None) -> torch.Tensor | None:
        """Run the model over one step; logits [num_sampled, vocab] of the sampled rows (on
        rank 0; None on other tensor-parallel ranks). `prev_tokens`: the previous step's
        sampled ids, on the device, for the placeholders in `inputs` (overlap scheduling)."""
        if self.uses_graph(inputs):
            fill = None if prev_tokens is None else (
                lambda ids: fill_placeholders(ids, prev_tokens))
            hidden = self.graphs.run(*self.prepare_decode(inputs), fill)  # a row per sequence
            if not all(sampled):
                hidden = hidden[self._sampled_rows(sampled)]
            return self.model.compute_logits(hidden)
        input_ids, positions, meta = self.prepare(inputs)
        fill_placeholders(input_ids, prev_tokens)
        hidden = self.model(input_ids, positions, meta)  # [num_tokens, hidden_size]
        last = meta.cu_seqlens_q[1:] - 1  # each sequence's last new token
        return self.model.compute_logits(hidden[last[self._sampled_rows(sampled)]])

    def _sampled_rows(self, sampled: list[bool]) -> torch.Tensor:
        """Indices of the sampled rows, built on the host: a boolean mask would make the
        device tell the host how many rows it selects (a sync that overlap cannot hide)."""
        return to_device([i for i, ok in enumerate(sampled) if ok], torch.long, self.device)

    @torch.inference_mode()
    def run(self, batch: Batch, inputs: list[StepInput] | None = None,
            prev_tokens: torch.Tensor | None = None) -> SamplerOutput:
        """Forward and sample: one token per sequence with `batch.sampled` True. Nothing
        here waits for the device: the tokens stay on it (see `HostTokens`)."""
        inputs = batch.step_inputs() if inputs is None else inputs
        logits = self.forward(inputs, batch.sampled, prev_tokens)
        seqs = [s for s, ok in zip(batch.seqs, batch.sampled) if ok]
        sampling = SamplingBatch.from_sequences(
            seqs, vocab_size=logits.shape[-1], eos_token_ids=self.config.eos_token_ids,
            device=self.device, step_seed=self.config.seed * 1_000_003 + next(self._step_seeds))
        return self.sampler(logits, sampling)
