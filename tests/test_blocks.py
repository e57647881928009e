"""BlockPool: paged KV blocks with a prefix cache, LRU eviction and a shared system prompt.

Every test checks the conservation laws after every operation: each block is empty, cached-free
or used; the free queue holds exactly the cached-free blocks; and the used blocks equal what the
running requests hold, counted independently of the pool's own counters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from thundersim.sim.blocks import BlockPool, Lookup

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

    @property
    def hit_tokens(self) -> int:
        return self.look.hit_blocks * B


def check(pool: BlockPool, running=()) -> None:
    """The conservation laws, plus an independent count of the used blocks: what running
    requests hold privately, plus every shared chain some request references."""
    assert pool.empty >= 0 and pool.cached_free >= 0
    assert pool.empty + pool.cached_free + pool.used == pool.total
    assert sum(pool.lru.values()) == pool.cached_free
    for key, n in pool.lru.items():
        assert n > 0 and pool.resident.get(key) == n, key
    for key, n in pool.resident.items():
        assert n >= 0, key
    private = sum(r.num_blocks - r.shared_blocks for r in running)
    shared = sum(pool.resident.get(k, 0) for k, refs in pool.refs.items() if refs > 0)
    assert pool.used == private + shared
    refs: dict = {}
    for r in running:
        if r.shared_blocks:
            refs[r.prefix_key] = refs.get(r.prefix_key, 0) + 1
    assert {k: n for k, n in pool.refs.items() if n} == refs


def snapshot(pool: BlockPool) -> tuple:
    return (
        pool.empty,
        pool.cached_free,
        pool.evicted,
        list(pool.lru.items()),
        dict(pool.resident),
        dict(pool.refs),
    )


def admit(
    pool, chain_key, num_tokens, prefix_blocks=0, prefix_key=SK, running=None
) -> Running | None:
    """What the engine does to start a request whose whole prompt fits: look up the cached
    prefix, take the hit blocks, allocate the rest. None (and nothing changed) when short."""
    before = snapshot(pool)
    look = pool.lookup(prefix_key, prefix_blocks, chain_key, num_tokens)
    assert snapshot(pool) == before, "lookup is a check: it changes nothing"
    need = max(0, math.ceil(num_tokens / B) - look.shared_hit - look.own_resident)
    if need > look.free_after:
        return None
    num_blocks = pool.acquire(prefix_key, chain_key, look) + need
    assert pool.free == look.free_after
    assert pool.allocate(need)
    r = Running(chain_key, prefix_key, prefix_blocks, num_tokens, look, num_blocks, look.shared_hit)
    if running is not None:
        running.append(r)
    return r


def release(pool, r: Running, computed: int | None = None, running=None) -> None:
    """The request ends (finished or preempted) with `computed` tokens of KV."""
    computed = r.num_tokens if computed is None else computed
    pool.release(
        r.prefix_key, r.prefix_blocks, r.shared_blocks, r.chain_key, r.num_blocks, computed
    )
    if running is not None:
        running.remove(r)


# ---- allocate ----------------------------------------------------------------------------


def test_new_pool_is_all_empty_and_rejects_degenerate_sizes():
    """A fresh pool holds nothing; a pool needs at least one block of at least one token."""
    pool = BlockPool(10, B)
    assert (pool.empty, pool.cached_free, pool.used, pool.free) == (10, 0, 0, 10)
    check(pool)
    for total, size in [(0, 16), (10, 0)]:
        with pytest.raises(ValueError):
            BlockPool(total, size)


def test_allocate_takes_empty_blocks_first_then_evicts_lru_first():
    """Cached blocks survive while empty ones last; then the least recently released chain
    loses its tail blocks first."""
    pool = BlockPool(10, B)
    a = admit(pool, "a", 8)  # 2 blocks
    b = admit(pool, "b", 12)  # 3 blocks
    check(pool, [a, b])
    release(pool, a)
    check(pool, [b])
    release(pool, b)
    check(pool)
    assert list(pool.lru.items()) == [("a", 2), ("b", 3)]
    assert pool.empty == 5

    assert pool.allocate(5)  # exactly the empty blocks: no eviction
    assert (pool.empty, pool.cached_free, pool.evicted) == (0, 5, 0)
    assert pool.resident == {"a": 2, "b": 3}
    check(pool, [_holder(5)])

    assert pool.allocate(1)  # evicts a's tail block
    assert pool.resident["a"] == 1 and list(pool.lru.items()) == [("a", 1), ("b", 3)]
    assert pool.evicted == 1
    check(pool, [_holder(6)])

    assert pool.allocate(2)  # the rest of a, then b's tail
    assert list(pool.lru.items()) == [("b", 2)]
    assert pool.resident == {"a": 0, "b": 2}
    assert pool.evicted == 3
    check(pool, [_holder(8)])


def _holder(n: int) -> Running:
    """Stand-in for requests that took n blocks straight from `allocate`."""
    return Running("holder", None, 0, 0, Lookup(0, 0, 0, False, 0), n, 0)


def test_allocate_when_short_returns_false_and_changes_nothing():
    """Check-then-act: asking for more than empty + cached-free fails without side effects;
    zero blocks always succeed."""
    pool = BlockPool(6, B)
    a = admit(pool, "a", 16)  # 4 blocks
    release(pool, a, computed=14)  # 3 full blocks cached, 1 emptied
    check(pool)
    assert pool.allocate(1)
    before = snapshot(pool)
    assert not pool.allocate(pool.free + 1)
    assert snapshot(pool) == before
    assert pool.allocate(0) and pool.allocate(-2)
    assert snapshot(pool) == before
    check(pool, [_holder(1)])


# ---- release -----------------------------------------------------------------------------


def test_release_keeps_full_blocks_cached_and_empties_the_partial_block():
    """10 computed tokens in blocks of 4: two full blocks stay cached, the third is emptied."""
    pool = BlockPool(10, B)
    r = admit(pool, "p", 10)
    assert r.num_blocks == 3
    check(pool, [r])
    release(pool, r)
    check(pool)
    assert pool.resident["p"] == 2 and pool.lru["p"] == 2
    assert (pool.empty, pool.cached_free, pool.used) == (8, 2, 0)


def test_preempted_request_caches_only_the_blocks_it_had_computed():
    """A request holding 5 blocks but with only 6 tokens computed caches one block."""
    pool = BlockPool(10, B)
    r = admit(pool, "p", 20)
    release(pool, r, computed=6)
    check(pool)
    assert pool.resident["p"] == 1 and pool.empty == 9


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
    r = admit(pool, "p", 18, prefix_blocks=2)
    release(pool, r)
    check(pool)
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


def shared_chain(pool, prefix_blocks=3, running=None) -> None:
    """Put the shared chain in the cache: a first program computes and donates it."""
    r = admit(pool, "donor", prefix_blocks * B + 2, prefix_blocks=prefix_blocks)
    release(pool, r)
    check(pool, running or [])
    assert pool.resident[SK] == prefix_blocks


def test_request_that_computed_the_shared_prefix_donates_it_on_release():
    """A request that found no shared prefix (shared_blocks 0) computes it itself; releasing it
    extends the shared chain, which the next program then hits."""
    pool = BlockPool(20, B)
    r = admit(pool, "a", 14, prefix_blocks=3)
    assert r.shared_blocks == 0 and r.num_blocks == 4
    release(pool, r)
    check(pool)
    assert pool.resident[SK] == 3 and pool.lru[SK] == 3
    look = pool.lookup(SK, 3, "b", 20)
    assert look.shared_hit == 3 and look.own_hit == 0


def test_partial_shared_prefix_is_donated_and_extended_later():
    """A request preempted inside the shared prompt donates the full blocks it had; a later
    request that hits them and computes the rest extends the chain to its full length."""
    pool = BlockPool(20, B)
    a = admit(pool, "a", 30, prefix_blocks=3)
    release(pool, a, computed=6)  # one full block of the prefix
    check(pool)
    assert pool.resident[SK] == 1 and pool.resident["a"] == 0
    b = admit(pool, "b", 20, prefix_blocks=3)
    assert b.look.broken and b.shared_blocks == 1
    running = [b]
    check(pool, running)
    release(pool, b, running=running)
    check(pool)
    assert pool.resident[SK] == 3 and pool.resident["b"] == 2
    assert list(pool.lru.items()) == [("b", 2), (SK, 3)]


def test_duplicate_shared_prefix_computed_twice_is_not_double_counted():
    """Two requests that both computed the shared prompt (neither found it cached): the first
    release donates it, the second's copies are emptied."""
    pool = BlockPool(20, B)
    running: list = []
    a = admit(pool, "a", 14, prefix_blocks=3, running=running)
    b = admit(pool, "b", 14, prefix_blocks=3, running=running)
    assert a.shared_blocks == b.shared_blocks == 0
    release(pool, a, running=running)
    check(pool, running)
    release(pool, b, running=running)
    check(pool)
    assert pool.resident[SK] == 3
    assert pool.cached_free == 3  # the prefix once; neither program has an own full block
    assert pool.empty == 17


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
    """With the shared chain referenced, allocation evicts other cached blocks and then fails
    rather than take a referenced block."""
    pool = BlockPool(10, B)
    running: list = []
    shared_chain(pool)  # SK (3 blocks) cached
    a = admit(pool, "a", 14, prefix_blocks=3, running=running)  # refs SK, 1 own block
    check(pool, running)
    free = pool.free
    assert pool.allocate(free)
    running.append(_holder(free))
    check(pool, running)
    assert pool.resident[SK] == 3 and a.num_blocks == 4
    before = snapshot(pool)
    assert not pool.allocate(1)
    assert snapshot(pool) == before


# ---- eviction order ----------------------------------------------------------------------


def test_program_released_earlier_is_evicted_before_one_released_later():
    """LRU: the chain released first loses its blocks first."""
    pool = BlockPool(8, B)
    running: list = []
    early = admit(pool, "early", 8, running=running)
    late = admit(pool, "late", 8, running=running)
    release(pool, early, running=running)
    release(pool, late, running=running)
    check(pool)
    assert pool.allocate(pool.empty + 1)
    assert pool.resident == {"early": 1, "late": 2}
    assert pool.allocate(1)
    assert pool.resident == {"early": 0, "late": 2}
    check(pool, [_holder(8 - 2)])


def test_within_one_release_the_programs_blocks_go_before_the_shared_prefix():
    """Releasing a request queues its own blocks ahead of the shared prompt: evicting drains
    the program's chain (tail first) before touching the shared one."""
    pool = BlockPool(12, B)
    shared_chain(pool)  # SK: 3 blocks
    a = admit(pool, "a", 24, prefix_blocks=3)  # 3 own blocks
    release(pool, a)
    check(pool)
    assert list(pool.lru) == ["a", SK]
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
    assert list(pool.lru) == ["p1", "p2", SK]
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
    release(pool, admit(pool, "p", 20))  # 5 full blocks
    assert pool.lookup(SK, 0, "p", 40).own_hit == 5
    assert pool.allocate(pool.empty + 2)
    assert pool.resident["p"] == 3 and pool.lru["p"] == 3
    check(pool, [_holder(7)])
    look = pool.lookup(SK, 0, "p", 40)
    assert look.own_hit == 3 and look.own_resident == 3
    r = admit(pool, "p", 40)
    assert r is None  # 10 blocks needed, 3 hit, only the 3 cached ones free
    check(pool, [_holder(7)])


# ---- broken shared chain -----------------------------------------------------------------


def broken_setup():
    """The shared chain has lost its last block while program `p1`'s own blocks (which come
    after it) are still cached: p1's blocks are unreachable."""
    pool = BlockPool(14, B)
    running: list = []
    p0 = admit(pool, "p0", 16, prefix_blocks=3, running=running)  # neither finds the prefix
    p1 = admit(pool, "p1", 24, prefix_blocks=3, running=running)
    release(pool, p0, running=running)  # donates the prefix: queue [p0, SK]
    release(pool, p1, running=running)  # its copies are duplicates: queue [p0, SK, p1]
    check(pool)
    assert list(pool.lru) == ["p0", SK, "p1"]
    assert pool.resident["p1"] == 3
    taken = pool.empty + pool.resident["p0"] + 1
    assert pool.allocate(taken)  # p0 and SK's tail evicted
    assert pool.resident[SK] == 2 and pool.resident["p1"] == 3
    check(pool, [_holder(taken)])
    # the requests that took those blocks end with nothing cacheable
    pool.release(None, 0, 0, "others", taken, 0)
    check(pool)
    assert (pool.empty, pool.cached_free) == (9, 5)
    return pool


def test_broken_shared_chain_hides_the_programs_own_blocks():
    """With a shared block missing, lookup reports the chain broken and no own hits: block i
    only hits when blocks 0..i-1 do."""
    pool = broken_setup()
    look = pool.lookup(SK, 3, "p1", 40)
    assert look.broken
    assert look.shared_hit == 2 and look.own_hit == 0 and look.own_resident == 0
    check(pool)


def test_acquire_on_a_broken_chain_empties_the_programs_unreachable_cached_blocks():
    """Starting the program's next call drops its unreachable cached blocks to empty; the
    pool's free count is unchanged by that, and the conservation laws hold."""
    pool = broken_setup()
    free_before = pool.free
    look = pool.lookup(SK, 3, "p1", 30)
    assert look.free_after == free_before - 2  # the 2 shared blocks it will hit leave the queue
    num_blocks = pool.acquire(SK, "p1", look)
    assert num_blocks == 2
    assert pool.resident["p1"] == 0 and "p1" not in pool.lru
    assert pool.free == look.free_after
    r = Running("p1", SK, 3, 30, look, num_blocks, look.shared_hit)
    check(pool, [r])
    need = math.ceil(30 / B) - num_blocks
    assert pool.allocate(need)
    r.num_blocks += need
    check(pool, [r])
    release(pool, r)  # recomputed the missing shared block: it repairs the chain
    check(pool)
    assert pool.resident[SK] == 3 and pool.resident["p1"] == 4
    assert list(pool.lru.items()) == [("p1", 4), (SK, 3)]
    assert pool.lookup(SK, 3, "p1", 40).hit_blocks == 7


# ---- randomized interleavings ------------------------------------------------------------

N_SHARED = 3
PROGRAMS = ("p0", "p1", "p2", "p3")
LONER = "solo"  # a program without the shared prompt, competing for blocks


class PoolMachine(RuleBasedStateMachine):
    """Programs sharing one prefix (and one without it) start and end calls in random order
    with growing contexts, under memory pressure."""

    @initialize(total=st.integers(6, 40))
    def start(self, total):
        self.pool = BlockPool(total, B)
        self.tokens = dict.fromkeys((*PROGRAMS, LONER), 0)
        self.known = dict.fromkeys((*PROGRAMS, LONER), 0)  # most tokens ever computed
        self.live: dict[str, Running] = {}

    def prefix_blocks(self, p):
        return 0 if p == LONER else N_SHARED

    @rule(p=st.sampled_from((*PROGRAMS, LONER)), grow=st.integers(1, 30))
    def admit_call(self, p, grow):
        if p in self.live:
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
            f"own_hit={look.own_hit > 0}"
        )
        evicted = self.pool.evicted
        r = admit(self.pool, p, num_tokens, prefix_blocks, prefix_key)
        if r is None:
            event("admission refused")
            assert snapshot(self.pool) == before
            return
        event(f"admission evicted blocks: {self.pool.evicted > evicted}")
        self.tokens[p] = num_tokens
        self.live[p] = r

    @precondition(lambda self: self.live)
    @rule(data=st.data())
    def release_call(self, data):
        p = data.draw(st.sampled_from(sorted(self.live)))
        r = self.live.pop(p)
        computed = data.draw(st.integers(r.hit_tokens, r.num_tokens))
        shared_before = self.pool.resident.get(SK, 0)
        release(self.pool, r, computed)
        event(f"release extended the shared chain: {self.pool.resident.get(SK, 0) > shared_before}")
        self.known[p] = max(self.known[p], computed)
        assert 0 <= self.pool.resident[p] <= max(0, computed // B - r.prefix_blocks)

    @invariant()
    def conservation(self):
        check(self.pool, list(self.live.values()))

    @invariant()
    def residency_within_what_was_computed(self):
        pool = self.pool
        assert 0 <= pool.resident.get(SK, 0) <= N_SHARED
        # shared blocks are donated at release, by a program that had computed them
        assert pool.resident.get(SK, 0) <= max(self.known[p] // B for p in PROGRAMS)
        for p in (*PROGRAMS, LONER):
            res = pool.resident.get(p, 0)
            assert 0 <= res <= max(0, self.known[p] // B - self.prefix_blocks(p))
            if p in self.live:
                assert p not in pool.lru
            else:  # a finished call's resident blocks are all evictable
                assert res == pool.lru.get(p, 0)
        if pool.refs.get(SK, 0) == 0:
            assert pool.resident.get(SK, 0) == pool.lru.get(SK, 0)
        else:
            assert SK not in pool.lru
        assert pool.used <= pool.total


TestPoolMachine = PoolMachine.TestCase
TestPoolMachine.settings = settings(max_examples=300, stateful_step_count=60, deadline=None)


def test_request_that_computed_the_whole_prefix_completes_a_partial_shared_chain():
    """Two programs start before the shared prompt is cached; A is preempted after one
    prefix block (and donates it), B computes everything. B's blocks are a valid chain (in
    vLLM each of its full blocks is hashed and cached), so on release B completes the shared
    chain and keeps its own full blocks; its next call hits them."""
    pool = BlockPool(40, B)
    running: list = []
    a = admit(pool, "A", 30, prefix_blocks=3, running=running)
    b = admit(pool, "B", 40, prefix_blocks=3, running=running)
    assert a.shared_blocks == b.shared_blocks == 0
    release(pool, a, computed=6, running=running)
    check(pool, running)
    assert pool.resident[SK] == 1
    release(pool, b, running=running)
    check(pool)
    assert pool.resident[SK] == 3
    assert pool.resident["B"] == 10 - 3
    assert pool.lookup(SK, 3, "B", 60).hit_blocks == 10


# ---- the KV cache manager over the pool --------------------------------------------------


def engine_request(pid: str, prompt: int, output: int = 4, request_id: int = 1, prefix=0):
    from thundersim.core.backend import Request
    from thundersim.sim.request import EngineRequest

    req = Request(pid, 0, prompt, output, "x" if prefix else None, prefix * B, 0.0, 0)
    return EngineRequest(req, lambda usage: None, request_id, B, 0.0)


def test_allocate_slots_gives_a_handle_or_none_and_changes_nothing_when_short():
    """vLLM's KVCacheManager contract: a waiting request's hit comes from get_computed_blocks
    (a check), allocate_slots takes the hit and the new blocks or returns None untouched, a
    running request grows by the blocks its next tokens need, and free caches its full
    blocks."""
    from thundersim.sim.kv_cache_manager import KVCacheManager

    kv = KVCacheManager(8, B)
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
    b.num_scheduled_tokens = 12
    b.compute_scheduled()
    assert kv.num_new_blocks(b, 4) == 1 and kv.allocate_slots(b, 4) is None  # pool is full
    kv.check_invariants([a, b])
    a.num_scheduled_tokens = 18
    a.compute_scheduled()
    kv.free(a)  # 18 computed tokens: 4 full blocks stay cached, the 5th is emptied
    assert (kv.pool.resident["a"], kv.pool.empty) == (4, 1)
    assert kv.allocate_slots(b, 4) is not None and kv.num_blocks(b) == 4
    kv.check_invariants([b])
    again = engine_request("a", 30, request_id=3)
    hit, hit_tokens = kv.get_computed_blocks(again)
    assert hit_tokens == 16  # a's 4 cached blocks: b's growth took the empty block first
    with pytest.raises(AssertionError, match="handles"):
        kv.check_invariants([])  # b still holds blocks: a handle without a running request


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
    r.num_scheduled_tokens = 10
    r.compute_scheduled()
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
    r.num_scheduled_tokens = 10
    r.compute_scheduled()
    r.append_output_token()
    group.add(r)
    group.remove(r)  # left (preempted) ...
    group.add(r)  # ... and back in the same iteration: the same finish, a second entry
    group.iteration += 2  # its 3rd output token is the last
    assert group.pop_finished() == [r]
    group.remove(r)
    assert group.count == 0 and group.pop_finished() == []
