"""The contracts everything else is written against; imports nothing from sim/, live/, lab/,
policies/ or engine_adapters/.

Reading guide:
- `program.py`: the paper's program P = <ID, c, T, L, tau, s> (Phase, Status) and its steps;
- `policy.py`: what a policy sees (ProgramView, BackendView), decides (Decision) and is
  configured by (PolicyOptions); the Policy and Router base classes;
- `backend.py`: the Backend protocol (one engine replica), Request and Usage, EngineStats;
- `cluster.py`: the Cluster: programs, backends, the policy's commands, held calls;
- `lifecycle.py`: the program lifecycle both clocks run (arrive -> prepare -> [call -> tool]*
  -> finish), closed or open loop, recycled for horizon runs;
- `envs.py`: the tool resource manager (environments, their limits, GC and prefetch).
"""
