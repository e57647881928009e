"""SimBackend: a SimPy model of one vLLM (v1) replica.

What it models, after vLLM v1's Scheduler / KVCacheManager:
- a FCFS waiting queue; preempted requests go back to its front;
- continuous batching: every iteration runs each running request's next tokens;
- chunked prefill under a per-iteration token budget (`max_num_batched_tokens`); decode
  tokens are served before prefill chunks;
- admission of the waiting head only when the blocks for its first chunk are free (after its
  prefix-cache hits), and none at all in an iteration that had to preempt;
- preemption by recompute: when the running requests need more blocks than are free, the most
  recently admitted is preempted, its blocks freed (full ones stay cached), and it starts again
  from its prefix-cache hits;
- iteration time from a `LatencyModel`.

Skipping ahead: while every running request is decoding and the waiting head cannot be
admitted, nothing changes but contexts growing by one token per iteration. The engine then
computes in closed form how many iterations run until the next thing that matters (a request
finishes, the blocks run out) and how long they take, and sleeps that long in one SimPy
timeout. A new request arriving meanwhile wakes it at the iteration boundary it would have
been seen at. Decoding requests keep their progress relative to a global iteration counter,
so a skipped stretch costs O(block_size), not O(requests x iterations).
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable

import simpy

from thundersim.core.backend import EngineStats, Request, Usage
from thundersim.core.cluster import chain_program
from thundersim.sim.blocks import BlockPool
from thundersim.sim.catalog import GPU, GiB
from thundersim.sim.latency import LatencyModel

# vLLM's default block size on GPUs (vllm/config/cache.py).
DEFAULT_BLOCK_SIZE = 16  # provenance: spec — vLLM's default block size on GPUs
# vLLM's scheduler budget when the server is not told one (max_num_batched_tokens, max_num_seqs):
# vLLM 0.32 picks it by usage context and by the device's total memory as NVML reports it (what
# nvidia-smi shows, the unit of catalog.GPU.memory_bytes), in EngineArgs.get_batch_defaults
# (vllm/engine/arg_utils.py, called from _set_default_max_num_seqs_and_batched_tokens_args).
# These are its OpenAI-API-server values (`vllm serve`), the ones the live backend runs with; the
# offline LLM class gets 16384 / 1024 on >= 70 GiB and 8192 / 256 below. (vLLM doubles both in
# --performance-mode throughput and uses other values on TPUs and CPUs; neither applies here.)
# provenance: spec — vLLM 0.32 EngineArgs.get_batch_defaults: `device_memory >= 160 * GiB_bytes`
# is the largest tier (B200/B300 class)
VLLM_LARGE_GPU_BYTES = 160 * GiB
# provenance: spec — vLLM 0.32 EngineArgs.get_batch_defaults: `device_memory >= 70 * GiB_bytes and
# "a100" not in device_name` is the H100/H200 tier; every A100 falls below it (vLLM PR #17885:
# a larger budget lowers A100 throughput)
VLLM_MID_GPU_BYTES = 70 * GiB
# provenance: spec — vLLM 0.32 EngineArgs.get_batch_defaults, OPENAI_API_SERVER on >= 160 GiB:
# max_num_batched_tokens 16384, max_num_seqs 1024
VLLM_API_BUDGET_LARGE = (16384, 1024)
# provenance: spec — vLLM 0.32 EngineArgs.get_batch_defaults, OPENAI_API_SERVER on >= 70 GiB, not
# an A100 (H100, H200): max_num_batched_tokens 8192, max_num_seqs 1024
VLLM_API_BUDGET_MID = (8192, 1024)
# provenance: spec — vLLM 0.32 EngineArgs.get_batch_defaults, OPENAI_API_SERVER otherwise (A100,
# RTX 5090, anything below 70 GiB): max_num_batched_tokens 2048, max_num_seqs 256
VLLM_API_BUDGET_SMALL = (2048, 256)
# A SimBackend built without a GPU in mind gets the tier of the paper's H100s.
DEFAULT_MAX_BATCHED_TOKENS, DEFAULT_MAX_NUM_SEQS = VLLM_API_BUDGET_MID


def vllm_default_budget(gpu: GPU) -> tuple[int, int]:
    """(max_num_batched_tokens, max_num_seqs) that vLLM's OpenAI API server uses on this GPU when
    neither is set: vLLM 0.32's EngineArgs.get_batch_defaults, by the device's total memory and
    whether its name contains "a100" (the catalog's names keep that part of the device's name)."""
    if gpu.memory_bytes >= VLLM_LARGE_GPU_BYTES:
        return VLLM_API_BUDGET_LARGE
    if gpu.memory_bytes >= VLLM_MID_GPU_BYTES and "a100" not in gpu.name.lower():
        return VLLM_API_BUDGET_MID
    return VLLM_API_BUDGET_SMALL


class Seq:
    """One request inside the engine (vLLM's Request)."""

    __slots__ = (
        "base",
        "chunk",
        "computed",
        "decoding",
        "finish_it",
        "generated",
        "held",
        "hit_blocks",
        "known",
        "n_shared",
        "no",
        "num_tokens",
        "on_done",
        "pkey",
        "req",
        "shared_ref",
        "skey",
        "usage",
    )

    def __init__(self, req: Request, on_done, no: int, block_size: int, now: float):
        self.req = req
        self.on_done = on_done
        self.no = no
        self.skey = ("prefix", req.prefix_id) if req.prefix_id else None
        self.pkey = req.chain_id
        self.n_shared = req.prefix_tokens // block_size if req.prefix_id else 0
        self.num_tokens = req.prompt_tokens  # prompt + generated so far
        self.computed = 0  # tokens with KV computed (valid while not decoding)
        self.generated = 0
        self.held = 0  # blocks held (shared references included)
        self.shared_ref = 0
        self.decoding = False
        self.base = 0  # while decoding: computed = base + engine iteration counter
        self.finish_it = 0
        # Tokens this program has computed before (earlier calls): computing them again is
        # recompute, not new prefill.
        self.known = req.known_tokens
        self.usage = Usage(
            prompt_tokens=req.prompt_tokens,
            cached_tokens=-1,
            output_tokens=0,
            submit_time=now,
        )
        self.chunk = 0  # tokens scheduled in the current iteration
        self.hit_blocks = 0  # blocks served from the prefix cache at the last admission


class SimBackend:
    """One replica. `submit(request, on_done)` queues a call; `on_done(usage)` runs when its
    last token is generated."""

    def __init__(
        self,
        env: simpy.Environment,
        index: int,
        capacity_tokens: int,
        latency: LatencyModel,
        block_size: int = DEFAULT_BLOCK_SIZE,
        max_batched_tokens: int = DEFAULT_MAX_BATCHED_TOKENS,
        max_num_seqs: int = DEFAULT_MAX_NUM_SEQS,
        max_model_len: int | None = None,
        name: str | None = None,
        skip_ahead: bool = True,
        check: bool = False,
    ):
        """skip_ahead=False runs every iteration one by one (the reference the fast path is
        tested against); check=True verifies the block invariants after every step."""
        if capacity_tokens < block_size:
            raise ValueError(f"KV capacity {capacity_tokens} is below one block ({block_size})")
        self.env = env
        self.index = index
        self.name = name or f"sim{index}"
        self.latency = latency
        self.block_size = block_size
        self.pool = BlockPool(capacity_tokens // block_size, block_size)
        self.max_batched_tokens = max_batched_tokens
        self.max_num_seqs = max_num_seqs
        self.max_model_len = max_model_len
        self.alive = True
        self.waiting: deque[Seq] = deque()
        self.running: dict[int, Seq] = {}  # admission order: preemption takes from the end
        self.prefilling: dict[int, Seq] = {}  # running and not yet decoding
        self._no = 0
        # Decoding requests, kept relative to the global iteration counter `it`.
        self.it = 0
        self.n_dec = 0
        self.dec_base_sum = 0  # sum of base; context sum = dec_base_sum + n_dec * it
        self.phase_hist = [0] * block_size  # count of decoding seqs by base mod block_size
        self.finish_heap: list[tuple[int, int, Seq]] = []
        # Counters (vLLM's /metrics names in EngineStats).
        self.prefix_queries = 0
        self.prefix_hits = 0
        self.preemptions = 0
        self.recompute_tokens = 0
        self.prompt_tokens = 0
        self.generation_tokens = 0
        self.iterations = 0
        self.busy_s = 0.0
        self.skip_ahead = skip_ahead
        self.check = check
        self._wake: simpy.Event | None = None
        self._pin_gen: dict[str, int] = {}
        self._chain_of: dict[str, str] = {}  # program -> its current KV chain
        self.pins = 0
        self.process = env.process(self._loop())

    # ---- Backend contract ----------------------------------------------------------------
    @property
    def capacity_tokens(self) -> int:
        return self.pool.total * self.block_size

    def submit(self, req: Request, on_done: Callable[[Usage], None]) -> None:
        if req.forward is not None:
            raise ValueError(f"{self.name} is simulated: it cannot answer a client's request")
        need = req.prompt_tokens + req.output_tokens
        if self.max_model_len is not None and need > self.max_model_len:
            raise ValueError(
                f"{req.program_id} step {req.step}: {need} tokens exceed max_model_len "
                f"{self.max_model_len} of {self.name}"
            )
        if need > self.capacity_tokens:
            raise ValueError(
                f"{req.program_id} step {req.step}: {need} tokens exceed the KV capacity "
                f"{self.capacity_tokens} of {self.name}: it could never run"
            )
        self._no += 1
        self._chain_of[req.program_id] = req.chain_id
        seq = Seq(req, on_done, self._no, self.block_size, self.env.now)
        was_empty = not self.waiting
        self.waiting.append(seq)
        if was_empty and self._wake is not None and not self._wake.triggered:
            self._wake.succeed()

    def pin(self, program_id: str, ttl_s: float) -> None:
        """Keep the program's cached blocks unevictable for ttl_s seconds (or until its next call
        takes them)."""
        chain = self._chain_of.get(program_id, program_id)
        if self.pool.pin(chain) == 0:
            return
        self._pin_gen[chain] = gen = self._pin_gen.get(chain, 0) + 1
        self.pins += 1
        expiry = self.env.timeout(ttl_s)
        # The pin belongs to this chain: a reset may give the program a new one meanwhile.
        expiry.callbacks.append(lambda _e: self._expire_pin(chain, gen))

    def unpin(self, program_id: str) -> None:
        """The program finished: its pinned blocks go back to the free queue now, not when the
        pin's TTL runs out (nothing will reuse them)."""
        self._chain_of.pop(program_id, None)
        # every chain of the program: a pin from before a context reset may still hold
        chains = [c for c in self.pool.pinned if chain_program(c) == program_id]
        for chain in chains:
            self._pin_gen[chain] = self._pin_gen.get(chain, 0) + 1  # its expiry is void
            self.pool.unpin(chain)
        if chains and self._wake is not None and not self._wake.triggered:
            self._wake.succeed()  # freed blocks may let the waiting head in

    def _expire_pin(self, chain: str, gen: int) -> None:
        if self._pin_gen.get(chain) == gen:  # not re-pinned since
            self.pool.unpin(chain)
            if self._wake is not None and not self._wake.triggered:
                self._wake.succeed()  # freed blocks may let the waiting head in

    def stats(self) -> EngineStats:
        B = self.block_size
        return EngineStats(
            capacity_tokens=self.capacity_tokens,
            used_tokens=self.pool.used * B,
            cached_tokens=self.pool.cached_free * B,
            running=len(self.running),
            waiting=len(self.waiting),
            prefix_queries=self.prefix_queries,
            prefix_hits=self.prefix_hits,
            preemptions=self.preemptions,
            recompute_tokens=self.recompute_tokens,
            prompt_tokens=self.prompt_tokens,
            generation_tokens=self.generation_tokens,
            extra={
                "iterations": self.iterations,
                "evicted_blocks": self.pool.evicted,
                "pinned_tokens": self.pool.pinned_total * B,
                "pins": self.pins,
            },
        )

    # ---- block categories (for cost accounting and tests) --------------------------------
    def prefill_blocks(self) -> tuple[int, int]:
        """Blocks held by requests still prefilling: (prefill, recompute). Recompute blocks are
        those past the prefix-cache hit and below what the program had computed before; the
        rest (hits included: the context the prefill builds on) count as prefill."""
        B = self.block_size
        new = rec = 0
        for s in self.prefilling.values():
            known_blocks = -(-s.known // B)
            r = max(0, min(s.held, known_blocks) - s.hit_blocks)
            rec += r
            new += s.held - s.shared_ref - r
        return new, rec

    def seq_blocks_needed(self, s: Seq) -> int:
        """Blocks a running request should hold for its computed tokens."""
        c = s.base + self.it if s.decoding else s.computed
        return -(-c // self.block_size)

    # ---- the engine loop -----------------------------------------------------------------
    def _loop(self):
        env = self.env
        while True:
            if not self.running and not self.waiting:
                self._wake = env.event()
                yield self._wake
                self._wake = None
                continue
            k = self._fast_forward_span() if self.skip_ahead else 0
            if k > 0:
                yield from self._decode_run(k)
                if self.check:
                    self.check_invariants()
                continue
            batch, preempted = self._schedule()
            if not batch and not self.n_dec:
                if preempted:
                    continue  # vLLM admits nothing in a step that preempted; try again
                if self.pool.pinned_total:
                    # The head needs blocks that TTL pins hold: wait for a pin to expire.
                    self._wake = env.event()
                    yield self._wake
                    self._wake = None
                    continue
                # Nothing fits even with every cached block evicted: impossible after the
                # capacity check in submit, so this is a modelling bug worth stopping for.
                raise RuntimeError(f"{self.name}: no request can be scheduled")
            dt = self._iteration_time(batch)
            yield env.timeout(dt)
            self.busy_s += dt
            self._commit_iteration(batch)
            if self.check:
                self.check_invariants()

    # ---- fast path: runs of pure decode --------------------------------------------------
    def _blocks_for_decode(self, k: int) -> int:
        """New blocks the decoding requests need to compute their next k tokens."""
        if k <= 0 or self.n_dec == 0:
            return 0
        B = self.block_size
        it = self.it
        total = 0
        for psi, count in enumerate(self.phase_hist):
            if count:
                phi = (psi + it) % B  # computed tokens mod B: position c needs a new block
                total += count * ((phi + k - 1) // B + (1 if phi == 0 else 0))
        return total

    def _fast_forward_span(self) -> int:
        """Iterations that can be skipped as pure decode (0: take the per-iteration path)."""
        if self.prefilling or self.n_dec == 0:
            return 0
        if self.waiting and self._head_admissible():
            return 0
        free = self.pool.free
        if self._blocks_for_decode(1) > free:
            return 0  # the next iteration must preempt
        k_finish = self.finish_heap[0][0] - self.it
        if self._blocks_for_decode(k_finish) <= free:
            return k_finish
        lo, hi = 1, k_finish  # largest k whose blocks fit
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self._blocks_for_decode(mid) <= free:
                lo = mid
            else:
                hi = mid - 1
        return lo

    def waiting_for_memory(self) -> bool:
        """Whether the waiting queue is held back by KV blocks: its head would not get the
        blocks of a first chunk even with the iteration's whole token budget. A queue that waits
        only for the token budget or the sequence cap is waiting for compute, not memory (the
        STP accounting's distinction between unused and idle capacity)."""
        if not self.waiting:
            return False
        return self._admission(self.waiting[0], self.max_batched_tokens) is None

    def _head_admissible(self) -> bool:
        if len(self.running) >= self.max_num_seqs:
            return False
        plan = self._admission(self.waiting[0], self.max_batched_tokens - self.n_dec)
        return plan is not None

    def _admission(self, s: Seq, budget: int):
        """Check (changing nothing) whether s can start now: its prefix hits, first chunk and
        the new blocks that chunk needs must fit beside this iteration's decode blocks.
        Returns (lookup, hit_tokens, chunk, new_blocks) or None."""
        B = self.block_size
        look = self.pool.lookup(s.skey, s.n_shared, s.pkey, s.num_tokens)
        hit_tokens = look.hit_blocks * B
        chunk = min(s.num_tokens - hit_tokens, budget)
        if chunk <= 0:
            return None
        need = max(0, -(-(hit_tokens + chunk) // B) - look.shared_hit - look.own_resident)
        if need + self._blocks_for_decode(1) > look.free_after:
            return None
        return look, hit_tokens, chunk, need

    def _decode_run(self, k: int):
        env = self.env
        n, ctx0 = self.n_dec, self.dec_base_sum + self.n_dec * self.it
        total = self.latency.decode_run_time(n, ctx0, k)
        start = env.now
        self._wake = env.event()
        yield env.timeout(total) | self._wake
        woke = self._wake.triggered
        self._wake = None
        if woke and env.now - start < total:
            # A request arrived mid-run: stop at the iteration boundary it would be seen at.
            done = self.latency.decode_iters_done_by(n, ctx0, env.now - start, k)
            end = start + self.latency.decode_run_time(n, ctx0, done)
            if end > env.now:
                yield env.timeout(end - env.now)
            k = done
        if k == 0:
            return
        elapsed = self.latency.decode_run_time(n, ctx0, k)
        self.busy_s += elapsed
        if not self.pool.allocate(self._blocks_for_decode(k)):
            raise RuntimeError(f"{self.name}: decode run over-allocated blocks")
        self.it += k
        self.iterations += k
        self.generation_tokens += n * k
        self._finish_decoders()

    def _finish_decoders(self) -> None:
        heap = self.finish_heap
        done = []
        while heap and heap[0][0] <= self.it:
            fit, _, s = heapq.heappop(heap)
            if not s.decoding or s.finish_it != fit:
                continue  # stale entry of a preempted request
            self._stop_decoding(s)
            done.append(s)
        for s in done:
            self._finish(s)

    # ---- decode bookkeeping --------------------------------------------------------------
    def _start_decoding(self, s: Seq) -> None:
        """s has computed all tokens but its newest: from now on it grows with `it`."""
        if self.check and s.held != -(-s.computed // self.block_size):
            raise AssertionError(
                f"{s.pkey}: starts decoding holding {s.held} blocks for {s.computed} tokens"
            )
        s.decoding = True
        s.base = s.computed - self.it
        remaining = s.req.output_tokens - s.generated
        s.finish_it = self.it + remaining
        self.n_dec += 1
        self.dec_base_sum += s.base
        self.phase_hist[s.base % self.block_size] += 1
        heapq.heappush(self.finish_heap, (s.finish_it, s.no, s))
        del self.prefilling[s.no]

    def _stop_decoding(self, s: Seq) -> None:
        """Turn s back into explicit counters (it finished or is preempted)."""
        c = s.base + self.it
        s.generated += c - s.computed
        s.num_tokens = s.req.prompt_tokens + s.generated
        s.computed = c
        s.held = -(-c // self.block_size)  # decoding seqs hold exactly the blocks they fill
        s.decoding = False
        self.n_dec -= 1
        self.dec_base_sum -= s.base
        self.phase_hist[s.base % self.block_size] -= 1

    # ---- slow path: one iteration with prefill, admission or preemption -------------------
    def _schedule(self) -> tuple[list[Seq], bool]:
        """Pick this iteration's batch (vLLM v1 order: running first, then waiting FCFS) and
        allocate its blocks, preempting when they run short. Returns the prefill chunks (the
        decoding requests are implicit: all of them run) and whether it preempted."""
        B = self.block_size
        pool = self.pool
        budget = self.max_batched_tokens - self.n_dec
        chunks: list[Seq] = []
        for s in self.prefilling.values():
            s.chunk = min(s.num_tokens - s.computed, budget)
            budget -= s.chunk
            if s.chunk > 0:
                chunks.append(s)
        preempted = False
        while True:
            need = self._blocks_for_decode(1)
            for s in chunks:
                need += max(0, -(-(s.computed + s.chunk) // B) - s.held)
            if need <= pool.free or not self.running:
                break
            victim = self.running[next(reversed(self.running))]
            self._preempt(victim)
            preempted = True
            if victim in chunks:
                chunks.remove(victim)
        for s in chunks:
            grow = -(-(s.computed + s.chunk) // B) - s.held
            if grow > 0:
                pool.allocate(grow)
                s.held += grow
        if not preempted:
            budget = self.max_batched_tokens - self.n_dec - sum(s.chunk for s in chunks)
            while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
                s = self.waiting[0]
                if not self._admit(s, budget):
                    break
                self.waiting.popleft()
                budget -= s.chunk
                chunks.append(s)
        if self.n_dec:
            # Decoding requests' blocks for this iteration (computed in bulk at commit).
            pool.allocate(self._blocks_for_decode(1))
        return chunks, preempted

    def _admit(self, s: Seq, budget: int) -> bool:
        plan = self._admission(s, budget)
        if plan is None:
            return False
        look, hit_tokens, chunk, need = plan
        pool = self.pool
        s.held = pool.acquire(s.skey, s.pkey, look) + need
        s.shared_ref = look.shared_hit
        pool.allocate(need)
        s.computed = hit_tokens
        s.hit_blocks = look.hit_blocks
        s.chunk = chunk
        self.prefix_queries += s.num_tokens
        self.prefix_hits += hit_tokens
        if s.usage.cached_tokens < 0:  # first scheduling: what the API's usage reports
            s.usage.cached_tokens = hit_tokens
            s.usage.schedule_time = self.env.now
        self.running[s.no] = s
        self.prefilling[s.no] = s
        return True

    def _preempt(self, s: Seq) -> None:
        if s.decoding:
            self._stop_decoding(s)
        else:
            del self.prefilling[s.no]
        del self.running[s.no]
        s.known = max(s.known, s.computed)
        self.pool.release(s.skey, s.n_shared, s.shared_ref, s.pkey, s.held, s.computed)
        s.held = s.shared_ref = 0
        s.computed = 0
        s.chunk = 0
        s.usage.preemptions += 1
        self.preemptions += 1
        self.waiting.appendleft(s)

    def _iteration_time(self, chunks: list[Seq]) -> float:
        """One iteration of the decoding requests plus the prefill `chunks`: its tokens,
        attention pairs, KV read and sequences (each scheduled request once)."""
        tokens = self.n_dec
        dec_ctx = self.dec_base_sum + self.n_dec * self.it
        pairs = float(dec_ctx)
        kv_read = float(dec_ctx)
        for s in chunks:
            m = s.chunk
            tokens += m
            pairs += m * s.computed + m * (m + 1) / 2
            kv_read += s.computed
        return self.latency.iteration_time(tokens, pairs, kv_read, self.n_dec + len(chunks))

    def _commit_iteration(self, chunks: list[Seq]) -> None:
        now = self.env.now
        self.iterations += 1
        self.generation_tokens += self.n_dec
        self.it += 1
        for s in chunks:
            start, m = s.computed, s.chunk
            rec = max(0, min(start + m, s.known) - start)
            self.recompute_tokens += rec
            s.usage.recompute_tokens += rec
            self.prompt_tokens += m
            s.computed += m
            s.chunk = 0
            if s.computed == s.num_tokens:  # prefill done: sample a token
                s.generated += 1
                s.num_tokens += 1
                self.generation_tokens += 1
                if s.usage.first_token_time == 0.0:
                    s.usage.first_token_time = now
                if s.generated >= s.req.output_tokens:
                    del self.prefilling[s.no]
                    self._finish(s)
                else:
                    self._start_decoding(s)
        self._finish_decoders()

    def _finish(self, s: Seq) -> None:
        del self.running[s.no]
        self.pool.release(s.skey, s.n_shared, s.shared_ref, s.pkey, s.held, s.computed)
        s.held = s.shared_ref = 0
        u = s.usage
        u.output_tokens = s.generated
        u.finish_time = self.env.now
        s.on_done(u)

    def check_invariants(self) -> None:
        """Blocks allocated + free = total, counted independently of the pool's own counters;
        used never above capacity; every cached run matches its chain's residency."""
        pool = self.pool
        allocated = 0
        shared_refs: dict = {}
        for s in self.running.values():
            held = self.seq_blocks_needed(s) if s.decoding else s.held
            if not s.decoding and held < self.seq_blocks_needed(s):
                raise AssertionError(f"{s.pkey}: holds {held} blocks for {s.computed} tokens")
            allocated += held - s.shared_ref
            if s.shared_ref:
                shared_refs[s.skey] = shared_refs.get(s.skey, 0) + 1
        for key, n in shared_refs.items():
            if pool.refs.get(key, 0) != n:
                raise AssertionError(f"{key}: refcount {pool.refs.get(key)} != {n} users")
            allocated += pool.resident[key]
        for key, n in pool.refs.items():
            if n and key not in shared_refs:
                raise AssertionError(f"{key}: refcount {n} without users")
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
        if allocated + pool.empty + pool.cached_free + pool.pinned_total != pool.total:
            raise AssertionError(
                f"allocated {allocated} + empty {pool.empty} + cached {pool.cached_free} "
                f"+ pinned {pool.pinned_total} != total {pool.total}"
            )
        if pool.used > pool.total or min(pool.empty, pool.cached_free) < 0:
            raise AssertionError("block counts out of range")

    def kv_breakdown(self, is_acting: Callable[[object], bool]) -> dict[str, int]:
        """Every block of the pool in exactly one category (the STP model's terms):
        decode (held by decoding requests, and shared prompts in use), prefill, recompute,
        cached_acting (cached KV of programs in a tool call), cached_other, empty."""
        pool = self.pool
        new, rec = self.prefill_blocks()
        acting = sum(n for key, n in pool.lru.items() if is_acting(key))
        acting += sum(n for key, n in pool.pinned.items() if is_acting(key))
        return {
            "decode": pool.used - new - rec,
            "prefill": new,
            "recompute": rec,
            "cached_acting": acting,
            "cached_other": pool.cached_free + pool.pinned_total - acting,
            "empty": pool.empty,
        }
