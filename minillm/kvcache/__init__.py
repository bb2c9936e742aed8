"""KV-cache memory: the block pool and the prefix caches that share blocks between sequences."""

from minillm.kvcache.block_manager import BlockManager, make_prefix_cache
from minillm.kvcache.hash_cache import HashPrefixCache
from minillm.kvcache.prefix_cache import PrefixCache
from minillm.kvcache.radix_cache import RadixNode, RadixPrefixCache

__all__ = [
    "BlockManager",
    "HashPrefixCache",
    "PrefixCache",
    "RadixNode",
    "RadixPrefixCache",
    "make_prefix_cache",
]
