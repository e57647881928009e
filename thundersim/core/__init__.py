"""The contracts everything else is written against; imports nothing from sim/, live/, lab/,
policies/ or engine_adapters/.

Reading guide:
- `program.py`: the paper's program P = <ID, c, T, L, tau, s> (Phase, Status) and its steps;
- `policy.py`: what a policy sees (ProgramView, BackendView), decides (Decision) and is
  configured by (PolicyOptions); the Policy and Router base classes;
- `backend.py`: the Backend protocol (one engine replica), Request and Usage, EngineStats,
  and the optional KVIntrospection protocol (a replica that shows its block pool);
- `cluster.py`: the Cluster: programs, backends, the policy's commands, withheld calls;
- `lifecycle.py`: the program lifecycle both clocks run (arrive -> prepare -> [call -> tool]*
  -> finish), closed or open loop, recycled for horizon runs;
- `environment.py`: one tool environment, its states, and the EnvProvider contract;
- `envs.py`: the tool resource manager (environments, their limits, GC and prefetch).
"""
