"""Nothing stuck (issue 14): an environment that cannot be made stops the run with the reason,
fast, instead of leaving its program waiting forever; one whose provider never answers is given
up after the provider's timeout; the experimental Docker sandbox never pulls, reads back its
ports and fails fast and clearly when `docker` does (tested against a stand-in `docker` script
on PATH: no Docker engine is on these machines).

Every live run here is guarded by GUARD_S: before the failure path existed each of them hung.
"""

from __future__ import annotations

import asyncio
import os
import time

import pytest
import simpy

from thundersim.core.envs import EnvManager, EnvPrepFailed
from thundersim.core.policy import PolicyOptions
from thundersim.core.program import Program
from thundersim.engine_adapters import sandbox as sandbox_module
from thundersim.engine_adapters.sandbox import DockerSandbox, LocalSandbox
from thundersim.policies import make_policy
from thundersim.sim.driver import SimClock
from thundersim.traces.schema import EnvSpec

from .test_envs import GB, _InstantBackend, pid_alive, trace

GUARD_S = 60.0  # a run that needs this long has hung: every run below ends in a few seconds


def _run_live(specs, box, mode="gc+prefetch", concurrency=3):
    """A live run on an in-process engine, bounded by GUARD_S; (result, seconds it took)."""
    from thundersim.live.driver import run_live

    async def main():
        pol = make_policy("stp", PolicyOptions(tick_interval=0.2))
        run = run_live(
            specs, pol, [_InstantBackend("instant")], concurrency, sandbox=box, tool_manager=mode
        )
        return await asyncio.wait_for(run, GUARD_S)

    t0 = time.monotonic()
    result = asyncio.run(main())
    return result, time.monotonic() - t0


# ---- a provider whose preparation fails ------------------------------------------------------
def test_a_failed_local_preparation_stops_the_run_with_program_environment_and_reason(tmp_path):
    root = tmp_path / "boxes"
    root.mkdir()
    blocker = root / "env-1"  # something of the user's where the first sandbox would go
    blocker.write_text("not a sandbox")
    specs = trace(6, prep_s=0.2, disk=GB, ports=1, steps=2, tool_s=0.05)
    res, took = _run_live(specs, LocalSandbox(root, disk_scale=1e-4))
    s = res.summary
    assert took < 30
    assert s["interrupted"]
    stopped = s.get("stopped") or ""
    assert "program p0" in stopped and "env-1" in stopped and "FileExistsError" in stopped
    assert s["env"]["failed_preps"] >= 1 and s["env"]["prep_failure"] == stopped
    assert s["programs_completed"] < 6
    # what was in the way is left as it was; every sandbox the run made is gone
    assert list(root.iterdir()) == [blocker] and blocker.read_text() == "not a sandbox"
    failed = res.env_preps[res.env_preps.program == "p0"]
    assert len(failed) == 1 and failed.ready_t.isna().all()


# ---- a provider that never answers ------------------------------------------------------------
class Silent:
    """A provider whose preparations never end (a `docker run` that never returns): it says
    neither ready nor failed."""

    prep_timeout_s = 0.5

    def __init__(self):
        self.asked: list[str] = []

    def prepare(self, key, spec, duration_s, on_ready, on_failed):
        self.asked.append(key)

    def teardown(self, handle):
        pass

    def close(self):
        pass

    async def run_tool(self, handle, tool, seconds):
        await asyncio.sleep(seconds)


def test_a_live_preparation_that_never_answers_is_given_up_after_the_timeout():
    specs = trace(4, prep_s=0.3, disk=GB, ports=0, steps=2, tool_s=0.05)
    box = Silent()
    res, took = _run_live(specs, box)
    assert took < 10  # 0.3 s of trace time + the 0.5 s bound, not GUARD_S
    stopped = res.summary.get("stopped") or ""
    assert "program p0" in stopped and "env-1" in stopped
    assert "did not answer within 0.8 s" in stopped
    assert res.summary["programs_completed"] == 0
    # once one failed nothing more is prepared: only those started before it were asked
    assert len(box.asked) <= 4


def test_a_simulated_wait_on_a_silent_provider_ends_at_the_timeout():
    env = simpy.Environment()
    manager = EnvManager(SimClock(env), Silent(), "gc")
    program = Program(trace(1, prep_s=30.0)[0], 0)

    def arrive():
        yield manager.acquire(program)

    env.process(arrive())
    with pytest.raises(EnvPrepFailed, match="did not answer within 30.5 s") as failed:
        env.run(until=1_000)
    assert env.now == pytest.approx(30.5)
    assert failed.value.program_id == "p0" and failed.value.key == "env-1"
    assert manager.disk == 0 and manager.ports == 0 and manager.n_preparing == 0
    assert manager.summary([])["failed_preps"] == 1


# ---- the Docker sandbox against a stand-in docker -----------------------------------------------
FAKE_DOCKER = """#!/bin/sh
echo "$*" >> "$FAKE_DOCKER_LOG"
case "$1" in
  info) echo 99.0-fake ;;
  run)
    case "$FAKE_DOCKER_RUN" in
      fail)
        echo "Unable to find image 'thundersim-nowhere:1' locally" >&2
        echo "docker: Error response from daemon: No such image: thundersim-nowhere:1." >&2
        exit 125 ;;
      hang) sleep 600 & echo $! > "$FAKE_DOCKER_PID"; wait ;;
      *) echo 5f0c0ffee ;;
    esac ;;
  port) printf '8000/tcp -> 127.0.0.1:45001\\n8001/tcp -> 127.0.0.1:45002\\n' ;;
  *) ;;
esac
"""


@pytest.fixture
def fake_docker(tmp_path, monkeypatch):
    """A `docker` command first on PATH that logs its arguments; FAKE_DOCKER_RUN says what its
    `run` does: start (default), fail (exit 125, no such image) or hang."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    exe = bin_dir / "docker"
    exe.write_text(FAKE_DOCKER)
    exe.chmod(0o755)
    log = tmp_path / "docker.log"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.setenv("FAKE_DOCKER_LOG", str(log))
    monkeypatch.setenv("FAKE_DOCKER_PID", str(tmp_path / "sleep.pid"))
    monkeypatch.setattr(sandbox_module, "_warned", False)  # each test sees the first selection

    def calls(verb: str) -> list[str]:
        lines = log.read_text().splitlines() if log.exists() else []
        return [line for line in lines if line.split(" ", 1)[0] == verb]

    return calls


def test_a_docker_run_that_fails_stops_the_run_fast_naming_the_image(fake_docker, monkeypatch):
    monkeypatch.setenv("FAKE_DOCKER_RUN", "fail")
    box = DockerSandbox(image="thundersim-nowhere:1")
    specs = trace(3, prep_s=0.2, disk=GB, ports=1, steps=2, tool_s=0.05)
    res, took = _run_live(specs, box)
    assert took < 10
    stopped = res.summary.get("stopped") or ""
    assert "program p0" in stopped and "env-1" in stopped
    assert "docker run of image 'thundersim-nowhere:1' failed (exit 125)" in stopped
    assert "No such image" in stopped and "never pulled" in stopped
    runs = fake_docker("run")
    assert runs and all("--pull never" in r and "thundersim-nowhere:1" in r for r in runs)


def test_a_docker_run_that_never_returns_is_killed_and_stops_the_run(
    fake_docker, monkeypatch, tmp_path
):
    monkeypatch.setenv("FAKE_DOCKER_RUN", "hang")
    box = DockerSandbox(prep_timeout_s=1.0)
    specs = trace(3, prep_s=0.1, disk=GB, ports=1, steps=2, tool_s=0.05)
    res, took = _run_live(specs, box)
    assert took < 15
    stopped = res.summary.get("stopped") or ""
    assert "program p0" in stopped and "env-1" in stopped and "within 1." in stopped
    pid = int((tmp_path / "sleep.pid").read_text())
    deadline = time.monotonic() + 5
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not pid_alive(pid), "the hung docker command outlived the run"
    assert box.live == {}


def test_a_docker_environment_reads_back_its_ports_and_runs_tools_as_data(fake_docker):
    async def main():
        box = DockerSandbox(disk_scale=1e-3)
        ready = asyncio.get_running_loop().create_future()
        spec = EnvSpec(prep_s=0.0, disk_bytes=2 * GB, ports=2)
        box.prepare(
            "env-1", spec, 0.0, ready.set_result, lambda why: ready.set_exception(RuntimeError(why))
        )
        handle = await asyncio.wait_for(ready, GUARD_S)
        await box.run_tool(handle, "bash; rm -rf /", 0.01)
        box.teardown(handle)
        return handle, box

    handle, box = asyncio.run(main())
    assert handle.ports == [45001, 45002]
    (run,) = fake_docker("run")
    assert "--pull never" in run and "127.0.0.1::8000" in run and "127.0.0.1::8001" in run
    execs = fake_docker("exec")
    assert any(str(2 * GB // 1000) in e for e in execs)  # the scaled disk, written in it
    assert any("THUNDERSIM_TOOL=bash; rm -rf /" in e for e in execs)  # one argument, data
    assert fake_docker("rm") == [f"rm -f {handle.name}"]
    assert box.live == {}


def test_selecting_the_docker_sandbox_warns_once_that_it_is_experimental(fake_docker, caplog):
    with caplog.at_level("WARNING", logger=sandbox_module.__name__):
        DockerSandbox()
        DockerSandbox()
    warnings = [r for r in caplog.records if "experimental" in r.getMessage()]
    assert len(warnings) == 1


def test_a_missing_docker_command_fails_at_once_saying_it_is_experimental(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no docker on it
    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match="no docker command on PATH.*experimental"):
        DockerSandbox()
    assert time.monotonic() - t0 < 5
