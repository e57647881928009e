"""The SimPy driver: the program lifecycle (thundersim.core.lifecycle) on a SimPy Environment;
programs, tools and preparation are timeouts."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import simpy

from thundersim.core.cluster import Cluster
from thundersim.core.lifecycle import ProgramFeed
from thundersim.core.program import Program


class SimClock:
    """The Cluster's Clock on a SimPy Environment."""

    __slots__ = ("env",)

    def __init__(self, env: simpy.Environment):
        self.env = env

    @property
    def now(self) -> float:
        return self.env.now

    def new_event(self) -> simpy.Event:
        return self.env.event()

    def fire(self, event: simpy.Event, value) -> None:
        event.succeed(value)


class Driver(ProgramFeed):
    """The feed on a SimPy Environment: programs, tools and preparation are timeouts."""

    def __init__(
        self,
        env: simpy.Environment,
        cluster: Cluster,
        programs: Sequence[Program],
        concurrency: int | None,
        on_progress: Callable[[], None] | None = None,
        envs=None,
        recycle: bool = False,
    ):
        super().__init__(cluster, programs, concurrency, on_progress, envs, recycle)
        self.env = env

    def start(self) -> None:
        env = self.env
        if self.concurrency is None:
            env.process(self._open_loop())
        else:
            for _ in range(min(self.concurrency, len(self.queue))):
                env.process(self._slot())
        tick = self.cluster.policy.tick_interval
        if tick:
            env.process(self._ticker(tick))

    def _slot(self):
        while self.queue:
            yield from self._run(self._next())

    def _open_loop(self):
        while self.queue:
            wait = self.queue[0].spec.arrival_s - self.env.now
            if wait > 0:
                yield self.env.timeout(wait)
            self.env.process(self._run(self._next()))

    def _run(self, p: Program):
        env, cluster = self.env, self.cluster
        ready = self._arrive(p)
        if ready is not None:
            yield ready
        elif p.spec.env.prep_s > 0:
            yield env.timeout(p.spec.env.prep_s)
        p.ready_time = env.now
        for step in p.spec.steps:
            yield cluster.request(p)
            if step.tool_s > 0:
                yield env.timeout(step.tool_s)
            cluster.tool_done(p)
        self._finished(p)

    def _ticker(self, interval: float):
        while True:
            yield self.env.timeout(interval)
            self.cluster.tick()
