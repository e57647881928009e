"""`thundersim catalog` and `thundersim policies`: what there is to choose from."""

from __future__ import annotations

import typer

from thundersim.cli.app import (
    app,
)
from thundersim.sim.catalog import GPUS, MODELS


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
    from thundersim.policies import registry

    for name in registry.names():
        cls = registry.REGISTRY[name]
        aliases = cls.aliases
        typer.echo(f"{name:12s} {registry.describe(cls)}{_origin(cls)}")
        if aliases:
            typer.echo(f"{'':12s}   alias: {', '.join(aliases)}")
        for key, default in cls.params.items():
            typer.echo(f"{'':12s}   --param {key}={default:g}")
    typer.echo("\nrouters (--router, for request-level placement across replicas):")
    for name in registry.router_names():
        cls = registry.ROUTERS[name]
        typer.echo(f"{name:12s} {registry.describe(cls)}{_origin(cls)}")


def _origin(cls: type) -> str:
    """Where an out-of-tree policy or router comes from (its distribution); nothing for the
    built-in ones."""
    from thundersim.policies import registry

    origin = registry.origin(cls)
    return "" if origin == "built-in" else f"  [{origin}]"
