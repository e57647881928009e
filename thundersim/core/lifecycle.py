"""The program lifecycle, written once for both clocks: arrive -> prepare its environment ->
(LLM call -> tool call) x steps -> finish.

A lifecycle is a generator that says what to wait for next (`Until` an event of the Cluster's
Clock fires, a `Delay`, a `Tool` call) and runs the program's bookkeeping in between. A driver
only supplies the clock and the waiting: the SimPy driver (thundersim.sim.driver) turns each
wait into a SimPy event or timeout, the asyncio one (thundersim.live.driver) into an await (a
tool call there runs in the program's sandbox when it has one). As with SimPy's
RealtimeEnvironment, only how time passes differs.

Two ways to feed programs:
- closed loop (`concurrency=N`): N programs are in the system at once; when one finishes the
  next one of the trace arrives (how the paper runs "parallel workflows"). With `recycle` the
  loop never drains: when the trace runs out it starts again from its first program, each reuse
  a fresh program with its own id (`ID#1`, `ID#2`, ...) and so its own KV chain, like an RL
  rollout or a serving fleet that always has work; the run is stopped at its horizon;
- open loop (`concurrency=None`): each program arrives at its trace `arrival_s`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

from thundersim.core.cluster import Cluster
from thundersim.core.program import Program
from thundersim.traces.schema import ProgramSpec


# ---- what a lifecycle waits for ---------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Until:
    """Until a one-shot event of the Clock fires: an environment is ready, a call has run."""

    event: Any


@dataclass(frozen=True, slots=True)
class Delay:
    """A stretch of the clock's time: environment preparation without a tool manager, the gap
    to an open-loop arrival, a periodic tick."""

    seconds: float


@dataclass(frozen=True, slots=True)
class Tool:
    """A tool call of `seconds` (the trace's). `sandbox` is the handle of the program's tool
    environment (None without a tool manager): where a driver can run tools for real, it runs
    the tool there; otherwise the call is a Delay."""

    tool: str
    seconds: float
    sandbox: Any = None


@dataclass(frozen=True, slots=True)
class Spawn:
    """Start another lifecycle alongside this one, without waiting for it (an open-loop
    arrival)."""

    waits: Iterator[Wait]


Wait = Until | Delay | Tool | Spawn
Waits = Generator[Wait, Any, None]


def periodic(interval: float, fn: Callable[[], None], *, at_start: bool = False) -> Waits:
    """Call `fn` every `interval` of the clock's time, forever: first after one interval (the
    policy's tick) or at once (a sampler, so a run's first state is recorded)."""
    if at_start:
        fn()
    while True:
        yield Delay(interval)
        fn()


# ---- the programs still to start --------------------------------------------------------------
class ProgramQueue:
    """The programs still to start, in arrival order. Built before anything that needs to know
    who arrives next (the tool manager's prefetch reads `upcoming`), so that it is handed over
    at construction."""

    def __init__(self, programs: Sequence[Program], recycle: bool = False):
        if recycle and not programs:
            raise ValueError("recycling programs needs a trace")
        self._queue = deque(programs)
        self.recycle = recycle
        self._specs = [p.spec for p in programs]  # what a recycled round starts again
        self._round = 0

    def __len__(self) -> int:
        return len(self._queue)

    @property
    def head(self) -> Program:
        """The next program to start."""
        return self._queue[0]

    def pop(self) -> Program:
        p = self._queue.popleft()
        if not self._queue and self.recycle:
            self._refill()
        return p

    def upcoming(self) -> Iterator[ProgramSpec]:
        """Specs of the programs still to start, in the order they will arrive."""
        return (p.spec for p in self._queue)

    def _refill(self) -> None:
        """The trace again, as fresh programs: new ids (so new KV chains and environments),
        the same shapes, in the same order for every policy."""
        self._round += 1
        base = len(self._specs) * self._round
        for i, spec in enumerate(self._specs):
            fresh = replace(spec, id=f"{spec.id}#{self._round}")
            self._queue.append(Program(fresh, base + i))


# ---- the lifecycle ----------------------------------------------------------------------------
class ProgramFeed:
    """Feeds the queue's programs to the Cluster and runs each one's lifecycle; counts how many
    started and finished, and when. `on_progress(completed, now)` is told of every finish."""

    def __init__(
        self,
        cluster: Cluster,
        queue: ProgramQueue,
        concurrency: int | None,
        on_progress: Callable[[int, float], None] | None = None,
        envs=None,
    ):
        if concurrency is not None and concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        if queue.recycle and concurrency is None:
            raise ValueError("recycling programs needs a closed loop (concurrency) and a trace")
        self.envs = envs  # the tool resource manager (thundersim.core.envs.EnvManager), if any
        self.cluster = cluster
        self.queue = queue
        self.concurrency = concurrency
        self.on_progress = on_progress
        self.started = 0
        self.completed = 0
        self.last_start: float | None = None  # when the trace ran out of programs to start
        self.first_finish: float | None = None
        self.last_finish: float | None = None

    @property
    def recycle(self) -> bool:
        return self.queue.recycle

    @property
    def done(self) -> bool:
        return not self.queue and self.completed == self.started

    # ---- what a driver runs ------------------------------------------------------------------
    def feeders(self) -> list[Waits]:
        """The lifecycles that start programs: one open loop, or one slot per program in the
        closed loop."""
        if self.concurrency is None:
            return [self._open_loop()]
        return [self._slot() for _ in range(min(self.concurrency, len(self.queue)))]

    def ticker(self) -> Waits | None:
        """The policy's periodic tick (None for a policy without one)."""
        tick = self.cluster.policy.tick_interval
        return periodic(tick, self.cluster.tick) if tick else None

    def program(self, p: Program) -> Waits:
        """One program's lifecycle."""
        cluster = self.cluster
        ready = self._arrive(p)
        if ready is not None:
            yield Until(ready)
        elif p.spec.env.prep_s > 0:
            yield Delay(p.spec.env.prep_s)
        p.ready_time = cluster.now
        for step in p.spec.steps:
            yield Until(cluster.request(p))
            if step.tool_s > 0:
                yield Tool(step.tool, step.tool_s, p.envs[0].handle if p.envs else None)
            cluster.tool_done(p)
        self.finish(p)

    def _slot(self) -> Waits:
        while self.queue:
            yield from self.program(self._next())

    def _open_loop(self) -> Waits:
        while self.queue:
            wait = self.queue.head.spec.arrival_s - self.cluster.now
            if wait > 0:
                yield Delay(wait)
            yield Spawn(self.program(self._next()))

    # ---- arrivals and finishes ---------------------------------------------------------------
    def _next(self) -> Program:
        p = self.queue.pop()
        self.started += 1
        if not self.queue:
            self.last_start = self.cluster.now
        return p

    def _arrive(self, p: Program):
        """The program arrives; returns the event its environment fires when ready (None with
        no tool manager). The environment is asked for first, so the policy sees it (not yet
        ready) on arrival."""
        ready = self.envs.acquire(p) if self.envs is not None else None
        self.cluster.arrive(p)
        return ready

    def arrive_open(self, p: Program) -> None:
        """A program whose calls come from a live agent (thundersim serve) arrived, ready at
        once: its agent has its own environment."""
        self.cluster.arrive(p)
        p.ready_time = self.cluster.now
        self.started += 1

    def finish(self, p: Program) -> None:
        self.cluster.finish(p)
        if self.envs is not None:
            self.envs.release(p)
        self.completed += 1
        if self.first_finish is None:
            self.first_finish = self.cluster.now
        self.last_finish = self.cluster.now
        if self.on_progress is not None:
            self.on_progress(self.completed, self.cluster.now)
