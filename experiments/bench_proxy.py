"""Proxy overhead: the latency `thundersim serve` adds per request, at 50 concurrent programs.

Each program is an agent: a call, then a tool wait (exponential, mean --tool-s), and so on. Every
program alternates its calls between the engine directly and the proxy, so both paths are
measured side by side under the same load; the figure is median(proxy) - median(direct).

Engines:
- `stub` (default): a process that answers like vLLM at once (no model). What remains is the
  proxy's own cost: HTTP in and out, the policy's callbacks, the bookkeeping.
- `vllm`: the tiny CPU vLLM (`make vllm` first). On this 2-core machine the engine, the proxy
  and the client share two cores, so the number includes the proxy's CPU taken from the engine.

    python experiments/bench_proxy.py [--engine stub|vllm] [--programs 50] [--calls 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent


# ---- a stand-in engine that answers at once --------------------------------------------------
def stub_engine(port: int) -> None:
    from aiohttp import web

    metrics = (
        'vllm:cache_config_info{block_size="16",num_gpu_blocks="100000"} 1.0\n'
        'vllm:kv_cache_usage_perc{engine="0"} 0.0\n'
        'vllm:num_requests_running{engine="0"} 0.0\n'
    )

    async def completions(request: web.Request) -> web.Response:
        body = await request.json()
        prompt = body.get("prompt") or []
        n = body.get("max_tokens") or 1
        return web.json_response(
            {
                "id": "cmpl-stub",
                "object": "text_completion",
                "model": "stub",
                "choices": [{"index": 0, "text": "x" * n, "finish_reason": "length"}],
                "usage": {
                    "prompt_tokens": len(prompt),
                    "completion_tokens": n,
                    "total_tokens": len(prompt) + n,
                    "prompt_tokens_details": {"cached_tokens": 0},
                },
            }
        )

    app = web.Application()
    app.router.add_get("/health", lambda r: web.Response(text="ok"))
    app.router.add_get("/v1/models", lambda r: web.json_response({"data": [{"id": "stub"}]}))
    app.router.add_get("/metrics", lambda r: web.Response(text=metrics))
    app.router.add_post("/v1/completions", completions)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


def wait_up(url: str, proc: subprocess.Popen, timeout: float = 240) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url} exited")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(url)


# ---- the agents ------------------------------------------------------------------------------
async def program(
    session, pid, engine, proxy, calls, tool_s, rng, lat_direct, lat_proxy, prompt_len, model
):
    context = [rng.randrange(3, 2000) for _ in range(prompt_len)]
    for i in range(calls):
        via_proxy = (i + pid) % 2 == 0
        body = {"model": model, "prompt": context, "max_tokens": 4, "ignore_eos": True}
        url = proxy if via_proxy else engine
        if via_proxy:
            body["program_id"] = f"bench-{pid}"
        t0 = time.perf_counter()
        async with session.post(url + "/v1/completions", json=body) as r:
            await r.read()
            assert r.status == 200, await r.text()
        (lat_proxy if via_proxy else lat_direct).append(time.perf_counter() - t0)
        context = context + [rng.randrange(3, 2000) for _ in range(16)]
        await asyncio.sleep(rng.expovariate(1 / tool_s))
    async with session.post(proxy + "/programs/release", json={"program_id": f"bench-{pid}"}):
        pass


async def drive(engine, proxy, programs, calls, tool_s, seed, prompt_len):
    lat_d: list[float] = []
    lat_p: list[float] = []
    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn) as s:
        async with s.get(engine + "/v1/models") as r:
            model = (await r.json())["data"][0]["id"]
        # warm both paths (connections, first-request set-up)
        for url in (engine, proxy):
            body = {"model": model, "prompt": [5, 6], "max_tokens": 1, "ignore_eos": True}
            async with s.post(url + "/v1/completions", json=body) as r:
                await r.read()
        rngs = [random.Random(seed * 1000 + i) for i in range(programs)]
        t0 = time.perf_counter()
        await asyncio.gather(
            *(
                program(
                    s, i, engine, proxy, calls, tool_s, rngs[i], lat_d, lat_p, prompt_len, model
                )
                for i in range(programs)
            )
        )
        wall = time.perf_counter() - t0
    return lat_d, lat_p, wall


def _measure(args) -> tuple[list[float], list[float], float]:
    """Start the engine (stub or a local vLLM) and the proxy, drive both; latencies direct and
    through the proxy, and the wall time. Everything started is stopped, however it ends."""
    procs: list[subprocess.Popen] = []
    engines = None
    try:
        if args.engine == "stub":
            engine_url = "http://127.0.0.1:8391"
            procs.append(subprocess.Popen([sys.executable, __file__, "--stub-engine", "8391"]))
            wait_up(engine_url, procs[-1])
        else:
            from thundersim.engine_adapters.local import LocalEngines

            engines = LocalEngines(port=8391, workdir=Path(tempfile.mkdtemp()) / "engines")
            engine_url = engines.start()[0].url
        proxy_url = "http://127.0.0.1:8392"
        exe = Path(sys.executable).parent / "thundersim"
        serve = [str(exe), "serve", "--backends", engine_url, "--port", "8392"]
        procs.append(
            subprocess.Popen(
                serve + ["--policy", args.policy],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        wait_up(proxy_url, procs[-1])
        return asyncio.run(
            drive(
                engine_url,
                proxy_url,
                args.programs,
                args.calls,
                args.tool_s,
                args.seed,
                args.prompt,
            )
        )
    finally:
        for p in procs:
            p.terminate()
            p.wait(30)
        if engines is not None:
            engines.stop()


def _ms(xs: list[float], q: int) -> float:
    return 1000 * (statistics.median(xs) if q == 50 else statistics.quantiles(xs, n=100)[q - 1])


def _figures(args, lat_d: list[float], lat_p: list[float], wall: float) -> dict:
    return {
        "engine": args.engine,
        "policy": args.policy,
        "programs": args.programs,
        "requests": len(lat_d) + len(lat_p),
        "req_per_s": (len(lat_d) + len(lat_p)) / wall,
        "direct_p50_ms": _ms(lat_d, 50),
        "proxy_p50_ms": _ms(lat_p, 50),
        "direct_p90_ms": _ms(lat_d, 90),
        "proxy_p90_ms": _ms(lat_p, 90),
        "added_p50_ms": _ms(lat_p, 50) - _ms(lat_d, 50),
        "ratio_p50": _ms(lat_p, 50) / _ms(lat_d, 50),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--engine", choices=["stub", "vllm"], default="stub")
    ap.add_argument("--policy", default="stp")
    ap.add_argument("--programs", type=int, default=50)
    ap.add_argument("--calls", type=int, default=20)
    ap.add_argument("--tool-s", type=float, default=0.5, help="mean tool wait between calls")
    ap.add_argument("--prompt", type=int, default=512, help="first prompt's tokens")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--stub-engine", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.stub_engine:
        stub_engine(args.stub_engine)
        return
    out = _figures(args, *_measure(args))
    if args.json:
        print(json.dumps(out))
        return
    print(
        f"{args.programs} programs x {args.calls} calls via {args.engine} engine, policy "
        f"{args.policy}: {out['req_per_s']:.0f} req/s"
    )
    print(f"  direct  p50 {out['direct_p50_ms']:.2f} ms  p90 {out['direct_p90_ms']:.2f} ms")
    print(f"  proxy   p50 {out['proxy_p50_ms']:.2f} ms  p90 {out['proxy_p90_ms']:.2f} ms")
    print(
        f"  added median latency {out['added_p50_ms']:.2f} ms per request "
        f"({out['ratio_p50']:.2f}x direct; target < 2 ms)"
    )


if __name__ == "__main__":
    main()
