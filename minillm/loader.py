"""Fill a model's parameters from a checkpoint's `*.safetensors` files.

Each checkpoint tensor is routed to the parameter that holds it: separate `q_proj`/`k_proj`/
`v_proj` and `gate_proj`/`up_proj` tensors go into the fused `qkv_proj` and `gate_up_proj`
through the model's `packed_modules_mapping`, and every parameter's own `weight_loader` takes
the slice its tensor-parallel rank owns and converts the dtype. A tensor nobody expects, or a
parameter nobody filled, is an error that names it.
"""

from __future__ import annotations

import glob
import os

import torch
from safetensors import safe_open
from torch import nn

IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)  # buffers some old checkpoints carry


def _target(name: str, mapping: dict[str, tuple[str, object]]) -> tuple[str, object]:
    """The parameter a checkpoint tensor loads into, and its shard id (None: the whole)."""
    for source, (packed, shard_id) in mapping.items():
        if f".{source}." in name:
            return name.replace(f".{source}.", f".{packed}."), shard_id
    return name, None


def expected_tensors(model: nn.Module) -> set[str]:
    """The checkpoint tensor names `model` needs (fused parameters expanded to their parts)."""
    mapping = getattr(model, "packed_modules_mapping", {})
    names = set()
    for name, _ in model.named_parameters():  # tied parameters appear once
        sources = [s for s, (packed, _) in mapping.items() if f".{packed}." in name]
        for source in sources or [None]:
            names.add(name if source is None else
                      name.replace(f".{mapping[source][0]}.", f".{source}."))
    return names


def load_weights(model: nn.Module, model_dir: str) -> None:
    """Load every `*.safetensors` file of `model_dir` into `model`."""
    files = sorted(glob.glob(os.path.join(model_dir, "*.safetensors")))
    if not files:
        raise ValueError(f"model={model_dir!r}: no *.safetensors files in that directory")
    mapping = getattr(model, "packed_modules_mapping", {})
    params = dict(model.named_parameters())
    expected = expected_tensors(model)
    tied = getattr(getattr(model, "config", None), "tie_word_embeddings", False)
    seen: set[str] = set()
    with torch.no_grad():
        for path in files:
            with safe_open(path, framework="pt", device="cpu") as f:
                for name in f.keys():
                    if name.endswith(IGNORED_SUFFIXES) or (tied and name == "lm_head.weight"):
                        continue
                    if name not in expected:
                        raise ValueError(f"unexpected tensor {name!r} in {os.path.basename(path)}"
                                         f": the model has no parameter for it")
                    target, shard_id = _target(name, mapping)
                    param = params[target]
                    lazy = f.get_slice(name)  # read from disk only what the loader slices
                    loader = getattr(param, "weight_loader", None)
                    try:
                        if loader is None:
                            param.data.copy_(lazy[:])
                        else:
                            loader(param, lazy, shard_id)
                    except (RuntimeError, IndexError, ValueError) as e:
                        raise ValueError(f"tensor {name!r} of shape {tuple(lazy.get_shape())} "
                                         f"does not fit parameter {target!r}: {e}") from e
                    seen.add(name)
    missing = sorted(expected - seen)
    if missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise ValueError(f"checkpoint {model_dir!r} is missing {len(missing)} tensors: {shown}")


@torch.no_grad()
def init_dummy_weights(model: nn.Module, seed: int = 0) -> None:
    """Random weights in place of a checkpoint (`load_format="dummy"`), for benchmarks of a
    model's architecture without its weights: matrices normal with std 0.02, biases zero, norm
    scales left at one. Drawn on the parameters' own device, so a large model needs no host
    copy. Tokens are meaningless; speed and memory are those of the real model."""
    gen = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    for name, param in model.named_parameters():
        if param.dim() >= 2:
            param.normal_(0.0, 0.02, generator=gen)
        elif name.endswith("bias"):
            param.zero_()
