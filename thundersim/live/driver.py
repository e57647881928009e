"""Live mode: replay a trace in real time through the same Cluster and policy objects, against
real engines (any Backend whose calls complete on the asyncio loop, e.g. VLLMBackend).

The only differences from simulation are the clock (the event loop's) and the backends: tool
calls and environment preparation are real waits (`asyncio.sleep`), compressed by the trace's
time scale. Writes the same tables and summary as a simulated run, plus `steps.jsonl` in the
per-step live-log format that `thundersim trace convert --format thundersim-live` reads back.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from thundersim.core.cluster import Cluster
from thundersim.core.envs import EnvLimitReached, EnvLimits, EnvManager
from thundersim.core.lifecycle import ProgramFeed
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


class LiveDriver(ProgramFeed):
    """The same feed on asyncio: tools and preparation are real (scaled) sleeps."""

    async def run(self) -> None:
        tick = self.cluster.policy.tick_interval
        ticker = asyncio.create_task(self._ticker(tick)) if tick else None
        try:
            if self.concurrency is None:
                tasks = []
                while self.queue:
                    wait = self.queue[0].spec.arrival_s - self.cluster.now
                    if wait > 0:
                        await asyncio.sleep(wait)
                    tasks.append(asyncio.create_task(self._program(self._next())))
                await asyncio.gather(*tasks)
            else:
                slots = min(self.concurrency, len(self.queue))
                await asyncio.gather(*(self._slot() for _ in range(slots)))
        finally:
            if ticker:
                ticker.cancel()

    async def _slot(self) -> None:
        while self.queue:
            await self._program(self._next())

    async def _program(self, p: Program) -> None:
        cluster = self.cluster
        envs = self.envs
        ready = self._arrive(p)
        if ready is not None:
            await ready
        elif p.spec.env.prep_s > 0:
            await asyncio.sleep(p.spec.env.prep_s)
        p.ready_time = cluster.now
        run_tool = getattr(envs.provider, "run_tool", None) if envs is not None else None
        for step in p.spec.steps:
            await cluster.request(p)
            if step.tool_s > 0:
                if run_tool is not None and p.envs:
                    await run_tool(p.envs[0].handle, step.tool, step.tool_s)  # in its sandbox
                else:
                    await asyncio.sleep(step.tool_s)
            cluster.tool_done(p)
        self._finished(p)

    async def _ticker(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            self.cluster.tick()


async def run_live(
    specs: Sequence[ProgramSpec],
    policy: Policy,
    backends: list,
    concurrency: int | None,
    trace_name: str = "",
    seed: int = 0,
    sample_dt: float = 0.5,
    progress: Callable[[int, float], None] | None = None,
    sandbox=None,
    tool_manager: str = "gc+prefetch",
    env_limits: EnvLimits | None = None,
    horizon_s: float | None = None,
    warmup_s: float | None = None,
) -> RunResult:
    """Run the (already scaled) trace live. The backends must be connected. Ctrl-C (task
    cancellation) stops the run and keeps what finished. With a `sandbox` (an EnvProvider such
    as thundersim.engine_adapters.sandbox.LocalSandbox) every program's environment is real and managed
    by the tool resource manager; everything it made is removed when the run ends, however it
    ends. With `horizon_s` the run is a horizon run (thundersim.metrics.window): a closed loop recycles
    the trace, and the run stops at the horizon, measured as simulation measures it."""
    check_window(horizon_s, warmup_s)
    wall0 = time.perf_counter()
    loop = asyncio.get_running_loop()
    programs = [Program(spec, i) for i, spec in enumerate(specs)]
    cluster = Cluster(LoopClock(loop), backends, policy)
    recorder = Recorder(cluster.programs, backends, sample_dt)
    recorder.held = lambda: cluster.held
    cluster.observer = recorder
    for b in backends:
        b.on_failure = lambda req, exc: cluster.call_failed(req.program_id)
    envs = None
    if sandbox is not None:
        envs = EnvManager(cluster.clock, sandbox, tool_manager, env_limits)
    driver = LiveDriver(
        cluster,
        programs,
        concurrency,
        on_progress=lambda: progress(driver.completed, cluster.now) if progress else None,
        envs=envs,
        recycle=horizon_s is not None and concurrency is not None,
    )
    if envs is not None and concurrency is not None:
        envs.upcoming = driver.upcoming

    async def sampler() -> None:
        while True:
            recorder.sample(cluster.now)
            await asyncio.sleep(sample_dt)

    sampling = asyncio.create_task(sampler())
    interrupted = False
    try:
        if horizon_s is None:
            await driver.run()
        else:
            await asyncio.wait_for(driver.run(), horizon_s - cluster.now)
    except TimeoutError:
        pass  # the horizon: the run ends here by design
    except (asyncio.CancelledError, KeyboardInterrupt, EnvLimitReached):
        interrupted = True
    finally:
        sampling.cancel()
        if envs is not None:
            envs.mark_end()
            envs.close()
    for b in backends:
        if b.alive:
            try:
                await b.refresh()  # final counters for the summary
            except Exception:  # noqa: BLE001 - a replica that died at the end keeps its last
                b.alive = False
    end = cluster.now if horizon_s is None else min(cluster.now, horizon_s)
    recorder.finalize(end)
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
    return result_of(meta, end, wall, interrupted, driver, recorder, backends, envs)


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
