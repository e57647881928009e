"""The program lifecycle both drivers share: the programs still to start, how many started and
finished, and when. Each program: arrive -> prepare its environment -> (LLM call -> tool call)
x steps -> finish.

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
from collections.abc import Callable, Sequence
from dataclasses import replace

from thundersim.core.cluster import Cluster
from thundersim.core.program import Program


class ProgramFeed:
    """What both drivers (SimPy here, asyncio in thundersim.live.driver) keep: the programs still to
    start, how many started and finished, and when."""

    def __init__(
        self,
        cluster: Cluster,
        programs: Sequence[Program],
        concurrency: int | None,
        on_progress: Callable[[], None] | None = None,
        envs=None,
        recycle: bool = False,
    ):
        if concurrency is not None and concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        if recycle and (concurrency is None or not programs):
            raise ValueError("recycling programs needs a closed loop (concurrency) and a trace")
        self.envs = envs  # the tool resource manager (thundersim.core.envs.EnvManager), if any
        self.cluster = cluster
        self.queue = deque(programs)
        self.concurrency = concurrency
        self.recycle = recycle
        self._specs = [p.spec for p in programs]  # what a recycled round starts again
        self._round = 0
        self.on_progress = on_progress
        self.started = 0
        self.completed = 0
        self.last_start: float | None = None  # when the trace ran out of programs to start
        self.first_finish: float | None = None
        self.last_finish: float | None = None

    def _next(self) -> Program:
        p = self.queue.popleft()
        self.started += 1
        if not self.queue:
            if self.recycle:
                self._refill()
            else:
                self.last_start = self.cluster.now
        return p

    def _refill(self) -> None:
        """The trace again, as fresh programs: new ids (so new KV chains and environments),
        the same shapes, in the same order for every policy."""
        self._round += 1
        base = len(self._specs) * self._round
        for i, spec in enumerate(self._specs):
            fresh = replace(spec, id=f"{spec.id}#{self._round}")
            self.queue.append(Program(fresh, base + i))

    def _arrive(self, p: Program):
        """The program arrives; returns the event its environment fires when ready (None with
        no tool manager). The environment is asked for first, so the policy sees it (not yet
        ready) on arrival."""
        ready = self.envs.acquire(p) if self.envs is not None else None
        self.cluster.arrive(p)
        return ready

    def upcoming(self):
        """Specs of the programs still to start, in the order they will arrive."""
        return (p.spec for p in self.queue)

    def _finished(self, p: Program) -> None:
        self.cluster.finish(p)
        if self.envs is not None:
            self.envs.release(p)
        self.completed += 1
        if self.first_finish is None:
            self.first_finish = self.cluster.now
        self.last_finish = self.cluster.now
        if self.on_progress is not None:
            self.on_progress()

    @property
    def done(self) -> bool:
        return not self.queue and self.completed == self.started
