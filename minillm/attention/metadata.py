"""What the runner hands the attention layers for one step: where tokens go and what they see."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class AttentionMetadata:
    """Per-step attention inputs, built once by the runner and passed down the model explicitly.

    The step's new tokens of all sequences are packed into one flat batch of `num_tokens`
    (varlen, no padding). Sequence `i` owns query rows `cu_seqlens_q[i]:cu_seqlens_q[i+1]`; its
    keys are the first `seq_lens[i]` tokens of its KV (cached prefix + earlier chunks + this
    step's tokens), read through `block_tables[i]`.
    """

    slot_mapping: torch.Tensor  # [num_tokens] int64: KV slot each new token is written to
    cu_seqlens_q: torch.Tensor  # [num_seqs + 1] int32: offsets of each sequence's new tokens
    seq_lens: torch.Tensor  # [num_seqs] int32: tokens each sequence attends to after this step
    block_tables: torch.Tensor  # [num_seqs, max_blocks] int32, padded with 0
    max_query_len: int  # longest run of new tokens (1 when every sequence decodes)
    max_seq_len: int  # longest seq_len
    block_size: int
    seq_lens_cpu: list[int]  # the same lengths on the host, for backends that loop
    query_lens_cpu: list[int]

    @property
    def num_seqs(self) -> int:
        return len(self.seq_lens_cpu)

    @property
    def is_decode_only(self) -> bool:
        """Every sequence adds exactly one token: the decode kernels apply."""
        return self.max_query_len == 1
