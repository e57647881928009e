"""`thundersim` command line: the composition root that knows every part.

thundersim run --policy stp --trace traces/swe.jsonl [--out DIR] [--json]
thundersim policies
thundersim trace gen --workload swe --programs 300 --seed 0 > traces/swe.jsonl
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table
from tqdm import tqdm

from thundersim.core.envs import EnvLimits
from thundersim.core.policy import PolicyOptions, parse_params
from thundersim.engine_adapters.local import TINY_VOCAB, LocalEngines
from thundersim.engine_adapters.sandbox import DockerSandbox, LocalSandbox
from thundersim.engine_adapters.vllm import TokenBook, VLLMBackend
from thundersim.lab.compare import grid, run_grid
from thundersim.live.calibrate import calibrate, validate
from thundersim.live.driver import run_live, write_live_log
from thundersim.metrics.window import describe
from thundersim.policies import registry
from thundersim.sim.catalog import GPUS, MODELS
from thundersim.sim.latency import LatencyProfile
from thundersim.sim.simulate import build_run, check_fits, simulate
from thundersim.traces import converters, workloads
from thundersim.traces.loader import dump_trace, load_trace, scale_trace
from thundersim.traces.schema import TraceError
from thundersim.traces.stats import trace_stats

app = typer.Typer(
    pretty_exceptions_enable=False,
    help="Simulator and policy lab for program-aware agentic LLM inference.",
    no_args_is_help=True,
    add_completion=False,
)
trace_app = typer.Typer(help="Make and inspect traces.", no_args_is_help=True)
app.add_typer(trace_app, name="trace")

DEFAULT_TRACE = Path("traces/swe.jsonl")


def _warmup(horizon: float, warmup: float) -> float | None:
    """The CLI's warm-up option as RunConfig takes it (None: the default for the horizon)."""
    if warmup < 0:
        return None
    if not horizon:
        raise ValueError("--warmup needs --horizon: a finite run is measured whole")
    return warmup


def _fail(message: str, code: int = 2) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


# Options shared by `run` and `compare` (typer reads them off the signatures).
TRACE_OPT = typer.Option(DEFAULT_TRACE, help="Trace file (JSONL, schema v1).")
REPLICAS_OPT = typer.Option(1, help="Engine replicas (data parallel).")
GPU_OPT = typer.Option("H100-SXM", help=f"GPU: {', '.join(GPUS)}.")
MODEL_OPT = typer.Option("GLM-4.6", help=f"Model: {', '.join(MODELS)}.")
TP_OPT = typer.Option(8, help="Tensor-parallel degree (GPUs per replica).")
WDTYPE_OPT = typer.Option("fp8", help="Weight dtype: fp8, bf16, fp16, int8, int4.")
KVDTYPE_OPT = typer.Option("fp8", help="KV cache dtype.")
KV_TOKENS_OPT = typer.Option(
    0, help="Override the KV capacity per replica in tokens (0 = from hardware x model)."
)
HORIZON_OPT = typer.Option(
    0.0,
    help="Horizon run: stop after this many simulated seconds and measure steady throughput over "
    "[warm-up, horizon]; a closed loop recycles the trace (fresh program ids) so it never drains. "
    "0 = run the trace to its end and measure the whole run.",
)
WARMUP_OPT = typer.Option(
    -1.0, help="Seconds excluded from a horizon run's window (-1 = a quarter of the horizon)."
)
SEED_OPT = typer.Option(0, help="Seed for every random stream of the run.")
DT_OPT = typer.Option(5.0, "--dt", help="Policy monitor period in seconds (the paper's Δt).")
DECAY_OPT = typer.Option("pow:2", help="Acting-program decay: none, pow:X, exp:L.")
PARAM_OPT = typer.Option(
    None, "--param", help="Policy parameter key=value (repeatable; see `thundersim policies`)."
)
PROFILE_OPT = typer.Option(None, help="Calibrated latency profile (JSON) instead of the roofline.")
JSON_OPT = typer.Option(False, "--json", help="Print JSON only on stdout.")


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
    out: Path | None = typer.Option(
        None, help="Write steps/programs/memory Parquet + summary.json here."
    ),
    as_json: bool = JSON_OPT,
    progress: bool = typer.Option(True, help="Show a progress bar on stderr."),
    engine: str = typer.Option("sim", help="sim (the simulator) or vllm (live replicas)."),
    backends: str = typer.Option("", help="--engine vllm: comma-separated server URLs."),
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
    """Simulate a trace under a policy (or run it live on vLLM) and summarise throughput, hit
    rate and STP cost."""
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
            replicas=replicas,
            concurrency=concurrency or None,
            horizon_s=horizon or None,
            warmup_s=_warmup(horizon, warmup),
            block_size=block_size,
            max_batched_tokens=max_batched_tokens,
            max_num_seqs=max_num_seqs,
            sample_dt=sample_dt,
            tool_manager=tool_manager,
            env_disk_limit=int(env_disk_gb * 1e9) or None,
            env_port_limit=env_ports or None,
        )
        pol = registry.make_policy(policy, options)
        specs = load_trace(trace)
    except (ValueError, TraceError) as exc:
        _fail(str(exc))

    # A horizon run has no last program: its progress is simulated time.
    by_time = config.horizon_s is not None
    bar = tqdm(
        total=int(config.horizon_s) if by_time else len(specs),
        unit="sim-s" if by_time else "prog",
        desc=f"{policy} c={concurrency}",
        disable=not progress,
        file=sys.stderr,
        leave=False,
    )

    def tick(done: int, now: float) -> None:
        bar.set_postfix_str(
            f"{done} programs done" if by_time else f"sim {now:,.0f}s", refresh=False
        )
        bar.update((int(now) if by_time else done) - bar.n)  # tqdm rate-limits the redraws

    try:
        if engine == "sim":
            result = simulate(specs, pol, config, trace_name=str(trace), progress=tick)
        elif engine == "vllm":
            specs = scale_trace(specs, token_scale, time_scale)
            result = _run_fast(
                _run_live(
                    specs,
                    pol,
                    backends,
                    config,
                    str(trace),
                    seed,
                    sample_dt,
                    tick,
                    sandbox,
                    sandbox_root,
                    disk_scale,
                )
            )
        else:
            raise ValueError(f"unknown engine {engine!r}; valid: sim, vllm")
    except (ValueError, RuntimeError) as exc:
        bar.close()
        _fail(str(exc))
    bar.close()
    if out is not None:
        result.write(out)
        if engine == "vllm":
            write_live_log(result, specs, out / "steps.jsonl")
    s = result.summary
    if as_json:
        typer.echo(json.dumps(s))
    else:
        _print_summary(s, out)
    if s["interrupted"]:
        raise typer.Exit(130)


def _make_sandbox(kind: str, root: Path | None, disk_scale: float, stack: contextlib.ExitStack):
    """The live EnvProvider: local directories/ports/processes, or Docker containers."""
    if kind == "local":
        if root is None:
            root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="thundersim-")))
        return LocalSandbox(root, disk_scale)
    if kind == "docker":
        return DockerSandbox()  # says why when no engine is reachable
    raise ValueError(f"unknown sandbox {kind!r}; valid: local, docker")


async def _run_live(
    specs, pol, backends, config, trace, seed, sample_dt, tick, sandbox, sandbox_root, disk_scale
):
    urls = [u.strip() for u in backends.split(",") if u.strip()]
    if not urls:
        raise ValueError("--engine vllm needs --backends URL[,URL...]")
    # Ids below the tiny local model's vocabulary (2,048) are valid ids of any real model too.
    book = TokenBook(vocab=TINY_VOCAB)
    live = [VLLMBackend(i, url, book) for i, url in enumerate(urls)]
    try:
        for b in live:
            await b.connect()
        fits = min(b.capacity_tokens for b in live)
        for p in specs:
            if p.peak_context > fits:
                raise ValueError(
                    f"program {p.id}: its context reaches {p.peak_context} tokens, above the "
                    f"smallest replica's {fits}; lower --token-scale"
                )
        with contextlib.ExitStack() as stack:
            provider = None
            if config.tool_manager is not None:
                provider = _make_sandbox(sandbox, sandbox_root, disk_scale, stack)
            return await run_live(
                specs,
                pol,
                live,
                config.concurrency,
                trace,
                seed,
                sample_dt,
                progress=tick,
                sandbox=provider,
                tool_manager=config.tool_manager or "gc",
                env_limits=EnvLimits(config.env_disk_limit, config.env_port_limit),
                horizon_s=config.horizon_s,
                warmup_s=config.warmup_s,
            )
    finally:
        for b in live:
            await b.close()


def _print_summary(s: dict, out: Path | None) -> None:
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
    for k, v in rows:
        t.add_row(k, v)
    if s.get("stopped"):
        t.add_row("[red]stopped[/red]", s["stopped"])
    elif s["interrupted"]:
        t.add_row("[red]interrupted[/red]", "partial results")
    console.print(t)
    if out is not None:
        console.print(f"tables and summary.json written to {out}/")


@app.command("catalog")
def catalog(
    provenance: bool = typer.Option(
        False,
        "--provenance",
        help="Print where every constant of the simulator comes from (spec, measured, "
        "calibrated, estimate, fitted-to-paper, definition) as a markdown table.",
    ),
) -> None:
    """List the GPUs and models the simulator knows, with their published sources."""
    if provenance:
        from thundersim.lab import provenance as prov

        typer.echo(prov.table_markdown(), nl=False)
        return
    typer.echo("GPUs:")
    for g in GPUS.values():
        typer.echo(
            f"  {g.name:10s} {g.memory_bytes / 2**30:7.1f} GiB  {g.hbm_bandwidth / 1e12:5.2f} TB/s"
            f"  {g.bf16_flops / 1e12:6.0f} BF16 TFLOPS  ({g.source})"
        )
    typer.echo("models:")
    for m in MODELS.values():
        typer.echo(
            f"  {m.name:16s} {m.n_layers:3d} layers, {m.n_kv_heads} KV heads x {m.head_dim}, "
            f"{m.total_params / 1e9:.0f}B total / {m.active_params / 1e9:.0f}B active  ({m.source})"
        )


@app.command("policies")
def list_policies() -> None:
    """List the registered policies (with their parameters) and routers."""
    for name in registry.names():
        cls = registry.REGISTRY[name]
        aliases = getattr(cls, "aliases", ())
        typer.echo(f"{name:12s} {registry.describe(cls)}")
        if aliases:
            typer.echo(f"{'':12s}   alias: {', '.join(aliases)}")
        for key, default in cls.params.items():
            typer.echo(f"{'':12s}   --param {key}={default:g}")
    typer.echo("\nrouters (--router, for request-level placement across replicas):")
    for name in registry.router_names():
        typer.echo(f"{name:12s} {registry.describe(registry.ROUTERS[name])}")


@app.command()
def compare(
    trace: Path = TRACE_OPT,
    policies: str = typer.Option("vllm,stp", help="Comma-separated policies."),
    concurrency: str = typer.Option("24,48,72,96", help="Comma-separated concurrency levels."),
    routers: str = typer.Option("least_loaded", help="Comma-separated routers."),
    replicas: int = REPLICAS_OPT,
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
    latency_profile: Path | None = PROFILE_OPT,
    workers: int = typer.Option(0, help="Parallel processes (0 = one per core)."),
    out: Path = typer.Option(
        Path("runs/compare"), help="Write compare.csv and compare.parquet here."
    ),
    as_json: bool = JSON_OPT,
    progress: bool = typer.Option(True, help="Show a progress bar on stderr."),
) -> None:
    """Run a grid of policies x concurrency x routers in parallel and print one table."""
    try:
        names = [n.strip() for n in policies.split(",") if n.strip()]
        levels = [int(c) for c in concurrency.split(",") if c.strip()]
        router_list = [r.strip() for r in routers.split(",") if r.strip()]
        if not names or not levels or not router_list or min(levels) < 0:
            raise ValueError("--policies, --concurrency and --routers need at least one value")
        options, config = build_run(
            router=router_list[0],
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
            replicas=replicas,
            horizon_s=horizon or None,
            warmup_s=_warmup(horizon, warmup),
        )
        for name in names:  # fail on a bad name or parameter before starting any process
            for r in router_list:
                registry.make_policy(name, replace(options, router=r))
        specs = load_trace(trace)
        check_fits(specs, config)
    except (ValueError, TraceError) as exc:
        _fail(str(exc))
    points = grid(names, levels, router_list)
    bar = tqdm(total=len(points), unit="run", disable=not progress, file=sys.stderr, leave=False)
    table, interrupted = run_grid(
        str(trace), points, config, options, workers or None, on_done=lambda _r: bar.update(1)
    )
    bar.close()
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "compare.csv", index=False)
    table.to_parquet(out / "compare.parquet", index=False)
    if as_json:
        typer.echo(table.to_json(orient="records"))
    else:
        _print_table(table, f"{trace} ({config.setup.name}, {replicas} replica(s))")
        typer.echo(f"written to {out}/compare.csv and compare.parquet")
    if interrupted:
        raise typer.Exit(130)


def _print_table(table, title: str) -> None:
    t = Table(title=title)
    cols = [
        ("policy", "policy", "{}"),
        ("router", "router", "{}"),
        ("N", "concurrency", "{}"),
        ("steps/min", "throughput_steps_per_min", "{:.1f}"),
        ("hit %", "kv_hit_rate", "{:.1%}"),
        ("preempt", "preemptions", "{:,}"),
        ("decode %", "stp_decode_pct", "{:.1f}"),
        ("prefill %", "stp_prefill_pct", "{:.1f}"),
        ("recomp %", "stp_recompute_pct", "{:.1f}"),
        ("caching %", "stp_caching_pct", "{:.1f}"),
        ("unused %", "stp_unused_pct", "{:.1f}"),
        ("ttfr p50", "ttfr_p50_s", "{:.1f}"),
        ("ttfr p99", "ttfr_p99_s", "{:.1f}"),
        ("imbal peak", "mem_imbalance_peak", "{:.2f}"),
        ("imbal>20%", "mem_imbalance_frac_over_20pct", "{:.0%}"),
    ]
    for head, _, _ in cols:
        t.add_column(head, justify="right")
    for r in table.to_dict("records"):
        t.add_row(*(fmt.format(r[key]) if r[key] is not None else "-" for _, key, fmt in cols))
    console = Console()
    if not console.is_terminal:
        console = Console(width=200)  # a file or pipe: don't squeeze the table into 80 columns
    console.print(t)


@trace_app.command("gen")
def trace_gen(
    workload: str = typer.Option("swe", help=f"Workload: {', '.join(workloads.GENERATORS)}."),
    programs: int = typer.Option(300, help="Number of programs."),
    seed: int = typer.Option(0, help="Random seed."),
) -> None:
    """Generate a trace (JSONL on stdout)."""
    if programs < 1:
        _fail("--programs must be >= 1")
    try:
        specs = workloads.generate(workload, programs, seed)
    except ValueError as exc:
        _fail(str(exc))
    dump_trace(specs, sys.stdout)


@trace_app.command("convert")
def trace_convert(
    inputs: list[Path] = typer.Argument(..., help="Log files to convert (one or more)."),
    fmt: str = typer.Option(
        ..., "--format", help=f"Log format: {', '.join(converters.CONVERTERS)}."
    ),
    workload: str | None = typer.Option(
        None, help="Workload name for the programs (default: the format's, or the logged one)."
    ),
    program_field: str | None = typer.Option(
        None, help="openai-chat: the record key holding the program id (default program_id)."
    ),
) -> None:
    """Convert real agent logs into a trace (JSONL, schema v1, on stdout)."""
    try:
        specs = converters.convert(fmt, inputs, workload=workload, program_field=program_field)
    except ValueError as exc:  # TraceError included
        _fail(str(exc))
    dump_trace(specs, sys.stdout)


@trace_app.command("stats")
def trace_stats_cmd(
    path: Path = typer.Argument(..., help="Trace file (JSONL, schema v1)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object keyed by quantity."),
) -> None:
    """Distributions of a trace: steps, contexts, tokens, tool seconds (by tool), environment."""
    try:
        specs = load_trace(path)
    except TraceError as exc:
        _fail(str(exc))
    stats = trace_stats(specs)
    if as_json:
        typer.echo(json.dumps(stats))
        return
    t = Table(title=f"{path}: {len(specs)} programs, {sum(len(p.steps) for p in specs)} steps")
    for head in ("quantity", "count", "mean", "p5", "p25", "p50", "p75", "p95", "p99"):
        t.add_column(head, justify="right" if head != "quantity" else "left")

    def add(name: str, d: dict) -> None:
        cells = [
            f"{d[k]:,.2f}" if d[k] is not None else "-"
            for k in ("mean", "p5", "p25", "p50", "p75", "p95", "p99")
        ]
        t.add_row(name, f"{d['count']:,}", *cells)

    for name, d in stats.items():
        if name == "tool_seconds_by_tool":
            for tool, td in d.items():
                add(f"  tool_seconds:{tool}", td)
        else:
            add(name, d)
    console = Console()
    if not console.is_terminal:
        console = Console(width=200)
    console.print(t)


@app.command("calibrate")
def calibrate_cmd(
    backends: str = typer.Option(..., help="URL of the live server to measure."),
    out: Path = typer.Option(Path("latency-profile.json"), help="Where to write the profile."),
    as_json: bool = JSON_OPT,
) -> None:
    """Measure a live engine's prefill and decode times and write a latency profile."""
    url = backends.split(",")[0].strip()
    try:
        profile, samples = calibrate(url)
    except (RuntimeError, OSError, ValueError) as exc:
        _fail(str(exc))
    profile.save(out)
    rows = [
        {
            "kind": kind,
            "tokens": x[1],
            "pairs": x[2],
            "seqs": x[3],
            "measured_s": y,
            "fitted_s": q,
        }
        for x, kind, y, q in zip(
            samples["X"], samples["kind"], samples["y"], samples["predicted"], strict=True
        )
    ]
    if as_json:
        result = {"profile": str(out), "prefill": samples["prefill"], "samples": rows}
        typer.echo(json.dumps(result))
        return
    # prefill rows are cache-hit differences (a prefill alone) or raw requests (with overhead,
    # a sequence and a round trip)
    raw = samples["prefill"] == "raw"
    prefill = "prefill request" if raw else "prefill (hit difference)"
    for r in rows:
        kind = prefill if r["kind"] == "prefill" else "decode iteration"
        typer.echo(
            f"{kind:24s} tokens {r['tokens']:6.0f}  seqs {r['seqs']:3.0f}"
            f"  measured {1e3 * r['measured_s']:7.2f} ms  fitted {1e3 * r['fitted_s']:7.2f} ms"
        )
    p = profile
    typer.echo(
        f"profile: overhead {1e3 * p.overhead_s:.3f} ms, {1e6 * p.c_token:.3f} us/token, "
        f"{1e9 * p.c_pair:.3f} ns/pair, {1e6 * p.c_seq:.3f} us/sequence"
    )
    typer.echo(f"profile written to {out}")


@app.command("validate")
def validate_cmd(
    trace: Path = TRACE_OPT,
    backends: str = typer.Option(..., help="URL of the live server."),
    latency_profile: Path = typer.Option(..., help="Profile from `thundersim calibrate`."),
    concurrency: int = typer.Option(8, help="Programs in the system at once."),
    programs: int = typer.Option(16, help="Use the first N programs of the trace."),
    token_scale: float = typer.Option(0.05, help="Multiply every token count by this."),
    time_scale: float = typer.Option(0.05, help="Multiply tool/prep/arrival times by this."),
    dt: float = typer.Option(0.5, "--dt", help="Policy monitor period (s)."),
    as_json: bool = JSON_OPT,
) -> None:
    """Run a trace live and simulated (with a calibrated profile) for vllm and stp and print
    the relative error of throughput, KV hit rate and preemptions."""
    url = backends.split(",")[0].strip()
    try:
        profile = LatencyProfile.load(latency_profile)
        specs = scale_trace(load_trace(trace)[:programs], token_scale, time_scale)
        options = PolicyOptions(tick_interval=dt, decay="none")
        records = validate(url, specs, profile, concurrency, options)
    except (ValueError, TraceError, RuntimeError) as exc:
        _fail(str(exc))
    if as_json:
        typer.echo(json.dumps(records))
        return
    for r in records:
        err = "-" if r["rel_error"] is None else f"{100 * r['rel_error']:+.1f} %"
        typer.echo(
            f"{r['policy']:5s} {r['metric']:26s} sim {r['sim']:10.3f}  live {r['live']:10.3f}"
            f"  error {err}"
        )


engine_app = typer.Typer(help="Local vLLM replicas.", no_args_is_help=True)
app.add_typer(engine_app, name="engine")


@engine_app.command("up")
def engine_up(
    replicas: int = typer.Option(1, help="Number of local vLLM servers."),
    port: int = typer.Option(8100, help="Port of the first replica (the next ones follow)."),
    kv_blocks: int = typer.Option(0, help="Cap each KV pool at this many blocks (0 = no cap)."),
    model: Path | None = typer.Option(
        None, help="Model folder (default: a generated tiny Llama, dummy weights)."
    ),
    chat: bool = typer.Option(
        False, help="Give the tiny model a tokenizer so /v1/chat/completions works."
    ),
    extra: list[str] | None = typer.Argument(None, help="Extra vLLM server arguments."),
) -> None:
    """Start local vLLM servers, print one URL per replica, stay until SIGINT/SIGTERM."""
    engines = LocalEngines(
        chat=chat,
        replicas=replicas,
        port=port,
        kv_blocks=kv_blocks or None,
        model=model,
        extra_args=tuple(extra or ()),
    )
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        for r in engines.start():
            typer.echo(f"replica {r.url} pid {r.pid} log {r.log}", err=False)
        sys.stdout.flush()
        while True:
            time.sleep(1.0)
            dead = [r for r in engines.started if r.process.poll() is not None]
            if dead:
                _fail(f"replica {dead[0].url} exited; log: {dead[0].log}", code=1)
    except KeyboardInterrupt:
        pass
    except (RuntimeError, TimeoutError) as exc:
        _fail(str(exc), code=1)
    finally:
        engines.stop()


@app.command()
def serve(
    backends: str = typer.Option(
        ..., help="Comma-separated vLLM server URLs (the only ones used)."
    ),
    policy: str = typer.Option("stp", help="Scheduling policy (see `thundersim policies`)."),
    router: str = typer.Option("least_loaded", help="Router for request-level placement."),
    param: list[str] | None = PARAM_OPT,
    dt: float = DT_OPT,
    decay: str = DECAY_OPT,
    seed: int = SEED_OPT,
    host: str = typer.Option("127.0.0.1", help="Address to bind (0.0.0.0 exposes it)."),
    port: int = typer.Option(8000, help="Port to listen on."),
    token: str = typer.Option(
        "", envvar="THUNDERSIM_TOKEN", help="Bearer token clients must send (env THUNDERSIM_TOKEN)."
    ),
    max_body_mb: float = typer.Option(8.0, help="Largest request body accepted, in MiB."),
    idle_release_s: float = typer.Option(
        1800.0, help="Release a program idle this long between calls (0 = never)."
    ),
    out: Path | None = typer.Option(None, help="On exit, write the run's tables here."),
) -> None:
    """OpenAI-compatible proxy for real agents: the policy schedules their programs on live
    replicas. Send `program_id` with each call and POST /programs/release at the end."""
    from thundersim.live.serve import Proxy, ServeConfig, serve_until_stopped

    urls = [u.strip() for u in backends.split(",") if u.strip()]
    try:
        if not urls:
            raise ValueError("--backends needs at least one URL")
        options = PolicyOptions(
            tick_interval=dt,
            decay=decay,
            seed=seed,
            router=router,
            params=parse_params(param or []),
        )
        pol = registry.make_policy(policy, options)
        config = ServeConfig(
            host=host,
            port=port,
            token=token or None,
            max_body_bytes=int(max_body_mb * 2**20),
            idle_release_s=idle_release_s,
        )
    except ValueError as exc:
        _fail(str(exc))

    async def main_async():
        book = TokenBook(vocab=TINY_VOCAB)  # unused by forwarded calls; kept for the contract
        live = [VLLMBackend(i, url, book) for i, url in enumerate(urls)]
        try:
            for b in live:
                await b.connect()
            proxy = Proxy(pol, live, config)

            def ready() -> None:
                typer.echo(f"serving on http://{host}:{port} ({policy}; {', '.join(urls)})")
                sys.stdout.flush()

            return await serve_until_stopped(proxy, on_ready=ready)
        finally:
            for b in live:
                await b.close()

    try:
        result = _run_fast(main_async())
    except (ValueError, RuntimeError, OSError) as exc:
        _fail(str(exc), code=1)
    if out is not None:
        result.write(out)
    s = result.summary
    typer.echo(
        f"served {s['programs_completed']} programs, {s['steps_completed']} steps; "
        f"KV hit rate {100 * s['kv_hit_rate']:.1f} %",
        err=True,
    )


EXECUTOR_OPT = typer.Option("local", help="local (processes here) or ray (a Ray cluster).")
WORKERS_OPT = typer.Option(0, help="Parallel workers (0 = one per CPU).")
CACHE_OPT = typer.Option(Path("runs/cache"), help="Cache of finished points (by input hash).")
REDUCED_OPT = typer.Option(False, help="The specs' reduced grids (what CI runs).")


@app.command()
def sweep(
    spec: Path = typer.Argument(
        ..., help="Experiment spec (TOML), e.g. experiments/specs/fig4a.toml."
    ),
    executor: str = EXECUTOR_OPT,
    workers: int = WORKERS_OPT,
    ray_address: str = typer.Option("", help="--executor ray: address of an existing cluster."),
    reduced: bool = REDUCED_OPT,
    cache: Path = CACHE_OPT,
    out: Path = typer.Option(Path("runs/sweeps"), help="Writes NAME.parquet and NAME.csv here."),
) -> None:
    """Run a spec's grid (cached points are reused; an interrupted sweep resumes) as one table."""
    from thundersim.lab.sweep import SpecError, load_spec, run_sweep

    try:
        s = load_spec(spec)
        total = len(s.points(reduced))
        bar = tqdm(total=total, unit="pt", desc=s.name, file=sys.stderr, leave=False)
        result = run_sweep(
            s, cache, reduced, executor, workers or None, ray_address or None, on_done=bar.update
        )
        bar.close()
    except SpecError as exc:
        _fail(str(exc))
    out.mkdir(parents=True, exist_ok=True)
    result.table.to_parquet(out / f"{s.name}.parquet", index=False)
    result.table.to_csv(out / f"{s.name}.csv", index=False)
    typer.echo(
        f"{s.name}: {len(result.table)} points ({result.ran} run, {result.cached} cached) -> "
        f"{out / s.name}.parquet",
        err=True,
    )
    if result.interrupted:
        raise typer.Exit(130)


@app.command()
def figures(
    only: list[str] | None = typer.Option(
        None, help="Only these figures (spec names; repeatable)."
    ),
    out: Path = typer.Option(Path("figures"), help="PNG/PDF figures, data/ tables and REPORT.md."),
    reduced: bool = REDUCED_OPT,
    executor: str = EXECUTOR_OPT,
    workers: int = WORKERS_OPT,
    cache: Path = CACHE_OPT,
) -> None:
    """Regenerate every figure and table of the paper and write figures/REPORT.md."""
    from thundersim.lab.figures import regenerate, specs_in
    from thundersim.lab.sweep import SpecError

    try:
        from thundersim.lab.figures import SIM_KINDS
        from thundersim.lab.sweep import point_key

        total = len(  # distinct points: specs that share one run it once
            {
                point_key(p, s.keep)
                for s in specs_in(only=only)
                if s.kind in SIM_KINDS
                for p in s.points(reduced)
            }
        )
        bar = tqdm(total=total, unit="pt", desc="figures", file=sys.stderr, leave=False)
        results, timing = regenerate(
            out, cache, only, reduced, executor, workers or None, on_done=bar.update
        )
        bar.close()
    except (SpecError, ValueError) as exc:
        _fail(str(exc))
    typer.echo(
        f"{len(results)} figures -> {out}/ ({timing['points_run']} points simulated, "
        f"{timing['points_cached']} cached, {timing['total_s']:.0f} s)",
        err=True,
    )


def _run_fast(coro):
    """asyncio.run on uvloop where it is installed: it roughly halves the proxy's CPU per
    request (measured by experiments/bench_proxy.py), which on a machine that also runs the
    engine is latency taken from the engine."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
