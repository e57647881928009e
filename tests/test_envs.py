"""The tool resource manager: lifecycle, limits, prefetch, in simulation and with real local
sandboxes (directories, ports, processes)."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import simpy
from hypothesis import given
from hypothesis import strategies as st

from thundersim.core.envs import EnvLimits, EnvManager, ToolManagerMode
from thundersim.core.policy import Policy, PolicyOptions
from thundersim.engine_adapters.sandbox import LocalSandbox, docker_available
from thundersim.policies import make_policy
from thundersim.sim.driver import SimClock
from thundersim.sim.sandbox import PREP_REF_K, SimSandbox, contended_prep, prep_seconds
from thundersim.traces.schema import EnvSpec, ProgramSpec, StepSpec

from .conftest import StubBackend, run_sim

GB = 10**9


def program(pid: str, prep_s=30.0, disk=2 * GB, ports=1, steps=3, tool_s=20.0) -> ProgramSpec:
    return ProgramSpec(
        id=pid,
        workload="test",
        arrival_s=0.0,
        prefix_id="sys",
        prefix_tokens=64,
        env=EnvSpec(prep_s=prep_s, disk_bytes=disk, ports=ports),
        steps=tuple(StepSpec(200, 50, "bash", tool_s) for _ in range(steps)),
    )


def trace(n=12, **kw):
    return [program(f"p{i}", **kw) for i in range(n)]


# ---- the preparation-time model ---------------------------------------------------------------
def test_prep_time_model_follows_the_papers_measurements():
    paper = {24: 29.9, 48: 32.8, 72: 38.4, 96: 47.2}  # PAPER.md: env prep vs concurrency
    for k, seconds in paper.items():
        assert prep_seconds(k) == pytest.approx(seconds, rel=0.05)
    assert contended_prep(29.9, PREP_REF_K) == pytest.approx(29.9)
    assert contended_prep(10.0, 1) < 10.0 < contended_prep(10.0, 96)


def _prepare_at(env, box, jobs):
    """jobs: (start time, key, work); returns key -> the time it became ready."""
    ready = {}

    def starter(t, key, work):
        yield env.timeout(t)
        box.prepare(key, EnvSpec(prep_s=work), work, lambda h: ready.setdefault(h, env.now), print)

    for t, key, work in jobs:
        env.process(starter(t, key, work))
    env.run()
    return ready


@pytest.mark.parametrize("n", [24, 48, 72, 96])
def test_n_preparations_started_together_take_the_fitted_time_at_n(n):
    """Consistency check, not a reproduction: the fit is to Fig 2c's points read as "n
    preparations in progress", so n started at the same instant (a closed loop's first wave)
    must each take prep_s x t(n) / t(24), and with the trace's 29.9 s at 24 the fitted point
    itself."""
    env = simpy.Environment()
    box = SimSandbox(env)
    ready = _prepare_at(env, box, [(0.0, f"e{i}", 29.9) for i in range(n)])
    assert len(ready) == n
    expected = 29.9 * prep_seconds(n) / prep_seconds(PREP_REF_K)
    assert expected == pytest.approx(contended_prep(29.9, n))
    for t in ready.values():
        assert t == pytest.approx(expected, rel=1e-9)
    assert box.in_progress == 0


def test_a_preparation_joined_halfway_slows_down_from_then_on():
    # 24 with 30 s of work from t = 0 run at rate 1 (t(24)/t(24)); at t = 15, half done, 24 more
    # join: rate t(24)/t(48) = 29.530064 / 33.010256 for everyone until the first 24 finish
    # their last 15 s of work, at 15 + 15 x 33.010256 / 29.530064 = 31.7678 s. The joiners have
    # then done 15 s of work too and finish the rest alone at rate 1: at 46.7678 s.
    env = simpy.Environment()
    box = SimSandbox(env)
    jobs = [(0.0, f"a{i}", 30.0) for i in range(24)] + [(15.0, f"b{i}", 30.0) for i in range(24)]
    ready = _prepare_at(env, box, jobs)
    slowed = 15 + 15 * prep_seconds(48) / prep_seconds(24)
    assert slowed == pytest.approx(31.7678, abs=1e-4)
    for i in range(24):
        assert ready[f"a{i}"] == pytest.approx(slowed, rel=1e-9)  # not 30: slowed down
        assert ready[f"b{i}"] == pytest.approx(slowed + 15, rel=1e-9)  # not 15 + 30 x 1.118


def test_one_preparation_alone_is_faster_and_finishing_ones_speed_up_the_rest():
    env = simpy.Environment()
    box = SimSandbox(env)
    alone = _prepare_at(env, box, [(0.0, "x", 10.0)])
    assert alone["x"] == pytest.approx(10.0 * prep_seconds(1) / prep_seconds(24))
    # 2 in progress: the short one (work 1) finishes at 1 / r2; the long one (work 3) has 2 left
    # and goes on alone at r1
    env = simpy.Environment()
    box = SimSandbox(env)
    ready = _prepare_at(env, box, [(0.0, "short", 1.0), (0.0, "long", 3.0)])
    r1, r2 = (prep_seconds(24) / prep_seconds(k) for k in (1, 2))
    assert ready["short"] == pytest.approx(1 / r2)
    assert ready["long"] == pytest.approx(1 / r2 + 2 / r1)


def test_the_manager_hands_the_uncontended_time_and_records_the_concurrency():
    from types import SimpleNamespace

    env = simpy.Environment()
    box = SimSandbox(env)
    seen = []
    prepare = box.prepare
    box.prepare = lambda key, spec, d, cb, fail: (seen.append(d), prepare(key, spec, d, cb, fail))
    manager = EnvManager(SimClock(env), box, "gc")
    progs = [
        SimpleNamespace(id=f"p{i}", spec=SimpleNamespace(env=EnvSpec(prep_s=30.0)), envs=None)
        for i in range(48)
    ]

    def arrive(t, ps):
        yield env.timeout(t)
        for p in ps:
            manager.acquire(p)

    env.process(arrive(0.0, progs[:24]))
    env.process(arrive(15.0, progs[24:]))
    env.run()
    assert seen == [30.0] * 48  # the trace's prep_s: contention is the provider's
    preps = manager.preps_frame().set_index("program")
    first, joiners = preps.loc["p0":"p23"], preps.loc["p24":"p47"]
    assert list(first.concurrent_preps) == list(range(1, 25))  # k at start, itself included
    assert list(joiners.concurrent_preps) == list(range(25, 49))
    slowed = 15 + 15 * prep_seconds(48) / prep_seconds(24)
    assert first.prep_s.tolist() == pytest.approx([slowed] * 24)
    assert joiners.prep_s.tolist() == pytest.approx([slowed] * 24, rel=1e-9)  # 46.77 - 15
    # mean k over the preparation: 24 for 15 s then 48 (first); 48 then 24 alone (joiners)
    assert first.mean_concurrent_preps.tolist() == pytest.approx(
        [(24 * 15 + 48 * (slowed - 15)) / slowed] * 24
    )
    assert joiners.mean_concurrent_preps.tolist() == pytest.approx(
        [(48 * (slowed - 15) + 24 * 15) / slowed] * 24
    )


def test_preparation_is_deterministic():
    specs = [program(f"d{i}", prep_s=20.0 + 3 * (i % 5), tool_s=4.0) for i in range(20)]
    a = run_sim(specs, concurrency=8, tool_manager="gc+prefetch", kv_tokens=50_000)
    b = run_sim(specs, concurrency=8, tool_manager="gc+prefetch", kv_tokens=50_000)
    assert a.env_preps.equals(b.env_preps)
    assert a.summary["env"] == b.summary["env"]


# ---- simulation ---------------------------------------------------------------------------------
def test_gc_removes_every_environment_and_none_keeps_them_until_the_end():
    specs = trace(12)
    gc = run_sim(specs, concurrency=4, tool_manager="gc", kv_tokens=50_000)
    none = run_sim(specs, concurrency=4, tool_manager="none", kv_tokens=50_000)
    assert gc.summary["programs_completed"] == none.summary["programs_completed"] == 12
    assert gc.summary["env"]["leaked_envs"] == 0
    assert gc.summary["env"]["peak_disk_bytes"] == 4 * 2 * GB  # one sandbox per running program
    assert gc.summary["env"]["peak_ports"] == 4
    assert none.summary["env"]["leaked_envs"] == 12
    assert none.summary["env"]["peak_disk_bytes"] == 12 * 2 * GB  # grows with every program
    # every environment was removed by the end of the run either way
    for result in (gc, none):
        assert result.env_preps.removed_t.notna().all()
        assert result.env_usage.disk_bytes.iloc[-1] == 0


def test_admission_waits_at_the_disk_limit_instead_of_failing():
    specs = trace(8)
    free = run_sim(specs, concurrency=4, tool_manager="gc", kv_tokens=50_000)
    limited = run_sim(
        specs, concurrency=4, tool_manager="gc", kv_tokens=50_000, env_disk_limit=2 * 2 * GB
    )
    assert limited.summary["programs_completed"] == 8
    assert limited.env_usage.disk_bytes.max() <= 2 * 2 * GB
    assert limited.env_usage.waiting.max() >= 1  # someone queued for disk
    assert limited.summary["env"]["mean_env_wait_s"] > free.summary["env"]["mean_env_wait_s"]


def test_without_gc_a_full_disk_stops_the_run_and_keeps_what_finished():
    specs = trace(10)
    res = run_sim(
        specs, concurrency=2, tool_manager="none", kv_tokens=50_000, env_disk_limit=5 * 2 * GB
    )
    assert "nothing is ever freed" in res.summary["stopped"]
    assert res.summary["interrupted"]
    assert 0 < res.summary["programs_completed"] < 10
    assert len(res.steps) > 0


def test_an_environment_larger_than_the_limit_is_a_clear_error():
    with pytest.raises(ValueError, match=r"program p0: its environment .* exceeds the limits"):
        run_sim(trace(2), concurrency=2, tool_manager="gc", env_disk_limit=GB)


def test_async_preparation_shortens_the_wait_for_an_environment():
    specs = trace(24, tool_s=5.0, steps=4)
    gc = run_sim(specs, concurrency=4, tool_manager="gc", kv_tokens=50_000)
    pre = run_sim(specs, concurrency=4, tool_manager="gc+prefetch", kv_tokens=50_000)
    assert pre.summary["env"]["prefetched"] > 0
    assert pre.env_preps.prefetched.sum() == pre.summary["env"]["prefetched"]
    wait_gc = gc.summary["env"]["mean_env_wait_s"]
    wait_pre = pre.summary["env"]["mean_env_wait_s"]
    assert wait_pre < 0.5 * wait_gc
    # the time hidden is time the programs spent running instead
    assert pre.summary["simulated_s"] < gc.summary["simulated_s"]


def test_preparation_takes_longer_when_more_run_at_once():
    few = run_sim(trace(16), concurrency=4, tool_manager="gc", kv_tokens=200_000)
    many = run_sim(trace(16), concurrency=16, tool_manager="gc", kv_tokens=200_000)
    preps = many.env_preps
    assert preps.concurrent_preps.max() == 16
    # all 16 start together and prepare side by side throughout, each at the 16-way rate
    assert preps.mean_concurrent_preps.tolist() == pytest.approx([16.0] * 16)
    assert preps.prep_s.tolist() == pytest.approx([contended_prep(30.0, 16)] * 16)
    first_four = few.env_preps.sort_values("start_t").head(4)
    assert first_four.prep_s.tolist() == pytest.approx([contended_prep(30.0, 4)] * 4)
    assert contended_prep(30.0, 16) > contended_prep(30.0, 4)


class _Watch(Policy):
    """Admits everyone on backend 0; records what it saw of environment readiness."""

    name = "watch"

    def __init__(self, options=None):
        super().__init__(options)
        self.seen: list[tuple[str, bool]] = []

    def on_arrival(self, view, program):
        self.seen.append(("arrival", program.env_ready))
        return []

    def on_request(self, view, program):
        self.seen.append(("request", program.env_ready))
        from thundersim.core.policy import Restore

        return [Restore(program.id, 0)] if program.status.name != "ACTIVE" else []


def test_the_policy_sees_environment_readiness():
    from thundersim.sim.catalog import make_setup
    from thundersim.sim.simulate import RunConfig, simulate

    pol = _Watch(PolicyOptions())
    config = RunConfig(setup=make_setup(kv_capacity_override=50_000), concurrency=2)
    simulate(trace(2), pol, config)
    assert ("arrival", False) in pol.seen  # arrived, its sandbox still being prepared
    assert all(ready for kind, ready in pol.seen if kind == "request")


@given(
    st.lists(st.integers(1, 5), min_size=1, max_size=12),
    st.integers(1, 6),
    st.sampled_from(["gc", "gc+prefetch"]),
)
def test_disk_held_never_exceeds_the_limit_and_nothing_outlives_the_run(disks, conc, mode):
    specs = [program(f"q{i}", disk=d * GB, steps=2, tool_s=3.0) for i, d in enumerate(disks)]
    limit = 6 * GB
    res = run_sim(
        specs, concurrency=conc, tool_manager=mode, kv_tokens=50_000, env_disk_limit=limit
    )
    assert res.summary["programs_completed"] == len(specs)
    assert res.env_usage.disk_bytes.max() <= limit
    assert (res.env_usage.disk_bytes >= 0).all()
    assert res.env_usage.iloc[-1][["disk_bytes", "ports", "envs", "preparing"]].sum() == 0
    assert res.summary["env"]["leaked_envs"] == 0


# ---- real local sandboxes ----------------------------------------------------------------------
def port_in_use(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (exited, not yet reaped) is not alive
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_a_local_sandbox_has_real_files_ports_and_processes_and_leaves_nothing(tmp_path):
    async def main():
        box = LocalSandbox(tmp_path / "boxes", disk_scale=1e-3)
        ready = asyncio.get_running_loop().create_future()
        spec = EnvSpec(prep_s=0.2, disk_bytes=2 * GB, ports=2)
        box.prepare(
            "env-1", spec, 0.2, ready.set_result, lambda why: ready.set_exception(RuntimeError(why))
        )
        sb = await ready
        files = list(sb.path.iterdir())
        size = sum(f.stat().st_size for f in files)
        ports = list(sb.ports)
        listening = [port_in_use(p) for p in ports]
        pid = sb.helper.pid
        t0 = time.monotonic()
        await box.run_tool(sb, "bash; rm -rf /", 0.2)  # a name is data, never a command
        took = time.monotonic() - t0
        box.teardown(sb)
        return sb.path, size, ports, listening, pid, took

    path, size, ports, listening, pid, took = asyncio.run(main())
    assert size == 2 * GB // 1000
    assert len(ports) == 2 and all(listening)
    assert 0.2 <= took < 5
    assert not path.exists()
    assert not pid_alive(pid)
    assert not any(port_in_use(p) for p in ports)


class _InstantBackend(StubBackend):
    """An in-process engine that answers every call after a short wait: the sandboxes are what
    these tests are about."""

    def submit(self, req, on_done, on_failure):
        from thundersim.core.backend import Usage

        async def answer():
            await asyncio.sleep(0.01)
            now = req.submit_time + 0.01
            on_done(
                Usage(
                    req.prompt_tokens,
                    0,
                    req.output_tokens,
                    0,
                    0,
                    req.submit_time,
                    req.submit_time,
                    now,
                    now,
                )
            )

        asyncio.get_running_loop().create_task(answer())


def _live(specs, root, mode="gc+prefetch", cancel_after=None):
    from thundersim.live.driver import run_live

    seen = {"dirs": set(), "ports": set(), "pids": set()}

    async def main():
        box = LocalSandbox(root, disk_scale=1e-4)
        original = box._prepare

        async def spy(key, spec, duration, on_ready, on_failed):
            def record(sb):
                seen["dirs"].add(sb.path)
                seen["ports"].update(sb.ports)
                if sb.helper is not None:
                    seen["pids"].add(sb.helper.pid)
                on_ready(sb)

            await original(key, spec, duration, record, on_failed)

        box._prepare = spy
        pol = make_policy("stp", PolicyOptions(tick_interval=0.2))
        run = asyncio.create_task(
            run_live(specs, pol, [_InstantBackend("instant")], 3, sandbox=box, tool_manager=mode)
        )
        if cancel_after is not None:
            await asyncio.sleep(cancel_after)
            run.cancel()
        return await run

    return asyncio.run(main()), seen


def test_a_live_run_leaves_no_directory_process_or_port(tmp_path):
    specs = trace(6, prep_s=0.3, disk=GB, ports=2, steps=2, tool_s=0.1)
    res, seen = _live(specs, tmp_path / "boxes")
    assert res.summary["programs_completed"] == 6
    assert res.summary["env"]["leaked_envs"] == 0
    assert len(seen["dirs"]) == 6 and len(seen["ports"]) == 12
    assert list((tmp_path / "boxes").iterdir()) == []
    assert not any(pid_alive(p) for p in seen["pids"])
    assert not any(port_in_use(p) for p in seen["ports"])


def test_an_interrupted_live_run_leaves_nothing_either(tmp_path):
    specs = trace(9, prep_s=0.3, disk=GB, ports=1, steps=3, tool_s=0.5)
    res, seen = _live(specs, tmp_path / "boxes", cancel_after=1.2)
    assert res.summary["interrupted"]
    assert res.summary["programs_completed"] < 9
    assert seen["dirs"], "the run was cut before any sandbox existed"
    assert list((tmp_path / "boxes").iterdir()) == []
    assert not any(pid_alive(p) for p in seen["pids"])
    assert not any(port_in_use(p) for p in seen["ports"])


def test_port_helper_ends_when_its_parent_is_killed(tmp_path):
    """Even a SIGKILLed run does not leave ports held: the helper watches its stdin pipe."""
    script = (
        "import asyncio, json, sys\n"
        "from thundersim.engine_adapters.sandbox import LocalSandbox\n"
        "from thundersim.traces.schema import EnvSpec\n"
        "async def main():\n"
        f"    box = LocalSandbox({str(tmp_path)!r}, 0)\n"
        "    f = asyncio.get_running_loop().create_future()\n"
        "    box.prepare('k', EnvSpec(ports=1), 0, f.set_result, print)\n"
        "    sb = await f\n"
        "    print(json.dumps([sb.helper.pid, sb.ports[0]]), flush=True)\n"
        "    await asyncio.sleep(60)\n"
        "asyncio.run(main())\n"
    )
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=root
    )
    import json

    pid, port = json.loads(proc.stdout.readline())
    assert port_in_use(port)
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 10
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not pid_alive(pid)
    assert not port_in_use(port)


def test_docker_provider_says_whether_an_engine_is_reachable():
    ok, why = docker_available()
    assert isinstance(ok, bool) and why
    if not ok:
        from thundersim.engine_adapters.sandbox import DockerSandbox

        with pytest.raises(RuntimeError, match="docker sandbox unavailable"):
            DockerSandbox()


def test_env_manager_rejects_an_unknown_mode():
    with pytest.raises(ValueError) as bad:
        EnvManager(None, None, mode="sometimes")
    assert str(bad.value) == "unknown tool-manager mode 'sometimes'; valid: none, gc, gc+prefetch"
    with pytest.raises(ValueError, match="must be >= 0"):
        EnvLimits(disk_bytes=-1)


@pytest.mark.parametrize("text", ["none", "gc", "gc+prefetch"])
def test_env_manager_takes_a_mode_as_its_text_and_reports_the_text(text):
    """Callers pass the mode users type; the manager holds the enum and summary.json gets the
    plain text back, so outputs stay what they were."""
    env = simpy.Environment()
    manager = EnvManager(SimClock(env), SimSandbox(env), text)
    assert manager.mode is ToolManagerMode(text)
    assert manager.mode == text
    mode = manager.summary([])["mode"]
    assert type(mode) is str and mode == text
