"""Live engines: each adapter implements thundersim.core.backend.Backend over a real engine and
registers itself by name in `registry` (the CLI's `--engine` choices).

Reading guide:
- `registry.py`: engine name -> factory(index, url, book); discovers this package's adapters and
  the `thundersim.engines` entry points of installed packages;
- `vllm.py`: VLLMBackend, one vLLM OpenAI-compatible server over HTTP (engine "vllm");
- `tokens.py`: TokenBook, the token ids of every context of a run, shared by its replicas;
- `prometheus.py`: the `/metrics` text format the adapters read their engine's counters from;
- `local.py`: local vLLM servers (a tiny generated model) for laptops and CI;
- `sandbox.py`, `port_holder.py`: real tool environments (directories, ports, processes).
Adding an engine (SGLang, a Dynamo worker) is one new module here that ends with
`register_engine("name", TheBackend)`.
"""
