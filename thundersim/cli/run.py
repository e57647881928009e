"""`thundersim run`: one run of a trace under a policy, simulated or live."""

from __future__ import annotations

import contextlib
import json
import signal
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import typer

from thundersim.cli.app import (
    DECAY_OPT,
    DT_OPT,
    GPU_OPT,
    HORIZON_OPT,
    JSON_OPT,
    KV_TOKENS_OPT,
    KVDTYPE_OPT,
    MODEL_OPT,
    PARAM_OPT,
    PROFILE_OPT,
    REPLICAS_OPT,
    RUN_ENGINE_OPT,
    SEED_OPT,
    SIM_ENGINE,
    STEP_TIME_OPT,
    TP_OPT,
    TRACE_OPT,
    WARMUP_OPT,
    WDTYPE_OPT,
    app,
    fail,
    run_fast,
    urls_of,
    warmup_or_default,
)

# What a command runs is imported inside it (start-up: see thundersim.cli.app).


@app.command()
def run(
    policy: str = typer.Option("stp", help="Scheduling policy (see `thundersim policies`)."),
    trace: Path = TRACE_OPT,
    concurrency: int = typer.Option(
        96, help="Programs in the system at once (closed loop); 0 = arrive at trace times."
    ),
    replicas: int = REPLICAS_OPT,
    router: str = typer.Option(
        "least_loaded", help="Router for request-level placement (see `thundersim policies`)."
    ),
    param: list[str] | None = PARAM_OPT,
    gpu: str = GPU_OPT,
    model: str = MODEL_OPT,
    tp: int = TP_OPT,
    weight_dtype: str = WDTYPE_OPT,
    kv_dtype: str = KVDTYPE_OPT,
    kv_tokens: int = KV_TOKENS_OPT,
    horizon: float = HORIZON_OPT,
    warmup: float = WARMUP_OPT,
    seed: int = SEED_OPT,
    dt: float = DT_OPT,
    decay: str = DECAY_OPT,
    block_size: int = typer.Option(16, help="KV block size in tokens (vLLM's GPU default 16)."),
    max_batched_tokens: int | None = typer.Option(
        None,
        help="Per-iteration token budget (default: vLLM's OpenAI-server default for the GPU: "
        "8192 on H100/H200, 2048 on A100/RTX 5090, 16384 from 160 GiB).",
    ),
    max_num_seqs: int | None = typer.Option(
        None,
        help="Max running requests per replica (default: vLLM's for the GPU: 1024 on "
        "H100/H200, 256 on A100/RTX 5090).",
    ),
    sample_dt: float = typer.Option(1.0, help="Seconds between memory / cost samples."),
    latency_profile: Path | None = PROFILE_OPT,
    step_time: str = STEP_TIME_OPT,
    out: Path | None = typer.Option(
        None, help="Write steps/programs/memory Parquet + summary.json here."
    ),
    as_json: bool = JSON_OPT,
    progress: bool = typer.Option(True, help="Show a progress bar on stderr."),
    engine: str = RUN_ENGINE_OPT,
    backends: str = typer.Option("", help="A live --engine: comma-separated server URLs."),
    time_scale: float = typer.Option(1.0, help="Live: multiply tool/prep/arrival times by this."),
    token_scale: float = typer.Option(1.0, help="Live: multiply every token count by this."),
    tool_manager: str = typer.Option(
        "gc+prefetch",
        help="Tool environments: none (kept until the end), gc (removed when their program "
        "ends), gc+prefetch (also prepared ahead for the next programs).",
    ),
    env_disk_gb: float = typer.Option(0.0, help="Sandbox disk limit in GB (0 = unlimited)."),
    env_ports: int = typer.Option(0, help="Sandbox port limit (0 = unlimited)."),
    sandbox: str = typer.Option(
        "local",
        help="Live: where environments are made: local (directories, ports, processes) or docker.",
    ),
    sandbox_root: Path | None = typer.Option(
        None, help="Live: folder for local sandboxes (default: a temporary one)."
    ),
    disk_scale: float = typer.Option(
        1e-4, help="Live: bytes written per byte of a sandbox's trace disk size."
    ),
) -> None:
    """Simulate a trace under a policy (or run it live on real engines) and summarise
    throughput, hit rate and STP cost."""
    from thundersim.lab.data import find
    from thundersim.metrics.results import check_replaceable, replacing_folder
    from thundersim.policies import registry
    from thundersim.sim.simulate import build_run
    from thundersim.traces.loader import load_trace, scale_trace
    from thundersim.traces.schema import TraceError

    try:
        options, config = build_run(
            router=router,
            params=param,
            dt=dt,
            decay=decay,
            seed=seed,
            gpu=gpu,
            model=model,
            tp=tp,
            weight_dtype=weight_dtype,
            kv_dtype=kv_dtype,
            kv_tokens=kv_tokens,
            latency_profile=latency_profile,
            step_time=step_time,
            replicas=replicas,
            concurrency=concurrency or None,
            horizon_s=horizon or None,
            warmup_s=warmup_or_default(horizon, warmup),
            block_size=block_size,
            max_batched_tokens=max_batched_tokens,
            max_num_seqs=max_num_seqs,
            sample_dt=sample_dt,
            tool_manager=tool_manager,
            env_disk_limit=int(env_disk_gb * 1e9) or None,
            env_port_limit=env_ports or None,
        )
        pol = registry.make_policy(policy, options)
        specs = load_trace(find(trace, "trace"))
        if out is not None:
            check_replaceable(out)  # before the run, not after it
    except (ValueError, TraceError) as exc:
        fail(str(exc))
    live = None
    stopped: tuple[type[BaseException], ...] = (KeyboardInterrupt,)
    if engine != SIM_ENGINE:
        import asyncio  # a live run's task is cancelled; a simulated run never loads asyncio

        stopped += (asyncio.CancelledError,)
        live = LiveArgs(engine, backends, sandbox, sandbox_root, disk_scale)
        specs = scale_trace(specs, token_scale, time_scale)
    with Stops(live is not None) as stops:
        try:
            result = _execute(
                specs, pol, config, str(trace), live, f"{policy} c={concurrency}", progress, stops
            )
        except stopped:  # stopped before it had a result
            raise typer.Exit(stops.exit_code or 130) from None
        stops.finishing()  # from here a signal waits until the output is whole
        if out is not None:
            try:
                with replacing_folder(out) as tmp:
                    result.write_into(tmp)
                    if live is not None:
                        from thundersim.live.driver import write_live_log

                        write_live_log(result, specs, tmp / "steps.jsonl")
            except (OSError, ValueError) as exc:
                fail(f"cannot write {out}: {exc}")
        s = result.summary
        if as_json:
            typer.echo(json.dumps(s))
        else:
            _print_summary(s, out)
    if stops.exit_code is not None:
        raise typer.Exit(stops.exit_code)
    if s["interrupted"]:
        raise typer.Exit(130)


class Stops:
    """SIGINT, SIGTERM and SIGHUP all mean "stop": the run ends, what it finished is written
    with `interrupted: true`, and the command exits 128 + the first signal's number (130 for
    Ctrl-C, 143 for SIGTERM, 129 for SIGHUP: the shell's convention, so a caller can tell
    which signal stopped it).

    Only the first signal interrupts, and only inside the simulation loop (one that lands
    just before it takes effect at the next program that finishes). One that lands after
    the loop (while the run's result is assembled or its folder written), and every later
    one, is noted and waits: a second Ctrl-C cannot cut the output short.

    A live run (`live`) is stopped by cancelling its task (`attach` names it): the first
    signal cancels it while it connects (nothing to keep yet) or while the trace is driven
    (thundersim.live.driver's `_run_to_end`, which returns what finished); once the driving is
    over (final counters, the result assembled, the backends closed) it is only noted, and so
    is every later one. Before the run's loop begins a signal ends the command at once.

    A sweep (`anywhere_but`: the frames of its end) is stopped by its first signal wherever
    it is (as Ctrl-C stops it: KeyboardInterrupt, the pool kills its workers and returns what
    finished), except inside those frames, where it waits."""

    SIGNALS = tuple(
        getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)
    )

    @property
    def _LOOP(self) -> tuple:  # noqa: N802 -- where a simulated run may be interrupted
        from thundersim.sim.simulate import _run_until_done

        return (_run_until_done.__code__,)

    @property
    def _DRIVING(self):  # noqa: N802 -- where a live run may be cancelled and keep its result
        from thundersim.live.driver import _run_to_end

        return _run_to_end.__code__

    def __init__(self, live: bool = False, anywhere_but: tuple | None = None) -> None:
        self.live = live
        self.anywhere_but = anywhere_but
        self.first: int | None = None  # the first signal's number
        self.interrupted = False  # the run was told to stop
        self.done = False  # the run is over: signals wait
        self._saved: dict[int, object] = {}
        self._task = None  # a live run's asyncio.Task
        self._loop = None  # its asyncio event loop
        self._running = False  # a live run has connected: only its driving may be cancelled

    @property
    def exit_code(self) -> int | None:
        return None if self.first is None else 128 + self.first

    def __enter__(self) -> Stops:
        if threading.current_thread() is not threading.main_thread():
            return self  # signals reach the main thread only (a CLI invoked from a thread)
        for sig in self.SIGNALS:
            if signal.getsignal(sig) is signal.SIG_IGN:
                continue  # ignored on purpose (nohup; a shell's background job): kept so
            # a live run's asyncio Runner leaves a SIGINT handler that is not the default alone
            self._saved[sig] = signal.signal(sig, self._on_signal)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._saved.items():
            signal.signal(sig, handler)

    def finishing(self) -> None:
        """The run is over: signals from now on wait until the output is written."""
        self.done = True

    def check(self) -> None:
        """Inside the run (its progress callback): stop now if a signal asked to."""
        if self.first is not None and not self.interrupted and not self.done and not self.live:
            self.interrupted = True
            raise KeyboardInterrupt

    def attach(self) -> None:
        """Inside a live run's task, before it connects: signals from now on cancel it."""
        import asyncio

        self._loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()

    def running(self) -> None:
        """The live run has connected and starts driving the trace."""
        self._running = True

    def _on_signal(self, signum: int, frame) -> None:
        if self.first is None:
            self.first = signum
        if self.done or self.interrupted:
            return
        self.interrupted = True
        if self.live:
            task = self._task
            if task is None:  # the run's loop has not begun: nothing to keep
                raise KeyboardInterrupt
            if not task.done():
                with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                    self._loop.call_soon_threadsafe(self._cancel)
            return
        if self.anywhere_but is not None:
            if _in_frames(frame, self.anywhere_but):
                return  # ending: it waits, and the command exits with its code
            raise KeyboardInterrupt
        if _in_frames(frame, self._LOOP):
            raise KeyboardInterrupt
        self.interrupted = False
        # not in the loop (before it, or after it): `check` stops the run at the next
        # program that finishes; after the loop nothing calls it and the output is written

    def _cancel(self) -> None:
        """On the loop, between steps of the live run's task: cancel it if it is connecting
        or driving the trace, not once its result is being made."""
        task = self._task
        if task.done():
            return
        if not self._running or _awaits(task.get_coro(), self._DRIVING):
            task.cancel()


def _awaits(coro, code) -> bool:
    """Whether a suspended coroutine is, through the chain of what it awaits, inside `code`."""
    while coro is not None:
        if getattr(coro, "cr_code", None) is code:
            return True
        coro = getattr(coro, "cr_await", None)
    return False


def _in_frames(frame, codes: tuple) -> bool:
    while frame is not None:
        if frame.f_code in codes:
            return True
        frame = frame.f_back
    return False


@dataclass(frozen=True, slots=True)
class LiveArgs:
    """What a live run needs beyond the run's config: the engine by name (its registry entry
    builds a backend per URL), the URLs, and where tool environments are made."""

    engine: str
    backends: str  # comma-separated server URLs
    sandbox: str
    sandbox_root: Path | None
    disk_scale: float


def _execute(
    specs,
    pol,
    config,
    trace: str,
    live: LiveArgs | None,
    desc: str,
    progress: bool,
    stops: Stops | None = None,
):
    """Run simulated (live is None) or live, with a progress bar on stderr; a run that cannot
    start or fails ends the command with its reason."""
    from tqdm import tqdm

    # A horizon run has no last program: its progress is simulated time.
    by_time = config.horizon_s is not None
    bar = tqdm(
        total=int(config.horizon_s) if by_time else len(specs),
        unit="sim-s" if by_time else "prog",
        desc=desc,
        disable=not progress,
        file=sys.stderr,
        leave=False,
    )

    def tick(done: int, now: float) -> None:
        if stops is not None:
            stops.check()
        bar.set_postfix_str(
            f"{done} programs done" if by_time else f"sim {now:,.0f}s", refresh=False
        )
        bar.update((int(now) if by_time else done) - bar.n)  # tqdm rate-limits the redraws

    try:
        if live is None:
            from thundersim.sim.simulate import simulate

            return simulate(specs, pol, config, trace_name=trace, progress=tick)
        return run_fast(_run_live(specs, pol, config, trace, live, tick, stops))
    except (ValueError, RuntimeError) as exc:
        bar.close()  # before the message, so the bar's line is cleared, not the message
        fail(str(exc))
    finally:
        bar.close()


def _make_sandbox(kind: str, root: Path | None, disk_scale: float, stack: contextlib.ExitStack):
    """The live EnvProvider: local directories/ports/processes, or Docker containers."""
    from thundersim.engine_adapters.sandbox import DockerSandbox, LocalSandbox

    if kind == "local":
        if root is None:
            root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="thundersim-")))
        return LocalSandbox(root, disk_scale)
    if kind == "docker":
        return DockerSandbox()  # says why when no engine is reachable
    raise ValueError(f"unknown sandbox {kind!r}; valid: local, docker")


def _check_fits(specs, backends) -> None:
    fits = min(b.capacity_tokens for b in backends)
    for p in specs:
        if p.peak_context > fits:
            raise ValueError(
                f"program {p.id}: its context reaches {p.peak_context} tokens, above the "
                f"smallest replica's {fits}; lower --token-scale"
            )


async def _run_live(specs, pol, config, trace: str, live: LiveArgs, tick, stops=None):
    from thundersim.core.envs import EnvLimits
    from thundersim.engine_adapters.local import TINY_VOCAB
    from thundersim.engine_adapters.registry import make_backends
    from thundersim.engine_adapters.tokens import TokenBook
    from thundersim.live.driver import run_live

    if stops is not None:
        stops.attach()
    urls = urls_of(live.backends, live.engine)
    # Ids below the tiny local model's vocabulary (2,048) are valid ids of any real model too.
    backends = make_backends(live.engine, urls, TokenBook(vocab=TINY_VOCAB))
    try:
        for b in backends:
            await b.connect()
        _check_fits(specs, backends)
        with contextlib.ExitStack() as stack:
            provider = None
            if config.tool_manager is not None:
                provider = _make_sandbox(live.sandbox, live.sandbox_root, live.disk_scale, stack)
            if stops is not None:
                stops.running()
            return await run_live(
                specs,
                pol,
                backends,
                config.concurrency,
                trace,
                config.seed,
                config.sample_dt,
                progress=tick,
                sandbox=provider,
                tool_manager=config.tool_manager or "gc",
                env_limits=EnvLimits(config.env_disk_limit, config.env_port_limit),
                horizon_s=config.horizon_s,
                warmup_s=config.warmup_s,
            )
    finally:
        for b in backends:
            await b.close()


def _print_summary(s: dict, out: Path | None) -> None:
    from rich.console import Console
    from rich.table import Table

    from thundersim.metrics.window import describe

    console = Console()
    t = Table(title=f"{s['policy']} on {s['trace']} ({s['setup']})", show_header=False)
    t.add_column("metric", style="bold")
    t.add_column("value", justify="right")
    rows = [
        ("concurrency / replicas", f"{s['concurrency'] or 'open loop'} / {s['replicas']}"),
        (
            "simulated",
            f"{s['simulated_s']:,.0f} s in {s['wall_s']:.2f} s wall ({s['sim_speed']:,.0f}x)",
        ),
        ("programs / steps done", f"{s['programs_completed']} / {s['steps_completed']}"),
        ("throughput", f"{s['throughput_steps_per_min']:.1f} steps/min ({describe(s)})"),
        ("KV hit rate", f"{100 * s['kv_hit_rate']:.1f} %"),
        ("preemptions", f"{s['preemptions']:,}"),
        ("recomputed tokens", f"{s['recompute_tokens']:,}"),
        (
            "time to first response p50 / p99",
            f"{s['ttfr_p50_s'] or 0:.1f} / {s['ttfr_p99_s'] or 0:.1f} s",
        ),
    ]
    total = sum(s["stp_cost"].values()) + s["stp_idle"]
    for k, v in s["stp_cost"].items():
        rows.append((f"STP {k}", f"{v:.3g} tok·s ({100 * v / total if total else 0:.1f} %)"))
    rows.append(("STP idle", f"{s['stp_idle']:.3g} tok·s"))
    env = s.get("env")
    if env:
        rows.append(
            (
                f"tool envs ({env['mode']})",
                f"peak disk {env['peak_disk_bytes'] / 1e9:,.1f} GB, peak ports "
                f"{env['peak_ports']}, left by GC {env['leaked_envs']}",
            )
        )
        rows.append(
            (
                "env prep / wait (mean)",
                f"{env['mean_prep_s']:.1f} s / {env['mean_env_wait_s']:.1f} s "
                f"({env['prefetched']} prepared ahead)",
            )
        )
        if "preps_queued_beyond_fit" in env:  # simulated: Fig 2c's fit holds for 24..96 at once
            rows.append(
                (
                    "env preps beyond Fig 2c's 96",
                    f"{env['preps_queued_beyond_fit']:,} waited for a slot (mean "
                    f"{env['prep_slot_wait_s_mean']:.1f} s; peak {env['peak_preps_requested']:,} "
                    "requested at once)",
                )
            )
    for k, v in rows:
        t.add_row(k, v)
    if s.get("stopped"):
        t.add_row("[red]stopped[/red]", s["stopped"])
    elif s["interrupted"]:
        t.add_row("[red]interrupted[/red]", "partial results")
    console.print(t)
    if out is not None:
        console.print(f"tables and summary.json written to {out}/")
