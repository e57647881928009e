"""Factories shared by the tests: tiny programs, small setups, one-call simulated runs."""

from __future__ import annotations

import os
import sys

import pytest
from hypothesis import settings

from thundersim.core.policy import PolicyOptions
from thundersim.metrics.results import RunResult
from thundersim.policies import make_policy
from thundersim.sim.catalog import make_setup
from thundersim.sim.simulate import RunConfig, simulate
from thundersim.traces.schema import EnvSpec, ProgramSpec, StepSpec

# Property tests draw the same examples on every run (CI must not flake on a rare draw);
# HYPOTHESIS_PROFILE=explore searches new examples each run.
settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
settings.register_profile("explore", deadline=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items):
    """Refuse to run when `--dist loadgroup` has lost its groups. xdist groups by appending
    `@group` to each marked test's node id; some pytest versions silently undo that
    (pytest-xdist#1386), and then two real vLLM servers run side by side on 2 cores, starve each
    other, and the timing and fault tests fail for reasons that are not theirs."""
    # on a worker, xdist turns `--dist loadgroup` into this option
    if not os.environ.get("PYTEST_XDIST_WORKER") or not getattr(config.option, "loadgroup", False):
        return
    lost = [i.nodeid for i in items if i.get_closest_marker("xdist_group") and "@" not in i.nodeid]
    if lost:
        msg = (
            f"--dist loadgroup is not grouping ({len(lost)} marked tests without '@group', e.g. "
            f"{lost[0]}): this pytest breaks pytest-xdist's loadgroup; install the pinned one"
        )
        sys.stderr.write(msg + "\n")  # a worker's exception reaches the terminal only as a crash
        raise pytest.UsageError(msg)


def make_program(
    pid: str,
    steps: list[tuple[int, int, float]],
    prefix: tuple[str | None, int] = ("sys", 64),
    prep_s: float = 0.0,
    arrival_s: float = 0.0,
    workload: str = "test",
) -> ProgramSpec:
    """steps: (new input tokens, output tokens, tool seconds[, reset]) per LLM call."""
    return ProgramSpec(
        id=pid,
        workload=workload,
        arrival_s=arrival_s,
        prefix_id=prefix[0],
        prefix_tokens=prefix[1] if prefix[0] else 0,
        env=EnvSpec(prep_s=prep_s),
        steps=tuple(
            StepSpec(s[0], s[1], "bash" if s[2] > 0 else "", s[2], len(s) > 3 and bool(s[3]))
            for s in steps
        ),
    )


def run_sim(
    specs,
    policy: str = "vllm",
    concurrency: int | None = 4,
    kv_tokens: int = 20_000,
    replicas: int = 1,
    check: bool = True,
    skip_ahead: bool = True,
    seed: int = 0,
    dt: float = 5.0,
    decay: str = "pow:2",
    block_size: int = 16,
    sample_dt: float = 0.5,
    tool_manager: str | None = "gc+prefetch",
    env_disk_limit: int | None = None,
) -> RunResult:
    config = RunConfig(
        setup=make_setup(kv_capacity_override=kv_tokens),
        replicas=replicas,
        concurrency=concurrency,
        seed=seed,
        block_size=block_size,
        sample_dt=sample_dt,
        skip_ahead=skip_ahead,
        check_invariants=check,
        tool_manager=tool_manager,
        env_disk_limit=env_disk_limit,
    )
    pol = make_policy(policy, PolicyOptions(tick_interval=dt, decay=decay, seed=seed))
    return simulate(specs, pol, config, trace_name="test")


@pytest.fixture
def small_trace():
    """Twelve programs sharing a system prompt, contexts up to a few thousand tokens."""
    programs = []
    for i in range(12):
        steps = [(200 + 37 * i, 40 + i, 1.0 + (i % 3))] + [
            (80 + 13 * ((i + j) % 5), 30 + (j % 4) * 5, 0.5 + ((i * j) % 4)) for j in range(5)
        ]
        programs.append(make_program(f"p{i:02d}", steps, prefix=("sys", 300), prep_s=i % 2))
    return programs


class StubBackend:
    """A live-style backend with no engine behind it: tests give it their own `submit` (answer
    at once, or only when told). Stats are an idle pool."""

    def __init__(self, name: str = "stub", capacity_tokens: int = 1_000_000):
        from thundersim.core.backend import EngineStats

        self.index, self.name, self.alive, self.model = 0, name, True, f"{name}-model"
        self.capacity_tokens = capacity_tokens
        self._stats = EngineStats(capacity_tokens=capacity_tokens, block_size=16, used_tokens=0)

    def submit(self, req, on_done, on_failure):
        raise NotImplementedError  # each test that uses it says how its calls are answered

    def stats(self):
        return self._stats

    def pin(self, program_id, ttl_s):
        pass

    def unpin(self, program_id):
        pass

    async def connect(self):
        pass

    async def refresh(self):
        pass

    async def close(self):
        pass
