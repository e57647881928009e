"""thundersim: a discrete-event simulator and policy lab for program-aware agentic inference.

From Python, `import thundersim` gives the functions of `thundersim.api` (each documented with
an example): `simulate`, `compare`, `load_trace`, `generate`, `read_run`, `policy_names`.
They load on first use, so importing the package stays cheap (no pandas, no SimPy).

The house (each sub-package has a reading guide in its docstring):
- `thundersim.core`: the contracts (program, policy views and decisions, Backend, Cluster,
  program lifecycle, tool resource manager);
- `thundersim.metrics`: recorder, measurement window, run results;
- `thundersim.sim`: the SimPy model (driver, engine, latency, catalog, sandbox) and `simulate`;
- `thundersim.live`: the same policies against real engines (driver, serve, calibrate);
- `thundersim.traces`: trace schema, loader, stats, converters, workload generators;
- `thundersim.lab`: compare, sweep, figures;
- `thundersim.policies`, `thundersim.engine_adapters`: the checkout's policies/ and
  engine_adapters/ folders;
- `thundersim.api`: the Python surface above; `thundersim.cli`: the command line, a thin
  composition root.
"""

from __future__ import annotations

_API = ("compare", "generate", "load_trace", "policy_names", "read_run", "simulate")
__all__ = list(_API)


def __getattr__(name: str):
    if name in _API:
        from thundersim import api

        return getattr(api, name)
    raise AttributeError(f"module 'thundersim' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_API})
