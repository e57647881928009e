"""`thundersim trace gen | convert | stats`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from thundersim.cli.app import (
    fail,
    trace_app,
)

# What a command runs is imported inside it (start-up: see thundersim.cli.app).


@trace_app.command("gen")
def trace_gen(
    workload: str = typer.Option("swe", help="Workload: {workloads}."),
    programs: int = typer.Option(300, help="Number of programs."),
    seed: int = typer.Option(0, help="Random seed."),
) -> None:
    """Generate a trace (JSONL on stdout)."""
    from thundersim.traces import workloads
    from thundersim.traces.loader import dump_trace

    if programs < 1:
        fail("--programs must be >= 1")
    try:
        specs = workloads.generate(workload, programs, seed)
    except ValueError as exc:
        fail(str(exc))
    dump_trace(specs, sys.stdout)


@trace_app.command("convert")
def trace_convert(
    inputs: list[Path] = typer.Argument(..., help="Log files to convert (one or more)."),
    fmt: str = typer.Option(..., "--format", help="Log format: {log_formats}."),
    workload: str | None = typer.Option(
        None, help="Workload name for the programs (default: the format's, or the logged one)."
    ),
    program_field: str | None = typer.Option(
        None, help="openai-chat: the record key holding the program id (default program_id)."
    ),
) -> None:
    """Convert real agent logs into a trace (JSONL, schema v1, on stdout)."""
    from thundersim.traces import converters
    from thundersim.traces.loader import dump_trace

    try:
        specs = converters.convert(fmt, inputs, workload=workload, program_field=program_field)
    except ValueError as exc:  # TraceError included
        fail(str(exc))
    dump_trace(specs, sys.stdout)


@trace_app.command("stats")
def trace_stats_cmd(
    path: Path = typer.Argument(..., help="Trace file (JSONL, schema v1)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object keyed by quantity."),
) -> None:
    """Distributions of a trace: steps, contexts, tokens, tool seconds (by tool), environment."""
    from rich.console import Console
    from rich.table import Table

    from thundersim.traces.loader import load_trace
    from thundersim.traces.schema import TraceError
    from thundersim.traces.stats import trace_stats

    try:
        specs = load_trace(path)
    except TraceError as exc:
        fail(str(exc))
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
