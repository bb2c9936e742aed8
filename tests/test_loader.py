"""minillm.loader on real checkpoint files: several shards load like one, and a checkpoint
that does not fit the model fails with a message naming the tensor."""

from __future__ import annotations

import glob
import os
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from minillm.attention import TorchBackend
from minillm.config import ModelConfig
from minillm.loader import load_weights
from minillm.models import build_model
from tests.tiny import make_checkpoint


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_checkpoint(str(tmp_path_factory.mktemp("qwen3")), "qwen3")


def fresh_model(path: str):
    torch.manual_seed(1)
    return build_model(ModelConfig.from_pretrained(path), 64, TorchBackend())


def rewrite(src: str, dst: str, edit) -> str:
    """A copy of checkpoint `src` whose tensors went through `edit(dict) -> list of dicts`
    (one safetensors file per dict)."""
    shutil.copytree(src, dst)
    (path,) = glob.glob(os.path.join(dst, "*.safetensors"))
    tensors = load_file(path)
    os.remove(path)
    for i, part in enumerate(edit(tensors)):
        save_file(part, os.path.join(dst, f"model-{i:05d}.safetensors"), metadata={"format": "pt"})
    return dst


def test_several_shards_load_like_one(checkpoint, tmp_path):
    def split(tensors):
        names = sorted(tensors)
        return [{n: tensors[n] for n in names[k::3]} for k in range(3)]

    sharded = rewrite(checkpoint, str(tmp_path / "sharded"), split)
    assert len(glob.glob(os.path.join(sharded, "*.safetensors"))) == 3
    whole, parts = fresh_model(checkpoint), fresh_model(sharded)
    load_weights(whole, checkpoint)
    load_weights(parts, sharded)
    for (name, a), (_, b) in zip(whole.named_parameters(), parts.named_parameters(),
                                 strict=True):
        assert torch.equal(a, b), name


def test_a_missing_tensor_is_named(checkpoint, tmp_path):
    gone = "model.layers.1.mlp.up_proj.weight"
    broken = rewrite(checkpoint, str(tmp_path / "missing"),
                     lambda t: [{n: v for n, v in t.items() if n != gone}])
    with pytest.raises(ValueError, match=r"missing 1 tensors: model\.layers\.1\.mlp\.up_proj"):
        load_weights(fresh_model(broken), broken)


def test_an_unexpected_tensor_is_named(checkpoint, tmp_path):
    broken = rewrite(checkpoint, str(tmp_path / "extra"),
                     lambda t: [{**t, "model.layers.7.extra.weight": torch.zeros(2)}])
    with pytest.raises(ValueError, match=r"unexpected tensor 'model\.layers\.7\.extra\.weight'"):
        load_weights(fresh_model(broken), broken)


def test_a_tensor_of_the_wrong_shape_is_named(checkpoint, tmp_path):
    name = "model.layers.0.self_attn.o_proj.weight"
    broken = rewrite(checkpoint, str(tmp_path / "shape"),
                     lambda t: [{**t, name: torch.zeros(3, 5)}])
    with pytest.raises(ValueError, match=r"'model\.layers\.0\.self_attn\.o_proj\.weight' of "
                                         r"shape \(3, 5\) does not fit"):
        load_weights(fresh_model(broken), broken)


def test_no_safetensors_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="no \\*.safetensors files"):
        load_weights(torch.nn.Linear(2, 2), str(tmp_path))
