"""The Typer application, its sub-command groups, and the options and helpers the command
modules share.

Start-up is kept cheap: importing the CLI (what `thundersim --help` and every command pays
before it does anything) loads typer and the catalog only. Each command imports what it runs
inside its body, and a help text that lists what a registry holds (the live engines, the
workload generators, the log formats) names it by a placeholder that is filled in when a help
page is shown (`LazyHelpCommand`): `thundersim run --help` imports the engine adapters,
`thundersim run` on the simulator does not. tests/test_startup.py checks that importing
thundersim.cli loads none of scipy, pandas, aiohttp, httpx, matplotlib;
experiments/bench_startup.py measures it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import typer
from typer.core import TyperCommand

from thundersim.sim.catalog import GPUS, MODELS


def _engines() -> str:
    return ", ".join(engine_choices())


def _workloads() -> str:
    from thundersim.traces import workloads

    return ", ".join(workloads.GENERATORS)


def _log_formats() -> str:
    from thundersim.traces import converters

    return ", ".join(converters.CONVERTERS)


def _conformance_workloads() -> str:
    from thundersim.conformance.workloads import WORKLOADS

    return ", ".join(WORKLOADS)


# placeholder in an option's help -> what replaces it when the help is shown
HELP_FILLS: dict[str, Callable[[], str]] = {
    "{engines}": _engines,
    "{workloads}": _workloads,
    "{log_formats}": _log_formats,
    "{conformance_workloads}": _conformance_workloads,
}


class LazyHelpCommand(TyperCommand):
    """A command whose options' help may name HELP_FILLS placeholders: they are filled in
    when the help page is formatted, so listing a registry costs nothing to a command run."""

    def format_help(self, ctx, formatter) -> None:
        for param in self.params:
            text = getattr(param, "help", None)
            if text and "{" in text:
                for key, fill in HELP_FILLS.items():
                    if key in text:
                        text = text.replace(key, fill())
                param.help = text
        super().format_help(ctx, formatter)


class _Typer(typer.Typer):
    """typer.Typer whose commands are LazyHelpCommand unless a command names its own class."""

    def command(self, *args, cls=None, **kwargs):
        return super().command(*args, cls=cls or LazyHelpCommand, **kwargs)


app = _Typer(
    pretty_exceptions_enable=False,
    help="Simulator and policy lab for program-aware agentic LLM inference.",
    no_args_is_help=True,
    add_completion=False,
)
trace_app = _Typer(help="Make and inspect traces.", no_args_is_help=True)
app.add_typer(trace_app, name="trace")

DEFAULT_TRACE = Path("traces/swe.jsonl")


def warmup_or_default(horizon: float, warmup: float) -> float | None:
    """The CLI's warm-up option as RunConfig takes it (None: the default for the horizon)."""
    if warmup < 0:
        return None
    if not horizon:
        raise ValueError("--warmup needs --horizon: a finite run is measured whole")
    return warmup


def fail(message: str, code: int = 2) -> None:
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
STEP_TIME_OPT = typer.Option(
    "auto",
    "--step-time",
    help="Step-time backend: auto (the setup's default: measured where aiconfigurator-core "
    "models it, else the roofline), measured, or roofline. A --latency-profile wins over it.",
)
JSON_OPT = typer.Option(False, "--json", help="Print JSON only on stdout.")

SIM_ENGINE = "sim"  # `run --engine sim`: the simulator instead of a live engine


def engine_choices(sim: bool = False) -> list[str]:
    """The `--engine` choices: the live engines of thundersim.engine_adapters.registry (those
    of this package and of installed `thundersim.engines` entry points), after "sim" where the
    command can simulate. Read when an option is checked, so an engine registered after this
    module was imported is a choice too."""
    from thundersim.engine_adapters.registry import engine_names

    return ([SIM_ENGINE] if sim else []) + engine_names()


def _engine_check(sim: bool):
    def check(value: str) -> str:
        if sim and value == SIM_ENGINE:
            return value  # the simulator: no engine adapter needs importing
        valid = engine_choices(sim)
        if value not in valid:
            raise typer.BadParameter(f"unknown engine {value!r}; valid: {', '.join(valid)}")
        return value

    return check


def urls_of(backends: str, engine: str) -> list[str]:
    """The comma-separated `--backends` as a list; ValueError when there is none."""
    urls = [u.strip() for u in backends.split(",") if u.strip()]
    if not urls:
        raise ValueError(f"--engine {engine} needs --backends URL[,URL...]")
    return urls


# The help lists the engines registered when it is shown (the check reads them again).
RUN_ENGINE_OPT = typer.Option(
    SIM_ENGINE,
    "--engine",
    callback=_engine_check(sim=True),
    help=f"{SIM_ENGINE} (the simulator) or a live engine at --backends: {{engines}}.",
)
LIVE_ENGINE_OPT = typer.Option(
    "vllm",
    "--engine",
    callback=_engine_check(sim=False),
    help="The engine the --backends URLs serve: {engines}.",
)


engine_app = _Typer(help="Local vLLM replicas.", no_args_is_help=True)
app.add_typer(engine_app, name="engine")

EXECUTOR_OPT = typer.Option("local", help="local (processes here) or ray (a Ray cluster).")
WORKERS_OPT = typer.Option(0, help="Parallel workers (0 = one per CPU).")
CACHE_OPT = typer.Option(Path("runs/cache"), help="Cache of finished points (by input hash).")
REDUCED_OPT = typer.Option(False, help="The specs' reduced grids (what CI runs).")


def run_fast(coro):
    """asyncio.run on uvloop where it is installed: it roughly halves the proxy's CPU per
    request (measured by experiments/bench_proxy.py), which on a machine that also runs the
    engine is latency taken from the engine."""
    import asyncio

    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)
