"""The building blocks of a decoder-only transformer, each in its own module."""

from minillm.layers.activation import SiluAndMul
from minillm.layers.attention import Attention
from minillm.layers.embedding import ParallelLMHead, VocabParallelEmbedding
from minillm.layers.linear import (
    ColumnParallelLinear,
    MergedColumnParallelLinear,
    QKVParallelLinear,
    ReplicatedLinear,
    RowParallelLinear,
)
from minillm.layers.norm import RMSNorm
from minillm.layers.rotary import RotaryEmbedding

__all__ = [
    "Attention",
    "ColumnParallelLinear",
    "MergedColumnParallelLinear",
    "ParallelLMHead",
    "QKVParallelLinear",
    "RMSNorm",
    "ReplicatedLinear",
    "RotaryEmbedding",
    "RowParallelLinear",
    "SiluAndMul",
    "VocabParallelEmbedding",
]
