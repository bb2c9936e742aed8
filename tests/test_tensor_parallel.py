"""Tensor parallelism on CPU with gloo: two ranks give the same greedy tokens as one, and every
worker process ends with `close()`, an error, or a dead peer."""

from __future__ import annotations

import multiprocessing as mp
import os
import subprocess
import sys
import time

import pytest

from minillm import LLM, SamplingParams
from minillm.distributed import free_port
from tests.procs import alive
from tests.tiny import make_checkpoint

GREEDY = SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True)
PROMPTS = ["Hello world", "The capital of France is", [5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]]
ENGINE = dict(device="cpu", max_model_len=128, num_kvcache_blocks=64, kvcache_block_size=4)


@pytest.fixture(scope="module", params=[("qwen3", 2), ("qwen3", 1), ("llama", 2)],
                ids=["qwen3-kv2", "qwen3-kv1-replicated", "llama-tied"])
def checkpoint(request, tmp_path_factory):
    arch, kv_heads = request.param
    extra = {"tie_word_embeddings": True} if arch == "llama" else {}
    return make_checkpoint(str(tmp_path_factory.mktemp(arch)), arch,
                           num_key_value_heads=kv_heads, **extra)


def generate(path, tp, prompts=PROMPTS, **kw):
    with LLM(path, tensor_parallel_size=tp, **{**ENGINE, **kw}) as llm:
        return [o.token_ids for o in llm.generate(prompts, GREEDY, use_tqdm=False)]


def test_two_ranks_equal_one(checkpoint):
    assert generate(checkpoint, 2) == generate(checkpoint, 1)
    assert not mp.active_children()


def test_two_ranks_with_preemption_and_chunks(checkpoint):
    kw = dict(num_kvcache_blocks=40, max_num_batched_tokens=16, max_num_seqs=4)
    prompts = [list(range(1 + i, 40 + i)) for i in range(5)]
    assert generate(checkpoint, 2, prompts, **kw) == generate(checkpoint, 1, prompts, **kw)


def test_demo_model_three_ranks_equal_one():
    """SmolLM2-135M has 9 query and 3 kv heads: it splits over 3 ranks, not 2."""
    from tests.demo import demo_model_dir

    prompt = ["The capital of France is"]
    params = SamplingParams(temperature=0.0, max_tokens=8)
    with pytest.raises(ValueError, match="must divide num_attention_heads=9"):
        LLM(demo_model_dir(), tensor_parallel_size=2, device="cpu")
    outs = []
    for tp in (1, 3):
        with LLM(demo_model_dir(), tensor_parallel_size=tp, device="cpu", max_model_len=256,
                 max_num_seqs=4) as llm:
            outs.append(llm.generate(prompt, params, use_tqdm=False)[0].token_ids)
    assert outs[0] == outs[1]


def test_close_leaves_no_process(checkpoint):
    llm = LLM(checkpoint, tensor_parallel_size=2, **ENGINE)
    workers = list(llm.engine.workers.processes)
    assert all(p.is_alive() for p in workers)
    llm.generate("Hello", GREEDY, use_tqdm=False)
    llm.close()
    assert not any(p.is_alive() for p in workers)
    assert not mp.active_children()


def test_dead_worker_is_a_clear_error_not_a_hang(checkpoint):
    llm = LLM(checkpoint, tensor_parallel_size=2, **ENGINE)
    worker = llm.engine.workers.processes[0]
    worker.kill()
    worker.join()
    with pytest.raises(RuntimeError, match="worker rank 1 died"):
        llm.generate("Hello", GREEDY, use_tqdm=False)
    llm.close()
    assert not mp.active_children()


def test_error_in_rank0_mid_step_ends_workers(checkpoint, monkeypatch):
    llm = LLM(checkpoint, tensor_parallel_size=2, **ENGINE)
    workers = list(llm.engine.workers.processes)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(llm.engine.runner, "run", interrupted)
    with pytest.raises(KeyboardInterrupt):
        llm.generate("Hello", GREEDY, use_tqdm=False)  # workers are left inside the forward
    llm.close()
    assert not any(p.is_alive() for p in workers)


@pytest.fixture(scope="module")
def qwen3(tmp_path_factory):
    return make_checkpoint(str(tmp_path_factory.mktemp("qwen3-one")), "qwen3")


def test_ordinary_error_in_rank0_mid_step_ends_workers(qwen3, monkeypatch):
    """An exception (not an interrupt) in rank 0's forward: it reaches the caller as it is,
    and leaving the `with` block ends the workers that wait inside the same step."""
    with pytest.raises(RuntimeError, match="a bug in rank 0"):
        with LLM(qwen3, tensor_parallel_size=2, **ENGINE) as llm:
            workers = list(llm.engine.workers.processes)

            def broken(*args, **kwargs):
                raise RuntimeError("a bug in rank 0")

            monkeypatch.setattr(llm.engine.runner, "run", broken)
            llm.generate("Hello", GREEDY, use_tqdm=False)
    assert not any(p.is_alive() for p in workers)
    assert not mp.active_children()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_interpreter_exit_without_close_ends_workers(qwen3, tmp_path):
    """A script that never calls close(): its workers end with the interpreter."""
    script = tmp_path / "no_close.py"
    script.write_text(  # the __main__ guard: spawned processes import the main script
        "from minillm import LLM, SamplingParams\n"
        "if __name__ == '__main__':\n"
        f"    llm = LLM({qwen3!r}, tensor_parallel_size=2, **{ENGINE!r})\n"
        "    print(*(p.pid for p in llm.engine.workers.processes), flush=True)\n"
        "    llm.generate('Hello', SamplingParams(max_tokens=4), use_tqdm=False)\n")
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         timeout=120, env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert run.returncode == 0, run.stderr
    pids = [int(x) for x in run.stdout.split()]
    assert len(pids) == 1
    deadline = time.monotonic() + 10
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(alive(p) for p in pids)


def test_worker_dying_at_start_is_a_clear_error_not_a_hang(qwen3, tmp_path):
    """A script without the `__main__` guard: each spawned worker runs the script again and
    dies bootstrapping. Rank 0 says so and what to do, instead of waiting for it for days."""
    script = tmp_path / "unguarded.py"
    script.write_text("from minillm import LLM\n"
                      f"LLM({qwen3!r}, tensor_parallel_size=2, **{ENGINE!r})\n")
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         timeout=120, env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert run.returncode != 0
    assert "worker rank 1 died while starting" in run.stderr
    assert "__main__" in run.stderr


def test_torchrun_starts_the_ranks(checkpoint, tmp_path):
    """torchrun, not minillm, starts both ranks; rank 0 runs the command, rank 1 serves it."""
    args = ["generate", "Hello world", "--model", checkpoint, "--device", "cpu",
            "--max-tokens", "12", "--max-model-len", "128", "--num-kvcache-blocks", "64"]
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    single = subprocess.run([sys.executable, "-m", "minillm", *args], capture_output=True,
                            text=True, timeout=300, env=env, cwd=tmp_path)
    assert single.returncode == 0, single.stderr
    run = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
         "--master-port", str(free_port()), "-m", "minillm", *args,
         "--tensor-parallel-size", "2"],
        capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert run.stdout == single.stdout


def test_failed_start_leaves_nothing_and_a_second_engine_is_refused(checkpoint, monkeypatch):
    import minillm.engine as engine_module

    def broken(config):
        raise RuntimeError("model build failed")

    monkeypatch.setattr(engine_module, "ModelRunner", broken)
    with pytest.raises(RuntimeError, match="model build failed"):
        LLM(checkpoint, tensor_parallel_size=2, **ENGINE)
    assert not mp.active_children()
    monkeypatch.undo()
    with LLM(checkpoint, tensor_parallel_size=2, **ENGINE):
        with pytest.raises(ValueError, match="another tensor-parallel LLM is open"):
            LLM(checkpoint, tensor_parallel_size=2, **ENGINE)
    assert generate(checkpoint, 2) == generate(checkpoint, 1)
