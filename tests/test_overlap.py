"""Overlap scheduling: step N+1 launched over placeholders before step N's tokens are read.

The logic is the same on the CPU (where the device "finishes" as it launches), so every
rule is tested here: outputs equal the serial engine's for every sampling feature, every
scheduling choice, stops that end a sequence while its next step is in flight, and aborts.
"""

from __future__ import annotations

import pytest
import torch

from minillm import LLM, SamplingParams
from minillm.config import EngineConfig, ModelConfig
from minillm.runner import fill_placeholders
from minillm.scheduler import Scheduler
from minillm.sequence import Sequence, SequenceStatus
from minillm.transfer import HostTokens, host_tensor, to_device
from tests.tiny import make_checkpoint

ENGINE = dict(device="cpu", dtype="float32", kvcache_block_size=4, max_model_len=128,
              num_kvcache_blocks=512)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_checkpoint(str(tmp_path_factory.mktemp("qwen3")), "qwen3")


@pytest.fixture(scope="module")
def prompts():
    gen = torch.Generator().manual_seed(1)
    return [torch.randint(0, 384, (n,), generator=gen).tolist()
            for n in (3, 9, 30, 1, 17, 44, 60, 5)]


def generate(checkpoint, prompts, params, overlap, **kw):
    llm = LLM(checkpoint, overlap_schedule=overlap, **{**ENGINE, **kw})
    assert llm.engine.overlap is overlap
    outs = llm.generate(prompts, params, use_tqdm=False)
    return [(o.token_ids, o.text, o.finish_reason, o.logprobs) for o in outs], llm


def mixed_params(stop_ids: list[int], stop_text: str) -> list[SamplingParams]:
    """One request per sampling feature; the stops are taken from a greedy run, so they hit.
    Sampled requests carry seeds: unseeded noise follows the step count, which overlap
    changes (a finished sequence's slot is refilled one step later)."""
    return [
        SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True),
        SamplingParams(temperature=1.0, seed=3, max_tokens=20, ignore_eos=True),
        SamplingParams(temperature=0.7, top_k=5, top_p=0.9, max_tokens=30, min_tokens=4, seed=5),
        SamplingParams(temperature=0.0, max_tokens=30, stop_token_ids=stop_ids),
        SamplingParams(temperature=0.0, max_tokens=16, repetition_penalty=1.3, logprobs=2),
        SamplingParams(temperature=0.9, max_tokens=40, presence_penalty=0.5, seed=1),
        SamplingParams(temperature=0.0, max_tokens=1),
        SamplingParams(temperature=0.0, max_tokens=30, stop=[stop_text], ignore_eos=True),
    ]


@pytest.fixture(scope="module")
def stops(checkpoint, prompts):
    """A stop id that request 3 samples at its 4th token, and a stop string of request 7."""
    greedy = SamplingParams(temperature=0.0, max_tokens=30, ignore_eos=True)
    outs, _ = generate(checkpoint, prompts, greedy, overlap=False)
    text = outs[7][1]
    assert len(text) > 8
    return [outs[3][0][3]], text[5:8]


@pytest.mark.parametrize("kw", [
    dict(),
    dict(num_kvcache_blocks=40),  # preemption while a step is in flight
    dict(max_num_batched_tokens=16, max_num_seqs=8),  # chunked prefill beside decodes
    dict(max_num_seqs=2, prefix_cache="hash"),
    dict(max_num_seqs=3, prefix_cache="radix"),
])
def test_overlap_gives_the_serial_outputs(checkpoint, prompts, stops, kw):
    params = mixed_params(*stops)
    serial, _ = generate(checkpoint, prompts, params, overlap=False, **kw)
    overlapped, llm = generate(checkpoint, prompts, params, overlap=True, **kw)
    assert [o[:3] for o in overlapped] == [o[:3] for o in serial]  # tokens, text, reason
    # Logprobs to float32 rounding: a finished row may still ride along in the next batch.
    lp_serial, lp_overlap = serial[4][3], overlapped[4][3]
    assert [d["token_id"] for d in lp_overlap] == [d["token_id"] for d in lp_serial]
    assert [d["logprob"] for d in lp_overlap] == pytest.approx(
        [d["logprob"] for d in lp_serial], abs=1e-5)
    reasons = [r for _, _, r, _ in serial]
    assert reasons[3] == "stop" and reasons[7] == "stop"  # the stops did hit
    assert len(serial[3][0]) <= 4
    if "num_kvcache_blocks" in kw:
        assert llm.stats()["preemptions"] > 0
    assert not llm.engine.has_unfinished()


def test_overlap_returns_each_step_one_call_later(checkpoint, prompts):
    llm = LLM(checkpoint, overlap_schedule=True, enable_prefix_caching=False, **ENGINE)
    engine = llm.engine
    engine.add_request(prompts[0], SamplingParams(temperature=0.0, max_tokens=3,
                                                  ignore_eos=True))
    assert engine.step() == []  # launched; its token is read by the next call
    seen = []
    while engine.has_unfinished():
        seen += [len(o.token_ids) for o in engine.step()]
    assert seen == [1, 2, 3]
    assert engine.stats()["kv_blocks_used"] == 0


def test_abort_while_in_flight_frees_blocks_and_spares_the_others(checkpoint, prompts):
    params = SamplingParams(temperature=0.0, max_tokens=20, ignore_eos=True)
    reference, _ = generate(checkpoint, prompts[:3], params, overlap=False,
                            enable_prefix_caching=False)
    llm = LLM(checkpoint, overlap_schedule=True, enable_prefix_caching=False, **ENGINE)
    engine = llm.engine
    ids = [engine.add_request(p, params) for p in prompts[:3]]
    tokens: dict[int, list[int]] = {}
    for _ in range(5):
        for out in engine.step():
            tokens[out.request_id] = out.token_ids
    assert engine._in_flight is not None
    engine.abort(ids[1])  # its row is computing now; its token must not come back
    while engine.has_unfinished():
        for out in engine.step():
            assert out.request_id != ids[1]
            tokens[out.request_id] = out.token_ids
    assert tokens[ids[0]] == reference[0][0] and tokens[ids[2]] == reference[2][0]
    assert engine.stats()["kv_blocks_used"] == 0


def test_overlap_is_refused_with_tensor_parallel_and_checked():
    mc = ModelConfig(architecture="Qwen3ForCausalLM", vocab_size=64, hidden_size=32,
                     intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                     num_key_value_heads=2, head_dim=8, max_position_embeddings=256)
    with pytest.raises(ValueError, match="overlap_schedule"):
        EngineConfig(model_config=mc, tensor_parallel_size=2, overlap_schedule=True)
    with pytest.raises(ValueError, match="overlap_schedule"):
        EngineConfig(model_config=mc, overlap_schedule="yes")
    EngineConfig(model_config=mc, tensor_parallel_size=2)  # None: off there, no error


# ---- the pieces ----


def test_advance_leaves_placeholders_and_commit_fills_them():
    config = EngineConfig(kvcache_block_size=4, num_kvcache_blocks=64, max_model_len=64,
                          eos_token_ids=(0,))
    sched = Scheduler(config)
    a, b = Sequence([5, 6, 7]), Sequence([8, 9], SamplingParams(max_tokens=2))
    sched.add(a)
    sched.add(b)
    batch = sched.schedule()
    pending = sched.advance(batch)
    assert [seq.token_ids[-1] for seq, _ in pending] == [-1, -2]  # -(row + 1)
    assert (a.num_computed_tokens, b.num_computed_tokens) == (3, 2)
    nxt = sched.schedule()  # scheduled over the placeholders, as the runner will see them
    assert [inp.token_ids for inp in nxt.step_inputs()] == [(-1,), (-2,)]
    sched.commit(batch, pending, [11, 12])
    assert a.token_ids == [5, 6, 7, 11] and b.token_ids == [8, 9, 12]
    pending = sched.advance(nxt)
    assert b.num_completion_tokens == 2
    third = sched.schedule()
    assert third.seqs == [a]  # b holds its last token (max_tokens=2): not scheduled again
    assert sched.commit(nxt, pending, [13, 14]) == [b]
    assert b.finish_reason == "length" and b.token_ids == [8, 9, 12, 14]


def test_commit_reaches_a_sequence_preempted_after_advance():
    config = EngineConfig(kvcache_block_size=4, num_kvcache_blocks=64, max_model_len=64,
                          eos_token_ids=(0,))
    sched = Scheduler(config)
    seq = Sequence([1, 2, 3])
    sched.add(seq)
    batch = sched.schedule()
    pending = sched.advance(batch)
    sched.running.remove(seq)
    sched._preempt(seq)  # as schedule() does under KV pressure
    sched.commit(batch, pending, [0])  # EOS: it finishes from the waiting queue
    assert seq.token_ids == [1, 2, 3, 0] and seq.finish_reason == "stop"
    assert seq.status is SequenceStatus.FINISHED and not sched.has_unfinished()


def test_fill_placeholders_reads_the_previous_rows():
    ids = torch.tensor([4, -2, 9, -1, -3])
    fill_placeholders(ids, torch.tensor([100, 200, 300]))
    assert ids.tolist() == [4, 200, 9, 100, 300]
    same = torch.tensor([1, 2])
    fill_placeholders(same, None)
    assert same.tolist() == [1, 2]


def test_transfers_keep_values_and_types_on_the_cpu():
    cpu = torch.device("cpu")
    t = to_device([[1, 2], [3, 4]], torch.int32, cpu)
    assert t.dtype == torch.int32 and t.tolist() == [[1, 2], [3, 4]]
    assert not host_tensor([1.5], torch.float32, cpu).is_pinned()  # pinning needs a GPU
    assert HostTokens(torch.tensor([7, 8])).get() == [7, 8]
