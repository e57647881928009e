"""The SimPy model: minutes of CPU instead of a GPU cluster.

Reading guide:
- `simulate.py`: one simulated run (RunConfig -> RunResult);
- `driver.py`: the program lifecycle (thundersim.core.lifecycle) on a SimPy clock;
- the engine, split as vLLM v1 splits it: `engine.py` (SimBackend, the replica's loop),
  `scheduler.py` (admission, token budget, chunked prefill, preemption), `kv_cache_manager.py`
  (the blocks each request holds, prefix lookup), `blocks.py` (the block pool, prefix cache,
  LRU eviction), `request.py` (a request's progress: computed of total tokens),
  `decoding.py` (decoding requests advanced together: skip-ahead), `accounting.py`
  (counters, stats, the KV snapshot). thundersim.conformance checks what it schedules against
  vLLM's own scheduler, step by step;
- `latency.py`: the StepTimeModel protocol, the roofline (the fallback) and calibrated
  profiles; `latency_measured.py`: step times from aiconfigurator-core's measured op tables,
  and which backend each setup gets by default;
- `catalog.py`: GPUs and models from their published specs; Setup -> KV capacity;
- `sandbox.py`: simulated tool environments; preparation as a shared service.
"""
