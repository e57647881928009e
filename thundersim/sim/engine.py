"""SimBackend: a SimPy model of one vLLM (v1) replica, wired from the parts vLLM splits it into.

- thundersim.sim.scheduler: admission, the token budget, chunked prefill, preemption by
  recompute (vllm/v1/core/sched/scheduler.py);
- thundersim.sim.kv_cache_manager: the blocks each request holds, prefix lookup
  (vllm/v1/core/kv_cache_manager.py), over thundersim.sim.blocks, the block pool with its
  prefix cache, pins and LRU eviction (vllm/v1/core/block_pool.py);
- thundersim.sim.request: one request and its progress, computed tokens of total tokens
  (vllm/v1/request.py);
- thundersim.sim.accounting: the counters and the stats reported from them.
This module is the replica itself (vLLM's EngineCore busy loop, vllm/v1/engine/core.py): each
step schedules a batch, sleeps the iteration's time from a `StepTimeModel` (the model executor)
and hands the result back to the scheduler.

Skipping ahead: while every running request is decoding and the waiting head cannot be
admitted, nothing changes but contexts growing by one token per iteration. The loop then asks
the scheduler how many iterations run until the next thing that matters (a request finishes,
the blocks run out), computes how long they take in closed form, and sleeps that long in one
SimPy timeout. A new request arriving meanwhile wakes it at the iteration boundary it would
have been seen at. The decoding requests are kept relative to one iteration counter
(thundersim.sim.decoding), so a skipped stretch costs O(block_size), not
O(requests x iterations); `skip_ahead=False` runs every iteration one by one instead (the
reference the fast path is tested against).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import simpy
from simpy.events import NORMAL, URGENT

from thundersim.core.backend import EngineStats, Gauges, KVSnapshot, Request, Usage
from thundersim.core.cluster import chain_program
from thundersim.sim.accounting import EngineCounters, engine_stats, kv_snapshot
from thundersim.sim.catalog import GPU, GiB
from thundersim.sim.kv_cache_manager import KVCacheManager
from thundersim.sim.latency import StepTimeModel
from thundersim.sim.request import EngineRequest
from thundersim.sim.scheduler import Scheduler, SchedulerOutput

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


class _Hop(simpy.Event):
    """An event that is born triggered and calls one callback when SimPy pops it (what a
    Timeout does, without its bookkeeping), tagged with the loop generation it belongs to."""

    def __init__(self, env: simpy.Environment, callback: Callable, generation: int):
        # Event.__init__ and succeed() inlined, as SimPy's own Initialize does.
        self.env = env
        self.callbacks = [callback]
        self._ok = True
        self._value = None
        self.generation = generation


def vllm_default_budget(gpu: GPU) -> tuple[int, int]:
    """(max_num_batched_tokens, max_num_seqs) that vLLM's OpenAI API server uses on this GPU when
    neither is set: vLLM 0.32's EngineArgs.get_batch_defaults, by the device's total memory and
    whether its name contains "a100" (the catalog's names keep that part of the device's name)."""
    if gpu.memory_bytes >= VLLM_LARGE_GPU_BYTES:
        return VLLM_API_BUDGET_LARGE
    if gpu.memory_bytes >= VLLM_MID_GPU_BYTES and "a100" not in gpu.name.lower():
        return VLLM_API_BUDGET_MID
    return VLLM_API_BUDGET_SMALL


class SimBackend:
    """One simulated replica (the Backend and KVIntrospection protocols of
    thundersim.core.backend). `submit(request, on_done, on_failure)` queues a call;
    `on_done(usage)` runs when its last token is generated."""

    def __init__(
        self,
        env: simpy.Environment,
        index: int,
        capacity_tokens: int,
        latency: StepTimeModel,
        block_size: int = DEFAULT_BLOCK_SIZE,
        max_batched_tokens: int = DEFAULT_MAX_BATCHED_TOKENS,
        max_num_seqs: int = DEFAULT_MAX_NUM_SEQS,
        max_model_len: int | None = None,
        name: str | None = None,
        skip_ahead: bool = True,
        check: bool = False,
        model: str = "",
    ):
        """skip_ahead=False runs every iteration one by one (the reference the fast path is
        tested against); check=True verifies the block invariants after every step. `model`
        is the name of the model it serves (the setup's), for the Backend protocol."""
        if capacity_tokens < 2 * block_size:
            raise ValueError(
                f"KV capacity {capacity_tokens} is below two blocks of {block_size} (vLLM keeps "
                "one as its null block)"
            )
        self.env = env
        self.index = index
        self.name = name or f"sim{index}"
        self.model = model
        self.alive = True
        self.latency = latency
        self.max_model_len = max_model_len
        self.skip_ahead = skip_ahead
        self.check = check
        # capacity_tokens is the pool as vLLM sizes it (num_gpu_blocks x block_size); the
        # manager keeps vLLM's null block out of it.
        self.kv = KVCacheManager(capacity_tokens // block_size, block_size)
        self.counters = EngineCounters()
        self.scheduler = Scheduler(
            self.name,
            self.kv,
            self.counters,
            lambda: env.now,
            max_batched_tokens,
            max_num_seqs,
            check,
        )
        self._last_request_id = 0
        # The loop's state (see "the engine loop"): the generation of its current wait (a timer
        # or wake of an older one is void when it pops), whether a wake would end that wait and
        # whether one has, the decode run or iteration it waits for.
        self._generation = 0
        self._listening = False
        self._woken = False
        self._condition = False
        self._decoding: tuple[int, int, int, float, float] | None = None
        self._iteration: tuple[SchedulerOutput, float] | None = None
        self._tail: tuple[int, float] | None = None
        self._pin_generation: dict[str, int] = {}  # chain -> its latest pin (older ones void)
        self._chain_of: dict[str, str] = {}  # program -> its current KV chain
        # The loop starts as a process would: at an URGENT event scheduled now.
        self._schedule(self._on_start, 0.0, URGENT)

    # ---- Backend protocol ----------------------------------------------------------------
    @property
    def capacity_tokens(self) -> int:
        return self.kv.capacity_tokens

    def submit(
        self,
        request: Request,
        on_done: Callable[[Usage], None],
        on_failure: Callable[[Request, Exception], None] | None = None,
    ) -> None:
        """Queue a call. `on_failure` is accepted for the protocol and never called: a
        simulated replica does not fail a call (a call it could never serve is refused here,
        with ValueError, before it is queued)."""
        if request.forward is not None:
            raise ValueError(f"{self.name} is simulated: it cannot answer a client's request")
        need = request.prompt_tokens + request.output_tokens
        if self.max_model_len is not None and need > self.max_model_len:
            raise ValueError(
                f"{request.program_id} step {request.step}: {need} tokens exceed max_model_len "
                f"{self.max_model_len} of {self.name}"
            )
        if need > self.capacity_tokens:
            raise ValueError(
                f"{request.program_id} step {request.step}: {need} tokens exceed the KV "
                f"capacity {self.capacity_tokens} of {self.name}: it could never run"
            )
        self._last_request_id += 1
        self._chain_of[request.program_id] = request.chain_id
        req = EngineRequest(
            request, on_done, self._last_request_id, self.kv.block_size, self.env.now
        )
        if self.scheduler.add_request(req):
            self._wake_loop()  # the loop sleeps, or skips ahead past what this may change

    def pin(self, program_id: str, ttl_s: float) -> None:
        """Keep the program's cached blocks unevictable for ttl_s seconds (or until its next call
        takes them)."""
        chain = self._chain_of.get(program_id, program_id)
        if self.kv.pin(chain) == 0:
            return
        self._pin_generation[chain] = generation = self._pin_generation.get(chain, 0) + 1
        self.counters.pins += 1
        expiry = self.env.timeout(ttl_s)
        # The pin belongs to this chain: a reset may give the program a new one meanwhile.
        expiry.callbacks.append(lambda _e: self._expire_pin(chain, generation))

    def unpin(self, program_id: str) -> None:
        """The program finished: its pinned blocks go back to the free queue now, not when the
        pin's TTL runs out (nothing will reuse them)."""
        self._chain_of.pop(program_id, None)
        # every chain of the program: a pin from before a context reset may still hold
        chains = [c for c in self.kv.pinned_chains() if chain_program(c) == program_id]
        for chain in chains:
            self._pin_generation[chain] = self._pin_generation.get(chain, 0) + 1  # expiry void
            self.kv.unpin(chain)
        if chains:
            self._wake_loop()  # freed blocks may let the waiting head in

    def _expire_pin(self, chain: str, generation: int) -> None:
        if self._pin_generation.get(chain) == generation:  # not re-pinned since
            self.kv.unpin(chain)
            self._wake_loop()  # freed blocks may let the waiting head in

    def stats(self) -> EngineStats:
        sched = self.scheduler
        return engine_stats(self.counters, self.kv, len(sched.running), len(sched.waiting))

    def gauges(self) -> Gauges:
        """The gauges as `stats()` has them, without building the rest."""
        sched = self.scheduler
        return Gauges(
            self.kv.pool.used * self.kv.block_size, len(sched.running), len(sched.waiting)
        )

    async def connect(self) -> None:
        """Nothing to connect to: the replica exists from construction."""

    async def refresh(self) -> None:
        """Nothing to scrape: `stats()` is always up to date."""

    async def close(self) -> None:
        """Nothing to release: the replica ends with its SimPy environment."""

    # ---- KVIntrospection protocol --------------------------------------------------------
    def kv_snapshot(self, is_acting: Callable[[str], bool]) -> KVSnapshot:
        """The pool by STP cost term, in tokens; `is_acting(chain_key)` tells the cached chains
        of programs in a tool call."""
        sched = self.scheduler
        return kv_snapshot(
            self.kv,
            sched.prefilling.values(),
            len(sched.running),
            sched.waiting,
            sched.waiting_for_memory(),
            is_acting,
        )

    def check_invariants(self) -> None:
        """The block invariants (KVCacheManager.check_invariants) over the running requests."""
        self.kv.check_invariants(self.scheduler.running.values())

    # ---- the engine loop -----------------------------------------------------------------
    # The loop is a chain of SimPy callbacks, not a SimPy process: it costs one event per wait
    # instead of a Condition (timeout | wake), its extra event and a generator resume. It keeps
    # the event order of the process it replaces (`yield timeout`, `yield wake`, `yield
    # timeout | wake`), so every run is the same to the bit: each reaction happens at the pop
    # of an event scheduled at the same point, with the same time and priority, as the event
    # the process resumed on. Where that event is a Condition (scheduled when the timeout or
    # the wake pops), the reaction runs at once if nothing else is due at that instant: the
    # Condition would have been the next event popped.
    def _schedule(self, callback: Callable[[_Hop], None], delay: float = 0.0, priority=NORMAL):
        """Call `callback(event)` at now + delay, as the current wait (a new generation)."""
        self._generation += 1
        self.env.schedule(_Hop(self.env, callback, self._generation), priority, delay)

    def _wake_loop(self) -> None:
        """Something may let work in: wake a sleeping loop or cut a decode run short (what
        `wake.succeed()` did; a no-op while the loop runs or waits for an iteration)."""
        if self._listening and not self._woken:
            self._woken = True
            event = _Hop(self.env, self._on_wake, self._generation)
            self.env.schedule(event, NORMAL, 0.0)

    def _on_start(self, _event: _Hop) -> None:
        self._run()

    def _on_wake(self, event: _Hop) -> None:
        if event.generation != self._generation:
            return  # a wake of a wait that has ended (the decode run's timer fired first)
        if self._decoding is None:
            self._listening = False  # the sleep ends
            self._run()
        else:
            self._decode_timeout_or_wake()

    def _on_decode_timer(self, event: _Hop) -> None:
        if event.generation == self._generation:  # else: the run was cut short meanwhile
            self._decode_timeout_or_wake()

    def _decode_timeout_or_wake(self) -> None:
        """The first of a decode run's timer and wake popped: the Condition `timeout | wake`
        triggers (later ones find it triggered)."""
        if self._condition:
            return
        self._condition = True
        env = self.env
        if env.peek() > env.now:
            self._decode_run_end()  # the Condition would be the very next event popped
        else:
            self._schedule(self._on_condition)  # events at this instant go first

    def _on_condition(self, _event: _Hop) -> None:
        self._decode_run_end()

    def _sleep(self) -> None:
        """Wait until something may let work in (a call arrives, a pin goes)."""
        self._generation += 1
        self._listening = True
        self._woken = False

    def _run(self) -> None:
        """The loop, from its top, until it has to wait."""
        sched = self.scheduler
        while True:
            if not sched.has_work():
                return self._sleep()
            skip = sched.skippable_iterations() if self.skip_ahead else 0
            if skip > 0:
                return self._decode_run(skip)
            output = sched.schedule()
            if not output.chunks and not sched.decode.count:
                if output.preempted:
                    continue  # vLLM admits nothing in a step that preempted; try again
                if self.kv.pool.pinned_total:
                    # The head needs blocks that TTL pins hold: wait for a pin to expire.
                    return self._sleep()
                # Nothing fits even with every cached block evicted: impossible after the
                # capacity check in submit, so this is a modelling bug worth stopping for.
                raise RuntimeError(f"{self.name}: no request can be scheduled")
            dt = self._iteration_time(output)
            self._iteration = (output, dt)
            return self._schedule(self._on_iteration, dt)

    def _on_iteration(self, _event: _Hop) -> None:
        output, dt = self._iteration
        self._iteration = None
        self.counters.busy_s += dt
        self.scheduler.update_from_output(output)
        if self.check:
            self.check_invariants()
        self._run()

    def _decode_run(self, iterations: int) -> None:
        """Sleep through `iterations` pure-decode iterations in one timer, or up to the boundary
        where a new request would be seen (a wake meanwhile), then let the scheduler advance."""
        env = self.env
        decode = self.scheduler.decode
        n, ctx0 = decode.count, decode.context_tokens()
        total = self.latency.decode_run_time(n, ctx0, iterations)
        self._decoding = (n, ctx0, iterations, total, env.now)
        self._condition = False
        self._schedule(self._on_decode_timer, total)
        self._listening = True
        self._woken = False

    def _decode_run_end(self) -> None:
        n, ctx0, iterations, total, start = self._decoding
        self._decoding = None
        woke = self._woken
        self._listening = False
        env = self.env
        busy = total  # decode_run_time(n, ctx0, iterations)
        if woke and env.now - start < total:
            # A request arrived mid-run: stop at the iteration boundary it would be seen at.
            done, busy = self._iterations_done_by(n, ctx0, env.now - start, iterations, total)
            end = start + busy
            iterations = done
            if end > env.now:
                self._tail = (iterations, busy)
                return self._schedule(self._on_decode_tail, end - env.now)
        self._decode_advance(iterations, busy)

    def _iterations_done_by(
        self, n: int, ctx0: int, elapsed: float, k_max: int, total: float
    ) -> tuple[int, float]:
        """(k, decode_run_time(n, ctx0, k)) for the smallest k <= k_max whose run time reaches
        `elapsed` (< total, the run time of k_max): StepTimeModel.decode_iters_done_by's answer,
        found from a guess instead of a bisection. The run time never decreases with k (every
        iteration takes at least the step overhead), so that k is the one with
        T(k - 1) < elapsed <= T(k) however it is searched for; the guess from the run's mean
        iteration time is at most a few iterations off (an iteration's time varies little over
        a run), so 2-3 evaluations find it where a bisection takes log2(k_max)."""
        run_time = self.latency.decode_run_time
        # Steps walked before falling back to the bisection: the guess is a lower bound when
        # iterations grow longer over the run and rarely more than one or two off (on the
        # bundled traces, 4 in 22,490 cut runs were off by one, none by more); the bound only
        # keeps a bad guess from walking long. It changes no result, only the search's cost.
        steps = 4  # a search bound (defined here, not a model constant: see above)
        k = min(k_max, math.ceil(elapsed * k_max / total))
        t = run_time(n, ctx0, k)
        if t >= elapsed:  # walk down to the first k that reaches it
            for _ in range(steps):
                if k == 0:
                    return k, t
                below = run_time(n, ctx0, k - 1)
                if below < elapsed:
                    return k, t
                k, t = k - 1, below
        else:  # walk up (k < k_max: T(k_max) = total > elapsed)
            for _ in range(steps):
                k += 1
                t = run_time(n, ctx0, k)
                if t >= elapsed:
                    return k, t
        k = self.latency.decode_iters_done_by(n, ctx0, elapsed, k_max)  # a far guess
        return k, run_time(n, ctx0, k)

    def _on_decode_tail(self, _event: _Hop) -> None:
        iterations, busy = self._tail
        self._tail = None
        self._decode_advance(iterations, busy)

    def _decode_advance(self, iterations: int, busy: float) -> None:
        if iterations:
            self.counters.busy_s += busy
            self.scheduler.advance_decode(iterations)
        if self.check:
            self.check_invariants()
        self._run()

    def _iteration_time(self, output: SchedulerOutput) -> float:
        """One iteration of the decoding requests plus the prefill chunks: its tokens,
        attention pairs, KV read and sequences (each scheduled request once)."""
        decode = self.scheduler.decode
        tokens = decode.count
        decode_context = decode.context_tokens()
        pairs = float(decode_context)
        kv_read = float(decode_context)
        for req in output.chunks:
            m, computed = req.num_scheduled_tokens, req.num_computed_tokens
            tokens += m
            pairs += m * computed + m * (m + 1) / 2
            kv_read += computed
        seqs = decode.count + len(output.chunks)
        return self.latency.iteration_time(tokens, pairs, kv_read, seqs)
