"""Token embedding and LM head, split over the vocabulary across tensor-parallel ranks."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from minillm.distributed import all_reduce, gather_to_rank0, tp_rank, tp_size


class VocabParallelEmbedding(nn.Module):
    """Rank r holds the embeddings of token ids `[r*shard, (r+1)*shard)`; the vocabulary is
    padded to a multiple of the rank count. Lookups outside a rank's range give zeros there,
    and an all-reduce assembles the rows."""

    def __init__(self, vocab_size: int, hidden_size: int) -> None:
        super().__init__()
        self.tp_rank, self.tp_size = tp_rank(), tp_size()
        self.vocab_size = vocab_size
        self.shard_size = -(-vocab_size // self.tp_size)
        self.vocab_start = self.tp_rank * self.shard_size
        self.weight = nn.Parameter(torch.empty(self.shard_size, hidden_size))
        self.weight.weight_loader = self.weight_loader

    def weight_loader(self, param: nn.Parameter, loaded, shard_id=None) -> None:
        rows = max(0, min(self.shard_size, self.vocab_size - self.vocab_start))
        param.data[:rows].copy_(loaded[self.vocab_start : self.vocab_start + rows])
        param.data[rows:].zero_()

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self.tp_size == 1:
            return F.embedding(input_ids, self.weight)
        local = input_ids - self.vocab_start
        inside = (local >= 0) & (local < self.shard_size)
        out = F.embedding(local.clamp(0, self.shard_size - 1), self.weight)
        return all_reduce(out * inside.unsqueeze(-1).to(out.dtype))


class ParallelLMHead(VocabParallelEmbedding):
    """Logits for the given hidden states only (the runner passes just the sampled positions,
    so a 1,000-token prefill computes one row of logits, not 1,000). Rank 0 gets the full
    vocabulary; other ranks get None."""

    def forward(self, hidden: torch.Tensor) -> torch.Tensor | None:
        logits = F.linear(hidden, self.weight)  # [num_sampled, shard_size]
        logits = gather_to_rank0(logits)
        return None if logits is None else logits[:, : self.vocab_size]
