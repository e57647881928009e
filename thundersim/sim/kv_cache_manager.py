"""KVCacheManager: the blocks each request holds, over the block pool (vLLM's
vllm/v1/core/kv_cache_manager.py).

As in vLLM, the scheduler asks it three things and sees only opaque handles:
- `get_computed_blocks(req)`: the prefix-cache hit of a waiting request (a check);
- `allocate_slots(req, n, hit)`: blocks for n more tokens, or None (and nothing changed) when
  they do not fit;
- `free(req)`: the request ends (finished or preempted); its full blocks stay cached.
Full blocks are cached the moment they are scheduled, as vLLM's allocate_slots does
(`cache_blocks`): shared-prompt blocks a request computes join the shared chain at once.
The pool underneath (thundersim.sim.blocks, vLLM's block_pool.py) keeps the free queue in
vLLM's order. Like vLLM's, it has no null block to hand out: an engine of `num_gpu_blocks`
blocks has num_gpu_blocks - 1 usable ones.

One difference from vLLM, for the engine's skip-ahead: the decoding requests
(thundersim.sim.decoding) grow in bulk, `allocate_decode_slots(n)` for all of them at once, so
a decoding request's handle is not updated per token; it holds exactly the blocks its computed
tokens fill, and `settle_decode(req)` writes that count back when it stops decoding.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from thundersim.sim.blocks import BlockPool, Lookup
from thundersim.sim.request import EngineRequest


@dataclass(slots=True)
class RequestBlocks:
    """The blocks one running request holds: the handle `allocate_slots` returns. Only the
    manager reads it."""

    num_blocks: int  # shared-prefix blocks included; not kept up to date while decoding
    shared_blocks: int  # of them, held through a reference to the shared prefix chain
    hit_blocks: int  # served from the prefix cache when it was admitted


def _blocks_for(tokens: int, block_size: int) -> int:
    return -(-tokens // block_size)


class KVCacheManager:
    """Per-request blocks on one replica's block pool."""

    def __init__(self, num_gpu_blocks: int, block_size: int):
        """`num_gpu_blocks` as vLLM sizes its pool; block 0 of it is vLLM's null block, never
        handed out (vllm/v1/core/block_pool.py), so num_gpu_blocks - 1 are usable."""
        if num_gpu_blocks < 2:
            raise ValueError(
                f"a KV pool of {num_gpu_blocks} blocks has no usable block (block 0 is vLLM's "
                "null block)"
            )
        self.block_size = block_size
        self.num_gpu_blocks = num_gpu_blocks
        self.pool = BlockPool(num_gpu_blocks - 1, block_size)
        self._blocks: dict[int, RequestBlocks] = {}  # request id -> its blocks, while running

    @property
    def capacity_tokens(self) -> int:
        return self.pool.total * self.block_size

    # ---- queries (they change nothing) ---------------------------------------------------
    def get_computed_blocks(self, req: EngineRequest) -> tuple[Lookup, int]:
        """The longest cached prefix of a waiting request: (the hit, its tokens)."""
        hit = self.pool.lookup(req.prefix_key, req.prefix_blocks, req.chain_key, req.num_tokens)
        return hit, hit.hit_blocks * self.block_size

    def num_new_blocks(self, req: EngineRequest, num_tokens: int, hit: Lookup | None = None) -> int:
        """Blocks `allocate_slots(req, num_tokens, hit)` would take from the free ones: for a
        running request, to compute num_tokens more; for a waiting one (with its hit), to
        compute num_tokens after the hit (the hit's resident blocks come along)."""
        B = self.block_size
        if hit is None:
            num_blocks = self._blocks[req.request_id].num_blocks
            return max(0, _blocks_for(req.num_computed_tokens + num_tokens, B) - num_blocks)
        taken = hit.shared_taken + hit.own_resident
        return max(0, _blocks_for(hit.hit_blocks * B + num_tokens, B) - taken)

    def num_cached_blocks(self, running: Iterable[EngineRequest]) -> int:
        """Blocks holding a block hash, as vLLM's pool counts them: free cached ones (reachable
        or not), pinned ones, the shared chains in use, and the running requests' own full
        blocks (hashed when scheduled)."""
        pool = self.pool
        count = pool.hashed_free + pool.pinned_total
        count += sum(pool.resident.get(key, 0) for key, n in pool.refs.items() if n)
        B = self.block_size
        for req in running:
            blocks = self._blocks[req.request_id]
            if blocks.shared_blocks >= req.prefix_blocks:
                count += max(0, req.num_computed_tokens // B - req.prefix_blocks)
        return count

    def num_free_blocks(self, hit: Lookup | None = None) -> int:
        """Blocks an allocation can take now; with a waiting request's hit, those left once
        its hit blocks leave the free queue."""
        return self.pool.free if hit is None else hit.free_after

    def blocks_needed(self, req: EngineRequest) -> int:
        """Blocks a running request's computed tokens fill."""
        return _blocks_for(req.num_computed_tokens, self.block_size)

    def num_blocks(self, req: EngineRequest) -> int:
        """Blocks a running request holds (a decoding one: exactly those it fills)."""
        if req.is_decoding:
            return self.blocks_needed(req)
        return self._blocks[req.request_id].num_blocks

    # ---- allocation ----------------------------------------------------------------------
    def allocate_slots(
        self, req: EngineRequest, num_tokens: int, hit: Lookup | None = None
    ) -> RequestBlocks | None:
        """Blocks for num_tokens more tokens of a running request, or for a waiting request's
        first num_tokens after its hit (it takes the hit blocks out of the free queue). None,
        changing nothing, when they do not fit."""
        need = self.num_new_blocks(req, num_tokens, hit)
        if need > self.num_free_blocks(hit):
            return None
        pool = self.pool
        if hit is None:
            blocks = self._blocks[req.request_id]
            if need:
                pool.allocate(need)
                blocks.num_blocks += need
            upto = req.num_computed_tokens + num_tokens
        else:
            taken = pool.acquire(req.prefix_key, req.chain_key, hit)
            if need:
                pool.allocate(need)
            blocks = RequestBlocks(taken + need, hit.shared_taken, hit.hit_blocks)
            self._blocks[req.request_id] = blocks
            upto = hit.hit_blocks * self.block_size + num_tokens
        if req.prefix_blocks and blocks.shared_blocks < req.prefix_blocks:
            # vLLM hashes full blocks as they are scheduled: the shared-prompt blocks this
            # chunk completes are hits for whoever is admitted next, this step included.
            covered = min(req.prefix_blocks, upto // self.block_size)
            blocks.shared_blocks = pool.extend_shared(req.prefix_key, blocks.shared_blocks, covered)
        return blocks

    def allocate_decode_slots(self, num_blocks: int) -> bool:
        """The decoding requests' new blocks, in bulk (DecodeGroup.new_blocks). False, changing
        nothing, when they do not fit."""
        return self.pool.allocate(num_blocks)

    def settle_decode(self, req: EngineRequest) -> None:
        """req stopped decoding: its handle counts the blocks it grew into meanwhile."""
        self._blocks[req.request_id].num_blocks = self.blocks_needed(req)

    def free(self, req: EngineRequest) -> None:
        """req ends (finished, or preempted before its KV is dropped): full blocks of its
        computed tokens stay cached, the partial last one is emptied."""
        num_blocks = self.num_blocks(req)
        blocks = self._blocks.pop(req.request_id)
        self.pool.release(
            req.prefix_key,
            req.prefix_blocks,
            blocks.shared_blocks,
            req.chain_key,
            num_blocks,
            req.num_computed_tokens,
        )

    # ---- pins (Continuum's time-to-live) -------------------------------------------------
    def pin(self, chain_key) -> int:
        """Keep a chain's cached blocks out of the free queue; returns how many."""
        return self.pool.pin(chain_key)

    def unpin(self, chain_key) -> None:
        self.pool.unpin(chain_key)

    def pinned_chains(self) -> list:
        return list(self.pool.pinned)

    # ---- categories (the STP cost terms) ---------------------------------------------------
    def prefill_blocks(self, prefilling: Iterable[EngineRequest]) -> tuple[int, int]:
        """Blocks held by requests still prefilling: (prefill, recompute). Recompute blocks are
        those past the prefix-cache hit and below what the program had computed before; the
        rest (hits included: the context the prefill builds on) count as prefill."""
        B = self.block_size
        new = recompute = 0
        for req in prefilling:
            blocks = self._blocks[req.request_id]
            known = _blocks_for(req.known_tokens, B)
            r = max(0, min(blocks.num_blocks, known) - blocks.hit_blocks)
            recompute += r
            new += blocks.num_blocks - blocks.shared_blocks - r
        return new, recompute

    def breakdown(
        self, prefilling: Iterable[EngineRequest], is_acting: Callable[[str], bool]
    ) -> dict[str, int]:
        """Every block of the pool in exactly one category (the STP model's terms): decode
        (held by decoding requests, and shared prompts in use), prefill, recompute,
        cached_acting (cached KV of programs in a tool call: `is_acting(chain_key)`; a
        shared prompt belongs to no program, so it is never asked about), cached_other,
        empty."""
        pool = self.pool
        new, recompute = self.prefill_blocks(prefilling)
        # The free queue's and the pins' program chains (str keys; not the shared prompts'
        # tuples nor the Orphan runs), read in place: this runs every sample of every replica.
        acting = 0
        for runs in (pool.queue, pool.pinned):
            for key, n in runs.items():
                if isinstance(key, str) and is_acting(key):
                    acting += n
        return {
            "decode": pool.used - new - recompute,
            "prefill": new,
            "recompute": recompute,
            "cached_acting": acting,
            "cached_other": pool.cached_free + pool.pinned_total - acting,
            "empty": pool.empty + pool.orphaned,  # orphans are hashed but never reusable
        }

    # ---- invariants ------------------------------------------------------------------------
    def check_invariants(self, running: Iterable[EngineRequest]) -> None:
        """Blocks allocated + free = total, counted from the running requests independently of
        the pool's own counters; used never above capacity; every cached run matches its
        chain's residency."""
        pool = self.pool
        allocated = 0
        users: dict = {}  # shared chain -> running requests referencing it
        seen = 0
        for req in running:
            blocks = self._blocks[req.request_id]
            num_blocks = self.num_blocks(req)
            if num_blocks < self.blocks_needed(req):
                raise AssertionError(
                    f"{req.chain_key}: has {num_blocks} blocks for {req.num_computed_tokens} tokens"
                )
            allocated += num_blocks - blocks.shared_blocks
            if blocks.shared_blocks:
                users[req.prefix_key] = users.get(req.prefix_key, 0) + 1
            seen += 1
        if seen != len(self._blocks):
            raise AssertionError(f"{len(self._blocks)} block handles for {seen} running requests")
        for key, n in users.items():
            if pool.refs.get(key, 0) != n:
                raise AssertionError(f"{key}: refcount {pool.refs.get(key)} != {n} users")
            allocated += pool.resident[key]
        for req in running:
            # Every holder holds the whole resident chain, up to its own prompt's share of it
            # (vLLM's FCFS order makes every admission see the chain's end). A shorter prompt
            # on the same shared id holds the first blocks only; the model keeps the whole chain
            # referenced while it runs, where vLLM would let the blocks past its end go.
            shared = self._blocks[req.request_id].shared_blocks
            if shared and shared != min(req.prefix_blocks, pool.resident[req.prefix_key]):
                raise AssertionError(
                    f"{req.chain_key}: holds {shared} blocks of {req.prefix_key}, which has "
                    f"{pool.resident[req.prefix_key]}"
                )
        for key, n in pool.refs.items():
            if n and key not in users:
                raise AssertionError(f"{key}: refcount {n} without users")
        self._check_queues()
        if allocated + pool.free + pool.pinned_total != pool.total:
            raise AssertionError(
                f"allocated {allocated} + empty {pool.empty} + cached {pool.cached_free} "
                f"+ orphaned {pool.orphaned} + pinned {pool.pinned_total} != total {pool.total}"
            )
        if pool.used > pool.total or min(pool.empty, pool.cached_free, pool.orphaned) < 0:
            raise AssertionError("block counts out of range")

    def _check_queues(self) -> None:
        """The free queue and the pins hold whole resident runs, each counted once."""
        pool = self.pool
        if sum(pool.queue.values()) != pool.hashed_free:
            raise AssertionError("hashed free count differs from the free queue")
        if sum(pool.lru.values()) != pool.cached_free:
            raise AssertionError("cached-free count differs from the free queue")
        if sum(pool.pinned.values()) != pool.pinned_total or set(pool.pinned) & set(pool.lru):
            raise AssertionError("pinned blocks miscounted or also in the free queue")
        for key, n in pool.pinned.items():
            if n != pool.resident.get(key) or n <= 0:
                raise AssertionError(f"{key}: {n} pinned blocks, {pool.resident.get(key)} resident")
        for key, n in pool.lru.items():
            if n != pool.resident.get(key) or n <= 0:
                raise AssertionError(f"{key}: {n} queued blocks, {pool.resident.get(key)} resident")
