"""The Cluster: owns programs and backends, asks the policy, validates and applies decisions.

The Driver tells the Cluster what the workload does (a program arrived, its next call is ready,
its tool finished, it ended); the Cluster tells the policy, applies what the policy returns, and
sends calls of ACTIVE programs to their backend. Requests of WAITING or PAUSED programs are
withheld here until the policy restores them. Nothing in this file knows whether the clock and
backends are simulated or live: both come in through the `Clock` and `Backend` contracts.
Everything it works with (clock, backends, policy, observer) is handed over at construction;
each call carries its own completion and failure callbacks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from thundersim.core.backend import Backend, Request, Revivable, Usage
from thundersim.core.policy import (
    PAUSED_SLOT,
    READY_SLOT,
    BackendView,
    ChangeFeed,
    ClusterView,
    Decision,
    IndexedClusterView,
    LazyBackendView,
    Pause,
    Pin,
    Policy,
    PolicyError,
    Restore,
    Route,
)
from thundersim.core.program import Phase, Program, Status


def chain_key(program_id: str, epoch: int) -> str:
    """The KV chain of a program's context after `epoch` resets. Chains of different programs
    never collide because no id contains a NUL: JSON can carry one (\u0000), so the trace
    loader and `serve` refuse control characters in ids."""
    return program_id if epoch == 0 else f"{program_id}\x00{epoch}"


def chain_program(chain: str) -> str:
    return chain.partition("\x00")[0]


def _by_arrival(p: Program) -> int:
    return p.arrival_seq


class Clock(Protocol):
    """Time and one-shot events: SimPy's Environment in sim, the event loop in live."""

    @property
    def now(self) -> float: ...

    def new_event(self) -> Any: ...

    def fire(self, event: Any, value: Any) -> None: ...

    def fail(self, event: Any, error: BaseException) -> None:
        """Fire the event with an error: what waits on it gets `error` raised (the tool
        manager's way of telling a program that its environment cannot be made)."""

    def call_later(self, delay: float, callback: Callable[[], None]) -> None:
        """Call `callback()` after `delay` seconds of this clock (the tool manager's bound on a
        preparation that never answers)."""


class ClusterObserver(Protocol):
    """What the Recorder hears from the Cluster."""

    def on_arrival(self, program: Program) -> None: ...

    def on_call_done(self, program: Program, usage: Usage, backend: int) -> None: ...

    def on_step_done(self, program: Program, now: float) -> None: ...

    def on_program_done(self, program: Program) -> None: ...


class Cluster:
    """Every change of a program's state goes through `_touch`, which keeps the indexes the
    policies' view reads (ACTIVE programs per backend, PAUSED ones, ready WAITING ones) and
    tells every change feed; nothing else in thundersim writes a program's status, backend,
    phase, pending, in_flight, step or context (the Driver writes only its timestamps)."""

    # The view policies get. ClusterView (recomputing everything per call) is the reference the
    # indexed one is tested against (tests/test_incremental_views.py swaps it in).
    view_class: type[ClusterView] = IndexedClusterView

    def __init__(
        self,
        clock: Clock,
        backends: Sequence[Backend],
        policy: Policy,
        observer: ClusterObserver | None = None,
    ):
        if not backends:
            raise ValueError("a cluster needs at least one backend")
        self.clock = clock
        self.backends = list(backends)
        self.policy = policy
        self.observer = observer
        self.programs: dict[str, Program] = {}  # every program that has arrived
        self.unfinished: dict[str, Program] = {}  # arrived and not finished, in arrival order
        self.unfinished_views: dict[str, Any] = {}  # their views, for ClusterView.programs
        # Indexes: slot -> {program id: Program}; a slot is a backend index (its ACTIVE
        # programs), PAUSED_SLOT or READY_SLOT (WAITING with its first call ready).
        self._index: dict[int | str, dict[str, Program]] = {
            i: {} for i in (PAUSED_SLOT, READY_SLOT, *range(len(self.backends)))
        }
        self._slot: dict[str, int | str] = {}  # program id -> its index slot (absent: none)
        self._feeds: list[ChangeFeed] = []
        self._arrivals = 0
        self._served_on: dict[str, set[int]] = {}  # program -> backends its calls went to
        # Backend views: built once; stats read at most once per policy callback (`_epoch`).
        self._epoch = 0
        self._stats_memo: dict[int, tuple[int, Any]] = {}
        # a tuple: every callback gets the same one, so no policy may reorder it for the next
        self._lazy_views = tuple(LazyBackendView(b, self._stats_of) for b in self.backends)
        self.view = self.view_class(self)
        self.withheld = 0  # programs with a ready call that the policy withholds
        self.finished_count = 0  # programs that finished (forgotten ones included)
        self.decisions_applied = 0
        self._waiters: dict[str, Any] = {}  # program id -> Driver event for its running call
        for b in self.backends:
            if isinstance(b, Revivable):
                b.on_up = self.reoffer

    @property
    def now(self) -> float:
        return self.clock.now

    # ---- indexes -------------------------------------------------------------------------
    def _touch(self, p: Program) -> None:
        """`p`'s state changed: move it to the index slot its state says and tell the feeds."""
        s = p.status
        if s is Status.ACTIVE:
            slot = p.backend
        elif s is Status.PAUSED:
            slot = PAUSED_SLOT
        elif s is Status.WAITING and p.pending:
            slot = READY_SLOT
        else:
            slot = None
        old = self._slot.get(p.id)
        if old != slot:
            if old is not None:
                del self._index[old][p.id]
                del self._slot[p.id]
            if slot is not None:
                self._index[slot][p.id] = p
                self._slot[p.id] = slot
        for feed in self._feeds:
            feed.add(p.view)

    def _programs_in(self, *slots: int | str) -> list[Program]:
        """The programs in the given index slots, in arrival order."""
        if len(slots) == 1:
            progs = list(self._index[slots[0]].values())
        else:
            progs = [p for slot in slots for p in self._index[slot].values()]
        progs.sort(key=_by_arrival)
        return progs

    def indexed(self, *slots: int | str) -> list[Any]:
        """Views of the programs in the given index slots, in arrival order (what
        IndexedClusterView answers with)."""
        return [p.view for p in self._programs_in(*slots)]

    def subscribe(self) -> ChangeFeed:
        feed = ChangeFeed(self.unfinished_views.values())
        self._feeds.append(feed)
        return feed

    def _ask(self, callback, *args) -> None:
        """Ask the policy (a new epoch: backend stats are read afresh) and apply its answer."""
        self._epoch += 1
        self._apply(callback(self.view, *args))

    def _stats_of(self, index: int):
        memo = self._stats_memo.get(index)
        if memo is None or memo[0] != self._epoch:
            memo = self._stats_memo[index] = (self._epoch, self.backends[index].stats())
        return memo[1]

    def lazy_backend_views(self) -> tuple[LazyBackendView, ...]:
        return self._lazy_views

    def backend_views(self) -> list[BackendView]:
        views = []
        for b in self.backends:
            s = b.stats()
            views.append(
                BackendView(
                    index=b.index,
                    name=b.name,
                    capacity_tokens=s.capacity_tokens,
                    used_tokens=s.used_tokens,
                    running=s.running,
                    waiting=s.waiting,
                    alive=b.alive,
                )
            )
        return views

    # ---- what the Driver reports ---------------------------------------------------------
    def arrive(self, program: Program) -> None:
        if program.id in self.programs:
            raise ValueError(f"program {program.id} arrived twice")
        program.arrival_time = self.now
        program.arrival_seq = self._arrivals
        self._arrivals += 1
        self.programs[program.id] = program
        self.unfinished[program.id] = program
        self.unfinished_views[program.id] = program.view
        self._touch(program)
        if self.observer is not None:
            self.observer.on_arrival(program)
        self._ask(self.policy.on_arrival, program.view)

    def request(self, program: Program) -> Any:
        """The program's next LLM call is ready. Returns an event the Driver waits on; it
        fires with the call's Usage once the call has run (after the policy withheld it, if it
        did)."""
        if program.status.is_finished or program.pending or program.in_flight:
            raise RuntimeError(f"{program!r} cannot issue a call now")
        if not program.has_call(program.step):
            raise RuntimeError(f"{program!r} has no call {program.step}")
        event = self.clock.new_event()
        self._waiters[program.id] = event
        program.phase = Phase.REASONING
        program.acting_since = None
        program.pending = True
        program.call_ready_time = self.now
        if program.status is not Status.ACTIVE:
            self.withheld += 1
        self._touch(program)
        self._ask(self.policy.on_request, program.view)
        self._dispatch(program)
        return event

    def tool_done(self, program: Program) -> None:
        """The tool call of the step just finished: the step is complete."""
        if self.observer is not None:
            self.observer.on_step_done(program, self.now)
        program.last_usage = None

    def finish(self, program: Program) -> None:
        if program.pending or program.in_flight:
            raise RuntimeError(f"{program!r} finished with a call outstanding")
        program.status = Status.DONE
        program.finish_time = self.now
        program.backend = None
        # A TTL pin taken after its last call is dropped now (a live agent's release is the
        # first the scheduler hears that no call follows). Pins are only ever taken on a
        # backend the program's calls went to, so only those are told (not the whole fleet).
        for i in sorted(self._served_on.pop(program.id, ())):
            self.backends[i].unpin(program.id)
        del self.unfinished[program.id]
        del self.unfinished_views[program.id]
        self._touch(program)
        self.finished_count += 1
        if self.observer is not None:
            self.observer.on_program_done(program)
        self._ask(self.policy.on_finish, program.view)

    def forget(self, program: Program) -> None:
        """Drop a finished program from `programs`: a front end that serves without end keeps
        only the programs it still serves (their records are on disk by then)."""
        if not program.status.is_finished:
            raise RuntimeError(f"{program!r} is not finished")
        self.programs.pop(program.id, None)

    def _call_failed(self, request: Request, exc: Exception) -> None:
        """A backend could not serve the program's call (it went down): the call is ready
        again, withheld until the policy places the program on a backend that is up."""
        p = self.unfinished[request.program_id]
        p.in_flight = False
        p.pending = True
        p.backend = None
        if p.status is Status.ACTIVE:
            p.status = Status.PAUSED
        self.withheld += 1
        self._touch(p)
        self._ask(self.policy.on_request, p.view)

    def reoffer(self) -> None:
        """A backend came back: every withheld call is offered to the policy again, as when it
        became ready (a policy that waited for a live replica places it now)."""
        # Every withheld call belongs to a PAUSED or a ready WAITING program: those two slots,
        # in arrival order (the order of `unfinished`), not the whole fleet.
        for p in self._programs_in(PAUSED_SLOT, READY_SLOT):
            if p.pending and p.status is not Status.ACTIVE and not p.status.is_finished:
                self._ask(self.policy.on_request, p.view)

    def withdraw(self, program: Program, usage: Usage) -> None:
        """End a withheld call without running it (its client left, or it was held past the
        front end's bound): done with `usage` (an error status), the program back to acting."""
        if not program.pending:
            raise RuntimeError(f"{program!r} has no withheld call")
        program.pending = False
        if program.status is not Status.ACTIVE:
            self.withheld -= 1
        program.call_sent_time = self.now
        self._touch(program)
        self._call_done(program, usage, program.last_backend)

    def tick(self) -> None:
        self._ask(self.policy.on_tick)

    # ---- calls ---------------------------------------------------------------------------
    def _dispatch(self, program: Program) -> None:
        """Send the ready call of an ACTIVE program to its backend."""
        if not (program.pending and program.status is Status.ACTIVE):
            return
        if program.backend is None:
            raise PolicyError(f"{program.id} is ACTIVE with no backend")
        program.pending = False
        program.in_flight = True
        program.call_sent_time = self.now
        program.last_backend = program.backend
        i = program.step
        call = program.call(i)
        # The previous call computed its prompt and all but its last output token (none of it
        # survives a context reset).
        same_chain = i > 0 and call.epoch == program.epoch_of(i - 1)
        known = program.context_tokens - 1 if same_chain else 0
        program.context_tokens = call.prompt_tokens
        backend = program.backend
        self._served_on.setdefault(program.id, set()).add(backend)
        self._touch(program)
        request = Request(
            program_id=program.id,
            step=i,
            prompt_tokens=call.prompt_tokens,
            output_tokens=call.output_tokens,
            prefix_id=program.prefix_id,
            prefix_tokens=program.prefix_tokens,
            submit_time=self.now,
            known_tokens=known,
            chain_id=chain_key(program.id, call.epoch),
            forward=call.forward,
        )
        self.backends[backend].submit(
            request, lambda usage: self._call_done(program, usage, backend), self._call_failed
        )

    def _call_done(self, program: Program, usage: Usage, backend: int | None) -> None:
        program.in_flight = False
        served = usage.status == 200
        if served:  # a failed call leaves the context as it was sent (its client sends it again)
            program.context_tokens = usage.prompt_tokens + usage.output_tokens
            program.peak_context = max(program.peak_context, program.context_tokens)
        program.step += 1
        program.phase = Phase.ACTING
        program.acting_since = self.now
        program.last_usage = usage
        if program.first_response_time is None and served:
            program.first_response_time = self.now
        if program.status is Status.PAUSED:
            program.backend = None  # paused while its call ran: unbind now
        self._touch(program)
        if self.observer is not None:
            self.observer.on_call_done(program, usage, backend)
        self._ask(self.policy.on_response, program.view)
        self.clock.fire(self._waiters.pop(program.id), usage)

    # ---- decisions -----------------------------------------------------------------------
    def _apply(self, decisions: list[Decision] | None) -> None:
        for d in decisions or ():
            self._apply_one(d)

    def _program(self, d: Decision) -> Program:
        p = self.unfinished.get(d.program_id)
        if p is None:
            state = "finished" if d.program_id in self.programs else "unknown"
            raise PolicyError(f"{type(d).__name__}({d.program_id}): program is {state}")
        return p

    def _check_backend(self, d: Decision, index: int) -> None:
        if not 0 <= index < len(self.backends):
            raise PolicyError(f"{d}: no backend {index} (have {len(self.backends)})")
        if not self.backends[index].alive:
            raise PolicyError(f"{d}: backend {index} is down")

    def _apply_one(self, d: Decision) -> None:
        p = self._program(d)
        if isinstance(d, Restore):
            if p.status not in (Status.WAITING, Status.PAUSED):
                raise PolicyError(f"{d}: program is {p.status.name}, not WAITING or PAUSED")
            self._check_backend(d, d.backend)
            if p.pending:
                self.withheld -= 1
            p.status = Status.ACTIVE
            p.backend = d.backend
            self._touch(p)
            self._dispatch(p)
        elif isinstance(d, Pause):
            if p.status is not Status.ACTIVE:
                raise PolicyError(f"{d}: program is {p.status.name}, not ACTIVE")
            p.status = Status.PAUSED
            if not p.in_flight:
                p.backend = None
            self._touch(p)
        elif isinstance(d, Route):
            if p.status is not Status.ACTIVE:
                raise PolicyError(f"{d}: program is {p.status.name}, not ACTIVE")
            if p.in_flight:
                raise PolicyError(f"{d}: program has a call running")
            self._check_backend(d, d.backend)
            p.backend = d.backend
            self._touch(p)
        elif isinstance(d, Pin):
            if p.in_flight or p.last_backend is None:
                raise PolicyError(f"{d}: program has no cached KV to pin (call running or none)")
            if not d.ttl_s > 0:
                raise PolicyError(f"{d}: ttl must be > 0")
            self.backends[p.last_backend].pin(p.id, d.ttl_s)
        else:
            raise PolicyError(f"not a decision: {d!r}")
        self.decisions_applied += 1
