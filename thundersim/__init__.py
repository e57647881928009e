"""thundersim: a discrete-event simulator and policy lab for program-aware agentic inference.

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
- `thundersim.cli`: the command line, a thin composition root.
"""
