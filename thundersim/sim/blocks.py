"""The block pool: paged KV blocks with a prefix cache, as vLLM's BlockPool keeps them
(vllm/v1/core/block_pool.py); thundersim.sim.kv_cache_manager tracks which request holds which.

Facts of vLLM v1 this model keeps:
- KV lives in fixed-size blocks; only full blocks are hashed and reusable.
- Block hashes form a chain (each includes its parent's), so a prompt hits the longest run of
  cached blocks from its start: block i hits only if blocks 0..i-1 hit.
- Blocks no request references stay cached in a free queue and are evicted LRU only when a new
  block is needed. A finishing request frees its blocks tail-first, so a chain loses its last
  blocks first.

What makes this fast: a token's identity is (shared prefix id, program id, position), and a
program has one call at a time. So every chain's resident blocks are always a *prefix* of the
chain, the free queue holds at most one run per chain, and the whole cache is a handful of
counters per program instead of a map of block hashes. Two kinds of chain:
- the shared system prompt (its `prefix_key`: ("prefix", id)), `prefix_tokens // block_size`
  full blocks, referenced by many requests at once (a reference count);
- each program's own blocks after it (its `chain_key`: the program id, with an epoch after a
  context reset), referenced by its one running call.

Where vLLM takes never-used and cached-free blocks strictly in free-queue order, this pool
takes empty blocks first; the difference is at most one partial block per finished request.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass


@dataclass(slots=True)
class Lookup:
    """Result of a prefix-cache lookup for one admission (a check: nothing changes)."""

    shared_hit: int  # shared-prefix blocks hit
    own_hit: int  # program blocks hit (after the shared prefix)
    own_resident: int  # program blocks resident (taken along, may exceed own_hit by the cap)
    broken: bool  # shared chain incomplete: the program's own blocks are unreachable
    free_after: int  # blocks free for allocation once the hits are taken out of the queue

    @property
    def hit_blocks(self) -> int:
        return self.shared_hit + self.own_hit


class BlockPool:
    """Counts of blocks: empty, cached-free (evictable, LRU order), used (referenced)."""

    __slots__ = (
        "block_size",
        "cached_free",
        "empty",
        "evicted",
        "pinned",
        "pinned_total",
        "lru",
        "refs",
        "resident",
        "total",
    )

    def __init__(self, total_blocks: int, block_size: int):
        if total_blocks < 1 or block_size < 1:
            raise ValueError("a block pool needs at least one block of at least one token")
        self.total = total_blocks
        self.block_size = block_size
        self.empty = total_blocks  # hold nothing reusable
        self.cached_free = 0  # sum of lru counts
        self.lru: OrderedDict = OrderedDict()  # chain key -> resident blocks in the free queue
        self.resident: dict = {}  # chain key -> resident blocks (referenced or cached)
        self.refs: dict = {}  # shared chain key -> running requests referencing it
        self.evicted = 0  # blocks evicted from the cache over the run
        self.pinned: dict = {}  # chain key -> cached blocks kept out of the free queue (TTL pins)
        self.pinned_total = 0

    @property
    def free(self) -> int:
        """Blocks an allocation can take: empty ones plus evictable cached ones."""
        return self.empty + self.cached_free

    @property
    def used(self) -> int:
        """Blocks referenced by running requests."""
        return self.total - self.empty - self.cached_free - self.pinned_total

    # ---- pins (Continuum's time-to-live) ---------------------------------------------------
    def pin(self, key) -> int:
        """Take a chain's cached blocks out of the free queue so nothing evicts them."""
        count = self.lru.pop(key, 0)
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
            self.lru[key] = count
            self.cached_free += count

    def _take_cached(self, key) -> int:
        """Remove a chain's unreferenced blocks from the free queue or from its pin."""
        if key in self.pinned:
            count = self.pinned.pop(key)
            self.pinned_total -= count
            return count
        count = self.lru.pop(key, 0)
        self.cached_free -= count
        return count

    # ---- lookup / acquire -----------------------------------------------------------------
    def lookup(self, prefix_key, prefix_blocks: int, chain_key, num_tokens: int) -> Lookup:
        """Longest cached prefix for a sequence of `num_tokens` tokens whose first
        `prefix_blocks` blocks are the shared chain `prefix_key` and the rest the program chain
        `chain_key`. At least one token is always left to compute (vLLM caps hits at
        num_tokens - 1)."""
        B = self.block_size
        shared_res = min(self.resident.get(prefix_key, 0), prefix_blocks) if prefix_blocks else 0
        broken = shared_res < prefix_blocks
        own_res = 0 if broken else self.resident.get(chain_key, 0)
        max_hit = (num_tokens - 1) // B
        shared_hit = min(shared_res, max_hit)
        own_hit = min(own_res, max_hit - shared_hit)
        in_queue = 0
        if shared_hit and self.refs.get(prefix_key, 0) == 0:
            in_queue += self.lru.get(prefix_key, 0)
        if own_res:
            in_queue += self.lru.get(chain_key, 0)
        return Lookup(shared_hit, own_hit, own_res, broken, self.free - in_queue)

    def acquire(self, prefix_key, chain_key, look: Lookup) -> int:
        """Take the hit blocks out of the free queue for a starting request. Returns the number
        of blocks the request now holds."""
        if look.broken and (chain_key in self.lru or chain_key in self.pinned):
            # Its blocks sit behind a missing shared block: no lookup can reach them again.
            self.empty += self._take_cached(chain_key)
            self.resident[chain_key] = 0
        taken = 0
        if look.shared_hit:
            if self.refs.get(prefix_key, 0) == 0:
                self.cached_free -= self.lru.pop(prefix_key)
            self.refs[prefix_key] = self.refs.get(prefix_key, 0) + 1
            taken += look.shared_hit
        if look.own_resident:
            self._take_cached(chain_key)
            taken += look.own_resident
        return taken

    # ---- allocate / release ----------------------------------------------------------------
    def allocate(self, n: int) -> bool:
        """Take n blocks, evicting cached ones LRU-first. Check-then-act: returns False and
        changes nothing when there are not enough."""
        if n <= 0:
            return True
        if n > self.empty + self.cached_free:
            return False
        take = min(n, self.empty)
        self.empty -= take
        rest = n - take
        if rest:
            self.evicted += rest
            self.cached_free -= rest
            lru, resident = self.lru, self.resident
            while rest:
                key, count = next(iter(lru.items()))
                t = min(count, rest)
                resident[key] -= t  # a chain loses its tail blocks first
                if t == count:
                    lru.popitem(last=False)
                else:
                    lru[key] = count - t
                rest -= t
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
        `prefix_blocks`), with `computed` tokens of KV. Full blocks stay cached (program blocks
        first in the queue, so they are evicted before the shared prompt); the partial last
        block is emptied."""
        full = computed // self.block_size
        private = num_blocks - shared_blocks
        donated = 0
        if prefix_blocks and shared_blocks < prefix_blocks:
            # The request computed shared-prompt blocks itself: those past the chain's current
            # end extend it (same content, same hashes); those another request cached
            # meanwhile are duplicates and are emptied below.
            cur = self.resident.get(prefix_key, 0)
            upto = min(prefix_blocks, full)
            if upto > cur:
                donated = upto - cur
                self.resident[prefix_key] = upto
        chain_ok = prefix_blocks == 0 or self.resident.get(prefix_key, 0) >= prefix_blocks
        own = max(0, full - prefix_blocks) if chain_ok else 0
        own = min(own, private - donated)
        self.empty += private - donated - own
        self.resident[chain_key] = own
        if own:
            self.lru[chain_key] = own
            self.lru.move_to_end(chain_key)
            self.cached_free += own
        if shared_blocks:
            self.refs[prefix_key] -= 1
            if self.refs[prefix_key] == 0:
                count = self.resident[prefix_key]
                self.lru[prefix_key] = count
                self.lru.move_to_end(prefix_key)
                self.cached_free += count
        elif donated and self.refs.get(prefix_key, 0) == 0:
            self.lru[prefix_key] = self.resident[prefix_key]
            self.lru.move_to_end(prefix_key)
            self.cached_free += donated
