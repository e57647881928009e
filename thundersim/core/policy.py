"""The Policy contract: callbacks that read a view of the cluster and return decisions.

A policy never touches an engine. Each callback gets a `ClusterView` (now, programs, backends;
and, so a callback need not scan every program, the ACTIVE programs of a backend, the PAUSED and
the ready WAITING ones, and a feed of the programs that changed) and returns a list of decisions; the Cluster checks each one against the program's state and
applies it, in simulation and live alike. Callbacks are synchronous and do no I/O.

Decisions:
- `Restore(program_id, backend)`: WAITING or PAUSED -> ACTIVE on `backend` (admission is a
  restore of a program that never ran). Its held request, if any, is sent at once.
- `Pause(program_id)`: ACTIVE -> PAUSED. Its next request is withheld; a call already running
  finishes first. Its KV is not freed by force: the engine's LRU eviction reclaims it.
- `Route(program_id, backend)`: an ACTIVE program with no call running sends its next call to
  `backend` (request-level routers; program-aware policies use Restore).
- `Pin(program_id, ttl_s)`: keep the program's cached KV on its backend unevictable for ttl_s
  seconds or until its next call starts (Continuum's time-to-live). Backends that cannot pin
  ignore it and count it in their stats.

Routers (`Router`) are the request-level half of data-parallel balancing: a policy that does
not place programs itself asks its router which backend a call goes to.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import ClassVar

from thundersim.core.program import ProgramView, Status


@dataclass(frozen=True, slots=True)
class Restore:
    program_id: str
    backend: int


@dataclass(frozen=True, slots=True)
class Pause:
    program_id: str


@dataclass(frozen=True, slots=True)
class Route:
    program_id: str
    backend: int


@dataclass(frozen=True, slots=True)
class Pin:
    program_id: str
    ttl_s: float


Decision = Restore | Pause | Route | Pin


class PolicyError(RuntimeError):
    """A policy returned a decision that its program's state does not allow."""


@dataclass(frozen=True, slots=True)
class BackendView:
    """What a policy may know of one backend: its capacity and the engine's own stats."""

    index: int
    name: str
    capacity_tokens: int
    used_tokens: int  # KV held by running requests
    running: int
    waiting: int
    alive: bool = True


class LazyBackendView:
    """A BackendView whose engine gauges (used_tokens, running, waiting) are read from the
    backend's `stats()` only when a policy asks for one, once per policy callback (the Cluster
    bumps `epoch` before each): a policy that reads only capacities and liveness (the
    program-aware ones) never pays for the engine's stats. Within one callback it reads as a
    snapshot would (nothing changes in a backend while a synchronous callback runs); kept past
    its callback, it shows the backend as it is when read."""

    __slots__ = ("_b", "_memo", "_gauges", "index", "name")

    def __init__(self, backend, memo):
        self._b = backend
        self._memo = memo  # the Cluster's: backend index -> stats of this callback
        # A backend may answer the three gauges alone (`gauges()`: used tokens, running,
        # waiting), without building its whole stats: a request-level router reads them of
        # every backend on every call, which at 64 replicas was most of a call's cost.
        self._gauges = getattr(backend, "gauges", None)
        self.index = backend.index
        self.name = backend.name

    @property
    def alive(self) -> bool:
        return self._b.alive

    @property
    def capacity_tokens(self) -> int:
        return self._b.capacity_tokens

    def _stats(self):
        return self._memo(self.index)

    def _gauge(self, name: str) -> int:
        source = self._gauges() if self._gauges is not None else self._stats()
        return getattr(source, name)

    used_tokens = property(lambda s: s._gauge("used_tokens"))
    running = property(lambda s: s._gauge("running"))
    waiting = property(lambda s: s._gauge("waiting"))

    def __repr__(self) -> str:
        return f"LazyBackendView({self.index}, {self.name}, alive={self.alive})"


class ClusterView:
    """Read-only view handed to policies. `programs` maps id -> ProgramView for every program
    that has arrived and not finished; `backends()` snapshots the engines.

    This base class computes everything from `programs` on each call (O(programs)): it is the
    reference the Cluster's `IndexedClusterView` is tested against (tests/test_incremental_views
    .py), and what a hand-built cluster state in a test gets. `subscribe()` returns None here: a
    policy then recomputes what it needs from scratch."""

    __slots__ = ("_cluster",)

    def __init__(self, cluster):
        self._cluster = cluster

    @property
    def now(self) -> float:
        return self._cluster.now

    @property
    def programs(self) -> Mapping[str, ProgramView]:
        return self._cluster.unfinished_views

    def backends(self) -> Sequence[BackendView]:
        return self._cluster.backend_views()

    @property
    def n_backends(self) -> int:
        return len(self._cluster.backends)

    def active_on(self, backend: int) -> list[ProgramView]:
        """The ACTIVE programs on `backend`, in the order of `programs` (arrival)."""
        return [
            p for p in self.programs.values() if p.status is Status.ACTIVE and p.backend == backend
        ]

    def paused(self) -> list[ProgramView]:
        """The PAUSED programs, in arrival order."""
        return [p for p in self.programs.values() if p.status is Status.PAUSED]

    def ready_waiting(self) -> list[ProgramView]:
        """The WAITING programs (never admitted) whose first call is ready, in arrival order."""
        return [p for p in self.programs.values() if p.status is Status.WAITING and p.pending]

    def restorable(self) -> list[ProgramView]:
        """What a Restore may take: PAUSED programs and ready WAITING ones, in arrival order."""
        return [
            p
            for p in self.programs.values()
            if p.status is Status.PAUSED or (p.status is Status.WAITING and p.pending)
        ]

    def subscribe(self) -> ChangeFeed | None:
        """A feed of the programs whose state changes from now on (None: this view cannot tell,
        recompute from `programs`)."""
        return None

    @property
    def source(self):
        """What the view looks at (one Cluster): a policy that keeps state built from a feed
        rebuilds it when handed a view of another cluster."""
        return self._cluster


class ChangeFeed:
    """The programs whose state (status, backend, phase, pending, in_flight, step, context,
    acting_since) changed since the last `drain`, each once, finished ones included (status
    DONE). A new feed starts with every unfinished program, so that a policy builds its state
    with the same code that keeps it up to date."""

    __slots__ = ("_changed",)

    def __init__(self, programs=()):
        self._changed: dict[str, ProgramView] = {p.id: p for p in programs}

    def add(self, view: ProgramView) -> None:
        self._changed[view.id] = view

    def drain(self) -> list[ProgramView]:
        out = list(self._changed.values())
        self._changed.clear()
        return out


class IndexedClusterView(ClusterView):
    """The Cluster's view: the same answers as ClusterView, from indexes the Cluster keeps at
    every change of a program's state (per backend its ACTIVE programs, the PAUSED ones, the
    ready WAITING ones), so a callback costs what it reads, not the size of the fleet; backend
    views are built once and read the engine's stats only when a policy asks for them."""

    __slots__ = ()

    def backends(self) -> Sequence[BackendView]:
        return self._cluster.lazy_backend_views()

    def active_on(self, backend: int) -> list[ProgramView]:
        return self._cluster.indexed(backend)

    def paused(self) -> list[ProgramView]:
        return self._cluster.indexed(PAUSED_SLOT)

    def ready_waiting(self) -> list[ProgramView]:
        return self._cluster.indexed(READY_SLOT)

    def restorable(self) -> list[ProgramView]:
        return self._cluster.indexed(PAUSED_SLOT, READY_SLOT)

    def subscribe(self) -> ChangeFeed | None:
        return self._cluster.subscribe()


# The Cluster's index slots besides the per-backend ACTIVE ones (which are backend indices).
PAUSED_SLOT = "paused"
READY_SLOT = "ready"


def active_loads(view: ClusterView, cost) -> list[float]:
    """Per backend, the sum of cost(program) over its ACTIVE programs (what a program-aware
    policy believes each backend's KV holds)."""
    loads = [0.0] * view.n_backends
    for p in view.programs.values():
        if p.status is Status.ACTIVE and p.backend is not None:
            loads[p.backend] += cost(p)
    return loads


class ActiveLoads:
    """`active_loads(view, cost)` kept up to date from the Cluster's change feed: each call
    costs the programs that changed since the last one, not all of them. `cost` must depend
    only on the program's state (not on the clock), and be a whole number of tokens, so the
    sums are exact in any order and equal to active_loads' left-to-right float sums (exact
    below 2**53). On a view without a feed it is active_loads itself."""

    def __init__(self, cost):
        self.cost = cost
        self._source = None
        self._feed: ChangeFeed | None = None
        self._sums: list[int] = []
        self._term: dict[str, tuple[int, int]] = {}  # program -> (backend, its cost)

    def __call__(self, view: ClusterView) -> list[float]:
        if self._source is not view.source:
            self._source = view.source
            self._feed = view.subscribe()
            self._sums = [0] * view.n_backends
            self._term.clear()
        if self._feed is None:
            return active_loads(view, self.cost)
        sums, term = self._sums, self._term
        for p in self._feed.drain():
            old = term.pop(p.id, None)
            if old is not None:
                sums[old[0]] -= old[1]
            if p.status is Status.ACTIVE and p.backend is not None:
                c = self.cost(p)
                term[p.id] = (p.backend, c)
                sums[p.backend] += c
        return [float(x) for x in sums]


def most_room(backends: Sequence[BackendView], loads: list[float], lam: float = 1.0):
    """The live backend with the most room under lam x capacity (lowest index on ties)."""
    alive = [b for b in backends if b.alive]
    if not alive:
        return None
    return max(alive, key=lambda b: (lam * b.capacity_tokens - loads[b.index], -b.index))


class Policy:
    """Base class: every callback defaults to no decision. Subclasses set `name` and a one-line
    docstring (shown by `thundersim policies`), and `tick_interval` (seconds) to get `on_tick`.
    """

    name: ClassVar[str] = ""
    tick_interval: float | None = None
    # Policy-specific parameters (`--param key=value`) with their defaults; anything else given
    # is refused with this list.
    params: ClassVar[dict[str, float]] = {}
    aliases: ClassVar[tuple[str, ...]] = ()  # other names `--policy` accepts for it

    def __init__(self, options: PolicyOptions | None = None):
        self.options = options or PolicyOptions()
        given = dict(self.options.params)
        unknown = sorted(set(given) - set(self.params))
        if unknown:
            known = ", ".join(sorted(self.params)) or "none"
            raise ValueError(
                f"policy {self.name!r} has no parameter {', '.join(unknown)}; known: {known}"
            )
        # this instance's parameter values: the defaults above, overridden by `--param`
        self.settings = {k: float(given.get(k, v)) for k, v in self.params.items()}

    def on_arrival(self, view: ClusterView, program: ProgramView) -> list[Decision]:
        return []

    def on_request(self, view: ClusterView, program: ProgramView) -> list[Decision]:
        return []

    def on_response(self, view: ClusterView, program: ProgramView) -> list[Decision]:
        return []

    def on_tick(self, view: ClusterView) -> list[Decision]:
        return []

    def on_finish(self, view: ClusterView, program: ProgramView) -> list[Decision]:
        return []


@dataclass(frozen=True, slots=True)
class PolicyOptions:
    """Knobs a run passes to whichever policy it builds; each policy reads what it uses.

    decay: how an acting program's context counts toward memory while its tool runs:
      "none"; "pow:X" for f = X^(-t/dt) (the paper's per-tick x^(-k), default X = 2);
      "exp:L" for f = e^(-L t), t in seconds.
    """

    # The paper's settings of its method are published specs, not fits: the paper chose them
    # (its ablation, fig6b, sweeps Δt and the decay base around them), we take them as given.
    # provenance: spec — the paper's monitor period Δt, default 5 s (PAPER.md Scheduling policy); a
    # setting of the published method, not fitted to any of its results
    tick_interval: float = 5.0
    # provenance: spec — the paper's default decay f = 2^(-t/Δt) (PAPER.md); its published proxy
    # ships with the decay off, we follow the paper
    decay: str = "pow:2"
    lambda_max: float = 1.0  # provenance: spec — the paper sets λmax = 1 (high watermark)
    lambda_min: float = 1.0  # provenance: spec — the paper sets λmin = 1 (low watermark)
    # provenance: spec — the published proxy reserves 100 tokens per program (PAPER.md, published
    # open-source behaviour)
    reserve_tokens: int = 100
    seed: int = 0  # provenance: definition — the default random seed
    router: str = "least_loaded"  # request-level placement across replicas
    params: tuple[tuple[str, float], ...] = ()  # policy-specific, see each policy's `params`

    def __post_init__(self) -> None:
        if self.tick_interval <= 0:
            raise ValueError(f"tick interval must be > 0, got {self.tick_interval}")
        if not 0 < self.lambda_min <= self.lambda_max:
            raise ValueError("watermarks must satisfy 0 < lambda_min <= lambda_max")
        parse_decay(self.decay)
        for key, value in self.params:
            if not isinstance(value, int | float) or value != value:
                raise ValueError(f"parameter {key} must be a number, got {value!r}")


def parse_params(items: list[str]) -> tuple[tuple[str, float], ...]:
    """['aging_s=60', 'k=2'] -> (('aging_s', 60.0), ('k', 2.0)) with a clear error."""
    out = []
    for item in items:
        key, sep, value = item.partition("=")
        try:
            if not sep or not key:
                raise ValueError
            out.append((key.strip(), float(value)))
        except ValueError:
            raise ValueError(f"bad --param {item!r}: use key=number") from None
    return tuple(out)


class Router:
    """Picks the backend of a request-level call. Subclasses set `name` and a one-line
    docstring. `route` may keep state (round-robin cursor, sticky map, prefix tree)."""

    name: ClassVar[str] = ""

    def route(self, view: ClusterView, program: ProgramView) -> int | None:
        """The backend for the program's ready call; None when no backend is alive."""
        raise NotImplementedError

    def forget(self, program: ProgramView) -> None:
        """The program finished: drop what the router keeps about it."""


class DecayKind(StrEnum):
    """How an acting program's context fades from its memory count; the value is what a decay
    spec starts with (`--decay pow:2`), so a kind compares equal to the text users type."""

    NONE = "none"  # counted in full while its tool runs
    POW = "pow"  # f = X^(-t/dt), the paper's per-tick x^(-k)
    EXP = "exp"  # f = e^(-L t), t in seconds


def parse_decay(spec: str) -> tuple[DecayKind, float]:
    """'none' | 'pow:X' (X > 1) | 'exp:L' (L > 0) -> (kind, parameter)."""
    kind, _, arg = spec.partition(":")
    try:
        if kind == DecayKind.NONE and not arg:
            return DecayKind.NONE, 0.0
        if kind == DecayKind.POW:
            base = float(arg or 2)
            if base > 1:
                return DecayKind.POW, base
        if kind == DecayKind.EXP:
            rate = float(arg)
            if rate > 0:
                return DecayKind.EXP, rate
    except ValueError:
        pass
    raise ValueError(f"bad decay {spec!r}: use none, pow:X with X > 1, or exp:L with L > 0")
