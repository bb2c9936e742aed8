# ---
# jupyter:
#   jupytext:
#     cell_metadata_filter: -all
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 03 · The block manager: paged KV memory and prefix caching
#
# The KV cache is one big pool cut into fixed-size **blocks** (here 4 token slots each, 16 in
# real use). A sequence does not get one contiguous region: its **block table** maps its
# logical blocks (positions 0–3, 4–7, …) to whichever physical blocks were free, as an
# operating system's page table does. Nothing is reserved for tokens not yet generated, so
# memory is wasted only in each sequence's last, partly filled block.
#
# `minillm.kvcache.BlockManager` owns the pool. Every block is in one of three states:
#
# - **free**: on the free list;
# - **in use**: its *ref count* (how many block tables hold it) is above zero;
# - **evictable**: no table holds it, but the *prefix cache* keeps its KV for a later request
#   with the same prefix; it is reclaimed (evicted) only when the free list runs dry.
#
# This notebook drives a real `BlockManager` by hand, then runs the same workload through the
# two prefix caches (vLLM's chained hashes and SGLang's radix tree) side by side.
#
# **What you will see:** the block pool as a grid after each call (allocate, append, free),
# block tables pointing into it, two sequences sharing a system prompt's blocks (ref count 2),
# the radix tree that remembers cached prefixes and what it evicts under pressure, and the
# hash and radix caches compared on one workload.
#
# **Open `minillm/kvcache/block_manager.py` beside this notebook** (200 lines): the class
# docstring states the three block states and the invariants; the prefix caches it calls are
# `minillm/kvcache/radix_cache.py` and `hash_cache.py`, behind `prefix_cache.py`'s interface.
# Three exercises at the end.

# %%
from minillm.notebook import need, require

require("matplotlib")  # for the figures; if missing, it says what to pip install
# %matplotlib inline
import matplotlib.pyplot as plt

from minillm import viz
from minillm.config import EngineConfig
from minillm.kvcache import BlockManager, RadixPrefixCache
from minillm.scheduler import Scheduler
from minillm.sequence import Sequence
from minillm.simulate import Workload, run, step

# %% [markdown]
# ## Allocate
#
# Two sequences, 10 and 6 tokens, in a pool of 16 blocks of 4 tokens: 3 blocks and 2 blocks.
# The scheduler asks `can_allocate` before `allocate`; after the forward pass stores their KV,
# the tokens count as computed.

# %%
# NBVAL_CHECK_OUTPUT
bm = BlockManager(num_blocks=16, block_size=4)
a = Sequence(list(range(1, 11)))
b = Sequence(list(range(11, 17)))
for seq in (a, b):
    print(f"seq {seq.seq_id}: {seq.num_tokens} tokens, can allocate:",
          bm.can_allocate(seq, seq.num_tokens))
    bm.allocate(seq, seq.num_tokens)
    seq.num_computed_tokens = seq.num_tokens  # the forward pass stores their KV
print(bm)
print(viz.block_pool_text(bm, [a, b]))

# %%
viz.draw_block_pool(bm, [a, b])

# %% [markdown]
# ## Append
#
# Decoding adds one token per step. `may_append` gives the sequence a fresh block only when
# its last block is full: here the third new token starts block 3 of sequence `a`.

# %%
# NBVAL_CHECK_OUTPUT
for token in (901, 902, 903):
    a.append_token(token)  # sampled by the model
    print(f"token {token}: needs {bm.blocks_needed(a, 1)} new block(s)")
    bm.may_append(a)
    a.num_computed_tokens += 1  # the next forward pass stores its KV
print(viz.block_tables_text([a], bm))

# %% [markdown]
# ## Free
#
# When a sequence finishes, `deallocate` drops its references; blocks whose ref count reaches
# zero go back to the free list (there is no prefix cache in this pool).

# %%
# NBVAL_CHECK_OUTPUT
bm.deallocate(b)
print(bm)

# %% [markdown]
# ## Sharing a prefix
#
# Now a pool with a radix prefix cache. Full, computed blocks are offered to the cache
# (`cache_computed_blocks`). A later sequence that starts with the same tokens (here an
# 8-token "system prompt", two full blocks) finds them with `acquire_cached_prefix`: its
# table points at the same physical blocks, whose ref count becomes 2, and their 8 tokens
# need no prefill.

# %%
# NBVAL_CHECK_OUTPUT
bm = BlockManager(16, 4, RadixPrefixCache(4))
system = list(range(500, 508))


def admit(seq: Sequence) -> None:
    """What the scheduler and one forward pass do for a new sequence (printed)."""
    hit = bm.acquire_cached_prefix(seq)
    bm.allocate(seq, seq.num_uncomputed_tokens)
    seq.num_computed_tokens = seq.num_tokens  # the forward pass stores the rest
    bm.cache_computed_blocks(seq)
    print(f"seq {seq.seq_id}: {seq.num_tokens} tokens, {hit} from the prefix cache")


a = Sequence(system + [1, 2, 3, 4, 5])
admit(a)
bm.cache.clear_events()  # colour only what the next request does
b = Sequence(system + [6, 7, 8, 9, 10])
admit(b)
print(viz.block_tables_text([a, b], bm))

# %%
viz.draw_block_tables([a, b], bm)

# %%
viz.draw_block_pool(bm, [a, b])

# %% [markdown]
# The radix tree holds the cached token runs. `b`'s lookup split `a`'s node where the two
# prompts diverge: the shared system prompt became a node of its own (blue: a cache hit), and
# `b`'s own full block a new node (green). Partly filled last blocks are never cached: their
# KV is still being written. The text form says the same.

# %%
# NBVAL_CHECK_OUTPUT
print(bm.cache.to_text())
print(viz.radix_events_text(bm.cache))

# %%
viz.draw_radix_tree(bm.cache, bm)

# %% [markdown]
# ## Eviction under pressure
#
# Both requests finish. Their cached blocks stay, evictable (hatched grey). Then a long,
# unrelated request needs 14 blocks while only 12 are free: the cache gives back its least
# recently used leaves, drawn as dashed red ghosts. The shared system prompt survives: a
# radix cache only evicts leaves, so a prefix outlives its extensions.

# %%
# NBVAL_CHECK_OUTPUT
bm.deallocate(a)
bm.deallocate(b)
print(bm)

# %%
viz.draw_block_pool(bm, [])

# %%
# NBVAL_CHECK_OUTPUT
bm.cache.clear_events()
c = Sequence(list(range(700, 756)))
admit(c)
print(viz.radix_events_text(bm.cache))
print(bm)

# %%
viz.draw_radix_tree(bm.cache, bm)

# %% [markdown]
# ## Hash or radix: one workload, two caches
#
# `EngineConfig.prefix_cache` picks the cache. We run the same seeded workload (8 requests
# sharing a 12-token system prompt) through two schedulers that differ only in that field,
# with a pool small enough that the caches must evict.
#
# Both match whole blocks and both evict the tails of the least recently used prefixes
# first, so they find the same hits: the choice changes the data structure, not the result
# here. The hash cache is a flat dict, one lookup per block, each key hashing the block's
# tokens together with its parent's hash; the radix tree walks one node per shared run and
# keeps the prefix structure explicit (and drawable). SGLang's radix tree can also match at
# token granularity when its page size is 1; minillm's, like vLLM's, works in blocks.

# %%
workload = Workload(num_requests=8, prompt_len=(4, 16), output_len=(3, 8),
                    shared_prefix_len=12, seed=0)
schedulers = {}
for kind in ("hash", "radix"):
    config = EngineConfig(max_num_seqs=4, max_num_batched_tokens=32, max_model_len=48,
                          kvcache_block_size=4, num_kvcache_blocks=24, prefix_cache=kind)
    schedulers[kind] = Scheduler(config, trace=True)
    for i, seq in enumerate(workload.make()):  # the same prompts, and ids (colours), for both
        schedulers[kind].add(Sequence(seq.prompt_token_ids, seq.params, seq_id=100 + i))

# %% [markdown]
# After 4 steps, the two pools side by side: the shared prefix is held once, by every
# running sequence (×n).

# %%
for _ in range(4):
    for sched in schedulers.values():
        step(sched)
fig, axes = plt.subplots(1, 2, figsize=(13, 2.6), layout="constrained")
for ax, (kind, sched) in zip(axes, schedulers.items(), strict=True):
    viz.draw_block_pool(sched.block_manager, sched.running, ax=ax, cols=8,
                        title=f"{kind}: step {sched.num_steps - 1}")
plt.show()

# %%
# NBVAL_CHECK_OUTPUT
for sched in schedulers.values():
    run(sched, [])  # step to the end
keys = ["prefix_cache_hit_tokens", "prefix_cache_hit_rate", "prefill_tokens",
        "kv_blocks_evicted", "steps", "preemptions"]
runs = {kind: sched.stats() for kind, sched in schedulers.items()}
print(viz.stats_table_text(runs, keys))

# %%
viz.draw_stats(runs, ["prefix_cache_hit_rate", "prefill_tokens", "kv_blocks_evicted"])

# %% [markdown]
# What each cache holds at the end. The hash cache lists blocks with their chained hashes;
# the radix tree shows the same blocks as runs under the shared system prompt.

# %%
print("\n".join(schedulers["hash"].block_manager.cache.to_text().splitlines()[:8]), "\n  ...")

# %%
radix_bm = schedulers["radix"].block_manager
radix_bm.cache.clear_events()
viz.draw_radix_tree(radix_bm.cache, radix_bm, title="radix cache after the workload")

# %% [markdown]
# ## Exercises
#
# Work out each answer by hand first; the solution cells check it with a real `BlockManager`,
# in real-use blocks of 16 tokens.
#
# ### 1 · Blocks for a 37-token prompt
#
# With blocks of 16 tokens, how many blocks does a 37-token prompt need? How many slots of its
# last block are still empty, and which decode step (1st new token, 2nd, ...) is the first
# that needs a fresh block?
#
# <details><summary>Solution</summary>
#
# ceil(37 / 16) = 3 blocks: 16 + 16 + 5 tokens, so 11 slots of the last block are empty, the
# only memory this sequence wastes. Decoding fills them with new tokens 1 to 11; new token 12
# (position 48) is the first that needs block 4. `blocks_needed(seq, n)` computes exactly
# this: ceil((computed + n) / block_size) minus the blocks already held.
#
# </details>

# %%
# NBVAL_CHECK_OUTPUT
pool = BlockManager(num_blocks=8, block_size=16)
prompt_37 = Sequence(list(range(37)))
print("blocks needed:", pool.blocks_needed(prompt_37, 37))
pool.allocate(prompt_37, 37)
prompt_37.num_computed_tokens = 37
empty_slots = len(prompt_37.block_table) * 16 - prompt_37.num_tokens
print("empty slots in the last block:", empty_slots)
# New token k is stored at position 36 + k: the first k for which 37 + k tokens need a 4th block
first = next(k for k in range(1, 17) if pool.blocks_needed(prompt_37, k) > 0)
print("first new token that needs a fresh block:", first)
assert len(prompt_37.block_table) == 3 and empty_slots == 11 and first == 12

# %% [markdown]
# ### 2 · Ref counts of a shared prefix
#
# A pool of 16-token blocks with a radix prefix cache. Request `x` is a 32-token system prompt
# plus 8 tokens of its own; once `x`'s prompt is computed, request `y` arrives with the same
# system prompt plus 13 tokens. What are the ref counts of every block `x` and `y` hold? What
# becomes of each block when `x` finishes, and when `y` finishes too?
#
# <details><summary>Solution</summary>
#
# `y` finds the system prompt's two full blocks in the cache: both are held by two tables, ref
# count 2. Each request's last block (8 and 13 tokens) is partly filled, its own, ref count 1,
# and never cached. When `x` finishes, the shared blocks drop to 1 (`y` still reads them) and
# `x`'s last block goes back to the free list. When `y` finishes, its last block is freed and
# the shared blocks drop to 0 but stay in the cache: evictable, ready for the next request
# with that system prompt.
#
# </details>

# %%
# NBVAL_CHECK_OUTPUT
shared = BlockManager(16, 16, RadixPrefixCache(16))
system_32 = list(range(2000, 2032))


def prefill(seq: Sequence) -> None:
    """Admit `seq` (cached prefix first) and compute its prompt, as scheduler and runner do."""
    shared.acquire_cached_prefix(seq)
    shared.allocate(seq, seq.num_uncomputed_tokens)
    seq.num_computed_tokens = seq.num_tokens
    shared.cache_computed_blocks(seq)


def refs(seq: Sequence) -> list[tuple[int, int, str]]:
    """(block, ref count, state) of each block in `seq`'s table."""
    return [(b, shared.ref_counts[b], shared.block_state(b)) for b in seq.block_table]


x = Sequence(system_32 + list(range(8)))
y = Sequence(system_32 + list(range(100, 113)))
prefill(x)
prefill(y)
print("x:", refs(x), "\ny:", refs(y), "| y reused", y.num_cached_tokens, "tokens")
assert x.block_table[:2] == y.block_table[:2]
assert [r for _, r, _ in refs(x)] == [2, 2, 1] and [r for _, r, _ in refs(y)] == [2, 2, 1]

x_last, y_last, system_blocks = x.block_table[2], y.block_table[2], y.block_table[:2]
shared.deallocate(x)
print("x finished:", refs(y), "| x's last block:", shared.block_state(x_last))
assert [r for _, r, _ in refs(y)] == [1, 1, 1] and shared.block_state(x_last) == "free"
shared.deallocate(y)
states = [shared.block_state(b) for b in system_blocks]
print("y finished: system blocks", states, "| y's last block:", shared.block_state(y_last))
assert states == ["evictable", "evictable"] and shared.block_state(y_last) == "free"

# %% [markdown]
# ### 3 · A prompt that is all cached
#
# In the pool of exercise 2, the system prompt's two blocks are cached. A new request's prompt
# is exactly those 32 tokens. How many of its tokens does `acquire_cached_prefix` reuse? And
# for a 33-token prompt (the system prompt plus one token)?
#
# <details><summary>Solution</summary>
#
# 16, not 32. The engine needs logits at the prompt's last position to sample the first new
# token, so that token must go through the model: only the first 31 tokens are looked up, and
# the cache matches whole blocks, so one block (16 tokens) is reused and 16 are recomputed.
# With 33 tokens, the first 32 are looked up and both blocks (32 tokens) are reused: one token
# to compute. vLLM's `kv_cache_manager.py` has the same rule ("we must recompute the last
# token to obtain logits").
#
# </details>

# %%
# NBVAL_CHECK_OUTPUT
need(globals(), "shared", "system_32")
exact = Sequence(system_32)
reused_exact = shared.acquire_cached_prefix(exact)
shared.deallocate(exact)
one_more = Sequence(system_32 + [7])
reused_one_more = shared.acquire_cached_prefix(one_more)
shared.deallocate(one_more)
print(f"32-token prompt: {reused_exact} reused; 33-token prompt: {reused_one_more} reused")
assert (reused_exact, reused_one_more) == (16, 32)

# %% [markdown]
# Next: [04 · Scheduler](04_scheduler.ipynb), which decides each step who runs, and when to
# preempt.
