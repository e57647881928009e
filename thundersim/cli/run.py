"""`thundersim run`: one run of a trace under a policy, simulated or live."""

from __future__ import annotations

import contextlib
import json
import sys
import tempfile
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table
from tqdm import tqdm

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
    SEED_OPT,
    TP_OPT,
    TRACE_OPT,
    WARMUP_OPT,
    WDTYPE_OPT,
    app,
    fail,
    run_fast,
    warmup_or_default,
)
from thundersim.core.envs import EnvLimits
from thundersim.engine_adapters.local import TINY_VOCAB
from thundersim.engine_adapters.sandbox import DockerSandbox, LocalSandbox
from thundersim.engine_adapters.vllm import TokenBook, VLLMBackend
from thundersim.live.driver import run_live, write_live_log
from thundersim.metrics.window import describe
from thundersim.policies import registry
from thundersim.sim.simulate import build_run, simulate
from thundersim.traces.loader import load_trace, scale_trace
from thundersim.traces.schema import TraceError


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
        specs = load_trace(trace)
    except (ValueError, TraceError) as exc:
        fail(str(exc))

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
            result = run_fast(
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
        fail(str(exc))
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
