"""Linear layers written for tensor parallelism; with one rank they are plain linears.

Sharding lives on the parameter: each layer gives its weight a `weight_loader(param, loaded,
shard_id)` that copies the slice of a checkpoint tensor this rank owns. `loaded` is a tensor or
a lazy safetensors slice: both support `loaded[a:b]` and `loaded[:, a:b]`, and a slice reads
only those rows or columns from disk, so a rank never holds a full copy of a sharded weight.
The loader just calls it, so no name tables of sharding rules live elsewhere.

- column-parallel: the output features are split; each rank computes its slice, no exchange.
- row-parallel: the input features are split; partial outputs are summed by an all-reduce.
- QKV and merged gate/up: several checkpoint tensors packed into one column-parallel weight.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from minillm.distributed import all_reduce, tp_rank, tp_size


class LinearBase(nn.Module):
    def __init__(self, in_features: int, out_features: int, bias: bool) -> None:
        super().__init__()
        self.tp_rank, self.tp_size = tp_rank(), tp_size()
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.weight.weight_loader = self.weight_loader
        if bias:
            self.bias = nn.Parameter(torch.empty(out_features))
            self.bias.weight_loader = self.weight_loader
        else:
            self.register_parameter("bias", None)

    def weight_loader(self, param: nn.Parameter, loaded, shard_id=None) -> None:
        param.data.copy_(loaded[:])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


class ReplicatedLinear(LinearBase):
    """The same full weight on every rank."""


class ColumnParallelLinear(LinearBase):
    """Output features split across ranks: rank r holds rows `[r*n/tp, (r+1)*n/tp)`."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False) -> None:
        size = tp_size()
        if out_features % size:
            raise ValueError(f"out_features={out_features} must divide by {size} ranks")
        super().__init__(in_features, out_features // size, bias)

    def weight_loader(self, param: nn.Parameter, loaded, shard_id=None) -> None:
        rows = param.shape[0]
        start = self.tp_rank * rows
        param.data.copy_(loaded[start : start + rows])


class MergedColumnParallelLinear(ColumnParallelLinear):
    """Several column-parallel outputs in one weight (gate and up: `shard_id` 0 and 1)."""

    def __init__(self, in_features: int, output_sizes: list[int], bias: bool = False) -> None:
        self.output_sizes = output_sizes
        super().__init__(in_features, sum(output_sizes), bias)

    def weight_loader(self, param: nn.Parameter, loaded, shard_id=None) -> None:
        offset = sum(self.output_sizes[:shard_id]) // self.tp_size
        rows = self.output_sizes[shard_id] // self.tp_size
        start = self.tp_rank * rows
        param.data[offset : offset + rows].copy_(loaded[start : start + rows])


class QKVParallelLinear(ColumnParallelLinear):
    """q, k and v projections in one weight, split by heads across ranks.

    With fewer kv heads than ranks, each kv head is replicated on `tp / num_kv_heads` ranks.
    Local layout: [q heads of this rank | its kv heads (k) | its kv heads (v)].
    """

    def __init__(self, hidden_size: int, head_dim: int, num_heads: int, num_kv_heads: int,
                 bias: bool = False) -> None:
        size = tp_size()
        self.head_dim = head_dim
        self.num_heads = num_heads // size  # per rank
        self.num_kv_heads = max(1, num_kv_heads // size)  # per rank
        self.kv_replicas = max(1, size // num_kv_heads)
        out = (self.num_heads + 2 * self.num_kv_heads) * head_dim * size
        super().__init__(hidden_size, out, bias)

    def weight_loader(self, param: nn.Parameter, loaded, shard_id=None) -> None:
        q_rows = self.num_heads * self.head_dim
        kv_rows = self.num_kv_heads * self.head_dim
        if shard_id == "q":
            offset, rows, index = 0, q_rows, self.tp_rank
        elif shard_id in ("k", "v"):
            offset = q_rows + (kv_rows if shard_id == "v" else 0)
            rows, index = kv_rows, self.tp_rank // self.kv_replicas
        else:
            raise ValueError(f"shard_id={shard_id!r} is invalid: must be 'q', 'k' or 'v'")
        start = index * rows
        param.data[offset : offset + rows].copy_(loaded[start : start + rows])


class RowParallelLinear(LinearBase):
    """Input features split across ranks; the partial products are summed over ranks."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False) -> None:
        size = tp_size()
        if in_features % size:
            raise ValueError(f"in_features={in_features} must divide by {size} ranks")
        super().__init__(in_features // size, out_features, bias)

    def weight_loader(self, param: nn.Parameter, loaded, shard_id=None) -> None:
        if param.dim() == 1:  # the bias is added once, after the sum
            param.data.copy_(loaded[:])
            return
        cols = param.shape[1]
        start = self.tp_rank * cols
        param.data.copy_(loaded[:, start : start + cols])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = self.bias if self.tp_rank == 0 else None
        return all_reduce(F.linear(x, self.weight, bias))
