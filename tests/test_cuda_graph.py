"""CUDA-graph decode on the CPU: the bucket choice, and the host inputs a replay copies in.

Capture and replay need a GPU (`scripts/gpu_check.py` checks graphs against eager there); what
decides which graph runs and what it is fed is plain Python, checked here."""

from __future__ import annotations

import pytest
import torch

from minillm.config import EngineConfig, SamplingParams
from minillm.cuda_graph import bucket_for, graph_batch_sizes
from minillm.runner import ModelRunner
from minillm.scheduler import Scheduler
from minillm.sequence import Sequence
from tests.tiny import make_checkpoint


def test_buckets_cover_every_batch_size_up_to_the_maximum():
    sizes = graph_batch_sizes(256)
    assert sizes[:5] == [1, 2, 4, 8, 16] and sizes[-1] == 256
    assert all(b - a == 16 for a, b in zip(sizes[4:], sizes[5:]))
    for n in range(1, 257):
        b = bucket_for(n, sizes)
        assert b >= n and (sizes.index(b) == 0 or sizes[sizes.index(b) - 1] < n)
    assert bucket_for(257, sizes) is None


@pytest.mark.parametrize("max_num_seqs, expected", [(1, [1]), (3, [1, 2, 3]),
                                                    (20, [1, 2, 4, 8, 16, 20])])
def test_buckets_end_at_max_num_seqs(max_num_seqs, expected):
    assert graph_batch_sizes(max_num_seqs) == expected


def test_graphs_are_off_on_the_cpu_and_when_eager(tmp_path):
    path = make_checkpoint(str(tmp_path / "q"), "qwen3")
    runner = ModelRunner(EngineConfig(model=path, device="cpu", num_kvcache_blocks=32))
    assert runner.graphs is None and not runner.uses_graph([])


def test_decode_inputs_match_the_general_path(tmp_path):
    """What a replay is fed (ids, positions, slots, lengths, tables) equals what the eager
    path builds for the same decode step, including sequences that just crossed a block."""
    path = make_checkpoint(str(tmp_path / "q"), "qwen3")
    config = EngineConfig(model=path, device="cpu", kvcache_block_size=4, num_kvcache_blocks=64,
                          max_model_len=64)
    runner, sched = ModelRunner(config), Scheduler(config)
    for n in (3, 4, 5, 11):  # lengths ending mid-block and on a block edge
        sched.add(Sequence(list(range(1, n + 1)), SamplingParams(max_tokens=8)))
    batch = sched.schedule()  # prefill
    sched.postprocess(batch, [7] * batch.num_sampled)
    batch = sched.schedule()  # decode: one token each
    inputs = batch.step_inputs()
    assert all(len(i.token_ids) == 1 for i in inputs)
    ids, positions, slots, seq_lens, tables = runner.prepare_decode(inputs)
    ref_ids, ref_positions, meta = runner.prepare(inputs)
    assert torch.equal(ids, ref_ids) and torch.equal(positions, ref_positions)
    assert torch.equal(slots, meta.slot_mapping)
    assert torch.equal(seq_lens, meta.seq_lens)
    assert torch.equal(tables, meta.block_tables)
    assert seq_lens.tolist() == [4, 5, 6, 12]
