"""The Cluster validates every decision and holds the calls of programs the policy withholds."""

from __future__ import annotations

import pytest

from thundersim.core.policy import Pause, Policy, PolicyError, Restore, Route
from thundersim.core.program import Status
from thundersim.sim.catalog import make_setup
from thundersim.sim.simulate import RunConfig, simulate

from .conftest import make_program


class Scripted(Policy):
    """Admits at arrival onto backend 0; then returns whatever the test scripted."""

    name = "scripted"

    def __init__(self, on_response=None, on_finish=None, admit=True):
        super().__init__()
        self._on_response = on_response
        self._on_finish = on_finish
        self.admit = admit

    def on_arrival(self, view, program):
        return [Restore(program.id, 0)] if self.admit else []

    def on_response(self, view, program):
        return self._on_response(view, program) if self._on_response else []

    def on_finish(self, view, program):
        return self._on_finish(view, program) if self._on_finish else []


def run(policy, programs, replicas=1, concurrency=2):
    config = RunConfig(
        setup=make_setup(kv_capacity_override=50_000),
        replicas=replicas,
        concurrency=concurrency,
        check_invariants=True,
    )
    return simulate(programs, policy, config)


TWO = [make_program(f"p{i}", [(100, 10, 1.0), (50, 10, 1.0)]) for i in range(2)]


def test_pausing_a_finished_program_is_rejected():
    done = []

    def later(view, program):
        if done:
            return [Pause(done[0])]
        return []

    def finish(view, program):
        done.append(program.id)
        return []

    pol = Scripted(on_response=later, on_finish=finish)
    progs = [make_program("a", [(10, 5, 0.0)]), make_program("b", [(10, 5, 30.0)] * 3)]
    with pytest.raises(PolicyError, match="finished"):
        run(pol, progs, concurrency=2)


def test_restoring_an_active_program_is_rejected():
    pol = Scripted(on_response=lambda v, p: [Restore(p.id, 0)])
    with pytest.raises(PolicyError, match="ACTIVE"):
        run(pol, TWO)


def test_restoring_onto_a_missing_backend_is_rejected():
    pol = Scripted(admit=False)
    pol.on_request = lambda view, program: [Restore(program.id, 5)]
    with pytest.raises(PolicyError, match="no backend 5"):
        run(pol, TWO)


def test_routing_while_a_call_runs_is_rejected():
    class RouteInFlight(Scripted):
        def on_request(self, view, program):
            others = [p for p in view.programs.values() if p.in_flight]
            return [Route(others[0].id, 0)] if others else []

    progs = [make_program(f"p{i}", [(2000, 200, 0.0)] * 2) for i in range(3)]
    with pytest.raises(PolicyError, match="call running"):
        run(RouteInFlight(), progs, concurrency=3)


def test_paused_program_call_is_held_until_restored():
    """Pause at the first response; restore at the next tick 3 s later: the second call waits
    at least until then, and the hold shows in the step's hold_s."""

    class PauseOnce(Scripted):
        tick_interval = 3.0

        def __init__(self):
            super().__init__(on_response=lambda v, p: [Pause(p.id)] if p.step == 1 else [])

        def on_tick(self, view):
            return [Restore(p.id, 0) for p in view.programs.values() if p.status is Status.PAUSED]

    progs = [make_program("a", [(100, 10, 0.1), (50, 10, 0.0)])]
    res = run(PauseOnce(), progs, concurrency=1)
    second = res.steps[res.steps.step == 1].iloc[0]
    assert second.hold_s > 0
    assert second.sent_t == pytest.approx(3.0)  # the first tick after the call became ready
    assert res.summary["programs_completed"] == 1


def test_a_policy_that_never_admits_is_reported_as_deadlocked():
    with pytest.raises(RuntimeError, match="deadlocked"):
        run(Scripted(admit=False), TWO)


def test_a_call_the_backend_fails_is_withheld_then_sent_again(monkeypatch):
    """The failure callback comes with each call: a replica that cannot serve a call hands it
    back, the Cluster withholds it (PAUSED, no backend) and asks the policy, which restores it;
    the call runs again and the program completes."""
    import thundersim.sim.simulate as simulate_module

    failed = []

    class FailsFirst(simulate_module.SimBackend):
        def submit(self, request, on_done, on_failure=None):
            if not failed:  # the very first call: the replica fails it a second later
                failed.append(request.program_id)
                later = self.env.timeout(1.0)
                later.callbacks.append(lambda _e: on_failure(request, ConnectionError("down")))
                return
            super().submit(request, on_done, on_failure)

    monkeypatch.setattr(simulate_module, "SimBackend", FailsFirst)

    class RestoresAfterFailure(Scripted):
        def on_request(self, view, program):
            return [Restore(program.id, 0)] if program.status is Status.PAUSED else []

    res = run(RestoresAfterFailure(), TWO)
    assert res.summary["programs_completed"] == 2
    first = res.steps[(res.steps.program == failed[0]) & (res.steps.step == 0)].iloc[0]
    assert first.sent_t == pytest.approx(1.0)  # sent again when the failure came back
    assert first.hold_s == pytest.approx(1.0)  # ready at 0, withheld until it was restored
    assert len(res.steps) == 4  # each step once: the failed call is not counted twice
