"""The Cluster's indexed view and the policies' kept state decide exactly as recomputing does.

ClusterView recomputes everything from the programs on every call (the code every policy was
first written against); IndexedClusterView answers from indexes the Cluster keeps at each change
of a program's state, and the policies keep their loads and queues from its change feed. The
two must give the same decisions, one by one, on a run with pauses and restores; and after any
sequence of cluster operations the indexes and the kept state must equal a recomputation.
"""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from thundersim.core.backend import EngineStats, Usage
from thundersim.core.cluster import Cluster
from thundersim.core.policy import (
    ActiveLoads,
    ClusterView,
    IndexedClusterView,
    Pause,
    Pin,
    Policy,
    PolicyError,
    PolicyOptions,
    Restore,
    Route,
    active_loads,
)
from thundersim.core.program import Phase, Program, Status
from thundersim.policies import make_policy, names
from thundersim.sim.catalog import make_setup
from thundersim.sim.simulate import RunConfig, simulate
from thundersim.traces.loader import load_trace

from .conftest import make_program

# The bundled coding trace, trimmed: 80 programs on 4 replicas of 120,000 KV tokens each (the
# largest of these programs peaks at 104,317 tokens) keep every program-aware policy pausing and
# restoring throughout, in about a second a run.
N_PROGRAMS = 80
KV_TOKENS = 120_000
REPLICAS = 4


@pytest.fixture(scope="module")
def swe():
    return load_trace("traces/swe.jsonl")[:N_PROGRAMS]


def decisions_of(monkeypatch, specs, policy, view_class):
    """Every decision the Cluster applies, with its time, on a run with `view_class`."""
    log = []
    apply_one = Cluster._apply_one

    def record(self, d):
        log.append((self.now, d))
        apply_one(self, d)

    with monkeypatch.context() as m:
        m.setattr(Cluster, "_apply_one", record)
        m.setattr(Cluster, "view_class", view_class)
        config = RunConfig(
            setup=make_setup(kv_capacity_override=KV_TOKENS),
            replicas=REPLICAS,
            concurrency=len(specs),
            tool_manager=None,
        )
        simulate(specs, policy, config)
    return log


def _count(log, kind):
    return sum(isinstance(d, kind) for _, d in log)


VARIANTS = [(name, PolicyOptions()) for name in names()] + [
    ("stp", PolicyOptions(decay="exp:0.5")),
    ("stp", PolicyOptions(decay="none")),
    ("stp", PolicyOptions(lambda_min=0.8)),
    ("stp", PolicyOptions(params=(("sticky", 1.0),))),
    # a decay of 8^(-t/1 s) moves its sums' base every 144 s: rebasing is exercised
    ("stp", PolicyOptions(decay="pow:8", tick_interval=1.0)),
    ("stp_fair", PolicyOptions(params=(("aging_s", 5.0),))),
    ("stp_tool", PolicyOptions(params=(("min_samples", 2.0),))),
]


@pytest.mark.parametrize(
    "name,options", VARIANTS, ids=[f"{n}-{i}" for i, (n, _) in enumerate(VARIANTS)]
)
def test_indexed_views_decide_exactly_as_recomputing_ones(monkeypatch, swe, name, options):
    ref_policy, new_policy = make_policy(name, options), make_policy(name, options)
    ref = decisions_of(monkeypatch, swe, ref_policy, ClusterView)
    new = decisions_of(monkeypatch, swe, new_policy, IndexedClusterView)
    # the run is one that tests something: the policy's own kind of decision, many times
    kinds = {"vllm": Route, "continuum": Pin}
    assert _count(ref, kinds.get(name, Pause)) >= 50
    assert _count(ref, Restore) >= N_PROGRAMS
    if hasattr(new_policy, "_tracked"):  # the STP family kept its state from the feed ...
        assert new_policy._tracked is not None and ref_policy._tracked is None
    if name == "stp" and options.decay == "pow:8":
        assert new_policy._tracked.t0 > 0  # ... and moved its decay's base
    first = next((i for i, (a, b) in enumerate(zip(ref, new, strict=False)) if a != b), None)
    assert first is None and len(ref) == len(new), (
        f"decision {first}: recomputing {ref[first] if first is not None else None}, "
        f"indexed {new[first] if first is not None and first < len(new) else None}"
    )


# ---- random operations on a cluster: the indexes against a recomputation -------------------
class ManualClock:
    """Time moves when the test says; events only record that they fired."""

    def __init__(self):
        self.now = 0.0

    def new_event(self):
        return []

    def fire(self, event, value):
        event.append(value)

    def fail(self, event, error):
        event.append(error)

    def call_later(self, delay, callback):
        pass


class HeldBackend:
    """A replica whose calls end only when the test ends them, with stats that change with
    every call (so a view reading stale stats is seen)."""

    def __init__(self, index, capacity):
        self.index, self.name, self.model, self.alive = index, f"h{index}", "m", True
        self.capacity_tokens = capacity
        self.calls: dict[str, tuple] = {}  # program -> (request, on_done, on_failure)
        self.served = 0
        self.pinned: set[str] = set()
        self.unpinned: list[str] = []

    def submit(self, request, on_done, on_failure):
        self.calls[request.program_id] = (request, on_done, on_failure)

    def stats(self):
        used = sum(r.prompt_tokens for r, _, _ in self.calls.values())
        return EngineStats(
            self.capacity_tokens, 16, used, running=len(self.calls), waiting=self.served % 3
        )

    def pin(self, program_id, ttl_s):
        self.pinned.add(program_id)

    def unpin(self, program_id):
        self.unpinned.append(program_id)
        self.pinned.discard(program_id)


class Quiet(Policy):
    """Decides nothing: the test's operations make every decision."""

    name = "quiet"


ops = st.lists(
    st.tuples(
        st.sampled_from(
            [
                "arrive",
                "request",
                "done",
                "fail",
                "withdraw",
                "finish",
                "restore",
                "pause",
                "route",
                "pin",
                "advance",
                "down",
                "up",
            ]
        ),
        st.integers(0, 9),  # which program (of those arrived)
        st.integers(0, 2),  # which backend
        st.integers(1, 4000),  # tokens or milliseconds
    ),
    min_size=40,  # long enough to take programs through their calls, pauses and restores
    max_size=160,
)


def check_against_recomputation(cluster, kept):
    indexed, ref = cluster.view, ClusterView(cluster)
    ids = lambda views: [v.id for v in views]  # noqa: E731
    for b in range(len(cluster.backends)):
        assert ids(indexed.active_on(b)) == ids(ref.active_on(b))
    assert ids(indexed.paused()) == ids(ref.paused())
    assert ids(indexed.ready_waiting()) == ids(ref.ready_waiting())
    assert ids(indexed.restorable()) == ids(ref.restorable())
    cluster._epoch += 1  # what a policy callback starts with: stats read afresh
    for lazy, snap in zip(indexed.backends(), cluster.backend_views(), strict=True):
        got = (lazy.index, lazy.name, lazy.capacity_tokens, lazy.used_tokens, lazy.running)
        assert got + (lazy.waiting, lazy.alive) == (
            snap.index,
            snap.name,
            snap.capacity_tokens,
            snap.used_tokens,
            snap.running,
            snap.waiting,
            snap.alive,
        )
    # the state policies keep from the change feed
    loads, pairs = kept
    assert loads(indexed) == active_loads(ref, loads.cost)
    stp, stp_ref = pairs["stp"]
    now = cluster.now
    exact = active_loads(ref, lambda p: stp.cost(p, now))
    assert stp.loads(indexed) == pytest.approx(exact, rel=1e-12, abs=1e-9)
    assert ids(stp.restore_order(indexed)) == ids(sorted(stp.candidates(ref), key=stp.restore_key))
    # Each policy's decisions from its kept state, against a twin that recomputes, on the same
    # loads (the kept ones may differ in the last bits).
    for name, (pol, twin) in pairs.items():
        if name in ("stp", "stp_fair"):
            assert pol.pause_excess(indexed, list(exact)) == twin.pause_excess(ref, list(exact))
            assert pol.restore(indexed, list(exact)) == twin.restore(ref, list(exact))
        else:
            assert pol.on_tick(indexed) == twin.on_tick(ref)
            if name == "lru":
                assert pol._restore(indexed) == twin._restore(ref)
            else:
                assert pol._admit(indexed) == twin._admit(ref)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    ops=ops,
    decay=st.sampled_from(["pow:2", "exp:0.3", "none"]),
    capacity=st.sampled_from([1500, 4000, 50_000]),  # from always full to never
)
def test_indexes_and_kept_state_equal_a_recomputation_after_any_operations(ops, decay, capacity):
    clock = ManualClock()
    backends = [HeldBackend(i, capacity) for i in range(3)]
    cluster = Cluster(clock, backends, Quiet())
    assert type(cluster.view) is IndexedClusterView
    options = {
        name: PolicyOptions(decay=decay, tick_interval=1.0, params=params)
        for name, params in (
            ("stp", ()),
            ("stp_fair", (("aging_s", 1.0),)),  # ages within the run's few seconds
            ("lru", ()),
            ("continuum", ()),
        )
    }
    pairs = {name: (make_policy(name, o), make_policy(name, o)) for name, o in options.items()}
    kept = (ActiveLoads(lambda p: p.context_tokens + 100), pairs)
    programs: list[Program] = []
    for op, i, b, n in ops:
        p = programs[i % len(programs)] if programs else None
        if op == "arrive":
            steps = [(n % 900 + 1, 20, 1.0), (50, 10, 0.5), (n % 300 + 1, 5, 0.0)]
            programs.append(Program(make_program(f"p{len(programs)}", steps), len(programs)))
            cluster.arrive(programs[-1])
            for pol, twin in pairs.values():  # what they keep of arrivals (FIFO, waiting since)
                pol.on_arrival(cluster.view, programs[-1].view)
                twin.on_arrival(ClusterView(cluster), programs[-1].view)
        elif p is None or p.status.is_finished:
            continue
        elif op == "request":
            if not (p.pending or p.in_flight) and p.has_call(p.step):
                cluster.request(p)
        elif op in ("done", "fail") and p.in_flight:
            backend = backends[p.last_backend]
            request, on_done, on_failure = backend.calls.pop(p.id)
            backend.served += 1
            if op == "done":
                on_done(Usage(request.prompt_tokens, 0, request.output_tokens))
            else:
                on_failure(request, ConnectionError("down"))
        elif op == "withdraw" and p.pending:
            cluster.withdraw(p, Usage(0, 0, 0, status=499))
        elif op == "finish" and not (p.pending or p.in_flight):
            cluster.finish(p)
        elif op in ("restore", "pause", "route", "pin"):
            d = {"restore": Restore(p.id, b), "pause": Pause(p.id), "route": Route(p.id, b)}
            # a decision the state refuses changes nothing
            with contextlib.suppress(PolicyError):
                cluster._apply([d.get(op, Pin(p.id, n / 1000))])
        elif op == "advance":
            clock.now += n / 1000
        elif op == "down":
            backends[b].alive = False
        elif op == "up":
            backends[b].alive = True
            cluster.reoffer()
        if n % 3 == 0:  # the kept state drained at random points, several changes at a time
            check_against_recomputation(cluster, kept)
    check_against_recomputation(cluster, kept)
    # every program's slot is the one its state says
    for p in cluster.unfinished.values():
        if p.status is Status.ACTIVE:
            assert cluster._slot.get(p.id) == p.backend
    assert not any(p.id in cluster._slot for p in programs if p.status.is_finished)


def test_a_paused_acting_program_that_fits_is_restored_behind_one_that_does_not():
    """Paused acting programs are sorted by size, but counted decayed: a larger one that has
    acted longer may fit where a smaller one did not. The kept queue passes over the rest of a
    class only for reasoning and new programs (their cost is their size plus the reserve)."""
    clock = ManualClock()
    clock.now = 100.0
    cluster = Cluster(clock, [HeldBackend(0, 10_000)], Quiet())
    state = {  # id: (context, status, acting since); reasoning when None
        "busy": (6000, Status.ACTIVE, None),  # load 6,100: room 3,900
        "fresh": (3900, Status.PAUSED, 100.0),  # 4,000 counted in full: does not fit
        "old": (5000, Status.PAUSED, 80.0),  # 5,100 x 2^(-20/5) = 319: fits
    }
    for i, (pid, (context, status, since)) in enumerate(state.items()):
        p = Program(make_program(pid, [(10, 10, 1.0), (10, 10, 0.0)]), i)
        cluster.arrive(p)
        p.context_tokens, p.status, p.acting_since = context, status, since
        p.backend = 0 if status is Status.ACTIVE else None
        p.phase = Phase.ACTING if since is not None else Phase.REASONING
        cluster._touch(p)  # the Cluster's own way of telling its indexes
    kept, twin = make_policy("stp"), make_policy("stp")
    assert kept.on_tick(cluster.view) == twin.on_tick(ClusterView(cluster)) == [Restore("old", 0)]
    assert kept._tracked is not None and twin._tracked is None


def test_a_finished_program_is_unpinned_on_the_backends_its_calls_went_to_only():
    """Finishing a program costs the backends it used, not the fleet: its pins can only be on
    one of those (a Pin goes to the backend of its last call)."""
    clock = ManualClock()
    backends = [HeldBackend(i, 50_000) for i in range(4)]
    cluster = Cluster(clock, backends, Quiet())
    p = Program(make_program("p", [(10, 10, 1.0), (10, 10, 0.0)]), 0)
    cluster.arrive(p)
    cluster._apply([Restore("p", 1)])
    for b in (1, 3):  # its first call on backend 1, the second routed to 3, pinned there
        if b == 3:
            cluster._apply([Route("p", 3)])
        cluster.request(p)
        request, on_done, _ = backends[b].calls.pop("p")
        on_done(Usage(request.prompt_tokens, 0, request.output_tokens))
    cluster._apply([Pin("p", 30.0)])
    assert backends[3].pinned == {"p"}
    cluster.finish(p)
    assert [b.unpinned for b in backends] == [[], ["p"], [], ["p"]]
    assert backends[3].pinned == set()
