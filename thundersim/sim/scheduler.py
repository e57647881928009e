"""Scheduler: which requests run each iteration, after vLLM v1's
vllm/v1/core/sched/scheduler.py (`schedule` / `update_from_output`).

What it models:
- a FCFS waiting queue; preempted requests go back to its front;
- continuous batching: every iteration runs each running request's next tokens;
- chunked prefill under a per-iteration token budget (`max_num_batched_tokens`), given to the
  running requests in admission order, then to admissions. (vLLM walks `running` in order; the
  decoding requests are always ahead of a prefill the budget cuts short, because nobody is
  admitted after a request whose chunk used up the budget, so serving the decode group first
  is the same order.)
- the running requests' blocks (decode and chunks) are allocated before any admission;
- admission of the waiting head only when the blocks for its whole prompt are free after its
  prefix-cache hits (vLLM 0.32's default `scheduler_reserve_full_isl`: allocate_slots with
  full_sequence_must_fit), and none at all in an iteration that had to preempt;
- preemption by recompute: when the running requests need more blocks than are free, the most
  recently admitted is preempted, its blocks freed (full ones stay cached), and it starts again
  from its prefix-cache hits;
- the prefix-cache counters as vLLM's PrefixCacheStats: first admissions count as queries and
  hits (`vllm:prefix_cache_queries` / `_hits`), re-admissions after a preemption separately
  (`preempted_queries` / `preempted_hits`, which vLLM does not export).
Blocks come from the KV cache manager (thundersim.sim.kv_cache_manager); the decoding requests
are kept together in a DecodeGroup (thundersim.sim.decoding), which lets the engine skip ahead
over runs of pure decode (`skippable_iterations`, `advance_decode`). The scheduler knows no
clock but `now` (for the usage timestamps); the engine loop (thundersim.sim.engine) drives it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from thundersim.sim.accounting import EngineCounters
from thundersim.sim.blocks import Lookup
from thundersim.sim.decoding import DecodeGroup
from thundersim.sim.kv_cache_manager import KVCacheManager
from thundersim.sim.request import EngineRequest


@dataclass(slots=True)
class SchedulerOutput:
    """One iteration's batch: the prefill chunks (each request's `num_scheduled_tokens`; the
    decoding requests are implicit: all of them run) and whether scheduling preempted."""

    chunks: list[EngineRequest]
    preempted: bool


class Scheduler:
    """The queues of one replica and its per-iteration decisions."""

    def __init__(
        self,
        name: str,
        kv: KVCacheManager,
        counters: EngineCounters,
        now: Callable[[], float],
        max_batched_tokens: int,
        max_num_seqs: int,
        check: bool = False,
    ):
        self.name = name
        self.kv = kv
        self.counters = counters
        self.now = now
        self.max_batched_tokens = max_batched_tokens
        self.max_num_seqs = max_num_seqs
        self.check = check
        self.waiting: deque[EngineRequest] = deque()
        self.running: dict[int, EngineRequest] = {}  # admission order: preemption takes the last
        self.prefilling: dict[int, EngineRequest] = {}  # running and not yet decoding
        self.decode = DecodeGroup(kv.block_size)  # running and decoding

    def has_work(self) -> bool:
        return bool(self.running or self.waiting)

    def add_request(self, req: EngineRequest) -> bool:
        """Queue a new request last; returns whether the queue was empty (a head that could not
        start would not let this one start either)."""
        was_empty = not self.waiting
        self.waiting.append(req)
        return was_empty

    # ---- admission checks ------------------------------------------------------------------
    def waiting_for_memory(self) -> bool:
        """Whether the waiting queue is held back by KV blocks: its head would not get the
        blocks of a first chunk even with the iteration's whole token budget. A queue that waits
        only for the token budget or the sequence cap is waiting for compute, not memory (the
        STP accounting's distinction between unused and idle capacity)."""
        if not self.waiting:
            return False
        reserved = self.decode.new_blocks(1)
        return self._plan_admission(self.waiting[0], self.max_batched_tokens, reserved) is None

    def _head_admissible(self) -> bool:
        """Between iterations: would the next one admit the waiting head (beside the decode
        blocks it allocates first)?"""
        if len(self.running) >= self.max_num_seqs:
            return False
        budget = self.max_batched_tokens - self.decode.count
        reserved = self.decode.new_blocks(1)
        return self._plan_admission(self.waiting[0], budget, reserved) is not None

    def _plan_admission(
        self, req: EngineRequest, budget: int, reserved: int = 0
    ) -> tuple[Lookup, int, int] | None:
        """Check (changing nothing) whether req can start now: after its prefix hits, the
        blocks of its whole remaining prompt must be free (less `reserved` ones still to be
        allocated this iteration), and the budget must leave it a chunk.
        Returns (hit, hit tokens, chunk) or None."""
        kv = self.kv
        hit, hit_tokens = kv.get_computed_blocks(req)
        remaining = req.num_tokens - hit_tokens
        chunk = min(remaining, budget)
        if chunk <= 0:
            return None
        need = kv.num_new_blocks(req, remaining, hit) + reserved
        if need > kv.num_free_blocks(hit):
            return None
        return hit, hit_tokens, chunk

    # ---- skipping ahead over pure decode -------------------------------------------------
    def skippable_iterations(self) -> int:
        """Iterations that can run as pure decode with nothing else changing (0: schedule the
        next one): every running request decodes, the waiting head cannot be admitted, and
        the run stops at the next finish or where the free blocks run out."""
        decode = self.decode
        if self.prefilling or decode.count == 0:
            return 0
        if self.waiting and self._head_admissible():
            return 0
        # the largest run whose blocks fit, up to the next finish (0: the next iteration must
        # preempt)
        fits = decode.fitting_iterations(self.kv.num_free_blocks())
        return min(fits, decode.iterations_to_next_finish())

    def advance_decode(self, iterations: int) -> None:
        """The engine ran `iterations` pure-decode iterations: allocate their blocks, count
        their tokens and finish those that are done."""
        decode = self.decode
        need = decode.new_blocks(iterations)
        if need and not self.kv.allocate_decode_slots(need):
            raise RuntimeError(f"{self.name}: decode run over-allocated blocks")
        decode.iteration += iterations
        self.counters.iterations += iterations
        self.counters.generation_tokens += decode.count * iterations
        self._finish_decoded()

    # ---- one iteration with prefill, admission or preemption -----------------------------
    def schedule(self) -> SchedulerOutput:
        """Pick this iteration's batch (vLLM v1 order: running first, then waiting FCFS) and
        allocate its blocks, preempting when they run short."""
        budget = self.max_batched_tokens - self.decode.count
        chunks: list[EngineRequest] = []
        for req in self.prefilling.values():
            req.num_scheduled_tokens = min(req.num_tokens - req.num_computed_tokens, budget)
            budget -= req.num_scheduled_tokens
            if req.num_scheduled_tokens > 0:
                chunks.append(req)
        preempted = self._preempt_until_fits(chunks)
        # The running requests' blocks first, decode (their tokens count at commit) and chunks,
        # as vLLM allocates them in its walk of `running` before it looks at `waiting`: what
        # they evict is gone before an admission looks up its prefix.
        need = self.decode.new_blocks(1)
        if need and not self.kv.allocate_decode_slots(need):
            raise RuntimeError(f"{self.name}: decode blocks over-allocated")
        for req in chunks:
            if self.kv.allocate_slots(req, req.num_scheduled_tokens) is None:
                raise RuntimeError(f"{self.name}: prefill chunks over-allocated blocks")
        if not preempted:
            self._admit_waiting(chunks)
        return SchedulerOutput(chunks, preempted)

    def _preempt_until_fits(self, chunks: list[EngineRequest]) -> bool:
        """Preempt the latest admitted until this iteration's decode blocks and prefill
        chunks fit in the free blocks; returns whether any was preempted."""
        kv = self.kv
        preempted = False
        while True:
            need = self.decode.new_blocks(1)
            for req in chunks:
                need += kv.num_new_blocks(req, req.num_scheduled_tokens)
            if need <= kv.num_free_blocks() or not self.running:
                return preempted
            victim = self.running[next(reversed(self.running))]
            self._preempt(victim)
            preempted = True
            if victim in chunks:
                chunks.remove(victim)

    def _admit_waiting(self, chunks: list[EngineRequest]) -> None:
        """Start waiting requests FCFS while the budget, the sequence cap and the blocks allow."""
        budget = self.max_batched_tokens - self.decode.count
        budget -= sum(req.num_scheduled_tokens for req in chunks)
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            req = self.waiting[0]
            if not self._admit(req, budget):
                return
            self.waiting.popleft()
            budget -= req.num_scheduled_tokens
            chunks.append(req)

    def _admit(self, req: EngineRequest, budget: int) -> bool:
        plan = self._plan_admission(req, budget)
        if plan is None:
            return False
        hit, hit_tokens, chunk = plan
        self.kv.allocate_slots(req, chunk, hit)
        req.start_at(hit_tokens)
        req.num_scheduled_tokens = chunk
        counters = self.counters
        if req.usage.preemptions:  # a restart: vLLM's PrefixCacheStats.preempted_*
            counters.preempted_prefix_requests += 1
            counters.preempted_prefix_queries += req.num_tokens
            counters.preempted_prefix_hits += hit_tokens
        else:
            counters.prefix_requests += 1
            counters.prefix_queries += req.num_tokens
            counters.prefix_hits += hit_tokens
        if req.usage.cached_tokens < 0:  # first scheduling: what the API's usage reports
            req.usage.cached_tokens = hit_tokens
            req.usage.schedule_time = self.now()
        self.running[req.request_id] = req
        self.prefilling[req.request_id] = req
        return True

    def _preempt(self, req: EngineRequest) -> None:
        """Preempt by recompute: drop its KV (full blocks stay cached) and queue it first."""
        if req.is_decoding:
            self._stop_decoding(req)
        else:
            del self.prefilling[req.request_id]
        del self.running[req.request_id]
        req.known_tokens = max(req.known_tokens, req.num_computed_tokens)
        self.kv.free(req)
        req.preempted()
        req.usage.preemptions += 1
        self.counters.preemptions += 1
        self.waiting.appendleft(req)

    # ---- after the iteration ran ---------------------------------------------------------
    def update_from_output(self, output: SchedulerOutput) -> None:
        """The iteration ran: the decoding requests computed one token each, the chunks their
        scheduled tokens; a chunk that completes its prefill samples a token."""
        now = self.now()
        counters = self.counters
        counters.iterations += 1
        counters.generation_tokens += self.decode.count
        self.decode.iteration += 1
        for req in output.chunks:
            start, m = req.num_computed_tokens, req.num_scheduled_tokens
            recompute = max(0, min(start + m, req.known_tokens) - start)
            counters.recompute_tokens += recompute
            req.usage.recompute_tokens += recompute
            counters.prompt_tokens += m
            req.compute_scheduled()
            if req.num_computed_tokens != req.num_tokens:
                continue
            req.append_output_token()  # prefill done: sample a token
            counters.generation_tokens += 1
            if req.usage.first_token_time == 0.0:
                req.usage.first_token_time = now
            if req.num_output_tokens >= req.max_tokens:
                del self.prefilling[req.request_id]
                self._finish(req)
            else:
                self._start_decoding(req)
        self._finish_decoded()

    def _start_decoding(self, req: EngineRequest) -> None:
        if self.check and self.kv.num_blocks(req) != self.kv.blocks_needed(req):
            raise AssertionError(
                f"{req.chain_key}: starts decoding holding {self.kv.num_blocks(req)} blocks "
                f"for {req.num_computed_tokens} tokens"
            )
        self.decode.add(req)
        del self.prefilling[req.request_id]

    def _stop_decoding(self, req: EngineRequest) -> None:
        self.decode.remove(req)
        self.kv.settle_decode(req)

    def _finish_decoded(self) -> None:
        done = self.decode.pop_finished()
        for req in done:
            self._stop_decoding(req)
        for req in done:
            self._finish(req)

    def _finish(self, req: EngineRequest) -> None:
        del self.running[req.request_id]
        self.kv.free(req)
        usage = req.usage
        usage.output_tokens = req.num_output_tokens
        usage.finish_time = self.now()
        req.on_done(usage)
