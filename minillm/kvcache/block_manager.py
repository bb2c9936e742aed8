"""The block manager: a pool of fixed-size KV blocks shared by all sequences.

The KV cache is cut into `num_blocks` blocks of `block_size` token slots. A sequence's
`block_table` maps its logical blocks (token positions `i*block_size ...`) to physical blocks,
as an OS page table does; token `p` of a sequence lives in slot
`block_table[p // block_size] * block_size + p % block_size`.
"""

from __future__ import annotations

from collections import deque

from minillm.config import EngineConfig
from minillm.kvcache.hash_cache import HashPrefixCache
from minillm.kvcache.prefix_cache import PrefixCache
from minillm.kvcache.radix_cache import RadixPrefixCache
from minillm.sequence import Sequence


def make_prefix_cache(kind: str, block_size: int) -> PrefixCache:
    """The prefix cache named by `EngineConfig.prefix_cache`."""
    caches = {"radix": RadixPrefixCache, "hash": HashPrefixCache}
    if kind not in caches:
        raise ValueError(f"prefix_cache={kind!r} is invalid: must be 'radix' or 'hash'")
    return caches[kind](block_size)


class BlockManager:
    """Hands out KV blocks to sequences, shares cached prefixes, and takes blocks back.

    Every block is in exactly one of three states:

    - free: on the free list, holding nothing worth keeping;
    - in use: ``ref_counts[b] > 0``, where the count is the number of block tables holding b
      (a table never holds a block twice);
    - evictable: ``ref_counts[b] == 0`` but the prefix cache keeps it for a later hit.

    Invariants (checked by the property tests):

    1. ``len(free) + in use + evictable == num_blocks``; free and cached blocks are disjoint.
    2. A cached block is full and computed, and is never written again: a sequence writes only
       the slots after its ``num_computed_tokens``, which lie in blocks of its own.
    3. ``num_free_blocks`` (free + evictable) is what an allocation can get: eviction turns an
       evictable block into a free one on demand.
    4. After every sequence is deallocated, every block is free or evictable.
    """

    def __init__(self, num_blocks: int, block_size: int, prefix_cache: PrefixCache | None = None):
        if num_blocks < 1:
            raise ValueError(f"num_blocks={num_blocks} is invalid: must be >= 1")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.cache = prefix_cache
        self.ref_counts = [0] * num_blocks
        self.free: deque[int] = deque(range(num_blocks))
        self._num_inserted: dict[int, int] = {}  # seq_id -> leading blocks already offered to cache
        self.num_hit_tokens = 0  # tokens found in the prefix cache at admission
        self.num_queried_tokens = 0  # tokens looked up at admission

    @classmethod
    def from_config(cls, config: EngineConfig, num_blocks: int | None = None) -> BlockManager:
        """A pool of `num_blocks` (default `config.num_kvcache_blocks`), configured cache."""
        n = num_blocks if num_blocks is not None else config.num_kvcache_blocks
        if n is None:
            raise ValueError("num_kvcache_blocks=None: the runner sizes the pool; pass num_blocks")
        cache = (make_prefix_cache(config.prefix_cache, config.kvcache_block_size)
                 if config.enable_prefix_caching else None)
        return cls(n, config.kvcache_block_size, cache)

    # ---- counts ----

    @property
    def num_free_blocks(self) -> int:
        """Blocks an allocation can get: free ones plus cached ones nobody uses."""
        return len(self.free) + (self.cache.num_evictable_blocks if self.cache else 0)

    @property
    def num_used_blocks(self) -> int:
        return self.num_blocks - self.num_free_blocks

    @property
    def num_cached_blocks(self) -> int:
        return self.cache.num_cached_blocks if self.cache else 0

    def blocks_needed(self, seq: Sequence, num_new_tokens: int) -> int:
        """New blocks `seq` needs to store `num_new_tokens` more tokens."""
        total = seq.num_computed_tokens + num_new_tokens
        return max(0, -(-total // self.block_size) - len(seq.block_table))

    # ---- the sequence's life ----

    def acquire_cached_prefix(self, seq: Sequence) -> int:
        """Point a block-less sequence at the cached blocks of its longest cached prefix.

        Only tokens before the last one are looked up: the last token must be computed to get
        the logits the next token is sampled from. Returns the number of tokens reused.
        """
        assert not seq.block_table, "acquire_cached_prefix: the sequence already holds blocks"
        blocks = self.cache.match(seq.token_ids[:-1]) if self.cache else []
        for b in blocks:
            self._ref(b)
        seq.block_table = list(blocks)
        seq.num_cached_tokens = seq.num_computed_tokens = len(blocks) * self.block_size
        self._num_inserted[seq.seq_id] = len(blocks)
        return seq.num_cached_tokens

    def can_allocate(self, seq: Sequence, num_new_tokens: int) -> bool:
        """Whether `seq` can get blocks for `num_new_tokens` more tokens."""
        return self.blocks_needed(seq, num_new_tokens) <= self.num_free_blocks

    def allocate(self, seq: Sequence, num_new_tokens: int) -> None:
        """Grow `seq`'s block table to hold `num_new_tokens` more tokens."""
        need = self.blocks_needed(seq, num_new_tokens)
        if need > self.num_free_blocks:
            raise RuntimeError(f"allocate: {need} blocks needed, {self.num_free_blocks} free")
        if need > len(self.free):
            self.free.extend(self.cache.evict(need - len(self.free)))
        for _ in range(need):
            b = self.free.popleft()
            self._ref(b)
            seq.block_table.append(b)

    def can_append(self, seq: Sequence) -> bool:
        """Whether a decoding `seq` can store one more token (it may need a fresh block)."""
        return self.can_allocate(seq, 1)

    def may_append(self, seq: Sequence) -> None:
        """Make room for one more token: a fresh block when the last one is full."""
        self.allocate(seq, 1)

    def cache_computed_blocks(self, seq: Sequence) -> None:
        """Offer `seq`'s newly full, computed blocks to the prefix cache.

        Where the cache already holds the same tokens in other blocks (two sequences computed
        the same prefix at once), `seq` switches to the cached blocks and frees its copies.
        """
        if self.cache is None:
            return
        num_full = seq.num_computed_tokens // self.block_size
        done = self._num_inserted.get(seq.seq_id, 0)
        if num_full <= done:
            return
        table = seq.block_table
        canonical = self.cache.insert(seq.token_ids, table[:num_full])
        for i in range(done, num_full):
            if canonical[i] != table[i]:
                self._ref(canonical[i])
                self._unref(table[i])
                table[i] = canonical[i]
        self._num_inserted[seq.seq_id] = num_full

    def deallocate(self, seq: Sequence) -> None:
        """Give back all of `seq`'s blocks, last first (so a cache evicts tails before heads)."""
        for b in reversed(seq.block_table):
            self._unref(b)
        seq.block_table = []
        self._num_inserted.pop(seq.seq_id, None)

    def record_admission(self, seq: Sequence) -> None:
        """Count a sequence's prefix-cache lookup once it is admitted (for the hit rate)."""
        self.num_queried_tokens += seq.num_tokens
        self.num_hit_tokens += seq.num_cached_tokens

    # ---- ref counting ----

    def _ref(self, b: int) -> None:
        if self.ref_counts[b] == 0 and self.cache is not None:
            self.cache.acquire(b)
        self.ref_counts[b] += 1

    def _unref(self, b: int) -> None:
        assert self.ref_counts[b] > 0, f"block {b} freed twice"
        self.ref_counts[b] -= 1
        if self.ref_counts[b] == 0 and not (self.cache is not None and self.cache.release(b)):
            self.free.append(b)

    # ---- inspection ----

    def block_state(self, b: int) -> str:
        """'used', 'cached' (in use and in the cache), 'evictable' or 'free'."""
        cached = self.cache is not None and self.cache.is_cached(b)
        if self.ref_counts[b] > 0:
            return "cached" if cached else "used"
        return "evictable" if cached else "free"

    def to_text(self) -> str:
        """The pool in one line per state, e.g. for `print(block_manager)`."""
        states: dict[str, list[int]] = {"used": [], "cached": [], "evictable": [], "free": []}
        for b in range(self.num_blocks):
            states[self.block_state(b)].append(b)
        lines = [f"BlockManager: {self.num_blocks} blocks of {self.block_size} tokens, "
                 f"{self.num_free_blocks} free (incl. evictable)"]
        for name, blocks in states.items():
            refs = [f"{b}x{self.ref_counts[b]}" if self.ref_counts[b] > 1 else str(b)
                    for b in blocks]
            lines.append(f"  {name:9s} {len(blocks):3d}: {' '.join(refs)}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return self.to_text()
