"""The `minillm` command: simulate, generate, chat (driven through stdin), download, bench."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from minillm.cli import main
from tests.tiny import make_checkpoint

ENGINE = ["--device", "cpu", "--max-model-len", "128", "--num-kvcache-blocks", "64"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_checkpoint(str(tmp_path_factory.mktemp("qwen3")), "qwen3")


def test_simulate_prints_trace_and_stats(capsys):
    assert main(["simulate", "--requests", "6", "--num-blocks", "24"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("step   0 | prefill")
    stats = json.loads(out[out.index("{"):])
    assert stats["finished"] == 6 and stats["kv_blocks_used"] == 0


def test_bad_flag_value_is_a_clear_error(capsys):
    assert main(["simulate", "--block-size", "3"]) == 2
    assert "kvcache_block_size=3 is invalid" in capsys.readouterr().out


def test_generate_streams_the_same_text_as_the_api(checkpoint, capsys):
    from minillm import LLM, SamplingParams

    assert main(["generate", "Hello world", "--model", checkpoint, "--max-tokens", "12",
                 *ENGINE]) == 0
    printed = capsys.readouterr().out
    llm = LLM(checkpoint, device="cpu", max_model_len=128, num_kvcache_blocks=64)
    text = llm.generate("Hello world", SamplingParams(temperature=0.0, max_tokens=12),
                        use_tqdm=False)[0].text
    assert printed == text + "\n"


def test_load_format_dummy_needs_no_weights(checkpoint, tmp_path, capsys):
    """`--load-format dummy`: a directory with config and tokenizer only still generates."""
    import shutil

    shutil.copytree(checkpoint, tmp_path / "shape",
                    ignore=shutil.ignore_patterns("*.safetensors"))
    assert main(["generate", "Hello world", "--model", str(tmp_path / "shape"),
                 "--max-tokens", "4", "--load-format", "dummy", *ENGINE]) == 0
    assert capsys.readouterr().out.strip()
    assert main(["generate", "Hello", "--model", str(tmp_path / "shape"), *ENGINE]) == 2
    assert "no *.safetensors files" in capsys.readouterr().out


def test_chat_shell_through_stdin(checkpoint):
    """Drive the interactive shell as a user would: two turns, a reset, exit."""
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    run = subprocess.run([sys.executable, "-m", "minillm", "chat", "--model", checkpoint,
                          "--max-tokens", "6", "--temperature", "0", *ENGINE],
                         input="Hi\nHow are you?\n/reset\nHello\n/exit\n", text=True,
                         capture_output=True, timeout=300, env=env)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("minillm chat:")
    assert run.stdout.count(">>> ") == 5  # four inputs answered or handled, then /exit
    assert "(conversation cleared)" in run.stdout


def test_chat_shell_keeps_history(checkpoint):
    from minillm import LLM, SamplingParams
    from minillm.cli import chat_shell

    llm = LLM(checkpoint, device="cpu", max_model_len=256, num_kvcache_blocks=64)
    seen = []
    original = llm.chat_template
    llm.chat_template = lambda messages: seen.append(list(messages)) or original(messages)
    lines = iter(["first", "second", "/reset", "third", "/exit"])
    chat_shell(llm, SamplingParams(temperature=0.0, max_tokens=4), input_fn=lambda _: next(lines),
               print_fn=lambda *a, **k: None)
    assert [len(m) for m in seen] == [1, 3, 1]  # history grows, /reset clears it
    assert seen[1][1]["role"] == "assistant"


def test_download_prints_the_demo_directory(capsys):
    from tests.demo import demo_model_dir

    assert main(["download"]) == 0
    assert capsys.readouterr().out.strip() == demo_model_dir()


@pytest.mark.parametrize("peer", ["transformers", "transformers-padded"])
def test_bench_offline_writes_the_result_format(checkpoint, tmp_path, capsys, peer):
    out = tmp_path / "r.json"
    assert main(["bench", "offline", "--model", checkpoint, "--device", "cpu",
                 "--num-requests", "4", "--min-prompt", "8", "--max-prompt", "40",
                 "--min-output", "4", "--max-output", "12",
                 "--max-model-len", "128", "--peer", peer, "--output", str(out)]) == 0
    result = json.loads(out.read_text())
    for key in ("engine", "device", "model", "command", "commit", "num_requests",
                "output_tokens", "elapsed_s", "output_tokens_per_s", "total_tokens_per_s",
                "tensor_parallel_size", "peer_engine", "peer_output_tokens_per_s"):
        assert key in result
    assert result["greedy_requests_equal_to_peer"] == 4 and result["detokenized"]


def test_bench_offline_dummy_weights_and_no_tokenizer(checkpoint, tmp_path):
    """`--load-format dummy` runs a shape-only directory; `--skip-tokenizer-init` takes the
    detokenizer out of the timed loop; the record says which."""
    import shutil

    shape = tmp_path / "shape"
    shutil.copytree(checkpoint, shape, ignore=shutil.ignore_patterns("*.safetensors"))
    base = ["bench", "offline", "--model", str(shape), "--load-format", "dummy",
            "--device", "cpu", "--num-requests", "3", "--min-prompt", "4", "--max-prompt", "8",
            "--min-output", "2", "--max-output", "4", "--max-model-len", "64"]
    for extra, detokenized in (([], True), (["--skip-tokenizer-init"], False)):
        out = tmp_path / f"r{len(extra)}.json"
        assert main([*base, *extra, "--output", str(out)]) == 0
        result = json.loads(out.read_text())
        assert result["detokenized"] is detokenized
        assert result["model"] == "shape (random weights)" and result["output_tokens"] >= 6
