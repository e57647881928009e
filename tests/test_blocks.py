"""BlockPool: paged KV blocks with a prefix cache and a shared system prompt, kept as vLLM
0.32's BlockPool keeps them: one free queue taken from its front; freed unhashed blocks put at
its front (prepend_n), hashed ones appended tail-first (append_n); full blocks hashed as soon as
they are scheduled. The pool keeps the unhashed front as a count (`empty`) and the hashed rest
as runs (`queue`: chain key or Orphan -> blocks).

Every test checks the conservation laws after every operation: empty + the queue's runs are the
free blocks (orphan runs = orphaned, chain runs = cached-free); every chain run is its chain's
whole resident length; every holder of a shared chain holds all of it; and the used blocks equal
what the running requests hold, counted independently of the pool's own counters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from thundersim.sim.blocks import BlockPool, Lookup, Orphan

B = 4  # tokens per block: small, so block arithmetic is easy to follow
SK = ("prefix", "x")


@dataclass
class Running:
    """A request the test has started: what it holds, as the engine would track it."""

    chain_key: object
    prefix_key: object
    prefix_blocks: int
    num_tokens: int
    look: Lookup
    num_blocks: int
    shared_blocks: int
    scheduled: int  # tokens scheduled so far, the hit included

    @property
    def hit_tokens(self) -> int:
        return self.look.hit_blocks * B


def runs(pool: BlockPool) -> list:
    """The hashed part of the free queue (behind the `empty` unhashed blocks), front to back,
    with readable keys."""
    return [("orphan" if isinstance(k, Orphan) else k, n) for k, n in pool.queue.items()]


def check(pool: BlockPool, running=()) -> None:
    """The conservation laws, plus an independent count of the used blocks: what running
    requests hold privately, plus every shared chain some request references."""
    assert min(pool.empty, pool.orphaned, pool.cached_free) >= 0
    queue = list(pool.queue.items())
    assert all(n > 0 for _, n in queue), queue
    orphans = sum(n for k, n in queue if isinstance(k, Orphan))
    chains = [(k, n) for k, n in queue if not isinstance(k, Orphan)]
    assert (orphans, sum(n for _, n in chains)) == (pool.orphaned, pool.cached_free)
    assert sum(pool.queue.values()) == pool.hashed_free == pool.cached_free + pool.orphaned
    assert pool.free == pool.empty + pool.hashed_free
    assert list(pool.lru.items()) == chains  # only the chain runs, in queue order
    for key, n in chains:  # a chain run is the chain's whole resident length
        assert pool.resident.get(key) == n, key
    assert sum(pool.pinned.values()) == pool.pinned_total
    for key, n in pool.pinned.items():
        assert n > 0 and pool.resident.get(key) == n and key not in pool.queue, key
    for key, n in pool.resident.items():
        assert n >= 0, key
    assert 0 <= pool.used <= pool.total
    private = sum(r.num_blocks - r.shared_blocks for r in running)
    shared = sum(pool.resident.get(k, 0) for k, refs in pool.refs.items() if refs > 0)
    assert pool.used == private + shared
    refs: dict = {}
    for r in running:
        if r.shared_blocks:
            refs[r.prefix_key] = refs.get(r.prefix_key, 0) + 1
            # every holder holds the shared chain's whole resident length (vLLM's FCFS order)
            assert r.shared_blocks == pool.resident[r.prefix_key], r.chain_key
    assert {k: n for k, n in pool.refs.items() if n} == refs
    for key in refs:  # a referenced chain is not free
        assert key not in pool.queue


def snapshot(pool: BlockPool) -> tuple:
    return (
        pool.empty,
        pool.orphaned,
        pool.cached_free,
        pool.evicted,
        list(pool.queue.items()),
        dict(pool.resident),
        dict(pool.refs),
        dict(pool.pinned),
    )


def _cache_shared(pool: BlockPool, r: Running) -> None:
    """What KVCacheManager.allocate_slots does after every allocation: the shared-prompt blocks
    now scheduled full join the shared chain (vLLM hashes them at once)."""
    if r.prefix_blocks and r.shared_blocks < r.prefix_blocks:
        covered = min(r.prefix_blocks, r.scheduled // B)
        r.shared_blocks = pool.extend_shared(r.prefix_key, r.shared_blocks, covered)


def admit(
    pool, chain_key, num_tokens, prefix_blocks=0, prefix_key=SK, running=None, scheduled=None
) -> Running | None:
    """What the engine does to start a request: look up the cached prefix, take the hit blocks,
    allocate blocks for its first chunk (`scheduled` tokens after the hit; default: the whole
    prompt), cache the shared blocks it scheduled. None (and nothing changed) when short."""
    before = snapshot(pool)
    look = pool.lookup(prefix_key, prefix_blocks, chain_key, num_tokens)
    assert snapshot(pool) == before, "lookup is a check: it changes nothing"
    upto = num_tokens if scheduled is None else look.hit_blocks * B + scheduled
    need = max(0, math.ceil(upto / B) - look.shared_hit - look.own_resident)
    if need > look.free_after:
        return None
    unpinned = pool.pinned.get(chain_key, 0) if look.broken else 0
    num_blocks = pool.acquire(prefix_key, chain_key, look) + need
    if unpinned:  # a pinned run orphaned by a broken chain goes back to the free queue
        assert pool.free >= look.free_after
    else:
        assert pool.free == look.free_after
    assert pool.allocate(need)
    r = Running(
        chain_key,
        prefix_key,
        prefix_blocks,
        num_tokens,
        look,
        num_blocks,
        look.shared_hit,
        upto,
    )
    _cache_shared(pool, r)
    if running is not None:
        running.append(r)
    return r


def schedule(pool, r: Running, tokens: int) -> bool:
    """A running request's next chunk of `tokens` tokens: the blocks they need, then the shared
    blocks they complete join the chain. False (nothing changed) when they do not fit."""
    upto = r.scheduled + tokens
    need = max(0, math.ceil(upto / B) - r.num_blocks)
    if not pool.allocate(need):
        return False
    r.num_blocks += need
    r.scheduled = upto
    _cache_shared(pool, r)
    return True


def release(pool, r: Running, computed: int | None = None, running=None) -> None:
    """The request ends (finished or preempted) with `computed` tokens of KV (default: all it
    scheduled)."""
    computed = r.scheduled if computed is None else computed
    pool.release(
        r.prefix_key, r.prefix_blocks, r.shared_blocks, r.chain_key, r.num_blocks, computed
    )
    if running is not None:
        running.remove(r)


def _holder(n: int) -> Running:
    """Stand-in for requests that took n blocks straight from `allocate`."""
    return Running("holder", None, 0, 0, Lookup(0, 0, 0, 0, False, 0), n, 0, 0)


# ---- the free queue and allocation --------------------------------------------------------


def test_new_pool_is_all_unhashed_free_blocks_and_rejects_degenerate_sizes():
    """A fresh pool's free queue holds every block, none hashed (vLLM's free queue starts with
    all blocks); a pool needs at least one block of at least one token."""
    pool = BlockPool(10, B)
    assert (pool.empty, runs(pool)) == (10, [])
    assert (pool.empty, pool.orphaned, pool.cached_free, pool.used, pool.free) == (10, 0, 0, 0, 10)
    assert pool.lru == {} and pool.hashed_free == 0
    check(pool)
    for total, size in [(0, 16), (10, 0)]:
        with pytest.raises(ValueError):
            BlockPool(total, size)


def test_a_freed_partial_block_goes_to_the_front_and_is_reused_before_older_cached_chains():
    """vLLM 0.32 frees unhashed blocks to the front of the queue (prepend_n) and hashed ones to
    its back (append_n), and allocates from the front: b's partial block, freed after a's
    cached chain, is taken before a's blocks; then a (freed first) loses its tail, then b."""
    pool = BlockPool(8, B)
    a = admit(pool, "a", 8)  # 2 full blocks
    b = admit(pool, "b", 6)  # 1 full block + a partial one
    assert (pool.empty, runs(pool)) == (4, [])  # 8 - 2 - 2
    check(pool, [a, b])
    release(pool, a)  # no partial block: a's 2 blocks to the back
    release(pool, b)  # b's partial block to the front, its full block to the back
    check(pool)
    assert (pool.empty, runs(pool)) == (5, [("a", 2), ("b", 1)])

    assert pool.allocate(5)  # the unhashed front, b's partial block included: nothing evicted
    assert (pool.empty, pool.evicted, runs(pool)) == (0, 0, [("a", 2), ("b", 1)])
    check(pool, [_holder(5)])

    assert pool.allocate(1)  # a's tail block
    assert runs(pool) == [("a", 1), ("b", 1)] and (pool.resident["a"], pool.evicted) == (1, 1)
    check(pool, [_holder(6)])

    assert pool.allocate(2)  # the rest of a, then b
    assert runs(pool) == [] and pool.resident == {"a": 0, "b": 0} and pool.evicted == 3
    check(pool, [_holder(8)])


def test_allocate_when_short_returns_false_and_changes_nothing():
    """Check-then-act: asking for more than the free queue holds fails without side effects;
    zero blocks always succeed."""
    pool = BlockPool(6, B)
    a = admit(pool, "a", 16)  # 4 blocks: 2 left
    release(pool, a, computed=14)  # 3 full blocks cached; the partial one to the front
    assert (pool.empty, runs(pool)) == (3, [("a", 3)])
    check(pool)
    assert pool.allocate(1)
    assert (pool.empty, runs(pool)) == (2, [("a", 3)])
    before = snapshot(pool)
    assert not pool.allocate(pool.free + 1)  # 6 > 5
    assert snapshot(pool) == before
    assert pool.allocate(0) and pool.allocate(-2)
    assert snapshot(pool) == before
    check(pool, [_holder(1)])


# ---- release -----------------------------------------------------------------------------


def test_release_keeps_full_blocks_cached_and_returns_the_partial_block_unhashed():
    """10 computed tokens in blocks of 4: the two full blocks stay cached at the back, the
    partial third returns to the unhashed front. A later request's cached block queues behind
    the first one's."""
    pool = BlockPool(10, B)
    r = admit(pool, "p", 10)
    assert r.num_blocks == 3 and pool.empty == 7
    check(pool, [r])
    release(pool, r)
    check(pool)
    assert (pool.empty, runs(pool)) == (8, [("p", 2)])  # 7 + the partial block
    assert pool.resident["p"] == 2
    assert (pool.empty, pool.cached_free, pool.used) == (8, 2, 0)
    q = admit(pool, "q", 6)  # 2 blocks from the unhashed front: 8 - 2 = 6
    release(pool, q)  # 6 tokens: 1 full block, 1 partial
    check(pool)
    assert (pool.empty, runs(pool)) == (7, [("p", 2), ("q", 1)])


def test_preempted_request_caches_only_the_blocks_it_had_computed():
    """A request holding 5 blocks but with only 6 tokens computed caches one block; the other
    four (partial and never written) return unhashed."""
    pool = BlockPool(10, B)
    r = admit(pool, "p", 20)  # 5 blocks: 5 left
    release(pool, r, computed=6)
    check(pool)
    assert pool.resident["p"] == 1
    assert (pool.empty, runs(pool)) == (9, [("p", 1)])  # 5 + 4


def test_program_chain_hits_its_full_blocks_after_release():
    """The program's next call (a longer prompt) hits exactly the full blocks it released."""
    pool = BlockPool(20, B)
    r = admit(pool, "p", 10)
    release(pool, r)
    look = pool.lookup(SK, 0, "p", 30)
    assert (look.shared_hit, look.own_hit, look.broken) == (0, 2, False)
    check(pool)


def test_program_chain_after_a_shared_prefix_hits_prefix_then_own_blocks():
    """With a 2-block shared prefix, a program that computed 18 tokens (4 full blocks) hits the
    2 prefix blocks and its 2 own blocks on its next call."""
    pool = BlockPool(20, B)
    r = admit(pool, "p", 18, prefix_blocks=2)  # 5 blocks; the 2 prefix blocks join the chain
    assert r.shared_blocks == 2 and pool.resident[SK] == 2
    release(pool, r)
    check(pool)
    # tail first: p's 2 own blocks, then the prefix; the partial one unhashed (15 + 1)
    assert (pool.empty, runs(pool)) == (16, [("p", 2), (SK, 2)])
    look = pool.lookup(SK, 2, "p", 30)
    assert (look.shared_hit, look.own_hit, look.broken) == (2, 2, False)
    assert look.hit_blocks == 4


def test_hit_is_capped_to_leave_at_least_one_token_to_compute():
    """Hits never exceed (num_tokens - 1) // block_size blocks, shared blocks counted first;
    the program's resident blocks are still reported (they are taken along)."""
    pool = BlockPool(20, B)
    release(pool, admit(pool, "p", 18, prefix_blocks=2))  # 2 shared + 2 own full blocks cached
    for num_tokens in range(1, 30):
        look = pool.lookup(SK, 2, "p", num_tokens)
        cap = (num_tokens - 1) // B
        assert look.hit_blocks == min(4, cap), num_tokens
        assert look.shared_hit == min(2, cap)
        assert look.own_resident == 2
    assert pool.lookup(SK, 2, "p", 16).hit_blocks == 3  # 16 tokens: the last block recomputed
    assert pool.lookup(SK, 2, "p", 17).hit_blocks == 4
    check(pool)


# ---- shared prefix -----------------------------------------------------------------------


def shared_chain(pool, prefix_blocks=3) -> None:
    """Put the shared chain in the cache: a first program schedules it (it joins the chain at
    once) and ends."""
    r = admit(pool, "donor", prefix_blocks * B + 2, prefix_blocks=prefix_blocks)
    assert r.shared_blocks == prefix_blocks
    release(pool, r)
    check(pool)
    assert pool.resident[SK] == prefix_blocks and pool.lru[SK] == prefix_blocks


def test_shared_prefix_blocks_join_the_chain_when_scheduled_not_at_release():
    """A request that found no shared prefix computes it; the moment its prompt is scheduled
    its 3 prefix blocks are the shared chain (it references it), so a lookup hits them while
    it still runs. Its release adds nothing to the chain, it only drops its reference."""
    pool = BlockPool(20, B)
    a = admit(pool, "a", 14, prefix_blocks=3)  # 4 blocks: 3 prefix + a partial one
    assert a.look.shared_hit == 0 and a.shared_blocks == 3 and a.num_blocks == 4
    assert (pool.resident[SK], pool.refs[SK]) == (3, 1) and SK not in pool.queue
    check(pool, [a])
    look = pool.lookup(SK, 3, "b", 20)
    assert (look.shared_hit, look.own_hit, look.broken) == (3, 0, False)
    release(pool, a)
    check(pool)
    # 14 tokens = 3 full blocks, all the prefix: no own block; the partial one unhashed (16 + 1)
    assert (pool.empty, runs(pool)) == (17, [(SK, 3)])
    assert pool.resident == {SK: 3, "a": 0} and pool.refs[SK] == 0


def test_a_sharer_admitted_while_the_first_request_runs_hits_the_prefix_it_scheduled():
    """Two programs admitted one after the other (the same step included): the second hits the
    3 prefix blocks the first just scheduled, and allocates only its own 2 blocks."""
    pool = BlockPool(20, B)
    running: list = []
    a = admit(pool, "a", 14, prefix_blocks=3, running=running)  # 4 blocks
    b = admit(pool, "b", 20, prefix_blocks=3, running=running)
    assert (b.look.shared_hit, b.shared_blocks, b.num_blocks) == (3, 3, 5)  # 3 hit + 2 new
    assert pool.refs[SK] == 2 and pool.free == 14  # 20 - 4 - 2
    check(pool, running)
    release(pool, a, running=running)  # its partial block; the chain stays referenced by b
    assert (pool.empty, runs(pool), pool.refs[SK]) == (15, [], 1)
    check(pool, running)
    release(pool, b, running=running)  # 20 tokens: 5 full = 3 shared + 2 own
    assert (pool.empty, runs(pool)) == (15, [("b", 2), (SK, 3)])
    check(pool)


def test_two_requests_admitted_in_one_step_share_one_copy_of_the_prefix():
    """Both prompts are the 3-block prefix plus 2 tokens: the second hits the first's prefix
    blocks (capped at (14 - 1) // 4 = 3), so the pool holds one copy: 3 + 1 + 1 used, not 8."""
    pool = BlockPool(20, B)
    running: list = []
    a = admit(pool, "a", 14, prefix_blocks=3, running=running)
    b = admit(pool, "b", 14, prefix_blocks=3, running=running)
    assert (a.look.shared_hit, b.look.shared_hit) == (0, 3)
    assert (a.num_blocks, b.num_blocks, pool.used) == (4, 4, 5)
    check(pool, running)
    release(pool, a, running=running)
    check(pool, running)
    release(pool, b, running=running)
    check(pool)
    assert pool.resident[SK] == 3
    assert pool.cached_free == 3  # the prefix once; neither program has an own full block
    assert (pool.empty, runs(pool)) == (17, [(SK, 3)])


def test_a_chunk_caches_the_prefix_blocks_it_completes_and_the_next_chunk_extends_them():
    """Chunked prefill: a first chunk of 6 tokens completes 1 prefix block (the chain is 1
    block, held by the request); the next 8 tokens (14 in all) complete the other 2."""
    pool = BlockPool(20, B)
    a = admit(pool, "a", 30, prefix_blocks=3, scheduled=6)  # 2 blocks
    assert (a.num_blocks, a.shared_blocks, pool.resident[SK], pool.free) == (2, 1, 1, 18)
    check(pool, [a])
    assert pool.lookup(SK, 3, "b", 20).shared_hit == 1  # a sharer now would hit 1 block
    assert schedule(pool, a, 8)  # ceil(14 / 4) = 4 blocks: 2 more
    assert (a.num_blocks, a.shared_blocks, pool.resident[SK], pool.free) == (4, 3, 3, 16)
    check(pool, [a])
    release(pool, a)  # preempted at 14 tokens: its partial 4th block unhashed
    check(pool)
    assert (pool.empty, runs(pool)) == (17, [(SK, 3)])
    assert pool.lookup(SK, 3, "b", 20).shared_hit == 3


def test_preempted_inside_the_prefix_leaves_a_short_chain_the_next_request_extends():
    """A request preempted after 6 tokens leaves a 1-block chain; the next request hits that
    block (the chain is incomplete), computes the other 2 and, at the chain's end, extends it
    to its full length, then keeps its own 2 full blocks."""
    pool = BlockPool(20, B)
    a = admit(pool, "a", 30, prefix_blocks=3, scheduled=6)  # 2 blocks, the chain is 1
    release(pool, a)
    check(pool)
    assert (pool.empty, runs(pool)) == (19, [(SK, 1)])  # 18 + the partial block
    assert pool.resident[SK] == 1 and pool.resident["a"] == 0
    b = admit(pool, "b", 20, prefix_blocks=3)
    assert b.look.broken and b.look.shared_hit == 1
    assert (b.num_blocks, b.shared_blocks) == (5, 3)  # 1 hit + 4 new; extended from 1 to 3
    check(pool, [b])
    release(pool, b)  # 20 tokens: 5 full = 3 shared + 2 own; the 4 new came from the front
    check(pool)
    assert (pool.empty, runs(pool)) == (15, [("b", 2), (SK, 3)])
    assert pool.lookup(SK, 3, "b", 40).hit_blocks == 5


def test_extend_shared_refuses_a_request_that_is_not_at_the_chains_end():
    """extend_shared only lengthens the chain for a request holding exactly its resident
    blocks; one behind the end (blocks the chain already has) keeps them as private
    duplicates: the held count comes back and nothing changes."""
    pool = BlockPool(20, B)
    shared_chain(pool)  # SK: 3 blocks, unreferenced
    before = snapshot(pool)
    assert pool.extend_shared(SK, 0, 3) == 0  # computed the prefix without hitting it
    assert pool.extend_shared(SK, 1, 3) == 1  # holds 1 of the chain's 3
    assert pool.extend_shared(SK, 3, 3) == 3  # nothing new
    assert pool.extend_shared(SK, 2, 1) == 2  # covered below held
    assert snapshot(pool) == before
    check(pool)


def test_shared_prefix_is_reference_counted():
    """While any running request references the shared chain it is not evictable; it enters
    the free queue when the last reference goes."""
    pool = BlockPool(30, B)
    shared_chain(pool)
    running: list = []
    a = admit(pool, "a", 20, prefix_blocks=3, running=running)
    b = admit(pool, "b", 24, prefix_blocks=3, running=running)
    assert a.shared_blocks == b.shared_blocks == 3
    assert pool.refs[SK] == 2 and SK not in pool.lru
    check(pool, running)
    release(pool, a, running=running)
    assert pool.refs[SK] == 1 and SK not in pool.lru
    check(pool, running)
    release(pool, b, running=running)
    assert pool.refs[SK] == 0 and pool.lru[SK] == 3
    check(pool)


def test_shared_prefix_cannot_be_evicted_while_referenced():
    """With the shared chain referenced, allocation takes every other free block and then
    fails rather than take a referenced block."""
    pool = BlockPool(10, B)
    running: list = []
    shared_chain(pool)  # 7 unhashed, SK 3
    a = admit(pool, "a", 14, prefix_blocks=3, running=running)  # refs SK, 1 new block
    check(pool, running)
    assert (pool.empty, runs(pool)) == (6, [])
    assert pool.allocate(6)
    running.append(_holder(6))
    check(pool, running)
    assert pool.resident[SK] == 3 and a.num_blocks == 4
    before = snapshot(pool)
    assert not pool.allocate(1)
    assert snapshot(pool) == before


# ---- eviction order ----------------------------------------------------------------------


def test_program_released_earlier_is_evicted_before_one_released_later():
    """The chain released first is nearer the front: it loses its blocks first."""
    pool = BlockPool(8, B)
    running: list = []
    early = admit(pool, "early", 8, running=running)
    late = admit(pool, "late", 8, running=running)
    release(pool, early, running=running)
    release(pool, late, running=running)
    check(pool)
    assert (pool.empty, runs(pool)) == (4, [("early", 2), ("late", 2)])
    assert pool.allocate(pool.empty + 1)
    assert pool.resident == {"early": 1, "late": 2}
    assert pool.allocate(1)
    assert pool.resident == {"early": 0, "late": 2}
    check(pool, [_holder(8 - 2)])


def test_within_one_release_the_programs_blocks_go_before_the_shared_prefix():
    """Releasing a request queues its own blocks ahead of the shared prompt (vLLM frees
    reversed(req_blocks)): evicting drains the program's chain (tail first) before touching
    the shared one."""
    pool = BlockPool(12, B)
    shared_chain(pool)  # SK: 3 blocks
    a = admit(pool, "a", 24, prefix_blocks=3)  # 3 own blocks
    release(pool, a)
    check(pool)
    assert (pool.empty, runs(pool)) == (6, [("a", 3), (SK, 3)])
    taken = pool.empty
    assert pool.allocate(taken)
    for step in range(1, 4):
        assert pool.allocate(1)
        taken += 1
        assert pool.resident["a"] == 3 - step and pool.resident[SK] == 3
        check(pool, [_holder(taken)])
    assert pool.allocate(1)
    assert pool.resident[SK] == 2 and "a" not in pool.lru
    check(pool, [_holder(taken + 1)])


def test_earlier_released_shared_users_are_evicted_before_later_ones_and_the_prefix():
    """Two programs sharing the prefix, released one after the other: the first program's
    blocks go first, then the second's, and the shared prompt last."""
    pool = BlockPool(16, B)
    shared_chain(pool)
    running: list = []
    p1 = admit(pool, "p1", 20, prefix_blocks=3, running=running)  # 2 own blocks
    p2 = admit(pool, "p2", 20, prefix_blocks=3, running=running)
    release(pool, p1, running=running)
    release(pool, p2, running=running)
    check(pool)
    assert (pool.empty, runs(pool)) == (9, [("p1", 2), ("p2", 2), (SK, 3)])  # 16 - 7
    assert pool.allocate(pool.empty + 2)
    assert pool.resident["p1"] == 0 and pool.resident["p2"] == 2 and pool.resident[SK] == 3
    assert pool.allocate(2)
    assert pool.resident["p2"] == 0 and pool.resident[SK] == 3
    assert list(pool.lru) == [SK]
    check(pool, [_holder(16 - 3)])


def test_evicting_part_of_a_chain_leaves_a_prefix_that_still_hits():
    """A chain that lost its tail blocks is still a prefix: the next lookup hits fewer blocks,
    exactly those still resident."""
    pool = BlockPool(10, B)
    release(pool, admit(pool, "p", 20))  # 5 full blocks cached, 5 unhashed
    assert pool.lookup(SK, 0, "p", 40).own_hit == 5
    assert pool.allocate(pool.empty + 2)
    assert pool.resident["p"] == 3 and pool.lru["p"] == 3
    check(pool, [_holder(7)])
    look = pool.lookup(SK, 0, "p", 40)
    assert look.own_hit == 3 and look.own_resident == 3
    r = admit(pool, "p", 40)
    assert r is None  # 10 blocks needed, 3 hit, no other block free
    check(pool, [_holder(7)])


# ---- broken shared chain -----------------------------------------------------------------


def broken_setup(keep_pin: bool = False):
    """The shared chain has lost its last block while program `p1`'s own blocks (which come
    after it) are still cached: p1's blocks are unreachable. Without a pin that cannot happen
    (p1's blocks always sit ahead of the chain in the queue); a TTL pin keeps them while the
    chain's tail is evicted. Then program `z` caches 2 blocks behind them.
    Free queue at the end: 7 unhashed, [SK 2, p1 3, z 2]; with keep_pin [SK 2, z 2] and
    p1's 3 blocks still pinned."""
    pool = BlockPool(14, B)
    shared_chain(pool)  # donor: 4 blocks; 11 unhashed, [SK 3]
    p1 = admit(pool, "p1", 24, prefix_blocks=3)  # hits SK, 3 new blocks
    release(pool, p1)  # 24 tokens: 6 full, 3 own
    check(pool)
    assert (pool.empty, runs(pool)) == (8, [("p1", 3), (SK, 3)])
    assert pool.pin("p1") == 3
    assert pool.allocate(9)  # the 8 unhashed and SK's tail block
    assert runs(pool) == [(SK, 2)] and pool.resident[SK] == 2 and pool.evicted == 1
    check(pool, [_holder(9)])
    if not keep_pin:
        pool.unpin("p1")  # back to the free queue, as the most recent
    # the requests that took those 9 blocks end as program z, with 8 tokens computed
    pool.release(None, 0, 0, "z", 9, 8)  # 2 full blocks cached, 7 unhashed
    check(pool)
    assert pool.resident["p1"] == 3 and pool.empty == 7
    return pool


def test_broken_shared_chain_hides_the_programs_own_blocks():
    """With a shared block missing, lookup reports the chain broken and no own hits: block i
    only hits when blocks 0..i-1 do."""
    pool = broken_setup()
    assert runs(pool) == [(SK, 2), ("p1", 3), ("z", 2)]
    look = pool.lookup(SK, 3, "p1", 40)
    assert look.broken
    assert look.shared_hit == 2 and look.own_hit == 0 and look.own_resident == 0
    assert look.free_after == 12  # 14 free, the 2 shared blocks it hits leave the queue
    check(pool)


def test_acquire_on_a_broken_chain_orphans_the_programs_blocks_where_they_are():
    """Starting p1's next call renames its unreachable run to an orphan at its place in the
    queue: still free, resident 0. Allocation then takes the unhashed blocks, then the hashed
    runs strictly in queue order: the orphans before z's cached chain behind them. The call's
    scheduled blocks repair the shared chain; its release caches its new own blocks."""
    pool = broken_setup()
    look = pool.lookup(SK, 3, "p1", 30)
    assert pool.acquire(SK, "p1", look) == 2
    assert (pool.empty, runs(pool)) == (7, [("orphan", 3), ("z", 2)])
    assert (pool.orphaned, pool.cached_free, pool.hashed_free) == (3, 2, 5)
    assert pool.resident["p1"] == 0 and pool.lru == {"z": 2}
    assert pool.free == look.free_after == 12
    r = Running("p1", SK, 3, 30, look, 2, look.shared_hit, look.hit_blocks * B)
    check(pool, [r])
    assert schedule(pool, r, 30 - 8)  # 8 blocks in all: 6 new, all unhashed ones
    assert (pool.empty, runs(pool)) == (1, [("orphan", 3), ("z", 2)])
    assert r.shared_blocks == 3 and pool.resident[SK] == 3  # block 3 scheduled: chain repaired
    check(pool, [r])
    # an orphan is hashed, so reusing it is an eviction (as vLLM counts it): 1 before, +1, +3
    assert pool.allocate(2)  # the last unhashed block and one orphan
    assert (pool.empty, runs(pool), pool.evicted) == (0, [("orphan", 2), ("z", 2)], 2)
    assert pool.allocate(3)  # the 2 orphans, then z's tail (z is reusable, the orphans not)
    assert runs(pool) == [("z", 1)] and (pool.resident["z"], pool.evicted) == (1, 5)
    check(pool, [r, _holder(5)])
    release(pool, r)  # 30 tokens: 7 full = 3 shared + 4 own, 1 partial
    check(pool, [_holder(5)])
    assert (pool.empty, runs(pool)) == (1, [("z", 1), ("p1", 4), (SK, 3)])
    assert pool.lookup(SK, 3, "p1", 40).hit_blocks == 7


def test_orphans_count_as_hashed_free_and_are_never_hit():
    """Orphans stay free and hashed while the program reruns, but no lookup returns them:
    p1's next hits are the 4 blocks its new call cached."""
    pool = broken_setup()
    look = pool.lookup(SK, 3, "p1", 30)
    pool.acquire(SK, "p1", look)
    r = Running("p1", SK, 3, 30, look, 2, look.shared_hit, look.hit_blocks * B)
    assert schedule(pool, r, 30 - 8)  # 6 new blocks from the 7 unhashed
    assert (pool.empty, runs(pool)) == (1, [("orphan", 3), ("z", 2)])
    assert (pool.free, pool.hashed_free) == (6, 5)  # 1 + 3 + 2; 3 orphans + z's 2
    check(pool, [r])
    assert pool.lookup(SK, 3, "p1", 40).hit_blocks == 3  # the shared chain only
    release(pool, r)  # 4 own blocks cached, the partial one unhashed
    check(pool)
    assert (pool.empty, runs(pool)) == (2, [("orphan", 3), ("z", 2), ("p1", 4), (SK, 3)])
    assert (pool.orphaned, pool.cached_free, pool.hashed_free) == (3, 9, 12)
    look = pool.lookup(SK, 3, "p1", 40)
    assert (look.shared_hit, look.own_hit, look.own_resident) == (3, 4, 4)  # not the orphans
    assert look.free_after == 7  # 14 free less SK's 3 and p1's 4


def test_acquire_on_a_broken_chain_turns_a_pinned_run_into_an_orphan_at_the_back():
    """p1's blocks are still pinned when its next call finds the chain broken: the pin ends
    and its 3 blocks join the back of the queue as an orphan run."""
    pool = broken_setup(keep_pin=True)
    assert (pool.empty, runs(pool), pool.pinned) == (7, [(SK, 2), ("z", 2)], {"p1": 3})
    look = pool.lookup(SK, 3, "p1", 30)
    assert look.broken and look.own_resident == 0
    assert pool.acquire(SK, "p1", look) == 2
    assert runs(pool) == [("z", 2), ("orphan", 3)]
    assert (pool.pinned, pool.pinned_total, pool.orphaned) == ({}, 0, 3)
    assert pool.resident["p1"] == 0 and pool.free == 12  # 7 + 2 + 3
    check(pool, [Running("p1", SK, 3, 30, look, 2, 2, 8)])


# ---- randomized interleavings ------------------------------------------------------------

N_SHARED = 3
PROGRAMS = ("p0", "p1", "p2", "p3")
LONER = "solo"  # a program without the shared prompt, competing for blocks
ALL = (*PROGRAMS, LONER)


class PoolMachine(RuleBasedStateMachine):
    """Programs sharing one prefix (and one without it) start calls in chunks, end them
    (finished or preempted) and pin their blocks, in random order with growing contexts, under
    memory pressure. As in vLLM's FCFS scheduler, a new request is admitted only once every
    running one has its whole prompt scheduled (a chunk cut short used up the step's token
    budget): at most one request is mid-prefill."""

    @initialize(total=st.integers(6, 40))
    def start(self, total):
        self.pool = BlockPool(total, B)
        # context so far: a program's prompt starts with the whole shared prompt
        self.tokens = {p: (0 if p == LONER else N_SHARED * B) for p in ALL}
        self.known = dict.fromkeys(ALL, 0)  # most tokens ever scheduled
        self.live: dict[str, Running] = {}

    def prefix_blocks(self, p):
        return 0 if p == LONER else N_SHARED

    def partial(self) -> Running | None:
        return next((r for r in self.live.values() if r.scheduled < r.num_tokens), None)

    # No preconditions: a rule that does not apply is a no-op (hypothesis gives up on steps
    # whose rules are mostly disabled).
    @rule(p=st.sampled_from(ALL), grow=st.integers(1, 30), chunk=st.integers(1, 40))
    def admit_call(self, p, grow, chunk):
        if p in self.live or self.partial() is not None:
            return
        num_tokens = self.tokens[p] + grow
        prefix_blocks = self.prefix_blocks(p)
        prefix_key = SK if prefix_blocks else None
        before = snapshot(self.pool)
        look = self.pool.lookup(prefix_key, prefix_blocks, p, num_tokens)
        assert look.hit_blocks <= (num_tokens - 1) // B
        assert look.shared_hit <= prefix_blocks
        assert look.own_hit <= max(0, self.known[p] // B - prefix_blocks)
        assert look.own_hit <= look.own_resident
        event(
            f"lookup: broken={look.broken} shared_hit={look.shared_hit > 0} "
            f"own_hit={look.own_hit > 0} orphans={self.pool.orphaned > 0}"
        )
        first = min(chunk, num_tokens - look.hit_blocks * B)  # the budget may cut it short
        evicted, orphaned = self.pool.evicted, self.pool.orphaned
        r = admit(self.pool, p, num_tokens, prefix_blocks, prefix_key, scheduled=first)
        if r is None:
            event("admission refused")
            assert snapshot(self.pool) == before
            return
        event(f"admission evicted blocks: {self.pool.evicted > evicted}")
        if self.pool.orphaned > orphaned:
            event("admission orphaned the program's blocks")
        event(f"admission chunked: {r.scheduled < num_tokens}")
        if prefix_blocks:  # it holds the shared chain to its end, whatever it hit
            assert r.shared_blocks == self.pool.resident.get(SK, 0)
            assert r.shared_blocks == min(N_SHARED, r.scheduled // B)
        self.tokens[p] = num_tokens
        self.known[p] = max(self.known[p], r.scheduled)
        self.live[p] = r

    @rule(chunk=st.integers(1, 40))
    def schedule_chunk(self, chunk):
        r = self.partial()
        if r is None:
            return
        before = snapshot(self.pool)
        held = r.shared_blocks
        if not schedule(self.pool, r, min(chunk, r.num_tokens - r.scheduled)):
            event("chunk refused")  # the engine would preempt someone
            assert snapshot(self.pool) == before
            return
        event(f"chunk extended the shared chain: {r.shared_blocks > held}")
        self.known[r.chain_key] = max(self.known[r.chain_key], r.scheduled)

    @rule(data=st.data())
    def release_call(self, data):
        if not self.live:
            return
        p = data.draw(st.sampled_from(sorted(self.live)))
        r = self.live.pop(p)
        computed = data.draw(st.integers(r.hit_tokens, r.scheduled))
        shared_before = self.pool.resident.get(SK, 0)
        release(self.pool, r, computed)
        assert self.pool.resident.get(SK, 0) == shared_before, "release never extends a chain"
        assert 0 <= self.pool.resident[p] <= max(0, computed // B - r.prefix_blocks)
        if data.draw(st.booleans()):  # Continuum pins a program's blocks as its call ends
            self.pin_chain(p)

    @rule(n=st.integers(1, 40))
    def burst(self, n):
        """Other requests take n blocks (evicting from the front) and end with no full block."""
        n = min(n, self.pool.free)
        evicted = self.pool.evicted
        assert self.pool.allocate(n)
        self.pool.release(None, 0, 0, "burst", n, 0)
        assert self.pool.empty >= n
        event(f"burst evicted blocks: {self.pool.evicted > evicted}")

    @rule(p=st.sampled_from(ALL))
    def pin_chain(self, p):
        if p in self.live or p not in self.pool.lru:
            return
        n = self.pool.lru[p]
        assert self.pool.pin(p) == n
        event("pinned")

    @rule(p=st.sampled_from(ALL))
    def unpin_chain(self, p):
        if p in self.pool.pinned:
            n = self.pool.pinned[p]
            self.pool.unpin(p)
            assert list(self.pool.queue.items())[-1] == (p, n)  # back to the end of the queue

    @invariant()
    def conservation(self):
        check(self.pool, list(self.live.values()))

    @invariant()
    def residency_within_what_was_computed(self):
        pool = self.pool
        assert 0 <= pool.resident.get(SK, 0) <= N_SHARED
        # shared blocks join the chain when some program schedules them
        assert pool.resident.get(SK, 0) <= max(self.known[p] // B for p in PROGRAMS)
        for p in ALL:
            res = pool.resident.get(p, 0)
            assert 0 <= res <= max(0, self.known[p] // B - self.prefix_blocks(p))
            if p in self.live:
                assert p not in pool.lru and p not in pool.pinned
            else:  # a finished call's resident blocks are all free or pinned
                assert res == pool.lru.get(p, 0) + pool.pinned.get(p, 0)
        if pool.refs.get(SK, 0) == 0:
            assert pool.resident.get(SK, 0) == pool.lru.get(SK, 0)
        else:
            assert SK not in pool.lru


TestPoolMachine = PoolMachine.TestCase
TestPoolMachine.settings = settings(max_examples=300, stateful_step_count=60, deadline=None)


# ---- the KV cache manager over the pool --------------------------------------------------


def engine_request(pid: str, prompt: int, output: int = 4, request_id: int = 1, prefix=0):
    from thundersim.core.backend import Request
    from thundersim.sim.request import EngineRequest

    req = Request(pid, 0, prompt, output, "x" if prefix else None, prefix * B, 0.0, 0)
    return EngineRequest(req, lambda usage: None, request_id, B, 0.0)


def _compute(req, tokens: int) -> None:
    req.num_scheduled_tokens = tokens
    req.compute_scheduled()


def test_kv_cache_manager_keeps_vllms_null_block_out_of_the_pool():
    """vLLM's block 0 is the null block, never handed out: num_gpu_blocks = 9 gives a pool of
    8 blocks (32 tokens of 4); 2 is the smallest engine with a usable block."""
    from thundersim.sim.kv_cache_manager import KVCacheManager

    kv = KVCacheManager(9, B)
    assert (kv.num_gpu_blocks, kv.pool.total, kv.num_free_blocks()) == (9, 8, 8)
    assert kv.capacity_tokens == 32 and (kv.pool.empty, runs(kv.pool)) == (8, [])
    assert KVCacheManager(2, B).pool.total == 1
    for n in (1, 0):
        with pytest.raises(ValueError, match="null block"):
            KVCacheManager(n, B)


def test_allocate_slots_gives_a_handle_or_none_and_changes_nothing_when_short():
    """vLLM's KVCacheManager contract: a waiting request's hit comes from get_computed_blocks
    (a check), allocate_slots takes the hit and the new blocks or returns None untouched, a
    running request grows by the blocks its next tokens need, and free caches its full
    blocks."""
    from thundersim.sim.kv_cache_manager import KVCacheManager

    kv = KVCacheManager(9, B)  # 8 usable blocks
    a = engine_request("a", 20, request_id=1)
    hit, hit_tokens = kv.get_computed_blocks(a)
    assert hit_tokens == 0
    assert kv.allocate_slots(a, 20, hit) is not None  # 5 blocks
    a.start_at(hit_tokens)
    assert (kv.num_blocks(a), kv.num_free_blocks()) == (5, 3)
    b = engine_request("b", 16, request_id=2)
    hit, _ = kv.get_computed_blocks(b)
    before = snapshot(kv.pool)
    assert kv.num_new_blocks(b, 16, hit) == 4 and kv.allocate_slots(b, 16, hit) is None
    assert snapshot(kv.pool) == before
    assert kv.allocate_slots(b, 12, hit) is not None  # a first chunk of 3 blocks fits
    assert kv.num_free_blocks() == 0
    b.start_at(0)
    _compute(b, 12)
    assert kv.num_new_blocks(b, 4) == 1 and kv.allocate_slots(b, 4) is None  # pool is full
    kv.check_invariants([a, b])
    _compute(a, 18)
    kv.free(a)  # 18 computed tokens: 4 full blocks stay cached, the 5th returns unhashed
    assert (kv.pool.resident["a"], kv.pool.empty) == (4, 1)
    assert runs(kv.pool) == [("a", 4)]  # the partial block went back to the unhashed front
    assert kv.allocate_slots(b, 4) is not None and kv.num_blocks(b) == 4
    kv.check_invariants([b])
    again = engine_request("a", 30, request_id=3)
    hit, hit_tokens = kv.get_computed_blocks(again)
    assert hit_tokens == 16  # a's 4 cached blocks: b's growth took the unhashed block first
    with pytest.raises(AssertionError, match="handles"):
        kv.check_invariants([])  # b still holds blocks: a handle without a running request


def test_allocate_slots_caches_scheduled_prefix_blocks_for_a_sharer_admitted_next():
    """allocate_slots extends the shared chain after every allocation, the first chunk and the
    running ones: a's first chunk of 6 tokens completes 1 prefix block, its second (14 tokens
    in all) the other 2; b, admitted while a still runs, hits all 3."""
    from thundersim.sim.kv_cache_manager import KVCacheManager

    kv = KVCacheManager(21, B)  # 20 usable blocks
    a = engine_request("a", 20, request_id=1, prefix=3)
    hit, hit_tokens = kv.get_computed_blocks(a)
    assert hit_tokens == 0
    handle = kv.allocate_slots(a, 6, hit)  # ceil(6 / 4) = 2 blocks
    assert (handle.num_blocks, handle.shared_blocks, kv.pool.resident[SK]) == (2, 1, 1)
    a.start_at(0)
    _compute(a, 6)
    kv.check_invariants([a])
    handle = kv.allocate_slots(a, 8)  # ceil(14 / 4) = 4 blocks: 2 more
    assert (handle.num_blocks, handle.shared_blocks, kv.pool.resident[SK]) == (4, 3, 3)
    _compute(a, 8)
    b = engine_request("b", 16, request_id=2, prefix=3)
    hit, hit_tokens = kv.get_computed_blocks(b)
    assert (hit.shared_hit, hit_tokens) == (3, 12)  # (16 - 1) // 4 = 3: the whole prefix
    handle = kv.allocate_slots(b, 16 - 12, hit)
    assert (handle.num_blocks, handle.shared_blocks) == (4, 3)  # 3 hit + 1 new
    b.start_at(hit_tokens)
    assert kv.num_free_blocks() == 15 and kv.pool.refs[SK] == 2  # 20 - 4 - 1
    kv.check_invariants([a, b])


def test_num_cached_blocks_counts_every_hashed_block_as_vllm_does():
    """Blocks holding a hash: the shared chain in use, each running request's own full
    blocks, the free cached ones and the pinned ones; never partial blocks."""
    from thundersim.sim.kv_cache_manager import KVCacheManager

    kv = KVCacheManager(21, B)
    a = engine_request("a", 18, request_id=1, prefix=2)  # prefix: 8 tokens, 2 blocks
    hit, _ = kv.get_computed_blocks(a)
    kv.allocate_slots(a, 18, hit)  # 5 blocks
    a.start_at(0)
    _compute(a, 18)
    assert kv.num_cached_blocks([a]) == 4  # 18 // 4 = 4 full: SK's 2 + a's own 2
    kv.free(a)
    assert kv.pool.hashed_free == 4 and kv.num_cached_blocks([]) == 4  # now all free
    b = engine_request("b", 16, request_id=2, prefix=2)
    hit, hit_tokens = kv.get_computed_blocks(b)
    assert hit_tokens == 8  # the 2 prefix blocks (b is another program)
    kv.allocate_slots(b, 2, hit)  # ceil(10 / 4) = 3 blocks: 1 new
    b.start_at(hit_tokens)
    _compute(b, 2)
    assert kv.num_cached_blocks([b]) == 4  # a's free 2 + SK's 2 in use; 10 // 4 - 2 = 0 own
    kv.allocate_slots(b, 6)  # ceil(16 / 4) = 4 blocks: 1 more
    _compute(b, 6)
    assert kv.num_cached_blocks([b]) == 6  # + b's own 16 // 4 - 2 = 2
    assert kv.pin("a") == 2
    assert kv.num_cached_blocks([b]) == 6  # pinned blocks keep their hash
    kv.check_invariants([b])


def test_a_decoding_request_holds_what_its_tokens_fill_and_settles_it_when_it_stops():
    """The decode group grows its members' blocks in bulk: meanwhile a member's count is
    derived from its computed tokens, and written back to its handle when it leaves."""
    from thundersim.sim.decoding import DecodeGroup
    from thundersim.sim.kv_cache_manager import KVCacheManager

    kv, group = KVCacheManager(16, B), DecodeGroup(B)
    r = engine_request("r", 10, output=9)
    hit, _ = kv.get_computed_blocks(r)
    kv.allocate_slots(r, 10, hit)
    r.start_at(0)
    _compute(r, 10)
    r.append_output_token()
    group.add(r)  # 10 computed of 11 tokens, 3 blocks (the third has 2 free slots)
    assert (r.num_computed_tokens, r.num_tokens, r.num_output_tokens) == (10, 11, 1)
    assert [group.new_blocks(k) for k in (1, 2, 3, 6, 7)] == [0, 0, 1, 1, 2]
    assert kv.allocate_decode_slots(group.new_blocks(5))
    group.iteration += 5
    assert (r.num_computed_tokens, r.num_tokens, kv.num_blocks(r)) == (15, 16, 4)
    assert group.context_tokens() == 15 and group.pop_finished() == []
    kv.check_invariants([r])
    assert kv.allocate_decode_slots(group.new_blocks(3))
    group.iteration += 3  # 18 computed: its 9th output token is the last
    kv.check_invariants([r])
    assert group.pop_finished() == [r]
    group.remove(r)
    kv.settle_decode(r)
    assert not r.is_decoding and (r.num_output_tokens, kv.num_blocks(r)) == (9, 5)
    assert group.count == 0 and group.context_tokens() == 0


def test_a_request_that_leaves_and_rejoins_the_decode_group_finishes_once():
    """Preempted and re-admitted with the same finish iteration, a request has two equal
    entries in the group's finish queue; it must come out of pop_finished once (a property
    run under continuum found it removed twice)."""
    from thundersim.sim.decoding import DecodeGroup

    group = DecodeGroup(B)
    r = engine_request("r", 10, output=3)
    r.start_at(0)
    _compute(r, 10)
    r.append_output_token()
    group.add(r)
    group.remove(r)  # left (preempted) ...
    group.add(r)  # ... and back in the same iteration: the same finish, a second entry
    group.iteration += 2  # its 3rd output token is the last
    assert group.pop_finished() == [r]
    group.remove(r)
    assert group.count == 0 and group.pop_finished() == []


def test_a_prompt_that_is_the_shared_prompt_takes_the_whole_chain_along():
    """A 12-token prompt on a 3-block shared prompt hits at most 2 blocks (vLLM leaves one token
    to compute), yet takes all 3 resident blocks along, so every holder holds the whole chain:
    after it runs, its own output blocks are reachable for its next call."""
    from thundersim.sim.kv_cache_manager import KVCacheManager

    kv = KVCacheManager(21, B)  # 20 usable blocks
    pool = kv.pool
    assert pool.allocate(3)
    assert pool.extend_shared(SK, 0, 3) == 3  # someone computed the shared prompt...
    pool.release(SK, 3, 3, "a", 3, 12)  # ...and ended: the chain is cached, refs 0
    look = pool.lookup(SK, 3, "c", 12)
    assert (look.shared_hit, look.shared_taken, look.own_hit) == (2, 3, 0)
    assert look.free_after == 20 - 3
    assert pool.acquire(SK, "c", look) == 3 and pool.refs[SK] == 1
    assert pool.allocate(3)  # 3 blocks for tokens 12..23 (it computes 21 of them)
    pool.release(SK, 3, 3, "c", 6, 21)  # 21 computed: 5 full blocks, 2 its own
    assert pool.resident["c"] == 2 and pool.lru == {"c": 2, SK: 3}
    look = pool.lookup(SK, 3, "c", 30)
    assert (look.shared_hit, look.own_hit) == (3, 2)


def test_a_broken_chains_pinned_run_counts_as_free_in_the_lookup():
    """Acquiring on a broken chain turns the program's pinned run into free orphans: the
    lookup's free_after already counts them."""
    pool = BlockPool(14, B)
    assert pool.allocate(6)
    assert pool.extend_shared(SK, 0, 3) == 3
    pool.release(SK, 3, 3, "p1", 6, 24)  # 6 blocks, 3 shared + 3 own cached
    assert pool.pin("p1") == 3
    assert pool.allocate(8 + 1)  # 8 empty, then the shared chain's tail block
    assert pool.resident[SK] == 2
    look = pool.lookup(SK, 3, "p1", 40)
    assert look.broken and pool.free == 2
    assert look.free_after == 0 + 3  # the shared hit leaves the queue; the pinned 3 turn free
    pool.acquire(SK, "p1", look)
    assert pool.free == look.free_after


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(st.integers(1, 40), st.integers(1, 60)), max_size=12),
    st.integers(0, 30),
    st.integers(0, 40),
)
def test_fitting_iterations_is_the_longest_decode_run_whose_blocks_fit(members, clock, free):
    """DecodeGroup.fitting_iterations (the skip-ahead's bound, in O(block_size)) is the
    largest k with new_blocks(k) <= free, as a search over new_blocks finds it."""
    from thundersim.sim.decoding import DecodeGroup

    group = DecodeGroup(B)
    group.iteration = clock
    for i, (prompt, output) in enumerate(members):
        r = engine_request(f"r{i}", prompt, output=output + 1, request_id=i + 1)
        r.start_at(0)
        _compute(r, prompt)
        r.append_output_token()
        group.add(r)
    fits = group.fitting_iterations(free)
    if not members:
        assert fits >= 1 << 60  # nobody decodes: no bound
        return
    assert group.new_blocks(fits) <= free < group.new_blocks(fits + 1)
