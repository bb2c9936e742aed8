"""`minillm.sequence`: token bookkeeping, recompute after preemption, and the small `StepInput`
that crosses to tensor-parallel workers."""

from __future__ import annotations

import dataclasses
import pickle

import pytest

from minillm.config import SamplingParams
from minillm.sequence import Sequence, SequenceStatus, StepInput


def test_new_sequence_is_waiting_with_only_its_prompt():
    seq = Sequence([5, 6, 7], SamplingParams(max_tokens=3))
    assert seq.status is SequenceStatus.WAITING
    assert seq.num_prompt_tokens == seq.num_tokens == 3
    assert seq.token_ids == [5, 6, 7] and seq.completion_token_ids == []
    assert seq.num_completion_tokens == 0
    assert seq.last_token_id == 7
    assert seq.in_prefill and seq.num_uncomputed_tokens == 3
    assert seq.block_table == [] and seq.num_cached_tokens == 0
    assert seq.finish_reason is None and not seq.is_finished
    assert seq.first_scheduled_time is None and seq.first_token_time is None


def test_prompt_is_copied():
    prompt = [1, 2]
    seq = Sequence(prompt)
    prompt.append(3)
    seq.append_token(9)
    assert seq.prompt_token_ids == [1, 2] and prompt == [1, 2, 3]


def test_sequence_ids_are_unique():
    ids = {Sequence([1]).seq_id for _ in range(100)}
    assert len(ids) == 100


@pytest.mark.parametrize("prompt", [[], ()])
def test_empty_prompt_is_rejected(prompt):
    with pytest.raises(ValueError, match="prompt_token_ids"):
        Sequence(prompt)


def test_bookkeeping_through_chunked_prefill_and_decode():
    seq = Sequence(list(range(10)))
    seq.num_computed_tokens = 4  # a first chunk
    assert seq.in_prefill and seq.num_uncomputed_tokens == 6
    seq.num_computed_tokens = 10  # the rest of the prompt; its last position gives a token
    assert not seq.in_prefill and seq.num_uncomputed_tokens == 0
    seq.append_token(42)
    assert seq.first_token_time is not None
    assert seq.num_tokens == 11 and seq.num_completion_tokens == 1
    assert seq.completion_token_ids == [42] and seq.last_token_id == 42
    assert seq.num_uncomputed_tokens == 1  # the new token's KV is computed by the next step
    seq.num_computed_tokens = 11
    seq.append_token(43)
    assert seq.completion_token_ids == [42, 43]
    assert seq.token_ids == list(range(10)) + [42, 43]
    assert seq.prompt_token_ids == list(range(10))


def test_reset_for_recompute_keeps_tokens_and_clears_kv_state():
    seq = Sequence([1, 2, 3, 4, 5])
    seq.status = SequenceStatus.RUNNING
    seq.block_table = [3, 8]
    seq.num_computed_tokens = seq.num_cached_tokens = 4
    seq.num_computed_tokens = 5
    seq.append_token(6)
    seq.append_token(7)
    seq.reset_for_recompute()
    assert seq.status is SequenceStatus.PREEMPTED
    assert seq.block_table == [] and seq.num_computed_tokens == 0 and seq.num_cached_tokens == 0
    assert seq.token_ids == [1, 2, 3, 4, 5, 6, 7] and seq.completion_token_ids == [6, 7]
    assert seq.num_uncomputed_tokens == 7  # prompt and completion are recomputed
    assert seq.in_prefill
    assert seq.num_preemptions == 1
    seq.reset_for_recompute()
    assert seq.num_preemptions == 2


def test_finish():
    seq = Sequence([1])
    seq.finish("length")
    assert seq.is_finished and seq.status is SequenceStatus.FINISHED
    assert seq.finish_reason == "length" and seq.finish_time is not None
    with pytest.raises(ValueError, match="reason='eos'"):
        Sequence([1]).finish("eos")


def test_repr_shows_where_it_stands():
    seq = Sequence([1, 2, 3])
    seq.block_table = [4]
    text = repr(seq)
    assert f"id={seq.seq_id}" in text and "waiting" in text and "blocks=[4]" in text
    seq.finish("abort")
    assert "finish='abort'" in repr(seq)


def test_step_input_carries_only_what_a_forward_pass_needs():
    assert [f.name for f in dataclasses.fields(StepInput)] == [
        "seq_id", "token_ids", "start_pos", "block_table"]
    seq = Sequence(list(range(100, 110)), SamplingParams(temperature=0.5, seed=3))
    seq.block_table = [7, 2, 9]
    seq.num_computed_tokens = 4
    inp = seq.step_input(3)
    assert inp == StepInput(seq.seq_id, (104, 105, 106), 4, (7, 2, 9))
    seq.block_table.append(1)  # a snapshot: later changes to the sequence do not leak in
    assert inp.block_table == (7, 2, 9)
    with pytest.raises(dataclasses.FrozenInstanceError):
        inp.start_pos = 0  # type: ignore[misc]
    assert not hasattr(inp, "__dict__")  # slots: nothing else can ride along


def test_step_input_pickles_small():
    seq = Sequence(list(range(4000)), SamplingParams(stop=["x" * 50]))
    seq.block_table = list(range(250))
    seq.num_computed_tokens = 4000
    for t in range(20):  # decoding
        seq.append_token(t)
        seq.num_computed_tokens += 1
    seq.append_token(99)
    inp = seq.step_input(1)
    assert inp.token_ids == (99,) and inp.start_pos == 4020
    data = pickle.dumps(inp)
    assert pickle.loads(data) == inp
    whole = pickle.dumps(seq)
    assert len(data) * 10 < len(whole), (len(data), len(whole))
    # Without the block table, a decode step's input is a few dozen bytes.
    assert len(pickle.dumps(Sequence([1, 2, 3]).step_input(3))) < 200
