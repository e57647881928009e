"""stp: ThunderAgent's program-aware policy (the paper's Space-Time Product scheduler).

Every dt (the tick) and whenever memory frees up, per backend L with KV capacity C:
- memory held by L's ACTIVE programs is M = sum of c_p (+ a small reserve per program), where a
  program in a tool call counts c_p * f(t), f the decay (f(0) = 1, f -> 0) of its time acting;
- thrashing if M > lambda_max * C: pause programs until M <= lambda_max * C, choosing victims
  by S_pause = 1/c + 1[acting]: acting before reasoning, then shortest first (the paper's
  greedy answer to min sum c^2 s.t. sum c >= excess);
- restore while M < lambda_min * C and the program fits under lambda_max * C, by
  S_restore = 1/c + 1[reasoning]: paused programs with a call ready first, then new programs,
  then paused acting ones, each shortest first, onto the backend with the most free room. The
  paused queue is global: a program may come back on any backend (its cache is recomputed there).
  With `--param sticky=1` a program only comes back on the backend it last ran on (the
  session-affinity baseline the global queue is measured against).

Variants override one hook each: `victims` (stp_exact), `restore_order`/`blocks_queue`
(stp_fair), `decay_of` (stp_tool).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from sortedcontainers import SortedList

from thundersim.core.policy import (
    ChangeFeed,
    ClusterView,
    DecayKind,
    Decision,
    Pause,
    Policy,
    PolicyOptions,
    Restore,
    active_loads,
    most_room,
    parse_decay,
)
from thundersim.core.program import Phase, ProgramView, Status
from thundersim.policies.registry import register

# When the separable decay's running scale e^(r (now - t0)) passes e^REBASE_EXPONENT the sums are
# rebased on the present (their terms grow as e^(r s) with the time s a tool started).
# provenance: definition — any bound well inside a float's range (e^709) works: e^300 leaves
# e^409 of headroom for the context x count factors of a sum; it only sets how often (every
# 300 / r seconds, 36 min for the default 2^(-t/5 s)) the acting sums are recomputed
REBASE_EXPONENT = 300.0


class _Tracked:
    """What STP keeps between callbacks on a cluster that reports its changes (a ChangeFeed):
    per backend the whole-token costs of its ACTIVE programs whose cost does not move with the
    clock (an exact integer sum), its acting ones, and the restore queue in S_restore order.

    The decay of an acting program, c f(now - s), is separable for pow and exp: f(now - s) =
    e^(-r (now - s)) = e^(r (s - t0)) e^(-r (now - t0)), so a backend's acting load is
    e^(-r (now - t0)) times a sum that changes only when its acting set does. That sum is
    recomputed from its terms (no running subtraction, whose cancellation error would outgrow
    the terms left) whenever the set changes: O(programs of that backend), not O(fleet). A
    decay that is not separable (stp_tool's learned hazard) is summed per call over the
    ACTIVE acting programs only."""

    def __init__(self, source, feed: ChangeFeed, n_backends: int):
        self.source = source
        self.feed = feed
        self.static = [0] * n_backends  # sum of whole-token costs
        # backend -> program id -> (c, s, c e^(r (s - t0))) of its ACTIVE acting programs
        self.acting: list[dict[str, tuple[int, float, float]]] = [{} for _ in range(n_backends)]
        self.acting_views: list[dict[str, ProgramView]] = [{} for _ in range(n_backends)]
        self.acting_sum = [0.0] * n_backends
        self.dirty: set[int] = set()  # backends whose acting_sum is stale
        self.t0: float | None = None
        self.term: dict[str, tuple[int, int]] = {}  # program -> (backend, static cost or -1)
        self.queue = SortedList()  # (rank, size, index, arrival_seq, id) of restorable programs
        self.qkey: dict[str, tuple] = {}
        self.views: dict[str, ProgramView] = {}


@register
class STP(Policy):
    """ThunderAgent: watermarks every dt, pause acting/shortest first, restore reasoning/shortest first."""

    name = "stp"
    # provenance: spec — off (0): the paper's global paused queue; 1 is our session-affinity
    # baseline, not the paper's method
    params = {"sticky": 0.0}

    def __init__(self, options: PolicyOptions | None = None):
        super().__init__(options)
        o = self.options
        self.tick_interval = o.tick_interval
        self.decay_kind, self.decay_arg = parse_decay(o.decay)
        self.sticky = bool(self.settings["sticky"])
        # the decay's rate r in f(t) = e^(-r t) (0: none)
        if self.decay_kind is DecayKind.POW:
            self._rate = math.log(self.decay_arg) / self.tick_interval
        elif self.decay_kind is DecayKind.EXP:
            self._rate = self.decay_arg
        else:
            self._rate = 0.0
        cls = type(self)
        # Incremental loads need the cost model as written here; a subclass with its own cost
        # is recomputed from scratch, one with its own decay has its acting costs summed per call.
        self._own_cost = cls.cost is STP.cost
        self._separable = cls.decay_of is STP.decay_of and cls.decay is STP.decay
        self._tracked: _Tracked | None = None
        self._untracked_source = None  # a view's cluster known to have no change feed

    # ---- the cost model ----------------------------------------------------------------
    def decay(self, acting_s: float) -> float:
        """f(t): the share of an acting program's context still counted after t seconds."""
        if self.decay_kind is DecayKind.POW:
            return self.decay_arg ** (-acting_s / self.tick_interval)
        if self.decay_kind is DecayKind.EXP:
            return math.exp(-self.decay_arg * acting_s)
        return 1.0

    def decay_of(self, p: ProgramView, now: float) -> float:
        return self.decay(now - p.acting_since)

    def cost(self, p: ProgramView, now: float) -> float:
        """Tokens of KV the program is counted as holding: its context, or the prompt of its
        ready call (known once the agent has sent it), plus the reserve."""
        c = max(p.context_tokens, p.next_prompt_tokens) + self.options.reserve_tokens
        if p.phase is Phase.ACTING and p.acting_since is not None:
            c *= self.decay_of(p, now)
        return c

    def loads(self, view: ClusterView) -> list[float]:
        t = self._sync(view)
        now = view.now
        if t is None or not self._own_cost:
            return active_loads(view, lambda p: self.cost(p, now))
        loads = [float(x) for x in t.static]
        if self._separable:
            if self._rate:
                self._rebase(t, now)
                for b in t.dirty:
                    t.acting_sum[b] = math.fsum(v[2] for v in t.acting[b].values())
                t.dirty.clear()
                g = math.exp(-self._rate * (now - t.t0)) if t.t0 is not None else 0.0
                for b, acting in enumerate(t.acting):
                    if acting:
                        loads[b] += t.acting_sum[b] * g
        else:
            for b, acting in enumerate(t.acting_views):
                for p in acting.values():
                    loads[b] += self.cost(p, now)
        return loads

    # ---- what is kept between callbacks (a cluster with a change feed) --------------------
    def _sync(self, view: ClusterView) -> _Tracked | None:
        """Bring the kept loads and restore queue up to date with the programs that changed
        since the last callback; None when the view has no change feed."""
        source = view.source
        t = self._tracked
        if t is None or t.source is not source:
            if source is self._untracked_source:
                return None
            feed = view.subscribe()
            if feed is None:
                self._untracked_source = source
                return None
            t = self._tracked = _Tracked(source, feed, view.n_backends)
        for p in t.feed.drain():
            self._retrack(t, p)
        return t

    def _retrack(self, t: _Tracked, p: ProgramView) -> None:
        pid = p.id
        old = t.term.pop(pid, None)
        if old is not None:
            b, c = old
            if c >= 0:
                t.static[b] -= c
            else:
                del t.acting[b][pid]
                del t.acting_views[b][pid]
                t.dirty.add(b)
        key = t.qkey.pop(pid, None)
        if key is not None:
            t.queue.remove(key)
            del t.views[pid]
        status = p.status
        if status is Status.ACTIVE and p.backend is not None:
            b = p.backend
            c = max(p.context_tokens, p.next_prompt_tokens) + self.options.reserve_tokens
            s = p.acting_since
            if p.phase is Phase.ACTING and s is not None and (self._rate or not self._separable):
                if t.t0 is None:
                    t.t0 = s
                h = c * math.exp(self._rate * (s - t.t0)) if self._separable else 0.0
                t.acting[b][pid] = (c, s, h)
                t.acting_views[b][pid] = p
                t.dirty.add(b)
                t.term[pid] = (b, -1)
            else:  # not decaying (or decay none: c x 1.0 is c)
                t.static[b] += c
                t.term[pid] = (b, c)
        elif status is Status.PAUSED or (status is Status.WAITING and p.pending):
            key = (*self.restore_key(p), p.arrival_seq, pid)
            t.queue.add(key)
            t.qkey[pid] = key
            t.views[pid] = p

    def _rebase(self, t: _Tracked, now: float) -> None:
        """Keep e^(r (s - t0)) inside a float's range: move t0 to now and recompute the terms."""
        if t.t0 is None or self._rate * (now - t.t0) <= REBASE_EXPONENT:
            return
        t.t0 = now
        for b, acting in enumerate(t.acting):
            for pid, (c, s, _) in acting.items():
                acting[pid] = (c, s, c * math.exp(self._rate * (s - now)))
            t.dirty.add(b)

    # ---- callbacks -----------------------------------------------------------------------
    def on_tick(self, view: ClusterView) -> list[Decision]:
        loads = self.loads(view)
        decisions: list[Decision] = self.pause_excess(view, loads)
        decisions += self.restore(view, loads)
        return decisions

    def on_request(self, view: ClusterView, program: ProgramView) -> list[Decision]:
        if program.status is Status.ACTIVE:
            return []
        return self.restore(view, self.loads(view))

    def on_finish(self, view: ClusterView, program: ProgramView) -> list[Decision]:
        return self.restore(view, self.loads(view))

    # ---- pause ---------------------------------------------------------------------------
    def pause_excess(self, view: ClusterView, loads: list[float]) -> list[Decision]:
        now = view.now
        decisions: list[Decision] = []
        for b in view.backends():
            limit = self.options.lambda_max * b.capacity_tokens
            if loads[b.index] <= limit:
                continue
            active = view.active_on(b.index)
            for p in self.victims(active, loads[b.index] - limit, now):
                decisions.append(Pause(p.id))
                loads[b.index] -= self.cost(p, now)
        return decisions

    def victims(self, active: list[ProgramView], excess: float, now: float) -> list[ProgramView]:
        """Greedy: highest S_pause first (acting, then shortest) until the excess is covered."""
        order = sorted(
            active,
            key=lambda p: (p.phase is not Phase.ACTING, p.context_tokens, p.index),
        )
        chosen, freed = [], 0.0
        for p in order:
            if freed >= excess:
                break
            chosen.append(p)
            freed += self.cost(p, now)
        return chosen

    # ---- restore -------------------------------------------------------------------------
    def candidates(self, view: ClusterView) -> list[ProgramView]:
        """Programs that could be (re)admitted: paused ones, and new ones with a call ready."""
        return [
            p
            for p in view.programs.values()
            if p.status is Status.PAUSED or (p.status is Status.WAITING and p.pending)
        ]

    @staticmethod
    def restore_key(p: ProgramView) -> tuple[int, int, int]:
        """S_restore as a sort key: paused with a call ready (0), then new (1), then paused
        acting (2); shortest first within each class; ties by index, then arrival."""
        rank = 1 if p.status is Status.WAITING else 0 if p.phase is Phase.REASONING else 2
        return rank, max(p.context_tokens, p.next_prompt_tokens), p.index

    def restore_order(self, view: ClusterView) -> Iterable[ProgramView]:
        """By S_restore: paused with a call ready, then new, then paused acting; shortest
        first within each class. On a cluster with a change feed, the kept queue (each
        program re-sorted only when it changes); else a sort of `candidates`. An iterable
        read once: restore stops at the first backend that is full."""
        t = self._sync(view)
        if t is None:
            return sorted(self.candidates(view), key=self.restore_key)
        views = t.views
        return (views[key[-1]] for key in t.queue)

    def blocks_queue(self, p: ProgramView, now: float) -> bool:
        """Whether a candidate that does not fit stops the restore pass (shortest-first: no,
        a smaller one further down may fit)."""
        return False

    def restore(self, view: ClusterView, loads: list[float]) -> list[Decision]:
        if self._sync(view) is not None and self._own_cost:
            return self._restore_kept(view, loads)
        o = self.options
        backends = view.backends()
        decisions: list[Decision] = []
        now = view.now
        for p in self.restore_order(view):
            if self.sticky and p.last_backend is not None:
                b = backends[p.last_backend]
                if not b.alive:
                    b = most_room(backends, loads, o.lambda_max)
            else:
                b = most_room(backends, loads, o.lambda_max)
            if b is None:
                break
            if loads[b.index] >= o.lambda_min * b.capacity_tokens:
                if self.sticky:
                    continue  # its home is full; other programs' homes may not be
                break  # the backend with the most room is at its low watermark
            c = self.cost(p, now)
            room = o.lambda_max * b.capacity_tokens - loads[b.index]
            if c > room and loads[b.index] > 0:
                # An empty backend takes any program: otherwise one whose reserve tips it over
                # capacity never runs.
                if self.blocks_queue(p, now):
                    break
                continue  # a smaller program further down may still fit
            decisions.append(Restore(p.id, b.index))
            loads[b.index] += c
        return decisions

    def _restore_kept(self, view: ClusterView, loads: list[float]) -> list[Decision]:
        """`restore` with the same decisions, cheaper per candidate: the backend with the most
        room is found again only after a restore changed the loads (it is a function of the
        loads alone), and, in the S_restore order of this class, once a reasoning or new
        candidate does not fit, the rest of its class is passed over unread (each is larger,
        costs its size + reserve, and meets the same backend and loads)."""
        o = self.options
        backends = view.backends()
        decisions: list[Decision] = []
        now = view.now
        skip = type(self).restore_order is STP.restore_order and not self.sticky
        skipping = None  # the class being passed over
        room_target = False  # most_room's answer for the present loads (False: not asked)
        for p in self.restore_order(view):
            if skipping is not None:
                rank = 1 if p.status is Status.WAITING else 0 if p.phase is Phase.REASONING else 2
                if rank == skipping:
                    continue
                skipping = None
            if self.sticky and p.last_backend is not None:
                b = backends[p.last_backend]
                if not b.alive:
                    if room_target is False:
                        room_target = most_room(backends, loads, o.lambda_max)
                    b = room_target
            else:
                if room_target is False:
                    room_target = most_room(backends, loads, o.lambda_max)
                b = room_target
            if b is None:
                break
            if loads[b.index] >= o.lambda_min * b.capacity_tokens:
                if self.sticky:
                    continue
                break
            c = self.cost(p, now)
            room = o.lambda_max * b.capacity_tokens - loads[b.index]
            if c > room and loads[b.index] > 0:
                if self.blocks_queue(p, now):
                    break
                if skip and p.phase is Phase.REASONING:
                    skipping = 1 if p.status is Status.WAITING else 0
                continue
            decisions.append(Restore(p.id, b.index))
            loads[b.index] += c
            room_target = False
        return decisions
