"""The block pool: paged KV blocks with a prefix cache, as vLLM's BlockPool keeps them
(vllm/v1/core/block_pool.py); thundersim.sim.kv_cache_manager tracks which request holds which.

Facts of vLLM v1 this model keeps (and tests/test_vllm_conformance.py checks against vLLM's own
scheduler, iteration by iteration):
- KV lives in fixed-size blocks; only full blocks are hashed and reusable. A block is hashed as
  soon as it is scheduled full (allocate_slots ends with cache_blocks), not when its request
  ends: a sharer admitted meanwhile hits it (`extend_shared`).
- Block hashes form a chain (each includes its parent's), so a prompt hits the longest run of
  cached blocks from its start: block i hits only if blocks 0..i-1 hit.
- One free queue: blocks no request references, taken from its front only when a new block is
  needed. At start it holds every block. A request that ends puts its unhashed blocks (its
  partial last block) at the front, to be reused first, and appends its hashed ones tail-first
  (its own blocks last to first, then the shared prompt's if it was the last user), so cached
  blocks are evicted LRU and a chain loses its last blocks first (vLLM 0.32
  BlockPool.free_blocks: prepend_n / append_n). Every block holding nothing reusable is thus
  ahead of every cached one: `empty` counts them, and `queue` orders the cached ones. A prefix
  hit takes its blocks out of the queue wherever they are.

What makes this fast: a token's identity is (shared prefix id, program id, position), and a
program has one call at a time. So every chain's resident blocks are always a *prefix* of the
chain, the queue holds at most one run per chain, and the whole cache is a queue of runs
instead of a map of block hashes. Two kinds of chain:
- the shared system prompt (its `prefix_key`: ("prefix", id)), `prefix_tokens // block_size`
  full blocks, referenced by many requests at once (a reference count; every holder holds all
  of the chain's resident blocks, which vLLM's FCFS order guarantees and check mode verifies);
- each program's own blocks after it (its `chain_key`: the program id, with an epoch after a
  context reset), referenced by its one running call.

vLLM's null block (block 0, never handed out: block_pool.py) is not in the pool: a pool of
`total` blocks is a vLLM engine with num_gpu_blocks = total + 1 (KVCacheManager does that sum).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass


class Orphan:
    """Key of a run of free blocks that are still hashed (vLLM counts them as cached) but can
    never be hit again: a program's own blocks behind a shared prompt that lost blocks."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "Orphan"


@dataclass(slots=True)
class Lookup:
    """Result of a prefix-cache lookup for one admission (a check: nothing changes)."""

    shared_hit: int  # shared-prefix blocks hit
    shared_taken: int  # shared-prefix blocks taken along (the whole resident chain, if any hit)
    own_hit: int  # program blocks hit (after the shared prefix)
    own_resident: int  # program blocks resident (taken along, may exceed own_hit by the cap)
    broken: bool  # shared chain incomplete: the program's own blocks are unreachable
    free_after: int  # blocks free for allocation once the hits are taken out of the queue

    @property
    def hit_blocks(self) -> int:
        return self.shared_hit + self.own_hit


class BlockPool:
    """Counts of blocks by state, and the cached part of the free queue as runs
    (chain key or Orphan -> count)."""

    __slots__ = (
        "block_size",
        "cached_free",
        "empty",
        "evicted",
        "orphaned",
        "pinned",
        "pinned_total",
        "queue",
        "refs",
        "resident",
        "total",
    )

    def __init__(self, total_blocks: int, block_size: int):
        if total_blocks < 1 or block_size < 1:
            raise ValueError("a block pool needs at least one block of at least one token")
        self.total = total_blocks
        self.block_size = block_size
        self.empty = total_blocks  # free, unhashed: the front of the free queue
        self.orphaned = 0  # free, hashed, unreachable (orphan runs)
        self.cached_free = 0  # free and reusable (chain runs)
        # The hashed part of the free queue, front (evicted first) to back: key -> blocks.
        self.queue: OrderedDict = OrderedDict()
        self.resident: dict = {}  # chain key -> resident blocks (referenced or cached)
        self.refs: dict = {}  # shared chain key -> running requests referencing it
        self.evicted = 0  # cached blocks evicted over the run
        self.pinned: dict = {}  # chain key -> cached blocks kept out of the queue (TTL pins)
        self.pinned_total = 0

    @property
    def free(self) -> int:
        """Blocks an allocation can take: every block in the free queue."""
        return self.empty + self.orphaned + self.cached_free

    @property
    def used(self) -> int:
        """Blocks referenced by running requests."""
        return self.total - self.free - self.pinned_total

    @property
    def lru(self) -> dict:
        """The reusable runs of the free queue, in eviction order: chain key -> blocks."""
        return {k: n for k, n in self.queue.items() if not isinstance(k, Orphan)}

    @property
    def hashed_free(self) -> int:
        """Free blocks that vLLM would count as cached (they hold a block hash)."""
        return self.cached_free + self.orphaned

    # ---- the free queue ----------------------------------------------------------------
    def _append_chain(self, key, n: int) -> None:
        if n <= 0:
            return
        self.queue[key] = n
        self.cached_free += n

    def _orphan(self, key) -> None:
        """The chain's free blocks stay where they are in the queue, unreachable."""
        n = self.queue.get(key)
        if n is None:
            return
        orphan = Orphan()
        self.queue = OrderedDict((orphan if k == key else k, v) for k, v in self.queue.items())
        self.cached_free -= n
        self.orphaned += n

    # ---- pins (Continuum's time-to-live; vLLM has none) ----------------------------------
    def pin(self, key) -> int:
        """Take a chain's cached blocks out of the free queue so nothing evicts them."""
        count = self.queue.pop(key, 0)
        if count:
            self.cached_free -= count
            self.pinned[key] = self.pinned.get(key, 0) + count
            self.pinned_total += count
        return count

    def unpin(self, key) -> None:
        """A pin expired: the blocks go back to the free queue as the most recently used."""
        count = self.pinned.pop(key, 0)
        if count:
            self.pinned_total -= count
            self._append_chain(key, count)

    def _take_cached(self, key) -> int:
        """Remove a chain's unreferenced blocks from the free queue or from its pin."""
        if key in self.pinned:
            count = self.pinned.pop(key)
            self.pinned_total -= count
            return count
        count = self.queue.pop(key, 0)
        self.cached_free -= count
        return count

    # ---- lookup / acquire -----------------------------------------------------------------
    def lookup(self, prefix_key, prefix_blocks: int, chain_key, num_tokens: int) -> Lookup:
        """Longest cached prefix for a sequence of `num_tokens` tokens whose first
        `prefix_blocks` blocks are the shared chain `prefix_key` and the rest the program chain
        `chain_key`. At least one token is always left to compute (vLLM caps hits at
        num_tokens - 1, block-aligned: kv_cache_manager.get_computed_blocks)."""
        B = self.block_size
        shared_res = min(self.resident.get(prefix_key, 0), prefix_blocks) if prefix_blocks else 0
        broken = shared_res < prefix_blocks
        own_res = 0 if broken else self.resident.get(chain_key, 0)
        max_hit = (num_tokens - 1) // B
        shared_hit = min(shared_res, max_hit)
        own_hit = min(own_res, max_hit - shared_hit)
        # A hit cut short by the cap (a prompt that is the shared prompt, block-aligned) still
        # takes the whole resident chain: every holder holds all of it. vLLM leaves the block
        # past the cap free and computes a duplicate of it; the difference is one block while
        # such a request runs (a deliberate simplification, as for own_resident).
        shared_taken = shared_res if shared_hit else 0
        in_queue = 0
        if shared_hit and self.refs.get(prefix_key, 0) == 0:
            in_queue += self.queue.get(prefix_key, 0)
        if own_res:
            in_queue += self.queue.get(chain_key, 0)
        freed = self.pinned.get(chain_key, 0) if broken else 0  # acquire orphans a pinned run
        free = self.empty + self.orphaned + self.cached_free  # self.free
        return Lookup(shared_hit, shared_taken, own_hit, own_res, broken, free - in_queue + freed)

    def acquire(self, prefix_key, chain_key, look: Lookup) -> int:
        """Take the hit blocks out of the free queue for a starting request. Returns the number
        of blocks the request now holds."""
        if look.broken and self.resident.get(chain_key, 0):
            # Its blocks sit behind a missing shared block: no lookup can reach them again.
            if chain_key in self.pinned:
                count = self.pinned.pop(chain_key)
                self.pinned_total -= count
                self.orphaned += count
                self.queue[Orphan()] = count
            else:
                self._orphan(chain_key)
            self.resident[chain_key] = 0
        taken = 0
        if look.shared_hit:
            if self.refs.get(prefix_key, 0) == 0:
                self.cached_free -= self.queue.pop(prefix_key)
            self.refs[prefix_key] = self.refs.get(prefix_key, 0) + 1
            taken += look.shared_taken
        if look.own_resident:
            self._take_cached(chain_key)
            taken += look.own_resident
        return taken

    def extend_shared(self, prefix_key, held: int, covered: int) -> int:
        """A running request holding `held` blocks of the shared chain has now scheduled its
        full blocks up to `covered` (<= the chain's full length): vLLM hashes them at once
        (allocate_slots -> cache_blocks), so they join the chain. Returns the blocks it now
        holds through the chain: `covered` when it was at the chain's end; `held` when another
        request holds the chain further (its blocks are then private duplicates, as in vLLM,
        which does not de-duplicate: block_pool.BlockHashToBlockMap)."""
        cur = self.resident.get(prefix_key, 0)
        if covered <= held or held != cur:
            return held
        if held == 0:
            self.refs[prefix_key] = self.refs.get(prefix_key, 0) + 1
        self.resident[prefix_key] = covered
        return covered

    # ---- allocate / release ----------------------------------------------------------------
    def allocate(self, n: int) -> bool:
        """Take n blocks from the front of the free queue: unhashed ones first, then cached ones
        LRU-first (evicting them). Check-then-act: returns False and changes nothing when there
        are not enough."""
        if n <= 0:
            return True
        empty = self.empty
        if n <= empty:  # the common case: unhashed blocks at the front suffice
            self.empty = empty - n
            return True
        if n > empty + self.orphaned + self.cached_free:  # self.free
            return False
        self.empty = 0
        n -= empty
        queue, resident = self.queue, self.resident
        while n:
            key, count = next(iter(queue.items()))
            t = min(count, n)
            self.evicted += t  # an orphan is hashed too: vLLM counts its reuse as an eviction
            if isinstance(key, Orphan):
                self.orphaned -= t
            else:
                self.cached_free -= t
                resident[key] -= t  # a chain loses its tail blocks first
            if t == count:
                queue.popitem(last=False)
            else:
                queue[key] = count - t
            n -= t
        return True

    def release(
        self,
        prefix_key,
        prefix_blocks: int,
        shared_blocks: int,
        chain_key,
        num_blocks: int,
        computed: int,
    ) -> None:
        """A request ends (finished or preempted) holding `num_blocks` blocks, `shared_blocks`
        of them through a reference to the shared chain `prefix_key` (whose full length is
        `prefix_blocks`), with `computed` tokens of KV. Its unhashed blocks (the partial last
        one; a private duplicate of a shared block too, which vLLM would keep hashed: a
        documented simplification, unreachable under FCFS) go to the front of the free queue;
        its own full blocks (cached) to the back tail-first, then the shared chain's if it was
        the last to reference it (vLLM frees reversed(req_blocks))."""
        full = computed // self.block_size
        private = num_blocks - shared_blocks
        chain_ok = shared_blocks >= prefix_blocks  # it holds the whole shared prompt (or none)
        own = min(max(0, full - prefix_blocks), private) if chain_ok else 0
        self.empty += private - own
        self.resident[chain_key] = own
        self._append_chain(chain_key, own)
        if shared_blocks:
            self.refs[prefix_key] -= 1
            if self.refs[prefix_key] == 0:
                self._append_chain(prefix_key, self.resident[prefix_key])
