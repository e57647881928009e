"""`thundersim compare`, `sweep` and `figures`: many runs side by side."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import typer

from thundersim.cli.app import (
    CACHE_OPT,
    DECAY_OPT,
    DT_OPT,
    EXECUTOR_OPT,
    GPU_OPT,
    HORIZON_OPT,
    JSON_OPT,
    KV_TOKENS_OPT,
    KVDTYPE_OPT,
    MODEL_OPT,
    PARAM_OPT,
    PROFILE_OPT,
    REDUCED_OPT,
    REPLICAS_OPT,
    SEED_OPT,
    STEP_TIME_OPT,
    TP_OPT,
    TRACE_OPT,
    WARMUP_OPT,
    WDTYPE_OPT,
    WORKERS_OPT,
    app,
    fail,
    warmup_or_default,
)
from thundersim.cli.run import Stops

# What a command runs is imported inside it (start-up: see thundersim.cli.app).


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
    step_time: str = STEP_TIME_OPT,
    workers: int = typer.Option(0, help="Parallel processes (0 = one per core)."),
    out: Path = typer.Option(
        Path("runs/compare"), help="Write compare.csv and compare.parquet here."
    ),
    as_json: bool = JSON_OPT,
    progress: bool = typer.Option(True, help="Show a progress bar on stderr."),
) -> None:
    """Run a grid of policies x concurrency x routers in parallel and print one table."""
    from tqdm import tqdm

    from thundersim.lab.compare import grid, run_grid
    from thundersim.lab.data import find
    from thundersim.policies import registry
    from thundersim.sim.simulate import build_run, check_fits
    from thundersim.traces.loader import load_trace
    from thundersim.traces.schema import TraceError

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
            step_time=step_time,
            replicas=replicas,
            horizon_s=horizon or None,
            warmup_s=warmup_or_default(horizon, warmup),
        )
        for name in names:  # fail on a bad name or parameter before starting any process
            for r in router_list:
                registry.make_policy(name, replace(options, router=r))
        specs = load_trace(find(trace, "trace"))
        check_fits(specs, config)
    except (ValueError, TraceError) as exc:
        fail(str(exc))
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
    from rich.console import Console
    from rich.table import Table

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
    """Run a spec's grid (cached points are reused; an interrupted sweep resumes) as one table.

    Ctrl-C, SIGTERM and SIGHUP stop it alike: its workers are killed, the points finished so
    far stay cached and are written as the table, and it exits 130, 143 or 129 (128 + the
    signal). Signals that land while it ends (the table gathered and written) wait for it."""
    from tqdm import tqdm

    from thundersim.lab import compare as pools
    from thundersim.lab.sweep import SpecError, _gather, load_spec, run_sweep

    # where its first signal waits instead of interrupting: killing its workers, gathering its
    # table from the cache
    ending = (pools._stop.__code__, _gather.__code__)
    try:
        s = load_spec(spec)
        total = len(s.points(reduced))
        with Stops(anywhere_but=ending) as stops:
            bar = tqdm(total=total, unit="pt", desc=s.name, file=sys.stderr, leave=False)
            try:
                result = run_sweep(
                    s, cache, reduced, executor, workers or None, ray_address or None, bar.update
                )
            except KeyboardInterrupt:  # stopped before its pool began (or as it returned)
                raise typer.Exit(stops.exit_code or 130) from None
            finally:
                bar.close()
            stops.finishing()
            out.mkdir(parents=True, exist_ok=True)
            result.table.to_parquet(out / f"{s.name}.parquet", index=False)
            result.table.to_csv(out / f"{s.name}.csv", index=False)
            typer.echo(
                f"{s.name}: {len(result.table)} points ({result.ran} run, {result.cached} "
                f"cached) -> {out / s.name}.parquet",
                err=True,
            )
    except SpecError as exc:
        fail(str(exc))
    if stops.exit_code is not None:
        raise typer.Exit(stops.exit_code)
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
    from tqdm import tqdm

    from thundersim.lab.figures import regenerate, specs_in
    from thundersim.lab.sweep import SpecError

    try:
        from thundersim.lab.figures import SIM_KINDS
        from thundersim.lab.points import point_key

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
        fail(str(exc))
    typer.echo(
        f"{len(results)} figures -> {out}/ ({timing['points_run']} points simulated, "
        f"{timing['points_cached']} cached, {timing['total_s']:.0f} s)",
        err=True,
    )
