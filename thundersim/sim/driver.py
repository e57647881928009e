"""The SimPy driver: the program lifecycle (thundersim.core.lifecycle) on a SimPy Environment.
It supplies only the clock and the waiting: an event is yielded to SimPy as is, preparation,
tool calls and ticks are timeouts (a simulated sandbox runs no tools)."""

from __future__ import annotations

from collections.abc import Callable

import simpy
from simpy.events import NORMAL, URGENT

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


class _Resume(simpy.Event):
    """An event born triggered (ok, or failed with `value`) that calls `callback` when popped."""

    def __init__(self, env: simpy.Environment, callback, ok: bool = True, value=None):
        # Event.__init__ and succeed() / fail() inlined, as SimPy's own Initialize does.
        self.env = env
        self.callbacks = [callback] if callback is not None else []
        self._ok = ok
        self._value = value


class _Lifecycle:
    """One lifecycle run by SimPy callbacks: what a SimPy process over `Driver._drive` did, in
    the same event order (it starts at an URGENT event scheduled when it is created; each wait
    resumes it at the pop of the event it waits on; a wait on an event already processed goes
    on at once; a failure is raised at the pop of a failed event scheduled where the process
    failed), without a process's generator and bookkeeping per wait. A process's end is an
    event nobody waits on: not scheduled here (one event fewer, the order of the rest kept)."""

    __slots__ = ("driver", "env", "resume", "waits")

    def __init__(self, driver: Driver, waits: Waits):
        self.driver = driver
        self.env = driver.env
        self.waits = waits
        self.resume = self._resume  # one bound method for every wait
        self.env.schedule(_Resume(self.env, self.resume), URGENT)

    def _resume(self, event: simpy.Event) -> None:
        env = self.env
        waits = self.waits
        try:
            while True:
                if not event._ok:
                    # the process got the failure thrown at its yield, which ended it
                    event._defused = True
                    exc = type(event._value)(*event._value.args)
                    exc.__cause__ = event._value
                    raise exc
                try:
                    wait = next(waits)
                except StopIteration:
                    return
                kind = type(wait)
                if kind is Until or isinstance(wait, Until):
                    event = wait.event
                    if event.callbacks is not None:  # not processed yet: resume at its pop
                        event.callbacks.append(self.resume)
                        return
                elif kind is Delay or kind is Tool or isinstance(wait, Delay | Tool):
                    if wait.seconds < 0:
                        raise ValueError(f"Negative delay {wait.seconds}")  # as env.timeout
                    env.schedule(_Resume(env, self.resume), NORMAL, wait.seconds)
                    return
                elif isinstance(wait, Spawn):
                    self.driver.process(wait.waits)
                    event = _DONE
                else:
                    raise TypeError(f"not a wait: {wait!r}")
        except BaseException as exc:
            # as a failed process: the error surfaces from env.step at its own event's pop
            env.schedule(_Resume(env, None, ok=False, value=exc))


class _Processed:
    """Stands for an event already processed (a Spawn goes on at once)."""

    __slots__ = ()
    _ok = True


_DONE = _Processed()


class Driver:
    """Runs lifecycles as SimPy callback chains (what SimPy processes over them did)."""

    __slots__ = ("env",)

    def __init__(self, env: simpy.Environment):
        self.env = env

    def start(self, feed: ProgramFeed) -> None:
        """The feed's programs and the policy's tick, as lifecycles (run with `env.run`)."""
        for feeder in feed.feeders():
            self.process(feeder)
        ticker = feed.ticker()
        if ticker is not None:
            self.process(ticker)

    def process(self, waits: Waits) -> _Lifecycle:
        return _Lifecycle(self, waits)
