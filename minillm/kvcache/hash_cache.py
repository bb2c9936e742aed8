"""Hash prefix cache: a dict from the chained hash of each full block to the block holding it.

A block's hash covers its own tokens and its parent's hash, so equal hashes mean equal
prefixes, not just equal blocks. This is how vLLM and nano-vllm cache prefixes. Matching walks
the prompt block by block and stops at the first miss. Evictable blocks (cached, ref count 0)
wait in an LRU queue; since a finished sequence releases its blocks last-first, the tail of a
prefix is evicted before its head.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from minillm.kvcache.prefix_cache import PrefixCache

ROOT_HASH = 0  # the "parent" of a sequence's first block


def chain_hash(parent_hash: int, tokens: tuple[int, ...]) -> int:
    """Hash of a block given its parent's hash. Python hashes ints and tuples of ints the same
    way in every process (no hash randomisation), so this is stable across ranks and runs."""
    return hash((parent_hash, tokens))


class HashPrefixCache(PrefixCache):
    """Prefix cache keyed by chained block hashes (vLLM's way)."""

    def __init__(self, block_size: int) -> None:
        super().__init__(block_size)
        self._block_of_hash: dict[int, int] = {}
        self._hash_of_block: dict[int, int] = {}
        self._tokens_of_block: dict[int, tuple[int, ...]] = {}  # guards against hash collisions
        self._parent_of_block: dict[int, int | None] = {}  # so does the block before it
        self._evictable: OrderedDict[int, None] = OrderedDict()  # oldest first

    def match(self, token_ids: Sequence[int]) -> list[int]:
        blocks: list[int] = []
        h = ROOT_HASH
        for tokens in self._blocks_of(token_ids, len(token_ids) // self.block_size):
            h = chain_hash(h, tokens)
            block = self._block_of_hash.get(h)
            if block is None or not self._holds(block, tokens, blocks[-1] if blocks else None):
                break
            blocks.append(block)
        return blocks

    def insert(self, token_ids: Sequence[int], block_ids: Sequence[int]) -> list[int]:
        canonical: list[int] = []
        h = ROOT_HASH
        trusted = True  # False after a hash collision: later blocks follow another prefix
        for tokens, block in zip(self._blocks_of(token_ids, len(block_ids)), block_ids):
            h = chain_hash(h, tokens)
            parent = canonical[-1] if canonical else None
            cached = self._block_of_hash.get(h) if trusted else block
            if cached is None:
                self._block_of_hash[h] = block
                self._hash_of_block[block] = h
                self._tokens_of_block[block] = tokens
                self._parent_of_block[block] = parent
                cached = block
            elif trusted and not self._holds(cached, tokens, parent):
                trusted, cached = False, block  # a collision: keep the caller's blocks, uncached
            canonical.append(cached)
        return canonical

    def _holds(self, block: int, tokens: tuple[int, ...], parent: int | None) -> bool:
        """Whether cached `block` really holds `tokens` right after block `parent`: a guard
        against hash collisions, which would otherwise hand out another prompt's KV."""
        return self._tokens_of_block[block] == tokens and self._parent_of_block[block] == parent

    def evict(self, num_blocks: int) -> list[int]:
        out: list[int] = []
        while self._evictable and len(out) < num_blocks:
            block, _ = self._evictable.popitem(last=False)
            del self._block_of_hash[self._hash_of_block.pop(block)]
            del self._tokens_of_block[block]
            del self._parent_of_block[block]
            out.append(block)
        self.num_evicted_blocks += len(out)
        return out

    def acquire(self, block_id: int) -> None:
        self._evictable.pop(block_id, None)

    def release(self, block_id: int) -> bool:
        if block_id not in self._hash_of_block:
            return False
        self._evictable[block_id] = None
        return True

    def is_cached(self, block_id: int) -> bool:
        return block_id in self._hash_of_block

    def block_tokens(self, block_id: int) -> tuple[int, ...]:
        return self._tokens_of_block[block_id]

    def block_hash(self, block_id: int) -> int:
        """The chained hash a cached block is stored under."""
        return self._hash_of_block[block_id]

    @property
    def num_cached_blocks(self) -> int:
        return len(self._hash_of_block)

    @property
    def num_evictable_blocks(self) -> int:
        return len(self._evictable)

    def to_text(self) -> str:
        lines = [f"HashPrefixCache: {self.num_cached_blocks} blocks, "
                 f"{self.num_evictable_blocks} evictable"]
        for block in sorted(self._hash_of_block):
            tag = " (evictable)" if block in self._evictable else ""
            h = self._hash_of_block[block] & 0xFFFF_FFFF
            tokens = list(self._tokens_of_block[block])
            lines.append(f"  block {block}: hash {h:08x} tokens {tokens}{tag}")
        return "\n".join(lines)
