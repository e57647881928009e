"""`thundersim serve` under load (issue 14): many concurrent programs, and a long soak.

Both run the proxy as its own process (`thundersim serve`) in front of the fake engine
(thundersim.live.fake_engine: answers at once, no model), so what is measured is the proxy.

- `--mode burst`: N programs connect at once, each making `--calls` calls then releasing;
  prints completed and failed calls, wall time and latency percentiles.
- `--mode soak`: `--total` calls by `--programs` concurrent agents (each program makes
  `--calls` calls, releases, and its agent starts a new one); prints the proxy's RSS every
  `--every` calls, and its growth after warm-up (the first sample past 20 % of the calls).

    python experiments/bench_serve_load.py --mode burst --programs 3000 --calls 4
    python experiments/bench_serve_load.py --mode soak --total 100000 --programs 50
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_up(url: str, timeout: float = 60) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def agent(session, url, pid, calls, lat, failed) -> None:
    body = {"prompt": [5, 6, 7, 8], "max_tokens": 4, "program_id": pid}
    for _ in range(calls):
        t0 = time.perf_counter()
        try:
            async with session.post(url + "/v1/completions", json=body) as r:
                await r.read()
                ok = r.status == 200
                why = f"HTTP {r.status}"
        except (aiohttp.ClientError, OSError) as exc:
            ok, why = False, type(exc).__name__
        (lat.append(time.perf_counter() - t0) if ok else failed.append(why))
    async with session.post(url + "/programs/release", json={"program_id": pid}) as r:
        await r.read()


async def burst(url: str, programs: int, calls: int) -> dict:
    lat: list[float] = []
    failed: list[str] = []
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=600)
    t0 = time.perf_counter()
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as s:
        await asyncio.gather(*(agent(s, url, f"b{i}", calls, lat, failed) for i in range(programs)))
    wall = time.perf_counter() - t0
    q = statistics.quantiles(lat, n=100) if len(lat) > 1 else [float("nan")] * 99
    return {
        "programs": programs,
        "calls": programs * calls,
        "completed": len(lat),
        "failed": len(failed),
        "failures": {w: failed.count(w) for w in sorted(set(failed))},
        "wall_s": round(wall, 1),
        "p50_s": round(q[49], 3),
        "p99_s": round(q[98], 3),
    }


async def soak(url: str, proxy_pid: int, total: int, programs: int, calls: int, every: int):
    done = 0
    samples: list[tuple[int, float]] = [(0, rss_mib(proxy_pid))]
    lat: list[float] = []
    failed: list[str] = []
    counter = iter(range(10**9))

    async def worker(s):
        nonlocal done
        while done < total:
            await agent(s, url, f"s{next(counter)}", calls, lat, failed)
            before = done
            done += calls
            if done // every > before // every:
                samples.append((done, rss_mib(proxy_pid)))
                print(f"{done:>8} calls  RSS {samples[-1][1]:7.1f} MiB", flush=True)

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as s:
        await asyncio.gather(*(worker(s) for _ in range(programs)))
    warm = next((r for n, r in samples if n >= 0.2 * total), samples[-1][1])
    return {
        "calls": done,
        "failed": len(failed),
        "rss_start_mib": round(samples[0][1], 1),
        "rss_after_warmup_mib": round(warm, 1),
        "rss_end_mib": round(samples[-1][1], 1),
        "growth_after_warmup_mib": round(samples[-1][1] - warm, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mode", choices=["burst", "soak"], default="burst")
    ap.add_argument("--programs", type=int, default=3000)
    ap.add_argument("--calls", type=int, default=4)
    ap.add_argument("--total", type=int, default=100_000)
    ap.add_argument("--every", type=int, default=10_000)
    ap.add_argument("--policy", default="stp")
    ap.add_argument("--backlog", type=int, default=4096)
    args = ap.parse_args()
    eport, pport = free_port(), free_port()
    engine = subprocess.Popen(
        [sys.executable, "-m", "thundersim.live.fake_engine", "--port", str(eport)],
        stderr=subprocess.DEVNULL,
    )
    eurl, purl = f"http://127.0.0.1:{eport}", f"http://127.0.0.1:{pport}"
    out = Path(tempfile.mkdtemp()) / "serve"
    exe = Path(sys.executable).parent / "thundersim"
    proxy = None
    try:
        wait_up(eurl)
        proxy = subprocess.Popen(
            [str(exe), "serve", "--backends", eurl, "--port", str(pport), "--policy",
             args.policy, "--backlog", str(args.backlog), "--out", str(out)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_up(purl)
        if args.mode == "burst":
            figures = asyncio.run(burst(purl, args.programs, args.calls))
        else:
            figures = asyncio.run(
                soak(purl, proxy.pid, args.total, args.programs, args.calls, args.every)
            )
        figures.update(mode=args.mode, policy=args.policy, backlog=args.backlog)
        print(json.dumps(figures))
    finally:
        if proxy is not None:
            proxy.terminate()
            proxy.wait(60)
        engine.kill()


if __name__ == "__main__":
    main()
