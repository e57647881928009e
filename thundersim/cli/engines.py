"""Commands against real engines: `calibrate`, `validate`, `conformance`, `engine up`, `serve`."""

from __future__ import annotations

import json
import shutil
import signal
import sys
import time
from pathlib import Path

import typer

from thundersim.cli.app import (
    DECAY_OPT,
    DT_OPT,
    JSON_OPT,
    LIVE_ENGINE_OPT,
    PARAM_OPT,
    SEED_OPT,
    TRACE_OPT,
    app,
    engine_app,
    fail,
    run_fast,
    urls_of,
)

# What a command runs is imported inside it (start-up: see thundersim.cli.app).


@app.command("calibrate")
def calibrate_cmd(
    backends: str = typer.Option(..., help="URL of the live server to measure."),
    engine: str = LIVE_ENGINE_OPT,
    out: Path = typer.Option(Path("latency-profile.json"), help="Where to write the profile."),
    as_json: bool = JSON_OPT,
) -> None:
    """Measure a live engine's prefill and decode times and write a latency profile."""
    from thundersim.live.calibrate import calibrate

    try:
        profile, samples = calibrate(urls_of(backends, engine)[0], engine)
    except (RuntimeError, OSError, ValueError) as exc:
        fail(str(exc))
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
    engine: str = LIVE_ENGINE_OPT,
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
    from thundersim.core.policy import PolicyOptions
    from thundersim.lab.data import find
    from thundersim.live.calibrate import validate
    from thundersim.sim.latency import LatencyProfile
    from thundersim.traces.loader import load_trace, scale_trace
    from thundersim.traces.schema import TraceError

    try:
        url = urls_of(backends, engine)[0]
        profile = LatencyProfile.load(latency_profile)
        specs = scale_trace(load_trace(find(trace, "trace"))[:programs], token_scale, time_scale)
        options = PolicyOptions(tick_interval=dt, decay="none")
        records = validate(url, specs, profile, concurrency, options, engine=engine)
    except (ValueError, TraceError, RuntimeError) as exc:
        fail(str(exc))
    if as_json:
        typer.echo(json.dumps(records))
        return
    for r in records:
        err = "-" if r["rel_error"] is None else f"{100 * r['rel_error']:+.1f} %"
        typer.echo(
            f"{r['policy']:5s} {r['metric']:26s} sim {r['sim']:10.3f}  live {r['live']:10.3f}"
            f"  error {err}"
        )


@app.command("conformance")
def conformance_cmd(
    vllm_python: str = typer.Option(
        None,
        help="Python of the vLLM to test against (default: the checkout's .venv-vllm, which "
        "`make vllm` installs).",
    ),
    workload: list[str] = typer.Option(
        None, help="Workloads to run (repeatable; default all): {conformance_workloads}."
    ),
    out: Path = typer.Option(None, help="Write the per-workload table here (CSV)."),
) -> None:
    """Run vLLM's own scheduler and the simulator's engine on the same request streams and
    compare them iteration by iteration (exit 1 if any step diverges)."""
    from thundersim.conformance.compare import default_vllm_python, run_conformance, to_frame
    from thundersim.conformance.compare import report as conformance_report
    from thundersim.conformance.workloads import WORKLOADS
    from thundersim.engine_adapters.local import TINY_LLAMA

    python = vllm_python or default_vllm_python()
    if python is None:
        fail("no vLLM to test against: pass --vllm-python (or run `make vllm`)")
    unknown = [w for w in workload or [] if w not in WORKLOADS]
    if unknown:
        fail(f"unknown workload(s) {', '.join(unknown)}; known: {', '.join(WORKLOADS)}")
    try:
        workloads = [WORKLOADS[w]() for w in workload or WORKLOADS]
        version, results = run_conformance(workloads, python, TINY_LLAMA)
    except (ValueError, RuntimeError, OSError) as exc:
        fail(str(exc))
    typer.echo(conformance_report(version, results))
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        to_frame(version, results).to_csv(out, index=False)
    if not all(r.ok for r in results):
        raise typer.Exit(1)


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
    cpus: str | None = typer.Option(
        None,
        help="Run the servers on these CPUs only (e.g. 1 or 2-7). On a CPU machine, leave the "
        "proxy and the agents cores of their own: vLLM's CPU worker busy-polls between steps.",
    ),
    extra: list[str] | None = typer.Argument(None, help="Extra vLLM server arguments."),
) -> None:
    """Start local vLLM servers, print one URL per replica, stay until SIGINT/SIGTERM."""
    from thundersim.engine_adapters.local import LocalEngines

    try:
        engines = LocalEngines(
            cpus=cpus,
            chat=chat,
            replicas=replicas,
            port=port,
            kv_blocks=kv_blocks or None,
            model=model,
            extra_args=tuple(extra or ()),
        )
    except ValueError as exc:  # a bad --cpus list
        fail(str(exc), code=2)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        for r in engines.start():
            typer.echo(f"replica {r.url} pid {r.pid} log {r.log}", err=False)
        sys.stdout.flush()
        while True:
            time.sleep(1.0)
            dead = [r for r in engines.started if r.process.poll() is not None]
            if dead:
                fail(f"replica {dead[0].url} exited; log: {dead[0].log}", code=1)
    except KeyboardInterrupt:
        pass
    except (RuntimeError, TimeoutError) as exc:
        fail(str(exc), code=1)
    finally:
        engines.stop()


@app.command()
def serve(
    backends: str = typer.Option(
        ..., help="Comma-separated server URLs of --engine (the only ones used)."
    ),
    engine: str = LIVE_ENGINE_OPT,
    policy: str = typer.Option("stp", help="Scheduling policy (see `thundersim policies`)."),
    router: str = typer.Option("least_loaded", help="Router for request-level placement."),
    param: list[str] | None = PARAM_OPT,
    dt: float = DT_OPT,
    decay: str = DECAY_OPT,
    seed: int = SEED_OPT,
    host: str = typer.Option("127.0.0.1", help="Address to bind (0.0.0.0 exposes it)."),
    port: int = typer.Option(8000, help="Port to listen on."),
    token: str = typer.Option(
        "",
        envvar="THUNDERSIM_TOKEN",
        help="Bearer token clients must send (visible ASCII). Given here it shows in `ps`: "
        "prefer the THUNDERSIM_TOKEN environment variable or --token-file.",
    ),
    token_file: Path | None = typer.Option(
        None,
        help="Read the bearer token from this file's first line (preferred to --token, which "
        "`ps` shows).",
    ),
    max_body_mb: float = typer.Option(8.0, help="Largest request body accepted, in MiB."),
    idle_release_s: float = typer.Option(
        1800.0, help="Release a program idle this long between calls (0 = never)."
    ),
    max_hold_s: float = typer.Option(
        600.0,
        help="Longest a call is held by the policy; then it gets 503 (no setting of any policy "
        "holds a call for ever).",
    ),
    down_grace_s: float = typer.Option(
        30.0, help="How long held calls wait while no backend is up; then they get 503."
    ),
    backlog: int = typer.Option(4096, help="Listen backlog (capped by net.core.somaxconn)."),
    header_timeout_s: float = typer.Option(
        60.0, help="A client must send its headers within this (also the keep-alive timeout)."
    ),
    body_timeout_s: float = typer.Option(60.0, help="A client must send its body within this."),
    connect_timeout_s: float = typer.Option(10.0, help="Upstream: connecting to a backend."),
    first_byte_timeout_s: float = typer.Option(
        900.0, help="Upstream: until a backend's first byte (a whole non-streamed call)."
    ),
    chunk_timeout_s: float = typer.Option(
        120.0, help="Upstream: between two chunks of an answer (a long stream is fine)."
    ),
    out: Path | None = typer.Option(
        None,
        help="Write the run's tables here on exit. While serving they grow in OUT.journal/ "
        "(CSV), which a killed proxy leaves behind.",
    ),
) -> None:
    """OpenAI-compatible proxy for real agents: the policy schedules their programs on live
    replicas. Send `program_id` with each call and POST /programs/release at the end."""
    from thundersim.core.policy import PolicyOptions, parse_params
    from thundersim.engine_adapters.local import TINY_VOCAB
    from thundersim.engine_adapters.registry import make_backends
    from thundersim.engine_adapters.tokens import TokenBook
    from thundersim.engine_adapters.vllm import UpstreamTimeouts
    from thundersim.live.serve import Proxy, ServeConfig, resolve_token, serve_until_stopped
    from thundersim.metrics.results import check_replaceable
    from thundersim.policies import registry

    try:
        urls = urls_of(backends, engine)
        journal = None
        if out is not None:
            check_replaceable(out)  # refused now, not after hours of serving
            journal = out.parent / f"{out.name}.journal"
        timeouts = UpstreamTimeouts(connect_timeout_s, first_byte_timeout_s, chunk_timeout_s)
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
            token=resolve_token(token, token_file),
            max_body_bytes=int(max_body_mb * 2**20),
            idle_release_s=idle_release_s,
            max_hold_s=max_hold_s,
            down_grace_s=down_grace_s,
            backlog=backlog,
            header_timeout_s=header_timeout_s,
            body_timeout_s=body_timeout_s,
            journal=journal,
        )
    except ValueError as exc:
        fail(str(exc))

    async def main_async():
        book = TokenBook(vocab=TINY_VOCAB)  # unused by forwarded calls; kept for the contract
        options = {"timeouts": timeouts} if engine == "vllm" else {}
        live = make_backends(engine, urls, book, **options)
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
        result = run_fast(main_async())
    except (ValueError, RuntimeError, OSError) as exc:
        fail(str(exc), code=1)
    if out is not None:
        result.write(out)
        shutil.rmtree(journal, ignore_errors=True)  # the tables hold all of it now
    s = result.summary
    typer.echo(
        f"served {s['programs_completed']} programs, {s['steps_completed']} steps; "
        f"KV hit rate {100 * s['kv_hit_rate']:.1f} %",
        err=True,
    )
