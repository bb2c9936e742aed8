"""The prefix-cache interface: which physical KV blocks already hold which token prefixes.

Two implementations sit behind it, chosen by `EngineConfig.prefix_cache`:

- `HashPrefixCache` (vLLM, nano-vllm): a dict from the chained hash of each full block
  (its tokens and its parent's hash) to the block that holds it.
- `RadixPrefixCache` (SGLang): a radix tree over token ids whose edges carry blocks.

Contract (what the `BlockManager` relies on):

- A cache only ever holds *full, computed* blocks: their KV will never be written again.
- The block manager owns reference counts. It tells the cache when a cached block's count
  falls to zero (`release`, the block becomes evictable) and when it leaves zero (`acquire`,
  the block is in use again and must not be evicted).
- `evict(n)` removes up to `n` evictable blocks, least recently used first, and hands them
  back to the block manager's free list. It never touches a block in use.
- `insert` returns the canonical blocks for a prefix: when the cache already holds the same
  tokens in other blocks, the caller switches to those and frees its duplicates, so a prefix
  is stored once.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence


class PrefixCache(ABC):
    """Maps token prefixes, in whole blocks, to the physical KV blocks that hold them."""

    def __init__(self, block_size: int) -> None:
        self.block_size = block_size
        self.num_evicted_blocks = 0  # blocks evicted since creation

    @abstractmethod
    def match(self, token_ids: Sequence[int]) -> list[int]:
        """The blocks holding the longest cached prefix of `token_ids` (whole blocks only)."""

    @abstractmethod
    def insert(self, token_ids: Sequence[int], block_ids: Sequence[int]) -> list[int]:
        """Cache `block_ids`, which hold `token_ids[: len(block_ids) * block_size]`.

        Returns the canonical block for each position: the cached one where these tokens were
        already cached (the caller's block is then a duplicate), else the caller's own block.
        """

    @abstractmethod
    def evict(self, num_blocks: int) -> list[int]:
        """Drop up to `num_blocks` evictable blocks, least recently used first; return them."""

    @abstractmethod
    def acquire(self, block_id: int) -> None:
        """A cached block's ref count left zero: it is in use and not evictable."""

    @abstractmethod
    def release(self, block_id: int) -> bool:
        """A block's ref count fell to zero. Returns True if cached (it is now evictable),
        False if the cache does not hold it (the caller frees it)."""

    @abstractmethod
    def is_cached(self, block_id: int) -> bool:
        """Whether the cache holds this block."""

    @abstractmethod
    def block_tokens(self, block_id: int) -> tuple[int, ...]:
        """The tokens the cache claims `block_id` holds."""

    @property
    @abstractmethod
    def num_cached_blocks(self) -> int:
        """Blocks the cache holds, in use or not."""

    @property
    @abstractmethod
    def num_evictable_blocks(self) -> int:
        """Cached blocks no sequence uses: free to evict when the pool runs dry."""

    @abstractmethod
    def to_text(self) -> str:
        """A few lines showing what is cached, for tests and terminals."""

    def _blocks_of(self, token_ids: Sequence[int], num_blocks: int) -> list[tuple[int, ...]]:
        """Split the first `num_blocks` full blocks of `token_ids` into tuples."""
        bs = self.block_size
        return [tuple(token_ids[i * bs : (i + 1) * bs]) for i in range(num_blocks)]
