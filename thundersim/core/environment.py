"""One tool environment (sandbox disk, network ports, a process): its states, its record, and
the contract of whatever makes and removes it.

The tool resource manager (thundersim.core.envs) owns the records and moves them through their
states; a provider (the simulated thundersim.sim.sandbox or a real one in
thundersim.engine_adapters.sandbox) does the making and removing. The record keeps the times
of its life and how many preparations it shared the service with, for the manager's tables.

A preparation ends one of two ways, and the provider says which: `on_ready(handle)` or
`on_failed(reason)`. One that says neither within the provider's `prep_timeout_s` past its
uncontended duration is given up by the manager as failed, so no program waits on it forever.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum, auto
from typing import Any, Protocol

from thundersim.traces.schema import EnvSpec


class EnvState(Enum):
    """Where an environment is in its life: QUEUED -> PREPARING -> READY -> REMOVED (one that is
    removed early skips the rest: a queued one at the end of the run, a preparing one cut short
    or failed; a failed one keeps its reason in `Env.failure`). Internal to the manager: no
    table prints it."""

    QUEUED = auto()  # asked for, waiting for room under the disk and port limits
    PREPARING = auto()  # its resources are taken; the provider is making it
    READY = auto()  # usable: its program's calls may run
    REMOVED = auto()  # torn down (its program finished, or the run ended)


class EnvProvider(Protocol):
    """Makes and removes environments (simulated timeouts, or real directories, ports and
    processes)."""

    # How long (s) past its uncontended duration a preparation may take before the manager
    # gives up on it as failed; None: never (a provider whose preparations always end, such as
    # the simulated one). A live provider sets one: a `docker run` that never returns must not
    # hang the run.
    prep_timeout_s: float | None

    def prepare(
        self,
        key: str,
        spec: EnvSpec,
        duration_s: float,
        on_ready: Callable[[Any], None],
        on_failed: Callable[[str], None],
    ) -> None:
        """Start preparing; call on_ready(handle) once it is usable, or on_failed(reason) if it
        cannot be made (the reason is one line for the user: what failed and why), having
        removed whatever it had made of it. Exactly one of the two, once; one that comes after
        the manager gave up (or after close) is ignored, a late handle torn down. duration_s is
        the trace's uncontended preparation time; a provider that models contention stretches
        it."""

    def teardown(self, handle: Any) -> None:
        """Remove it now: files, ports, processes."""

    def close(self) -> None:
        """Release anything still held (a preparation cut short) when the run ends."""


class Env:
    """One environment: its owner, its resources and the times of its life."""

    __slots__ = (
        "concurrent",
        "failure",
        "handle",
        "key",
        "mean_concurrent",
        "owner_done",
        "prefetched",
        "prep_area_start",
        "prep_s",
        "program_id",
        "ready_t",
        "removed_t",
        "requested_t",
        "spec",
        "start_t",
        "state",
        "waiters",
    )

    def __init__(self, program_id: str, key: str, spec: EnvSpec, now: float, prefetched: bool):
        self.program_id = program_id
        self.key = key  # provider-safe name (program ids are untrusted text)
        self.spec = spec
        self.prefetched = prefetched
        self.state = EnvState.QUEUED
        self.requested_t = now
        self.start_t: float | None = None
        self.ready_t: float | None = None
        self.removed_t: float | None = None
        self.prep_s = 0.0
        self.concurrent = 0  # preparations in progress when it started (itself included)
        # preparations in progress on average from its start to ready (itself included)
        self.mean_concurrent: float | None = None
        # the manager's integral of preparations in progress over time, when this one started
        self.prep_area_start = 0.0
        self.handle: Any = None
        self.failure: str | None = None  # why its preparation failed (None: it did not)
        self.owner_done = False
        self.waiters: list = []  # clock events fired with this environment once it is ready

    @property
    def ready(self) -> bool:
        return self.state is EnvState.READY
