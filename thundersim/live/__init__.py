"""The live path: the same Cluster and policy objects against real engines, on asyncio.

Reading guide:
- `driver.py`: `run_live`, the program lifecycle on the event loop's clock, and the per-step
  live log;
- `serve.py`: the OpenAI-compatible proxy that lets real agents run through a policy;
- `requests.py`: what the proxy accepts: parsing and checking a client's call, its errors;
- `serve_metrics.py`: the proxy's Prometheus metrics;
- `calibrate.py`: fits a latency profile from a live engine, and validates sim against live.
"""
