"""One simulated run: build replicas, cluster, driver and recorder; run; summarise.

The policy comes in as an object (the core never imports policies/); the CLI and tests resolve
names through thundersim.policies.registry.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import simpy

from thundersim.core.backend import EngineStats
from thundersim.core.cluster import Cluster
from thundersim.core.envs import MODES, EnvLimits, EnvManager, EnvStopped
from thundersim.core.lifecycle import ProgramFeed, ProgramQueue, periodic
from thundersim.core.policy import Policy, PolicyOptions, parse_params
from thundersim.core.program import Program, Status
from thundersim.metrics.recorder import Recorder
from thundersim.metrics.results import RunResult, result_of
from thundersim.metrics.window import check_window
from thundersim.sim.catalog import Setup, make_setup
from thundersim.sim.driver import Driver, SimClock
from thundersim.sim.engine import DEFAULT_BLOCK_SIZE, SimBackend, vllm_default_budget
from thundersim.sim.latency import LatencyProfile, StepTimeModel
from thundersim.sim.latency_measured import STEP_TIME_CHOICES, StepTimeChoice, select_step_time
from thundersim.sim.sandbox import SimSandbox
from thundersim.traces.schema import ProgramSpec

# Simulated seconds between progress updates / interrupt and deadlock checks.
_CHUNK_S = 30.0
# Chunks a run may sit with every unfinished program withheld and every engine idle before it is
# declared deadlocked (only a policy that never restores anyone can get there).
_STALL_CHUNKS = 4


def _deadlocked(cluster: Cluster, stats: list[EngineStats]) -> bool:
    """Nothing can move on its own: every unfinished program holds a ready call the policy
    withholds and no engine has work, or an engine has queued calls and runs none (a request
    blocked forever, e.g. by KV that never gets released)."""
    if not cluster.unfinished:
        return False
    if any(s.waiting and not s.running for s in stats):
        return True
    if any(s.running or s.waiting for s in stats):
        return False
    return all(p.pending and p.status is not Status.ACTIVE for p in cluster.unfinished.values())


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines a simulated run besides the trace and the policy."""

    setup: Setup = field(default_factory=make_setup)
    replicas: int = 1
    concurrency: int | None = 96  # None: open loop, programs arrive at their trace times
    # A horizon run (thundersim.metrics.window): stop at horizon_s and measure steady throughput over
    # [warmup_s, horizon_s]; a closed loop then recycles the trace so it never drains. None: run
    # the trace to its end and measure the whole run.
    horizon_s: float | None = None
    warmup_s: float | None = None  # None with a horizon: window.default_warmup(horizon_s)
    seed: int = 0
    block_size: int = DEFAULT_BLOCK_SIZE
    # The engine's scheduler budget. None: what vLLM's OpenAI server picks for the setup's GPU
    # (sim.engine.vllm_default_budget: 8192 / 1024 on H100 and H200, 2048 / 256 on A100 and
    # RTX 5090), filled in at construction, so a built config always holds the numbers it runs.
    max_batched_tokens: int | None = None
    max_num_seqs: int | None = None
    sample_dt: float = 1.0  # seconds between memory / STP samples
    latency_profile: LatencyProfile | None = None  # a calibrated profile: wins over step_time
    # Step-time backend (thundersim.sim.latency_measured.select_step_time): auto (the setup's
    # default: measured where aiconfigurator-core models it, else the roofline) | measured |
    # roofline. A measured backend that cannot be built falls back to the roofline, and the
    # summary's step_time says so.
    step_time: str = "auto"
    # The tool resource manager (thundersim.core.envs): none | gc | gc+prefetch; None = no manager
    # (each program just waits its trace prep_s, nothing is accounted).
    tool_manager: str | None = "gc+prefetch"
    env_disk_limit: int | None = None  # bytes of sandbox disk (None: unlimited)
    env_port_limit: int | None = None
    skip_ahead: bool = True  # False: every engine iteration one by one (reference mode)
    check_invariants: bool = False  # verify KV block invariants after every engine step

    def __post_init__(self) -> None:
        if self.replicas < 1:
            raise ValueError(f"replicas must be >= 1, got {self.replicas}")
        if self.concurrency is not None and self.concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {self.concurrency}")
        check_window(self.horizon_s, self.warmup_s)
        tokens, seqs = vllm_default_budget(self.setup.gpu)
        if self.max_batched_tokens is None:
            object.__setattr__(self, "max_batched_tokens", tokens)
        if self.max_num_seqs is None:
            object.__setattr__(self, "max_num_seqs", seqs)
        if self.block_size < 1 or self.max_batched_tokens < 1 or self.max_num_seqs < 1:
            raise ValueError("block size, token budget and max seqs must be >= 1")
        if self.step_time not in STEP_TIME_CHOICES:
            raise ValueError(
                f"unknown step-time backend {self.step_time!r}; valid: "
                f"{', '.join(STEP_TIME_CHOICES)}"
            )
        if self.tool_manager is not None and self.tool_manager not in MODES:
            raise ValueError(
                f"unknown tool manager {self.tool_manager!r}; valid: {', '.join(MODES)}"
            )


def build_run(
    *,
    router: str,
    params: list[str] | None,
    dt: float,
    decay: str,
    seed: int,
    gpu: str,
    model: str,
    tp: int,
    weight_dtype: str,
    kv_dtype: str,
    kv_tokens: int,
    latency_profile: Path | None,
    **config,
) -> tuple[PolicyOptions, RunConfig]:
    """Policy options and run config from plain values, as the CLI and sweep specs give them
    (ValueError on anything invalid). A max_batched_tokens / max_num_seqs that is absent or None
    is vLLM's default for the GPU (RunConfig)."""
    options = PolicyOptions(
        tick_interval=dt, decay=decay, seed=seed, router=router, params=parse_params(params or [])
    )
    setup = make_setup(
        gpu,
        model,
        tp,
        weight_dtype,
        kv_dtype,
        kv_capacity_override=None if kv_tokens == 0 else kv_tokens,
    )
    profile = LatencyProfile.load(latency_profile) if latency_profile else None
    return options, RunConfig(setup=setup, seed=seed, latency_profile=profile, **config)


def usable_kv_tokens(config: RunConfig) -> int:
    """KV tokens a replica's requests can hold: the setup's pool in whole blocks
    (num_gpu_blocks), less vLLM's null block."""
    return (config.setup.kv_capacity_tokens // config.block_size - 1) * config.block_size


def check_fits(programs: Sequence[ProgramSpec], config: RunConfig) -> None:
    """Refuse a trace whose calls could never run on this setup (vLLM rejects them too), before
    anything runs. The engine holds whole blocks, so its capacity is rounded down to them."""
    limit = min(usable_kv_tokens(config), config.setup.model.max_context)
    for p in programs:
        if p.peak_context > limit:
            raise ValueError(
                f"program {p.id}: its context reaches {p.peak_context} tokens, above what one "
                f"replica can hold ({limit} = min(KV capacity in whole blocks, max model length))"
            )


def step_time_of(config: RunConfig) -> StepTimeChoice:
    """The run's step-time model: a calibrated profile, else config.step_time."""
    return select_step_time(config.setup, config.latency_profile, config.step_time)


def _replicas(
    env: simpy.Environment, config: RunConfig, latency: StepTimeModel
) -> list[SimBackend]:
    setup = config.setup
    return [
        SimBackend(
            env,
            i,
            setup.kv_capacity_tokens,
            latency,
            block_size=config.block_size,
            max_batched_tokens=config.max_batched_tokens,
            max_num_seqs=config.max_num_seqs,
            max_model_len=setup.model.max_context,
            skip_ahead=config.skip_ahead,
            check=config.check_invariants,
            model=setup.model.name,
        )
        for i in range(config.replicas)
    ]


def _tool_manager(
    env: simpy.Environment, config: RunConfig, queue: ProgramQueue
) -> EnvManager | None:
    """The tool resource manager (None: each program just waits its trace prep_s). A closed
    loop knows who arrives next, so it can prepare their environments ahead."""
    if config.tool_manager is None:
        return None
    return EnvManager(
        SimClock(env),
        SimSandbox(env),
        config.tool_manager,
        EnvLimits(config.env_disk_limit, config.env_port_limit),
        upcoming=queue.upcoming if config.concurrency is not None else None,
    )


def _run_until_done(
    env: simpy.Environment,
    feed: ProgramFeed,
    backends: list[SimBackend],
    horizon: float,
    policy_name: str,
) -> None:
    """Run in chunks until the feed is done or the horizon is reached; refuse a deadlock."""
    cluster = feed.cluster
    stalled = 0
    last_iterations = -1
    while not feed.done and env.now < horizon:
        env.run(until=min(env.now + _CHUNK_S, horizon))
        stats = [b.stats() for b in backends]
        iterations = sum(s.extra["iterations"] for s in stats)
        stuck = _deadlocked(cluster, stats) and iterations == last_iterations
        stalled = stalled + 1 if stuck else 0
        last_iterations = iterations
        if stalled >= _STALL_CHUNKS:
            raise RuntimeError(
                f"policy {policy_name!r} deadlocked at t={env.now:.0f}s: "
                f"{len(cluster.unfinished)} programs unfinished, no engine has run an iteration "
                f"for {_STALL_CHUNKS * _CHUNK_S:.0f} s while calls wait"
            )


def _meta(policy: Policy, config: RunConfig, trace_name: str, step_time: StepTimeChoice) -> dict:
    return {
        "policy": policy.name,
        "trace": trace_name,
        "concurrency": config.concurrency,
        "replicas": config.replicas,
        "seed": config.seed,
        "setup": config.setup.name,
        "kv_capacity_tokens": usable_kv_tokens(config),  # what the engines report
        "horizon_s": config.horizon_s,
        "warmup_s": config.warmup_s,
        "tick_interval_s": policy.tick_interval,
        "step_time": step_time.record(),  # which step-time backend ran, its source and why
    }


def simulate(
    specs: Sequence[ProgramSpec],
    policy: Policy,
    config: RunConfig,
    trace_name: str = "",
    progress: Callable[[int, float], None] | None = None,
) -> RunResult:
    """Run the trace under the policy. Ctrl-C stops the run and returns what it finished,
    with `interrupted: true` in the summary."""
    wall0 = time.perf_counter()
    check_fits(specs, config)
    env = simpy.Environment()
    step_time = step_time_of(config)
    backends = _replicas(env, config, step_time.model)
    recorder = Recorder(backends, config.sample_dt)
    cluster = Cluster(SimClock(env), backends, policy, observer=recorder)
    recycle = config.horizon_s is not None and config.concurrency is not None
    queue = ProgramQueue([Program(spec, i) for i, spec in enumerate(specs)], recycle)
    envs = _tool_manager(env, config, queue)
    feed = ProgramFeed(cluster, queue, config.concurrency, progress, envs)
    driver = Driver(env)
    driver.start(feed)
    driver.process(
        periodic(
            config.sample_dt, lambda: recorder.sample(env.now, cluster.withheld), at_start=True
        )
    )
    interrupted = False
    stopped = None
    horizon = config.horizon_s if config.horizon_s is not None else float("inf")
    try:
        _run_until_done(env, feed, backends, horizon, policy.name)
    except KeyboardInterrupt:
        interrupted = True
    except EnvStopped as exc:
        interrupted = True
        stopped = str(exc)
    # The run ends with its last program, not at the end of the chunk the loop ran to.
    end = feed.last_finish if feed.done and feed.last_finish is not None else env.now
    recorder.finalize(end)
    if envs is not None:
        envs.mark_end()
        envs.close()
    wall = time.perf_counter() - wall0
    meta = _meta(policy, config, trace_name, step_time)
    result = result_of(meta, end, wall, interrupted, feed, recorder, backends, envs)
    if stopped:
        result.summary["stopped"] = stopped
    if envs is not None and isinstance(envs.provider, SimSandbox):
        # how many preparations the run asked beyond Fig 2c's fitted range (thundersim.sim.sandbox)
        result.summary["env"].update(envs.provider.fit_report())
    return result
