"""The SimPy driver: the program lifecycle (thundersim.core.lifecycle) on a SimPy Environment.
It supplies only the clock and the waiting: an event is yielded to SimPy as is, preparation,
tool calls and ticks are timeouts (a simulated sandbox runs no tools)."""

from __future__ import annotations

from collections.abc import Callable

import simpy

from thundersim.core.lifecycle import Delay, ProgramFeed, Spawn, Tool, Until, Waits


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

    def fail(self, event: simpy.Event, error: BaseException) -> None:
        if not event.triggered:
            event.fail(error)

    def call_later(self, delay: float, callback: Callable[[], None]) -> None:
        self.env.timeout(max(delay, 0.0)).callbacks.append(lambda _: callback())


class Driver:
    """Runs lifecycles as SimPy processes."""

    __slots__ = ("env",)

    def __init__(self, env: simpy.Environment):
        self.env = env

    def start(self, feed: ProgramFeed) -> None:
        """The feed's programs and the policy's tick, as processes (run with `env.run`)."""
        for feeder in feed.feeders():
            self.process(feeder)
        ticker = feed.ticker()
        if ticker is not None:
            self.process(ticker)

    def process(self, waits: Waits) -> simpy.Process:
        return self.env.process(self._drive(waits))

    def _drive(self, waits: Waits):
        env = self.env
        for wait in waits:
            if isinstance(wait, Until):
                yield wait.event
            elif isinstance(wait, Delay | Tool):
                yield env.timeout(wait.seconds)
            elif isinstance(wait, Spawn):
                self.process(wait.waits)
            else:
                raise TypeError(f"not a wait: {wait!r}")
