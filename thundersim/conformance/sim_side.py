"""The simulator's half of the differential test: a workload replayed on thundersim's engine
model (thundersim.sim.scheduler over thundersim.sim.kv_cache_manager), one step at a time, and
described in the records thundersim.conformance.vllm_side writes for vLLM's scheduler.

It drives the Scheduler exactly as the SimBackend's loop does (`schedule`, then
`update_from_output`), iteration by iteration: the SimBackend's skip-ahead over pure decode is
tested against this per-iteration reference elsewhere (tests/test_engine.py), so it is off here.
Arrivals follow vllm_side's order: next turns by due step, then in finish order; then the first
turns of the step in the workload's order.
"""

from __future__ import annotations

from thundersim.conformance.workloads import (
    ConformanceProgram,
    Workload,
    chain_id,
    program_tokens,
    request_id,
)
from thundersim.core.backend import Request
from thundersim.sim.accounting import EngineCounters
from thundersim.sim.kv_cache_manager import KVCacheManager
from thundersim.sim.request import EngineRequest
from thundersim.sim.scheduler import Scheduler

COUNTERS = (  # vllm_side's prefix-cache record keys -> EngineCounters fields
    ("requests", "prefix_requests"),
    ("queries", "prefix_queries"),
    ("hits", "prefix_hits"),
    ("preempted_requests", "preempted_prefix_requests"),
    ("preempted_queries", "preempted_prefix_queries"),
    ("preempted_hits", "preempted_prefix_hits"),
)


class Replay:
    """One workload on one simulated engine."""

    def __init__(self, workload: Workload):
        c = workload.config
        self.workload = workload
        self.step = 0
        self.kv = KVCacheManager(c.num_gpu_blocks, c.block_size)
        self.counters = EngineCounters()
        self.scheduler = Scheduler(
            workload.name,
            self.kv,
            self.counters,
            lambda: float(self.step),
            c.max_num_batched_tokens,
            c.max_num_seqs,
            check=True,  # the block invariants after every step
        )
        self.turns: dict[str, list[Request]] = {}
        self.programs: dict[str, ConformanceProgram] = {}
        self.names: dict[int, str] = {}  # engine request id -> its vLLM request id
        self.timed: list[tuple[int, int, Request]] = []  # (step, order, first turn)
        self.ready: list[tuple[int, int, Request]] = []  # (due step, order, next turn)
        self.order = 0
        self.finished_now: list[str] = []
        self._next_id = 0
        for p in workload.programs:
            self.programs[p.id] = p
            self.turns[p.id] = [
                self._request(p, i, len(prompt), len(out), epoch)
                for i, prompt, out, epoch in program_tokens(p)
            ]
            self.timed.append((p.arrival_step, len(self.timed), self.turns[p.id][0]))
        self.timed.sort(key=lambda t: (t[0], t[1]))

    @staticmethod
    def _request(p: ConformanceProgram, i: int, prompt: int, output: int, epoch: int) -> Request:
        return Request(
            program_id=p.id,
            step=i,
            prompt_tokens=prompt,
            output_tokens=output,
            prefix_id=p.prefix_id,
            prefix_tokens=p.prefix_tokens,
            chain_id=chain_id(p, epoch),
        )

    # ---- arrivals --------------------------------------------------------------------------
    def pending(self) -> bool:
        return bool(self.timed or self.ready)

    def next_step(self) -> int:
        return min([d for d, _, _ in self.ready] + [s for s, _, _ in self.timed[:1]])

    def _due(self) -> list[Request]:
        now = sorted(r for r in self.ready if r[0] <= self.step)
        self.ready = [r for r in self.ready if r[0] > self.step]
        out = [r for _, _, r in now]
        while self.timed and self.timed[0][0] <= self.step:
            out.append(self.timed.pop(0)[2])
        return out

    def _submit(self, request: Request) -> None:
        self._next_id += 1
        name = request_id(self.programs[request.program_id], request.step)
        self.names[self._next_id] = name
        req = EngineRequest(
            request,
            lambda _usage, r=request, n=name: self._done(r, n),
            self._next_id,
            self.kv.block_size,
            float(self.step),
        )
        self.scheduler.add_request(req)

    def _done(self, request: Request, name: str) -> None:
        self.finished_now.append(name)
        turns = self.turns[request.program_id]
        if request.step + 1 < len(turns):
            turn = self.programs[request.program_id].turns[request.step + 1]
            self.ready.append(
                (self.step + 1 + turn.delay_steps, self.order, turns[request.step + 1])
            )
            self.order += 1

    # ---- one iteration -----------------------------------------------------------------------
    def one_step(self) -> dict:
        sched = self.scheduler
        for request in self._due():
            self._submit(request)
        running_before = set(sched.running)
        before = {name: getattr(self.counters, f) for name, f in COUNTERS}
        output = sched.schedule()
        scheduled = {}
        for rid, req in sched.running.items():
            n = 1 if req.is_decoding else req.num_scheduled_tokens
            if n:
                scheduled[self.names[rid]] = n
        admitted = [
            [self.names[r.request_id], r.num_computed_tokens, r.usage.preemptions > 0]
            for r in output.chunks
            if r.request_id not in running_before
        ]
        # nothing finishes in schedule(): who left `running` was preempted
        preempted = sorted(self.names[rid] for rid in running_before if rid not in sched.running)
        self.finished_now = []
        sched.update_from_output(output)
        self.kv.check_invariants(sched.running.values())
        record = {
            "step": self.step,
            "scheduled": dict(sorted(scheduled.items())),
            "admitted": admitted,
            "preempted": preempted,
            "finished": sorted(self.finished_now),
            "running": len(sched.running),
            "waiting": len(sched.waiting),
            "free_blocks": self.kv.num_free_blocks(),
            "cached_blocks": self.kv.num_cached_blocks(sched.running.values()),
            "prefix_cache": {n: getattr(self.counters, f) - before[n] for n, f in COUNTERS},
        }
        return record

    def run(self, max_steps: int = 1_000_000):
        """Yield one record per non-idle iteration until every request has finished."""
        sched = self.scheduler
        while self.pending() or sched.has_work():
            if not sched.has_work():
                self.step = max(self.step, self.next_step())
            record = self.one_step()
            yield record
            if not record["scheduled"] and not sched.running and not self.pending():
                raise RuntimeError(f"{self.workload.name}: the waiting head can never run")
            self.step += 1
            if self.step > max_steps:
                raise RuntimeError(f"no progress after {max_steps} steps")


def replay(workload: Workload) -> list[dict]:
    return list(Replay(workload).run())
