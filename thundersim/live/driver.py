"""Live mode: replay a trace in real time through the same Cluster and policy objects, against
real engines (any Backend whose calls complete on the asyncio loop, e.g. VLLMBackend).

The only differences from simulation are the clock (the event loop's) and the backends: the
program lifecycle is the one simulation runs (thundersim.core.lifecycle), its waits are real
(`asyncio.sleep`, compressed by the trace's time scale, or a tool run in the program's
sandbox). Writes the same tables and summary as a simulated run, plus `steps.jsonl` in the
per-step live-log format that `thundersim trace convert --format thundersim-live` reads back.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from thundersim.core.cluster import Cluster
from thundersim.core.environment import EnvProvider
from thundersim.core.envs import EnvLimits, EnvManager, EnvStopped
from thundersim.core.lifecycle import (
    Delay,
    ProgramFeed,
    ProgramQueue,
    Spawn,
    Tool,
    Until,
    Waits,
    periodic,
)
from thundersim.core.policy import Policy
from thundersim.core.program import Program
from thundersim.metrics.recorder import Recorder
from thundersim.metrics.results import RunResult, result_of
from thundersim.metrics.window import check_window
from thundersim.traces.schema import ProgramSpec


class LoopClock:
    """The Cluster's Clock on an asyncio event loop; time 0 is the start of the run."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.t0 = loop.time()

    @property
    def now(self) -> float:
        return self.loop.time() - self.t0

    def new_event(self) -> asyncio.Future:
        return self.loop.create_future()

    def fire(self, event: asyncio.Future, value) -> None:
        if not event.done():
            event.set_result(value)

    def fail(self, event: asyncio.Future, error: BaseException) -> None:
        if not event.done():
            event.set_exception(error)

    def call_later(self, delay: float, callback: Callable[[], None]) -> None:
        self.loop.call_later(max(delay, 0.0), callback)


class ToolRunner(Protocol):
    """What runs a program's tool call for real: a sandbox provider that can (LocalSandbox,
    DockerSandbox in thundersim.engine_adapters.sandbox)."""

    async def run_tool(self, handle: Any, tool: str, seconds: float) -> None:
        """Run the tool in the environment `handle` for about `seconds`."""


class LiveSandbox(EnvProvider, ToolRunner, Protocol):
    """A real tool-environment provider: makes and removes environments, and runs tools in
    them."""


class LiveDriver:
    """Runs lifecycles (thundersim.core.lifecycle) on the event loop: events are futures,
    preparation and ticks real (scaled) sleeps, and tool calls run in the program's sandbox
    when there is a tool runner and the program has an environment (else they are sleeps)."""

    def __init__(self, tools: ToolRunner | None = None):
        self.tools = tools

    async def run(self, feed: ProgramFeed) -> None:
        """The feed's programs, with the policy's tick alongside, until every program is done."""
        ticker = feed.ticker()
        ticking = asyncio.create_task(self.drive(ticker)) if ticker is not None else None
        try:
            await asyncio.gather(*(self.drive(feeder) for feeder in feed.feeders()))
        finally:
            if ticking:
                ticking.cancel()

    async def drive(self, waits: Waits) -> None:
        """One lifecycle; what it spawns runs alongside and is waited for at its end."""
        spawned = []
        for wait in waits:
            if isinstance(wait, Until):
                await wait.event
            elif isinstance(wait, Delay):
                await asyncio.sleep(wait.seconds)
            elif isinstance(wait, Tool):
                if self.tools is not None and wait.sandbox is not None:
                    await self.tools.run_tool(wait.sandbox, wait.tool, wait.seconds)
                else:
                    await asyncio.sleep(wait.seconds)
            elif isinstance(wait, Spawn):
                spawned.append(asyncio.create_task(self.drive(wait.waits)))
            else:
                raise TypeError(f"not a wait: {wait!r}")
        await asyncio.gather(*spawned)


@dataclass
class _LiveRun:
    """The parts of one live run, wired at construction."""

    cluster: Cluster
    recorder: Recorder
    feed: ProgramFeed
    envs: EnvManager | None
    stopped: str | None = None  # why the tool manager stopped the run (summary `stopped`)


def _build(
    specs: Sequence[ProgramSpec],
    policy: Policy,
    backends: list,
    concurrency: int | None,
    sample_dt: float,
    progress: Callable[[int, float], None] | None,
    sandbox: LiveSandbox | None,
    tool_manager: str,
    env_limits: EnvLimits | None,
    recycle: bool,
) -> _LiveRun:
    recorder = Recorder(backends, sample_dt)
    cluster = Cluster(LoopClock(asyncio.get_running_loop()), backends, policy, observer=recorder)
    queue = ProgramQueue([Program(spec, i) for i, spec in enumerate(specs)], recycle)
    envs = None
    if sandbox is not None:
        upcoming = queue.upcoming if concurrency is not None else None
        envs = EnvManager(cluster.clock, sandbox, tool_manager, env_limits, upcoming=upcoming)
    feed = ProgramFeed(cluster, queue, concurrency, progress, envs)
    return _LiveRun(cluster, recorder, feed, envs)


async def _run_to_end(run: _LiveRun, driver: LiveDriver, horizon_s: float | None) -> bool:
    """Run the feed to its end or the horizon, sampling as it goes; True if it was cut short
    (Ctrl-C, or the tool manager could not go on: a limit, an environment that could not be
    prepared; its reason goes to `run.stopped`). The environments are removed however it
    ends."""
    cluster, recorder = run.cluster, run.recorder

    def sample() -> None:
        recorder.sample(cluster.now, cluster.withheld)

    sampling = asyncio.create_task(
        driver.drive(periodic(recorder.sample_dt, sample, at_start=True))
    )
    try:
        if horizon_s is None:
            await driver.run(run.feed)
        else:
            await asyncio.wait_for(driver.run(run.feed), horizon_s - cluster.now)
    except TimeoutError:
        pass  # the horizon: the run ends here by design
    except (asyncio.CancelledError, KeyboardInterrupt):
        return True
    except EnvStopped as exc:
        run.stopped = str(exc)
        return True
    finally:
        sampling.cancel()
        if run.envs is not None:
            run.envs.mark_end()
            run.envs.close()
    return False


async def _final_refresh(backends: list) -> None:
    """Final counters for the summary."""
    for b in backends:
        if b.alive:
            try:
                await b.refresh()
            except Exception:  # noqa: BLE001 - a replica that died at the end keeps its last
                b.alive = False


async def run_live(
    specs: Sequence[ProgramSpec],
    policy: Policy,
    backends: list,
    concurrency: int | None,
    trace_name: str = "",
    seed: int = 0,
    sample_dt: float = 0.5,
    progress: Callable[[int, float], None] | None = None,
    sandbox: LiveSandbox | None = None,
    tool_manager: str = "gc+prefetch",
    env_limits: EnvLimits | None = None,
    horizon_s: float | None = None,
    warmup_s: float | None = None,
) -> RunResult:
    """Run the (already scaled) trace live. The backends must be connected. Ctrl-C (task
    cancellation) stops the run and keeps what finished. With a `sandbox` (such as
    thundersim.engine_adapters.sandbox.LocalSandbox) every program's environment is real and
    managed by the tool resource manager, and its tool calls run in it; everything it made is
    removed when the run ends, however it ends. With `horizon_s` the run is a horizon run
    (thundersim.metrics.window): a closed loop recycles the trace, and the run stops at the
    horizon, measured as simulation measures it."""
    check_window(horizon_s, warmup_s)
    wall0 = time.perf_counter()
    recycle = horizon_s is not None and concurrency is not None
    run = _build(
        specs,
        policy,
        backends,
        concurrency,
        sample_dt,
        progress,
        sandbox,
        tool_manager,
        env_limits,
        recycle,
    )
    interrupted = await _run_to_end(run, LiveDriver(tools=sandbox), horizon_s)
    await _final_refresh(backends)
    now = run.cluster.now
    end = now if horizon_s is None else min(now, horizon_s)
    run.recorder.finalize(end)
    meta = {
        "policy": policy.name,
        "trace": trace_name,
        "concurrency": concurrency,
        "replicas": len(backends),
        "seed": seed,
        "setup": "live: " + ", ".join(b.name for b in backends),
        "kv_capacity_tokens": min(b.capacity_tokens for b in backends),
        "horizon_s": horizon_s,
        "warmup_s": warmup_s,
        "tick_interval_s": policy.tick_interval,
    }
    wall = time.perf_counter() - wall0
    result = result_of(meta, end, wall, interrupted, run.feed, run.recorder, backends, run.envs)
    if run.stopped:
        result.summary["stopped"] = run.stopped
    return result


def live_records(result: RunResult, specs: Sequence[ProgramSpec]) -> list[dict]:
    """The per-step log (one record per completed step) that the thundersim-live trace
    converter reads back, so a live run can be replayed in simulation."""
    by_id = {p.id: p for p in specs}
    arrivals = dict(zip(result.programs.program, result.programs.arrival_t, strict=True))
    records = []
    for row in result.steps.itertuples():
        spec = by_id[row.program]
        records.append(
            {
                "program_id": row.program,
                "workload": spec.workload,
                "step": int(row.step),
                "prompt_tokens": int(row.prompt_tokens),
                "cached_tokens": int(row.cached_tokens),
                "output_tokens": int(row.output_tokens),
                "tool": row.tool,
                "tool_s": float(row.tool_s),
                "prefix_id": spec.prefix_id,
                "prefix_tokens": spec.prefix_tokens,
                "prep_s": float(row.prep_s),
                "disk_bytes": spec.env.disk_bytes,
                "ports": spec.env.ports,
                "arrival_s": float(arrivals[row.program]),
                "ready_t": float(row.ready_t),
                "sent_t": float(row.sent_t),
                "done_t": float(row.done_t),
            }
        )
    return records


def write_live_log(result: RunResult, specs: Sequence[ProgramSpec], path: Path) -> None:
    """`live_records` as JSON lines (`steps.jsonl` of a live run)."""
    with path.open("w") as fp:
        for record in live_records(result, specs):
            fp.write(json.dumps(record) + "\n")
