"""The tool resource manager: every program's tool environment (sandbox disk, network ports, a
process) with a lifecycle, the T of P = <ID, c, T, L, tau, s>.

- Preparation: a program's environment is prepared before its first call. Requests queue FIFO
  under the disk and port limits: when one would exceed a limit, admission waits (nothing fails),
  and a large environment is not overtaken by small ones behind it.
- Garbage collection (`gc`): the environment is torn down the moment its program finishes or is
  released. Without it (`none`, the paper's baseline) it stays until the end of the run.
- Asynchronous preparation (`gc+prefetch`): the environments of the programs that will be
  admitted next (the head of the closed-loop queue) are prepared while the others reason, as
  many as the completion rate needs to hide the preparation time, within the limits, and only
  when no arrived program is waiting for room.

Clock-agnostic like the Cluster: environments (records in thundersim.core.environment) are
made and removed by an `EnvProvider`, the simulated one (thundersim.sim.sandbox) or a real one
(thundersim.engine_adapters.sandbox). The manager hands the provider the trace's uncontended
preparation time; what contention does to it is the provider's business (the simulated one
shares its service among the preparations in progress, a real one takes as long as it takes).
Each environment records how many preparations were in progress when it started and, on
average, while it was being prepared.

Nothing waits forever: a preparation the provider reports failed (`on_failed`), or one it has
not answered `provider.prep_timeout_s` after its uncontended duration, frees its resources and
stops the run with `EnvPrepFailed`, naming the program, the environment and the reason. The
programs waiting for an environment get it raised; no further preparation starts; a program
that arrives later gets it too. The runners stop on it as on `EnvLimitReached` (both are
`EnvStopped`): what finished is kept, the reason goes to the summary's `stopped`.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pandas is imported where tables are built, not at start-up
    import pandas as pd

from thundersim.core.environment import Env, EnvProvider, EnvState
from thundersim.traces.schema import EnvSpec, ProgramSpec


class ToolManagerMode(StrEnum):
    """What the manager does with environments; the value is what `--tool-manager` takes and
    what summary.json and the tables print."""

    NONE = "none"  # the paper's baseline: every environment stays until the end of the run
    GC = "gc"  # torn down the moment its program finishes or is released
    GC_PREFETCH = "gc+prefetch"  # gc, and the next programs' environments prepared ahead

    @classmethod
    def _missing_(cls, value: object) -> ToolManagerMode:
        raise ValueError(f"unknown tool-manager mode {value!r}; valid: {', '.join(cls)}")


# The valid modes in order, for membership checks and messages that list them.
MODES = tuple(ToolManagerMode)

# Prefetch sizing (`gc+prefetch`). The paper prepares environments asynchronously "for programs
# about to be restored" and publishes no depth; thundersim prepares as many ahead as hide one
# preparation time at the recent completion rate, with these four choices of its own.
# provenance: estimate — a cap on environments prepared ahead of their programs, so that a burst
# of finishes (a near-zero gap between them) cannot start preparing the whole queue at once
MAX_PREFETCH = 16
# provenance: estimate — the completion rate and the mean preparation time are taken over the
# last 16 finished programs / removed environments: long enough to smooth single tool-time
# outliers, short enough to follow a phase change of the workload
RATE_WINDOW = 16
# provenance: estimate — before two programs have finished there is no rate: prepare one ahead
INITIAL_PREFETCH_DEPTH = 1
# provenance: estimate — one environment more than the rate needs, so that the next program does
# not wait on a preparation that started just in time
PREFETCH_SPARE = 1


log = logging.getLogger(__name__)


class EnvStopped(RuntimeError):
    """The tool manager cannot go on: the run stops, keeps what it finished and records why
    (the summary's `stopped`)."""


class EnvLimitReached(EnvStopped):
    """Without garbage collection nothing is ever freed: once the next environment does not fit
    the limits, the run cannot go on (the paper's baseline crossing its 2 TB disk)."""


class EnvPrepFailed(EnvStopped):
    """A program's environment could not be made (its provider said why, or never answered):
    the program cannot run, and the run stops rather than wait for it."""

    def __init__(self, program_id: str, key: str, reason: str):
        # the args are the three parts, so that a copy (SimPy re-raises one) is the same error
        super().__init__(program_id, key, reason)
        self.program_id = program_id
        self.key = key
        self.reason = reason

    def __str__(self) -> str:
        return (
            f"program {self.program_id}: its environment {self.key} could not be prepared: "
            f"{self.reason}"
        )


@dataclass(frozen=True)
class EnvLimits:
    disk_bytes: int | None = None  # None: unlimited
    ports: int | None = None

    def __post_init__(self) -> None:
        for name in ("disk_bytes", "ports"):
            limit = getattr(self, name)
            if limit is not None and limit < 0:
                raise ValueError(f"env limit {name} must be >= 0, got {limit}")


class EnvManager:
    """Prepares, hands out and collects the programs' environments under the limits (see the
    module docstring). `mode` is a ToolManagerMode or its text ("gc", ...)."""

    def __init__(
        self,
        clock,
        provider: EnvProvider,
        mode: ToolManagerMode | str = ToolManagerMode.GC_PREFETCH,
        limits: EnvLimits | None = None,
        upcoming: Callable[[], Iterable[ProgramSpec]] | None = None,
        max_prefetch: int = MAX_PREFETCH,
    ):
        self.mode = ToolManagerMode(mode)  # a bad one fails here, listing the valid modes
        self.clock = clock
        self.provider = provider
        self.limits = limits or EnvLimits()
        self.upcoming = upcoming  # specs of programs not yet arrived, in admission order
        self.max_prefetch = max_prefetch
        self.envs: dict[str, Env] = {}  # program id -> its environment (until removed)
        self.done: list[Env] = []  # removed environments
        self._queue: deque[Env] = deque()
        self.disk = 0  # bytes held by the environments preparing or ready
        self.ports = 0
        self.n_preparing = 0  # environments in EnvState.PREPARING
        self._prep_area = 0.0  # integral over time of `n_preparing` (preparation-seconds)
        # when _prep_area was last brought up to date
        self._prep_area_t = clock.now if clock is not None else 0.0
        self.peak_disk = 0
        self.peak_ports = 0
        self._finishes: list[float] = []  # when each program finished
        self._usage: list[tuple] = []  # rows of usage_frame
        self._created = 0  # environments made so far: numbers their provider keys
        self.closed = False
        self.leaked_at_end = 0
        self.failure: EnvPrepFailed | None = None  # the first preparation that failed
        self.failed_preps = 0
        self._record()

    # ---- what the Driver reports -----------------------------------------------------------
    def acquire(self, program) -> Any:
        """The program arrived: an event that fires when its environment is ready (at once if
        it was prepared ahead). The environment becomes the program's T. After a preparation
        failed the event carries that failure (EnvPrepFailed): nothing more is prepared."""
        if self.failure is not None:
            event = self.clock.new_event()
            self.clock.fail(event, self.failure)
            return event
        env = self.envs.get(program.id)
        if env is None:
            env = self._new(program.id, program.spec.env, prefetched=False)
            self._queue.append(env)
            self._pump()
        program.envs = (env,)
        event = self.clock.new_event()
        if env.ready:
            self.clock.fire(event, env)
        elif self.failure is not None:  # it (or one before it) failed while being started
            self.clock.fail(event, self.failure)
        else:
            env.waiters.append(event)
        return event

    def release(self, program) -> None:
        """The program finished (or was released): collect its environment unless in `none`."""
        env = self.envs.get(program.id)
        self._finishes.append(self.clock.now)
        if env is None:
            return
        env.owner_done = True
        if self.mode is not ToolManagerMode.NONE:
            self._remove(env)
        self._pump()

    def close(self) -> None:
        """End of the run (finished or interrupted): remove every environment still held,
        including ones still preparing and the baseline's kept ones."""
        self.closed = True
        self._queue.clear()
        for env in list(self.envs.values()):
            self._remove(env)
        self.provider.close()  # anything it still holds (a preparation cut short)

    # ---- tables ------------------------------------------------------------------------------
    def usage_frame(self) -> pd.DataFrame:
        import pandas as pd

        return pd.DataFrame(
            self._usage,
            columns=["t", "disk_bytes", "ports", "envs", "preparing", "waiting", "finished"],
        )

    def preps_frame(self) -> pd.DataFrame:
        import pandas as pd

        rows = [
            (
                e.program_id,
                e.prefetched,
                e.requested_t,
                e.start_t,
                e.ready_t,
                e.removed_t,
                e.prep_s,
                e.concurrent,
                e.mean_concurrent,
                e.spec.disk_bytes,
                e.spec.ports,
            )
            for e in [*self.done, *self.envs.values()]
        ]
        return pd.DataFrame(
            rows,
            columns=[
                "program",
                "prefetched",
                "requested_t",
                "start_t",
                "ready_t",
                "removed_t",
                "prep_s",
                "concurrent_preps",  # in progress when it started, itself included
                "mean_concurrent_preps",  # in progress on average until ready (NaN: not ready)
                "disk_bytes",
                "ports",
            ],
        )

    def summary(self, programs: Iterable) -> dict:
        """`env` of summary.json. Waits are per program: arrival to environment ready."""
        waits = [
            p.ready_time - p.arrival_time
            for p in programs
            if p.ready_time is not None and p.arrival_time is not None
        ]
        all_envs = [*self.done, *self.envs.values()]
        preps = [e.prep_s for e in all_envs if e.ready_t is not None]
        return {
            "mode": self.mode.value,
            "peak_disk_bytes": self.peak_disk,
            "peak_ports": self.peak_ports,
            # environments of finished programs still held when the run ended (before close)
            "leaked_envs": self.leaked_at_end,
            "envs_prepared": len(preps),
            "prefetched": sum(e.prefetched for e in all_envs),
            "mean_prep_s": sum(preps) / len(preps) if preps else 0.0,
            "mean_env_wait_s": sum(waits) / len(waits) if waits else 0.0,
            "disk_limit_bytes": self.limits.disk_bytes,
            "port_limit": self.limits.ports,
            # preparations that failed or never answered; the first one's message (None: none)
            "failed_preps": self.failed_preps,
            "prep_failure": str(self.failure) if self.failure is not None else None,
        }

    def mark_end(self) -> None:
        """The workload is over (call before close): environments of finished programs still
        held now are what garbage collection left behind (all of them without it)."""
        self.leaked_at_end = sum(1 for e in self.envs.values() if e.owner_done)

    # ---- internals ---------------------------------------------------------------------------
    def _new(self, program_id: str, spec: EnvSpec, prefetched: bool) -> Env:
        self._created += 1
        env = Env(program_id, f"env-{self._created}", spec, self.clock.now, prefetched)
        self.envs[program_id] = env
        return env

    def _fits(self, spec: EnvSpec) -> bool:
        limits = self.limits
        if limits.disk_bytes is not None and self.disk + spec.disk_bytes > limits.disk_bytes:
            return False
        return limits.ports is None or self.ports + spec.ports <= limits.ports

    def _check_possible(self, spec: EnvSpec, program_id: str) -> None:
        limits = self.limits
        if (limits.disk_bytes is not None and spec.disk_bytes > limits.disk_bytes) or (
            limits.ports is not None and spec.ports > limits.ports
        ):
            raise ValueError(
                f"program {program_id}: its environment ({spec.disk_bytes} bytes, {spec.ports} "
                f"ports) exceeds the limits ({limits.disk_bytes} bytes, {limits.ports} ports)"
            )

    def _pump(self) -> None:
        """Start what fits: queued programs first (FIFO), then prefetches."""
        if self.closed or self.failure is not None:
            return
        while self._queue and self.failure is None:
            head = self._queue[0]
            self._check_possible(head.spec, head.program_id)
            if not self._fits(head.spec):
                if self.mode is ToolManagerMode.NONE:
                    raise EnvLimitReached(
                        f"tool manager 'none' keeps every environment: the limits "
                        f"({self.limits.disk_bytes} bytes, {self.limits.ports} ports) are full "
                        f"with {len(self.envs)} environments ({len(self._finishes)} programs "
                        "finished) and nothing is ever freed"
                    )
                break
            self._queue.popleft()
            self._start(head)
        if (
            not self._queue
            and self.mode is ToolManagerMode.GC_PREFETCH
            and self.upcoming is not None
        ):
            self._prefetch()
        self._record()

    def _prefetch_depth(self) -> int:
        """How many not-yet-arrived programs to prepare ahead: enough to cover one preparation
        time at the recent completion rate (programs finish -> the next ones arrive)."""
        if len(self._finishes) < 2:
            return INITIAL_PREFETCH_DEPTH
        recent = self._finishes[-RATE_WINDOW:]
        gap = (recent[-1] - recent[0]) / (len(recent) - 1)
        prep = [e.prep_s for e in self.done[-RATE_WINDOW:] if e.ready_t is not None] or [
            e.prep_s for e in self.envs.values() if e.ready_t is not None
        ]
        mean_prep = sum(prep) / len(prep) if prep else 0.0
        if gap <= 0:
            return self.max_prefetch
        return min(self.max_prefetch, math.ceil(mean_prep / gap) + PREFETCH_SPARE)

    def _prefetch(self) -> None:
        depth = self._prefetch_depth()
        for n, spec in enumerate(self.upcoming()):
            if n >= depth or self.failure is not None:
                break
            if spec.id in self.envs or (spec.env.prep_s <= 0 and not spec.env.disk_bytes):
                continue
            if not self._fits(spec.env):
                break
            self._start(self._new(spec.id, spec.env, prefetched=True))

    def _start(self, env: Env) -> None:
        self.disk += env.spec.disk_bytes
        self.ports += env.spec.ports
        self.peak_disk = max(self.peak_disk, self.disk)
        self.peak_ports = max(self.peak_ports, self.ports)
        self._count_preparing(+1)
        env.state = EnvState.PREPARING
        env.start_t = self.clock.now
        env.concurrent = self.n_preparing
        env.prep_area_start = self._prep_area
        duration = max(env.spec.prep_s, 0.0)  # uncontended: contention is the provider's
        timeout = self.provider.prep_timeout_s
        if timeout is not None:
            limit = duration + timeout
            self.clock.call_later(limit, lambda: self._overdue(env, limit))
        self.provider.prepare(
            env.key,
            env.spec,
            duration,
            lambda handle: self._ready(env, handle),
            lambda reason: self._failed(env, reason),
        )

    def _ready(self, env: Env, handle: Any) -> None:
        if env.state is EnvState.REMOVED:  # torn down (end of run, failed) while prepared
            self.provider.teardown(handle)
            return
        if env.state is not EnvState.PREPARING:  # a second answer: the first one counts
            return
        env.handle = handle
        self._count_preparing(-1)
        env.state = EnvState.READY
        env.ready_t = self.clock.now
        env.prep_s = env.ready_t - env.start_t
        env.mean_concurrent = (
            (self._prep_area - env.prep_area_start) / env.prep_s
            if env.prep_s > 0
            else env.concurrent
        )
        for event in env.waiters:
            self.clock.fire(event, env)
        env.waiters.clear()
        self._record()

    def _overdue(self, env: Env, limit: float) -> None:
        if env.state is EnvState.PREPARING:
            self._failed(env, f"the provider did not answer within {limit:.1f} s")

    def _failed(self, env: Env, reason: str) -> None:
        """The provider could not make it (or never answered): free its resources, and tell
        every program waiting for an environment, which stops the run."""
        if env.state is not EnvState.PREPARING:  # late: given up, removed or closed already
            return
        self.failed_preps += 1
        env.failure = reason
        error = EnvPrepFailed(env.program_id, env.key, reason)
        if self.failure is None:
            self.failure = error
            log.error("%s", error)
        waiting = [env, *self.envs.values()]
        self._remove(env)
        for other in waiting:
            for event in other.waiters:
                self.clock.fail(event, error)
            other.waiters.clear()

    def _remove(self, env: Env) -> None:
        if env.state is EnvState.REMOVED:
            return
        if env.state is EnvState.PREPARING:
            self._count_preparing(-1)
        if env.state is not EnvState.QUEUED:
            self.disk -= env.spec.disk_bytes
            self.ports -= env.spec.ports
        if env.handle is not None:
            self.provider.teardown(env.handle)
        env.state = EnvState.REMOVED
        env.removed_t = self.clock.now
        del self.envs[env.program_id]
        self.done.append(env)
        self._record()

    def _count_preparing(self, delta: int) -> None:
        now = self.clock.now
        self._prep_area += self.n_preparing * (now - self._prep_area_t)
        self._prep_area_t = now
        self.n_preparing += delta

    def _record(self) -> None:
        self._usage.append(
            (
                self.clock.now,
                self.disk,
                self.ports,
                len(self.envs),
                self.n_preparing,
                len(self._queue),
                len(self._finishes),  # programs finished so far (disk vs processed workflows)
            )
        )
