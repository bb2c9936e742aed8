"""The `LLM` API on a tiny random model: scheduling never changes greedy tokens; bad input
fails early and leaves the engine serving."""

from __future__ import annotations

import pytest
import torch

from minillm import LLM, SamplingParams
from tests.tiny import make_checkpoint

GREEDY = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_checkpoint(str(tmp_path_factory.mktemp("qwen3")), "qwen3")


@pytest.fixture(scope="module")
def prompts():
    gen = torch.Generator().manual_seed(0)
    system = torch.randint(0, 384, (21,), generator=gen).tolist()  # a shared prefix
    tails = [torch.randint(0, 384, (n,), generator=gen).tolist() for n in (3, 9, 30, 1, 17, 44)]
    return [system + t for t in tails] + [tails[2], tails[4]]


def run(checkpoint, prompts, **kw):
    args = dict(device="cpu", dtype="float32", kvcache_block_size=4, max_model_len=128,
                num_kvcache_blocks=512)
    args.update(kw)
    llm = LLM(checkpoint, **args)
    outs = llm.generate(prompts, GREEDY, use_tqdm=False)
    return [o.token_ids for o in outs], llm


@pytest.fixture(scope="module")
def reference(checkpoint, prompts):
    tokens, _ = run(checkpoint, prompts, enable_prefix_caching=False, max_num_seqs=1)
    return tokens


@pytest.mark.parametrize("kw, check", [
    (dict(), None),
    (dict(max_num_seqs=2), None),
    (dict(num_kvcache_blocks=40), "preemptions"),
    (dict(max_num_batched_tokens=16, max_num_seqs=8), "chunked"),
    (dict(prefix_cache="hash", max_num_seqs=2), "hits"),  # later admissions hit
    (dict(prefix_cache="radix", max_num_seqs=2), "hits"),
    (dict(enable_prefix_caching=False), None),
    (dict(kvcache_block_size=16, num_kvcache_blocks=64), None),
])
def test_scheduling_never_changes_greedy_tokens(checkpoint, prompts, reference, kw, check):
    tokens, llm = run(checkpoint, prompts, **kw)
    assert tokens == reference
    stats = llm.stats()
    if check == "preemptions":
        assert stats["preemptions"] > 0
    if check == "hits":
        assert stats["prefix_cache_hit_tokens"] > 0
    if check == "chunked":
        assert stats["prefill_tokens"] > 0  # prompts of 65 tokens went through 16-token steps


def test_prefix_hits_show_in_outputs(checkpoint, prompts):
    llm = LLM(checkpoint, device="cpu", kvcache_block_size=4, max_model_len=128,
              num_kvcache_blocks=256)
    first = llm.generate(prompts[:1], GREEDY, use_tqdm=False)[0]
    second = llm.generate(prompts[1:2], GREEDY, use_tqdm=False)[0]
    assert first.num_cached_tokens == 0
    assert second.num_cached_tokens == 20  # 21 shared tokens, whole blocks of 4


def test_stream_joins_to_generate_text(checkpoint):
    llm = LLM(checkpoint, device="cpu", max_model_len=128, num_kvcache_blocks=64)
    params = SamplingParams(temperature=0.0, max_tokens=30, ignore_eos=True)
    text = llm.generate("Hello world", params, use_tqdm=False)[0].text
    chunks = list(llm.stream("Hello world", params))
    assert "".join(c.text for c in chunks) == text
    assert chunks[-1].finished and chunks[-1].finish_reason == "length"


def test_stop_string_cuts_text(checkpoint):
    llm = LLM(checkpoint, device="cpu", max_model_len=128, num_kvcache_blocks=64)
    params = SamplingParams(temperature=0.0, max_tokens=30, ignore_eos=True)
    full = llm.generate("Hello world", params, use_tqdm=False)[0].text
    assert len(full) > 6
    stop = full[3:6]
    out = llm.generate("Hello world", SamplingParams(temperature=0.0, max_tokens=30,
                                                      ignore_eos=True, stop=[stop]),
                       use_tqdm=False)[0]
    assert out.finish_reason == "stop"
    assert out.text == full[: full.index(stop)]
    streamed = "".join(c.text for c in llm.stream("Hello world", SamplingParams(
        temperature=0.0, max_tokens=30, ignore_eos=True, stop=[stop])))
    assert streamed == out.text


def test_chat_uses_template(checkpoint):
    llm = LLM(checkpoint, device="cpu", max_model_len=128, num_kvcache_blocks=64)
    messages = [{"role": "user", "content": "Hi"}]
    out = llm.chat(messages, SamplingParams(temperature=0.0, max_tokens=5, ignore_eos=True))
    assert out.prompt_token_ids == llm.chat_template(messages)
    assert len(llm.chat([messages, messages], SamplingParams(max_tokens=3))) == 2


@pytest.mark.parametrize("prompts, match", [
    (["fine prompt", ""], "prompt=''"),
    ([], "prompts=\\[\\]"),
    (["fine prompt", []], "no tokens"),
    ([[1, 2, 100000]], "token ids"),
    ([[1, -1]], "token ids"),
    ([list(range(1, 129))], "max_model_len"),
    (3, "prompts of type int"),
])
def test_bad_prompts_fail_before_work_and_engine_keeps_serving(checkpoint, prompts, match):
    llm = LLM(checkpoint, device="cpu", max_model_len=128, num_kvcache_blocks=64)
    with pytest.raises(ValueError, match=match):
        llm.generate(prompts, GREEDY, use_tqdm=False)
    assert not llm.engine.has_unfinished()
    assert llm.generate("Hello", GREEDY, use_tqdm=False)[0].finish_reason == "length"


def test_bad_sampling_params_fail_early(checkpoint):
    llm = LLM(checkpoint, device="cpu", max_model_len=128, num_kvcache_blocks=64)
    with pytest.raises(ValueError, match="top_p"):
        llm.generate("Hello", SamplingParams(top_p=0.0))
    with pytest.raises(ValueError, match="sampling_params"):
        llm.generate(["a", "b"], [GREEDY], use_tqdm=False)
    assert not llm.engine.has_unfinished()


def test_seeded_sampling_repeats(checkpoint):
    llm = LLM(checkpoint, device="cpu", max_model_len=128, num_kvcache_blocks=64)
    params = SamplingParams(temperature=1.0, seed=7, max_tokens=16, ignore_eos=True)
    a = llm.generate(["Hello", "world"], params, use_tqdm=False)
    b = llm.generate(["world", "Hello"], params, use_tqdm=False)
    assert a[0].token_ids == b[1].token_ids and a[1].token_ids == b[0].token_ids
    greedy = llm.generate("Hello", SamplingParams(temperature=0.0, max_tokens=16,
                                                   ignore_eos=True), use_tqdm=False)[0]
    top1 = llm.generate("Hello", SamplingParams(temperature=0.8, top_k=1, max_tokens=16,
                                                 ignore_eos=True), use_tqdm=False)[0]
    assert greedy.token_ids == top1.token_ids


def test_eos_and_max_tokens_finish(checkpoint):
    llm = LLM(checkpoint, device="cpu", max_model_len=128, num_kvcache_blocks=64)
    out = llm.generate("Hello", SamplingParams(temperature=0.0, max_tokens=7, ignore_eos=True),
                       use_tqdm=False)[0]
    assert len(out.token_ids) == 7 and out.finish_reason == "length"
    eos = llm.config.eos_token_ids[0]
    out = llm.generate("Hello", SamplingParams(temperature=0.0, max_tokens=7,
                                               stop_token_ids=[out.token_ids[2]]),
                       use_tqdm=False)[0]
    assert out.finish_reason == "stop" and len(out.token_ids) <= 3
    assert eos in llm.config.eos_token_ids


def test_close_and_context_manager(checkpoint):
    with LLM(checkpoint, device="cpu", max_model_len=128, num_kvcache_blocks=64) as llm:
        llm.generate("Hello", SamplingParams(max_tokens=2), use_tqdm=False)
    assert llm.engine is None
