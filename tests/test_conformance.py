"""Conformance: what every registered policy must do, whatever else it does.

The suite is parametrised over `thundersim.policies.names()`, so a new module in policies/ is checked as
soon as it registers itself. Each policy runs a small trace under real memory pressure (sixteen
programs sharing a system prompt, KV capacity per replica about 3.5x the largest final context)
on one and on two replicas; policies that place calls through a router run with every router on
two replicas. The engines verify their KV block invariants after every step (`check=True`).

A conforming policy:
- finishes every program, and every step of every program runs exactly once;
- returns only decisions that are valid at the moment it returns them, judged against the
  ClusterView handed to that callback (earlier decisions of the same list taken into account,
  as the Cluster applies them in order):
  * Pause only an ACTIVE program (never a WAITING, PAUSED or finished one);
  * Restore only a WAITING or PAUSED program (never an ACTIVE or finished one);
  * a program-aware policy (every policy but the request-level `vllm`) never restores onto a
    full backend, full meaning the engine's KV is entirely held by running requests
    (`used_tokens >= capacity_tokens` in its BackendView);
  * Route only an ACTIVE program whose call is not running;
  * Pin only a program with no call running, that has computed KV somewhere, for ttl > 0;
  * every backend index names a live backend of the cluster;
- is registered under a unique name with a one-line docstring, refuses unknown parameters with
  the list of the ones it knows, and refuses an unknown router with the list of valid ones.
"""

from __future__ import annotations

from collections import Counter

import pytest

from thundersim.core.policy import Pause, Pin, PolicyOptions, Restore, Route, Router
from thundersim.core.program import Status
from thundersim.metrics.results import RunResult
from thundersim.policies import make_policy, names, router_names
from thundersim.policies.registry import ALIASES, REGISTRY, ROUTERS, describe, discover
from thundersim.sim.catalog import make_setup
from thundersim.sim.simulate import RunConfig, simulate

from .conftest import make_program

CALLBACKS = ("on_arrival", "on_request", "on_response", "on_tick", "on_finish")
REQUEST_LEVEL = {"vllm"}  # policies that leave memory to the engine (no admission control)
TOOL_SECONDS = (0.5, 2.0, 6.0, 20.0, 1.0, 3.0, 0.8, 12.0)


def pressured_trace(n: int = 16, steps: int = 8):
    """n programs of `steps` calls behind a shared 400-token system prompt; first prompts of
    about 1-2K tokens, contexts growing to 3-7.5K; tools of 0.5-20 s; the last call has none."""
    programs = []
    for i in range(n):
        calls = [
            (
                200 + 97 * ((7 * i + 3 * j) % 11) + (600 if j == 0 else 0),
                30 + 8 * ((i + j) % 5),
                TOOL_SECONDS[(i + 3 * j) % len(TOOL_SECONDS)],
            )
            for j in range(steps)
        ]
        calls[-1] = (calls[-1][0], calls[-1][1], 0.0)
        programs.append(make_program(f"p{i:02d}", calls, prefix=("sys", 400), prep_s=0.5 * (i % 3)))
    return programs


TRACE = pressured_trace()
LARGEST = max(p.final_context for p in TRACE)
KV_TOKENS = int(3.5 * LARGEST)


def uses_router(name: str) -> bool:
    return isinstance(getattr(make_policy(name), "router", None), Router)


def cases():
    for name in names():
        yield pytest.param(name, 1, "least_loaded", id=f"{name}-1")
        routers = router_names() if uses_router(name) else ["least_loaded"]
        for router in routers:
            yield pytest.param(name, 2, router, id=f"{name}-2-{router}")


class DecisionAudit:
    """Wraps the callbacks of one policy instance (bound methods replaced on the instance, the
    class untouched) and checks every decision when the callback returns it."""

    def __init__(self, policy, program_aware: bool):
        self.policy = policy
        self.program_aware = program_aware
        self.counts: Counter[str] = Counter()
        for cb in CALLBACKS:
            setattr(policy, cb, self._checked(cb, getattr(policy, cb)))

    def _checked(self, cb, method):
        def callback(view, *program):
            decisions = method(view, *program)
            self.check(cb, view, decisions)
            return decisions

        return callback

    def check(self, cb, view, decisions) -> None:
        assert isinstance(decisions, list), f"{cb} returned {decisions!r}, not a list"
        backends = view.backends()
        status = {pid: p.status for pid, p in view.programs.items()}
        for d in decisions:
            where = f"{self.policy.name}.{cb} at t={view.now:.3f}: {d}"
            self.counts[type(d).__name__] += 1
            assert isinstance(d, Pause | Restore | Route | Pin), f"{where}: not a decision"
            assert d.program_id in status, f"{where}: program is finished or unknown"
            p = view.programs[d.program_id]
            if isinstance(d, Restore | Route):
                assert 0 <= d.backend < view.n_backends, f"{where}: no such backend"
                assert backends[d.backend].alive, f"{where}: backend is down"
            if isinstance(d, Pause):
                assert status[d.program_id] is Status.ACTIVE, (
                    f"{where}: pauses a {status[d.program_id].name} program"
                )
                status[d.program_id] = Status.PAUSED
            elif isinstance(d, Restore):
                assert status[d.program_id] in (Status.WAITING, Status.PAUSED), (
                    f"{where}: restores a {status[d.program_id].name} program"
                )
                b = backends[d.backend]
                if self.program_aware:
                    assert b.used_tokens < b.capacity_tokens, (
                        f"{where}: backend {b.index} is full "
                        f"({b.used_tokens}/{b.capacity_tokens} tokens held by running calls)"
                    )
                status[d.program_id] = Status.ACTIVE
            elif isinstance(d, Route):
                assert status[d.program_id] is Status.ACTIVE, (
                    f"{where}: routes a {status[d.program_id].name} program"
                )
                assert not p.in_flight, f"{where}: routes a program whose call is running"
            else:
                assert not p.in_flight, f"{where}: pins while a call is running"
                assert p.last_backend is not None, f"{where}: pins a program with no KV"
                assert d.ttl_s > 0, f"{where}: ttl must be > 0"


def audited_run(name: str, replicas: int, router: str) -> tuple[RunResult, DecisionAudit]:
    policy = make_policy(name, PolicyOptions(router=router))
    audit = DecisionAudit(policy, program_aware=name not in REQUEST_LEVEL)
    config = RunConfig(
        setup=make_setup(kv_capacity_override=KV_TOKENS),
        replicas=replicas,
        concurrency=len(TRACE),
        block_size=16,
        sample_dt=0.5,
        check_invariants=True,
    )
    return simulate(TRACE, policy, config, trace_name="conformance"), audit


@pytest.mark.parametrize("name,replicas,router", list(cases()))
def test_policy_finishes_every_step_once_with_valid_decisions(name, replicas, router):
    """Every program finishes, every step runs exactly once, and no decision the policy
    returned was invalid when it returned it (the audit raises at the first one that is)."""
    res, audit = audited_run(name, replicas, router)
    assert res.summary["programs_completed"] == len(TRACE)
    assert set(res.programs.status) == {"DONE"}
    expected = Counter((p.id, k) for p in TRACE for k in range(len(p.steps)))
    ran = Counter(zip(res.steps.program, res.steps.step, strict=True))
    assert ran == expected
    assert res.summary["steps_completed"] == sum(expected.values())
    # Every program got in somewhere: at least one Restore per program.
    assert audit.counts["Restore"] >= len(TRACE)


def test_the_trace_is_under_real_memory_pressure():
    """The audit is only worth something if decisions under pressure happen: the live contexts
    exceed one replica's KV, the paper's policy pauses on one replica, and the request-level
    baseline's engine loses cache (hit rate well below what the shared prefix and growing
    contexts would give without eviction)."""
    assert sum(p.final_context for p in TRACE) > 4 * KV_TOKENS
    res, audit = audited_run("stp", 1, "least_loaded")
    assert audit.counts["Pause"] > 0
    vllm, _ = audited_run("vllm", 1, "least_loaded")
    assert vllm.summary["kv_hit_rate"] < res.summary["kv_hit_rate"]


def test_the_audit_rejects_invalid_decisions():
    """The checker itself: a policy whose tick restores a program that is already ACTIVE fails
    at that tick."""
    policy = make_policy("stp", PolicyOptions())
    audit = DecisionAudit(policy, program_aware=True)

    def bad_tick(view):
        return [Restore(pid, 0) for pid, p in view.programs.items() if p.status is Status.ACTIVE]

    policy.on_tick = audit._checked("on_tick", bad_tick)
    config = RunConfig(
        setup=make_setup(kv_capacity_override=KV_TOKENS), concurrency=len(TRACE), sample_dt=0.5
    )
    with pytest.raises(AssertionError, match="restores a ACTIVE program"):
        simulate(TRACE, policy, config)


# ---- registry ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", names())
def test_policy_class_has_a_one_line_docstring_and_its_registered_name(name):
    cls = REGISTRY[name]
    assert cls.name == name
    assert cls.__doc__ and describe(cls).strip(), f"{cls.__name__} has no docstring"
    assert describe(cls) == cls.__doc__.strip().splitlines()[0]


def test_policy_and_router_names_are_unique():
    discover()
    classes = list(REGISTRY.values())
    assert len({c.name for c in classes}) == len(classes) == len(set(classes))
    assert not set(ALIASES) & set(REGISTRY), "an alias shadows a policy name"
    assert all(ALIASES[a] in REGISTRY for a in ALIASES)
    assert len({r.name for r in ROUTERS.values()}) == len(ROUTERS)
    for cls in ROUTERS.values():
        assert describe(cls).strip(), f"router {cls.__name__} has no docstring"


@pytest.mark.parametrize("name", names())
def test_unknown_parameter_is_refused_with_the_known_ones(name):
    known = sorted(REGISTRY[name].params)
    with pytest.raises(ValueError, match="nonexistent") as err:
        make_policy(name, PolicyOptions(params=(("nonexistent", 1.0),)))
    listed = str(err.value).split("known:", 1)[1]
    if known:
        assert all(k in listed for k in known), str(err.value)
    else:
        assert "none" in listed
    # ...and every declared parameter is accepted at its default value.
    defaults = tuple(REGISTRY[name].params.items())
    assert make_policy(name, PolicyOptions(params=defaults)).settings == dict(REGISTRY[name].params)


@pytest.mark.parametrize("name", names())
def test_unknown_router_is_refused_with_the_valid_ones(name):
    with pytest.raises(ValueError, match="unknown router 'nope'") as err:
        make_policy(name, PolicyOptions(router="nope"))
    assert all(r in str(err.value) for r in router_names())


def test_a_trace_is_refused_up_front_or_runs_to_the_end():
    """A trace whose calls could never run is refused before anything runs; whatever the fit
    check accepts, the engines can serve. Here a 1,023-token call on a 1,023-token setup with
    16-token blocks (63 blocks: 1,008 tokens) follows a program that fits."""
    fits = make_program("fits", [(200, 10, 0.0)], prefix=(None, 0))
    edge = make_program("edge", [(1000, 23, 0.0)], prefix=(None, 0))
    config = RunConfig(setup=make_setup(kv_capacity_override=1023), concurrency=1, block_size=16)
    finished = []
    try:
        res = simulate(
            [fits, edge],
            make_policy("vllm"),
            config,
            progress=lambda done, _t: finished.append(done),
        )
    except ValueError:
        assert finished == [], "refused mid-run, after a program had already finished"
    else:
        assert res.summary["programs_completed"] == 2
