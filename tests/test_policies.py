"""Policies against hand-built cluster states: the paper's rules, decision by decision."""

from __future__ import annotations

import math

import pytest

from thundersim.core.policy import BackendView, ClusterView, Pause, PolicyOptions, Restore, Route
from thundersim.core.program import Phase, Program, Status
from thundersim.policies import make_policy, names

from .conftest import make_program


class FakeCluster:
    """Just what ClusterView reads: a clock, live programs and backend capacities."""

    def __init__(self, capacities, now=100.0):
        self.now = now
        self.backends = capacities
        self.unfinished_views = {}

    def backend_views(self):
        return [BackendView(i, f"b{i}", cap, 0, 0, 0) for i, cap in enumerate(self.backends)]

    def add(
        self,
        pid,
        context,
        status,
        phase=Phase.REASONING,
        backend=None,
        pending=False,
        acting_since=None,
    ):
        p = Program(make_program(pid, [(1, 1, 0.0)]), len(self.unfinished_views))
        p.context_tokens = context
        p.status, p.phase, p.backend, p.pending = status, phase, backend, pending
        p.acting_since = acting_since
        self.unfinished_views[pid] = p.view
        return p


def stp(**kw):
    return make_policy("stp", PolicyOptions(**kw))


def test_registry_has_the_two_starting_policies_and_rejects_unknown_names():
    assert {"vllm", "stp"} <= set(names())
    with pytest.raises(ValueError, match="valid: .*stp.*vllm"):
        make_policy("nope")


@pytest.mark.parametrize(
    "decay,t,expected",
    [
        ("pow:2", 0.0, 1.0),
        ("pow:2", 5.0, 0.5),
        ("pow:2", 10.0, 0.25),
        ("pow:4", 5.0, 0.25),
        ("exp:0.1", 5.0, math.exp(-0.5)),
        ("none", 1e6, 1.0),
    ],
)
def test_decay_is_one_at_zero_and_falls_per_tick(decay, t, expected):
    """f(t) = x^(-t/dt) (the paper's x^-k per tick k of dt = 5 s) or e^(-lambda t)."""
    assert stp(decay=decay, tick_interval=5.0).decay(t) == pytest.approx(expected)


def test_bad_decay_spec_is_refused():
    with pytest.raises(ValueError, match="bad decay"):
        PolicyOptions(decay="pow:0.5")


def test_acting_program_counts_decayed_context_plus_reserve():
    c = FakeCluster([10_000], now=110.0)
    p = c.add("a", 3000, Status.ACTIVE, Phase.ACTING, backend=0, acting_since=100.0)
    pol = stp(decay="pow:2", tick_interval=5.0)
    assert pol.cost(p.view, c.now) == pytest.approx(3100 * 0.25)


def test_pause_acting_shortest_first_until_under_the_high_watermark():
    """Excess 3,500 tokens: acting programs go first, shortest first, until covered;
    reasoning programs are untouched."""
    c = FakeCluster([10_000])
    c.add("r1", 3000, Status.ACTIVE, Phase.REASONING, 0)
    c.add("r2", 3000, Status.ACTIVE, Phase.REASONING, 0)
    c.add("big", 4000, Status.ACTIVE, Phase.ACTING, 0, acting_since=100.0)
    c.add("mid", 2000, Status.ACTIVE, Phase.ACTING, 0, acting_since=100.0)
    c.add("small", 1000, Status.ACTIVE, Phase.ACTING, 0, acting_since=100.0)
    decisions = stp(decay="none").on_tick(ClusterView(c))
    assert decisions == [Pause("small"), Pause("mid"), Pause("big")]


def test_no_pause_when_under_capacity():
    c = FakeCluster([10_000])
    c.add("a", 4000, Status.ACTIVE, Phase.ACTING, 0, acting_since=100.0)
    c.add("b", 4000, Status.ACTIVE, Phase.REASONING, 0)
    assert stp(decay="none").on_tick(ClusterView(c)) == []


def test_decay_lets_long_acting_programs_stop_counting():
    """Same memory, but the acting program has been in its tool for 4 ticks: 1/16 of it counts,
    so there is no thrashing and the waiting program gets admitted."""
    c = FakeCluster([10_000], now=120.0)
    c.add("tool", 6000, Status.ACTIVE, Phase.ACTING, 0, acting_since=100.0)
    c.add("think", 3000, Status.ACTIVE, Phase.REASONING, 0)
    c.add("new", 2000, Status.WAITING, pending=True)
    assert stp(decay="none").on_tick(ClusterView(c)) == []
    assert stp(decay="pow:2").on_tick(ClusterView(c)) == [Restore("new", 0)]


def test_restore_order_reasoning_then_new_then_acting_each_shortest_first():
    c = FakeCluster([100_000])
    c.add("acting-small", 500, Status.PAUSED, Phase.ACTING, acting_since=99.0)
    c.add("new-big", 3000, Status.WAITING, pending=True)
    c.add("new-small", 1000, Status.WAITING, pending=True)
    c.add("reason-big", 9000, Status.PAUSED, Phase.REASONING, pending=True)
    c.add("reason-small", 5000, Status.PAUSED, Phase.REASONING, pending=True)
    c.add("not-ready", 100, Status.WAITING)  # arrived, environment still preparing
    order = [d.program_id for d in stp(decay="none").on_tick(ClusterView(c))]
    assert order == ["reason-small", "reason-big", "new-small", "new-big", "acting-small"]


def test_restore_never_exceeds_the_high_watermark():
    c = FakeCluster([10_000])
    c.add("run", 6000, Status.ACTIVE, Phase.REASONING, 0)
    c.add("too-big", 5000, Status.PAUSED, Phase.REASONING, pending=True)
    c.add("fits", 2000, Status.PAUSED, Phase.REASONING, pending=True)
    decisions = stp(decay="none").on_tick(ClusterView(c))
    assert decisions == [Restore("fits", 0)]


def test_low_watermark_stops_restores_early():
    c = FakeCluster([10_000])
    c.add("run", 6000, Status.ACTIVE, Phase.REASONING, 0)
    c.add("w", 100, Status.WAITING, pending=True)
    assert stp(decay="none", lambda_min=0.5, lambda_max=1.0).on_tick(ClusterView(c)) == []


def test_global_queue_restores_onto_the_backend_with_most_room():
    c = FakeCluster([10_000, 10_000])
    c.add("on0", 8000, Status.ACTIVE, Phase.REASONING, 0)
    c.add("on1", 2000, Status.ACTIVE, Phase.REASONING, 1)
    c.add("a", 3000, Status.PAUSED, Phase.REASONING, pending=True)
    c.add("b", 3000, Status.PAUSED, Phase.REASONING, pending=True)
    c.add("c", 1500, Status.PAUSED, Phase.REASONING, pending=True)
    decisions = stp(decay="none").on_tick(ClusterView(c))
    # c (shortest) -> b1 (most room); a -> b1 (still most room); b -> b1 is full (>10k)...
    assert decisions[0] == Restore("c", 1)
    assert all(isinstance(d, Restore) for d in decisions)
    loads = {0: 8100, 1: 2100}
    for d in decisions:
        loads[d.backend] += {"a": 3100, "b": 3100, "c": 1600}[d.program_id]
    assert max(loads.values()) <= 10_000


def test_stp_admits_on_request_when_there_is_room():
    c = FakeCluster([10_000])
    p = c.add("new", 1000, Status.WAITING, pending=True)
    assert stp().on_request(ClusterView(c), p.view) == [Restore("new", 0)]


def test_vllm_admits_at_the_first_call_and_routes_every_call():
    """No admission control: the first ready call admits the program; each call is routed on
    its own (here round-robin); with one replica nothing is routed."""
    c = FakeCluster([1000, 1000])
    pol = make_policy("vllm", PolicyOptions(router="round_robin"))
    p = c.add("a", 10, Status.WAITING, pending=True)
    q = c.add("b", 10, Status.WAITING, pending=True)
    assert pol.on_arrival(ClusterView(c), p.view) == []
    assert pol.on_request(ClusterView(c), p.view) == [Restore("a", 0)]
    assert pol.on_request(ClusterView(c), q.view) == [Restore("b", 1)]
    p.status = Status.ACTIVE
    assert pol.on_request(ClusterView(c), p.view) == [Route("a", 0)]
    single = FakeCluster([1000])
    pol1 = make_policy("fcfs")  # the alias
    r = single.add("r", 10, Status.WAITING, pending=True)
    assert pol1.on_request(ClusterView(single), r.view) == [Restore("r", 0)]
    r.status = Status.ACTIVE
    assert pol1.on_request(ClusterView(single), r.view) == []
    assert pol1.tick_interval is None  # request-level: no monitor
