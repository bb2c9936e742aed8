"""Radix prefix cache: a radix tree over token ids whose edges carry KV blocks (SGLang's way).

Each node holds a run of whole blocks: `key` is their tokens, `blocks` the physical block ids.
A node's children start with distinct first blocks. Matching walks down from the root and
splits a node where a prompt diverges inside it, so a shared prefix is a node of its own.

Locking: a node is in use while a sequence holds its blocks (the block manager's ref counts).
Because a sequence always holds every block of its prefix, a block's ref count is never below
any descendant's; an unused block therefore has only unused descendants, and eviction can peel
blocks off the least recently used leaves until it has freed what it needs.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

from minillm.kvcache.prefix_cache import PrefixCache


@dataclass(eq=False)
class RadixNode:
    """A run of whole KV blocks and the tokens they hold."""

    node_id: int
    parent: RadixNode | None
    key: list[int]  # tokens held, len(key) == len(blocks) * block_size
    blocks: list[int]  # physical block ids
    children: dict[tuple[int, ...], RadixNode] = field(default_factory=dict)  # by first block
    last_access: int = 0  # logical clock of the last match/insert/release touching it

    def __repr__(self) -> str:
        return f"RadixNode({self.node_id}, blocks={self.blocks}, children={len(self.children)})"


@dataclass
class RadixEvents:
    """What the last operations did to the tree, for drawing (SGLang's three colours)."""

    hit: set[int] = field(default_factory=set)  # node ids matched by a lookup
    inserted: set[int] = field(default_factory=set)  # node ids created by inserts
    evicted: list[tuple[int, tuple[int, ...]]] = field(default_factory=list)  # (parent id, tokens)


class RadixPrefixCache(PrefixCache):
    """Prefix cache as a radix tree over token ids, evicting least-recently-used leaves."""

    def __init__(self, block_size: int) -> None:
        super().__init__(block_size)
        self._node_ids = itertools.count()
        self.root = RadixNode(next(self._node_ids), None, [], [])
        self._node_of_block: dict[int, RadixNode] = {}
        self._evictable: set[int] = set()  # cached blocks with ref count 0
        self._clock = 0
        self.events = RadixEvents()

    def _tick(self) -> int:
        self._clock += 1
        return self._clock

    # ---- lookup and insert ----

    def _walk(self, token_ids: Sequence[int], num_blocks: int, record_hits: bool):
        """Follow `token_ids` down the tree, splitting the last node where they diverge.

        Yields each matched node (its blocks all matched) and stops at the first mismatch.
        """
        bs, now = self.block_size, self._tick()
        node, i = self.root, 0  # i: blocks matched so far
        while i < num_blocks:
            child = node.children.get(tuple(token_ids[i * bs : (i + 1) * bs]))
            if child is None:
                return
            n = 1  # the first block matched by the dict lookup
            while (n < len(child.blocks) and i + n < num_blocks
                   and child.key[n * bs : (n + 1) * bs]
                   == list(token_ids[(i + n) * bs : (i + n + 1) * bs])):
                n += 1
            if n < len(child.blocks):
                child = self._split(child, n)
            child.last_access = now
            if record_hits:
                self.events.hit.add(child.node_id)
            yield child
            node, i = child, i + n

    def match(self, token_ids: Sequence[int]) -> list[int]:
        blocks: list[int] = []
        for node in self._walk(token_ids, len(token_ids) // self.block_size, record_hits=True):
            blocks.extend(node.blocks)
        return blocks

    def insert(self, token_ids: Sequence[int], block_ids: Sequence[int]) -> list[int]:
        bs = self.block_size
        canonical: list[int] = []
        node = self.root
        for node in self._walk(token_ids, len(block_ids), record_hits=False):
            canonical.extend(node.blocks)
        i = len(canonical)
        if i < len(block_ids) and node is not self.root and not node.children:
            # A leaf grows in place (a decoding sequence adds a block at a time): no node chains.
            node.key.extend(token_ids[i * bs : len(block_ids) * bs])
            node.blocks.extend(block_ids[i:])
            for b in block_ids[i:]:
                self._node_of_block[b] = node
            self.events.inserted.add(node.node_id)
            canonical.extend(block_ids[i:])
        elif i < len(block_ids):  # the rest is new: hang it under the deepest matched node
            key = list(token_ids[i * bs : len(block_ids) * bs])
            new = RadixNode(next(self._node_ids), node, key, list(block_ids[i:]),
                            last_access=self._clock)
            node.children[tuple(new.key[:bs])] = new
            for b in new.blocks:
                self._node_of_block[b] = new
            self.events.inserted.add(new.node_id)
            canonical.extend(new.blocks)
        return canonical

    def _split(self, node: RadixNode, num_blocks: int) -> RadixNode:
        """Cut `node` after `num_blocks` blocks; return the new upper part."""
        bs = self.block_size
        parent = node.parent
        assert parent is not None
        head = RadixNode(next(self._node_ids), parent, node.key[: num_blocks * bs],
                         node.blocks[:num_blocks], last_access=node.last_access)
        parent.children[tuple(head.key[:bs])] = head
        node.key, node.blocks = node.key[num_blocks * bs :], node.blocks[num_blocks:]
        node.parent = head
        head.children[tuple(node.key[:bs])] = node
        for b in head.blocks:
            self._node_of_block[b] = head
        return head

    # ---- eviction ----

    def evict(self, num_blocks: int) -> list[int]:
        out: list[int] = []
        heap = [(n.last_access, n.node_id, n) for n in self._evictable_leaves()]
        heapq.heapify(heap)
        while heap and len(out) < num_blocks:
            _, _, leaf = heapq.heappop(heap)
            peeled: list[int] = []
            while leaf.blocks and leaf.blocks[-1] in self._evictable and len(out) < num_blocks:
                b = leaf.blocks.pop()
                self._evictable.discard(b)
                del self._node_of_block[b]
                peeled.append(b)
                out.append(b)
            parent = leaf.parent
            assert parent is not None
            cut = len(leaf.key) - len(peeled) * self.block_size
            self.events.evicted.append((parent.node_id if not leaf.blocks else leaf.node_id,
                                        tuple(leaf.key[cut:])))
            leaf.key = leaf.key[:cut]
            if not leaf.blocks:
                del parent.children[next(k for k, c in parent.children.items() if c is leaf)]
                if parent is not self.root and self._is_evictable_leaf(parent):
                    heapq.heappush(heap, (parent.last_access, parent.node_id, parent))
        self.num_evicted_blocks += len(out)
        return out

    def _is_evictable_leaf(self, node: RadixNode) -> bool:
        return not node.children and bool(node.blocks) and node.blocks[-1] in self._evictable

    def _evictable_leaves(self) -> list[RadixNode]:
        return [n for n in self.nodes() if n is not self.root and self._is_evictable_leaf(n)]

    # ---- ref-count hooks ----

    def acquire(self, block_id: int) -> None:
        self._evictable.discard(block_id)

    def release(self, block_id: int) -> bool:
        node = self._node_of_block.get(block_id)
        if node is None:
            return False
        self._evictable.add(block_id)
        node.last_access = self._tick()
        return True

    # ---- inspection ----

    def nodes(self) -> list[RadixNode]:
        """Every node, root first, parents before children (depth-first)."""
        out, stack = [], [self.root]
        while stack:
            node = stack.pop()
            out.append(node)
            stack.extend(sorted(node.children.values(), key=lambda c: c.node_id, reverse=True))
        return out

    def is_cached(self, block_id: int) -> bool:
        return block_id in self._node_of_block

    def block_tokens(self, block_id: int) -> tuple[int, ...]:
        node = self._node_of_block[block_id]
        i, bs = node.blocks.index(block_id), self.block_size
        return tuple(node.key[i * bs : (i + 1) * bs])

    def prefix_tokens(self, node: RadixNode) -> list[int]:
        """All tokens from the root down to the end of `node`."""
        parts = []
        while node is not None:
            parts.append(node.key)
            node = node.parent
        return [t for part in reversed(parts) for t in part]

    @property
    def num_cached_blocks(self) -> int:
        return len(self._node_of_block)

    @property
    def num_evictable_blocks(self) -> int:
        return len(self._evictable)

    def clear_events(self) -> None:
        self.events = RadixEvents()

    def to_text(self) -> str:
        lines = [f"RadixPrefixCache: {self.num_cached_blocks} blocks, "
                 f"{self.num_evictable_blocks} evictable"]

        def visit(node: RadixNode, depth: int) -> None:
            for child in sorted(node.children.values(), key=lambda c: c.node_id):
                used = sum(b not in self._evictable for b in child.blocks)
                lines.append(f"{'  ' * depth}- node {child.node_id}: tokens {child.key} "
                             f"blocks {child.blocks} in use {used}/{len(child.blocks)}")
                visit(child, depth + 1)

        visit(self.root, 1)
        return "\n".join(lines)
