"""The model path against transformers on the same tiny random weights."""

from __future__ import annotations

import pytest
import torch

from minillm.config import EngineConfig, SamplingParams
from minillm.runner import ModelRunner
from minillm.scheduler import Scheduler
from minillm.sequence import Sequence
from tests.tiny import make_checkpoint

ARCHS = ["qwen3", "llama"]


@pytest.fixture(scope="module", params=ARCHS)
def checkpoint(request, tmp_path_factory):
    overrides = {"tie_word_embeddings": True} if request.param == "llama" else {}
    return make_checkpoint(str(tmp_path_factory.mktemp(request.param)), request.param, **overrides)


def hf_model(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def make_runner(path, **kw) -> tuple[ModelRunner, Scheduler]:
    args = dict(model=path, device="cpu", dtype="float32", kvcache_block_size=4,
                num_kvcache_blocks=256, max_model_len=256)
    args.update(kw)
    config = EngineConfig(**args)
    runner = ModelRunner(config)
    return runner, Scheduler(config)


def _inputs(batch):
    return batch.step_inputs(), batch.sampled


def test_prefill_logits_match_transformers_on_mixed_lengths(checkpoint):
    runner, scheduler = make_runner(checkpoint)
    gen = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, 384, (n,), generator=gen).tolist() for n in (1, 5, 17, 33)]
    for p in prompts:
        scheduler.add(Sequence(p, SamplingParams(temperature=0.0)))
    batch = scheduler.schedule()
    assert len(batch.seqs) == len(prompts) and all(batch.sampled)
    logits = runner.forward(batch.step_inputs(), batch.sampled)
    hf = hf_model(checkpoint)
    with torch.no_grad():
        for row, p in enumerate(prompts):
            ref = hf(torch.tensor([p])).logits[0, -1]
            torch.testing.assert_close(logits[row], ref, atol=1e-4, rtol=1e-4)


def test_greedy_decode_matches_transformers_for_32_steps(checkpoint):
    runner, scheduler = make_runner(checkpoint)
    gen = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, 384, (n,), generator=gen).tolist() for n in (3, 11, 26)]
    seqs = [Sequence(p, SamplingParams(temperature=0.0, max_tokens=32, ignore_eos=True))
            for p in prompts]
    for s in seqs:
        scheduler.add(s)
    hf = hf_model(checkpoint)
    while scheduler.has_unfinished():
        batch = scheduler.schedule()
        logits = runner.forward(batch.step_inputs(), batch.sampled)
        sampled = [s for s, ok in zip(batch.seqs, batch.sampled) if ok]
        with torch.no_grad():  # every step's logits, not only the final tokens
            for row, s in enumerate(sampled):
                ref = hf(torch.tensor([s.token_ids])).logits[0, -1]
                torch.testing.assert_close(logits[row], ref, atol=1e-4, rtol=1e-4)
        scheduler.postprocess(batch, logits.argmax(-1).tolist())
    for p, s in zip(prompts, seqs):
        with torch.no_grad():
            ref = hf.generate(torch.tensor([p]), max_new_tokens=32, do_sample=False,
                              eos_token_id=None, pad_token_id=0)
        assert s.completion_token_ids == ref[0, len(p):].tolist()


def test_decode_path_equals_prefill_path(checkpoint):
    """Batched paged decode and the varlen prefill path agree on the same sequence."""
    runner, scheduler = make_runner(checkpoint, kvcache_block_size=16)
    seq = Sequence(list(range(1, 40)), SamplingParams(temperature=0.0, max_tokens=2))
    scheduler.add(seq)
    batch = scheduler.schedule()
    first = runner.forward(batch.step_inputs(), batch.sampled).argmax(-1).tolist()
    scheduler.postprocess(batch, first)
    batch = scheduler.schedule()  # a decode step over the paged cache
    decode_logits = runner.forward(batch.step_inputs(), batch.sampled)
    fresh_runner, fresh_scheduler = make_runner(checkpoint, kvcache_block_size=16)
    fresh_scheduler.add(Sequence(seq.token_ids, SamplingParams(temperature=0.0)))
    prefill_logits = fresh_runner.forward(*_inputs(fresh_scheduler.schedule()))
    torch.testing.assert_close(decode_logits, prefill_logits, atol=1e-4, rtol=1e-4)
