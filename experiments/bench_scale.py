"""Benchmark: how the simulator scales with the fleet, 1 to 64 replicas.

    python experiments/bench_scale.py [--replicas 1,2,4,8,16,32,64] [--policies vllm,stp,continuum]
        [--per-replica 96] [--horizon 600] [--max-wall-s 600] [--workload swe] [--seed 0]
        [--repeat 1] [--coupling] [--coupling-replicas 1,2,4,8] [--out runs/bench_scale.csv]

Every configuration simulates the same span (a horizon run of --horizon simulated seconds: the
closed loop recycles the trace, so it never drains) with --per-replica programs in the system
per replica (concurrency = per-replica x replicas; the default, 96, is the paper's), on the
default setup (GLM-4.6 FP8, TP8 on 8xH100 per replica), tool manager off (each program just
waits its trace prep_s), programs from thundersim's generator (--workload, --seed). Each
configuration runs in a fresh subprocess, so a slow one is cut at --max-wall-s (the whole
subprocess: import, trace generation and the run) and reported as timed out rather than
hanging; a policy's larger fleets are then skipped (they would be slower still).

Printed per configuration (one pandas table, also written as CSV with --out):
- loop_wall_s: the simulation loop (the summary's wall_s); wall_s: the whole `simulate()` call,
  the loop and the result tables (DataFrames), a cost per run that does not grow with the span;
  cpu_s: the CPU time of that call (process time: what a machine shared with other work
  disturbs least); with --repeat N each is the least of N runs;
- sim_s_per_wall_s: simulated seconds per loop wall second (sim_s_per_wall_s_total: per
  `simulate()` second);
- llm_calls_per_wall_s: completed LLM calls (steps: one call and its tool each) per loop wall s;
- engine_iters_per_wall_s: engine iterations (all replicas) per loop wall s;
- peak_rss_mb: the subprocess's peak resident memory (getrusage), rss_before_mb the same just
  before `simulate()` (interpreter, imports, the generated trace);
and per policy the exponent of wall time against fleet size, the slope of a least-squares line
through log(wall) against log(replicas) (numpy), of the loop, of the whole call and of its CPU
time: 1 is linear, what a fleet of independent replicas costs; above 1, the fleet's coupling costs more
than its size.

--coupling also measures what the coupling costs. Replicas interact only through the global
queue, the policy and the router (one Cluster); at R replicas the fleet run (R replicas, the
per-replica x R programs, one Cluster) is timed against R independent single-replica runs of
per-replica programs each (the same programs in R slices of per-replica), summed, and the ratio
fleet / sum printed, of the loops, of the whole calls (R independent runs pay the per-run
tables R times) and of loop seconds per completed LLM call (the fleet's router does not place
programs as the slices do, so the two do not complete the same calls): 1.0 means the coupling
is free.

Only public APIs: thundersim.traces.workloads.generate, thundersim.policies.make_policy,
thundersim.sim.simulate.RunConfig and simulate, so it measures whatever is committed. Timings
are of one process on one core of a machine possibly shared with other work: compare rows of
one invocation, not invocations.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

CHILD_FLAG = "--_one"


# ---- one configuration, in its own process ---------------------------------------------------
def run_one(job: dict) -> dict:
    """Simulate one configuration and measure it (runs inside the subprocess)."""
    import resource

    from thundersim.policies import make_policy
    from thundersim.sim.simulate import RunConfig, simulate
    from thundersim.traces.workloads import generate

    t0 = time.perf_counter()
    specs = generate(job["workload"], job["programs"], job["seed"])
    lo, hi = job.get("slice") or (0, len(specs))
    specs = specs[lo:hi]
    gen_s = time.perf_counter() - t0
    config = RunConfig(
        replicas=job["replicas"],
        concurrency=len(specs),
        horizon_s=job["horizon"],
        seed=job["seed"],
        tool_manager=None,
    )
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t1, c1 = time.perf_counter(), time.process_time()
    result = simulate(specs, make_policy(job["policy"]), config, trace_name=job["workload"])
    wall, cpu = time.perf_counter() - t1, time.process_time() - c1
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    s = result.summary
    return {
        "wall_s": wall,
        "loop_wall_s": s["wall_s"],
        "cpu_s": cpu,
        "gen_s": gen_s,
        "simulated_s": s["simulated_s"],
        "llm_calls": s["steps_completed"],
        "engine_iterations": s["engine_iterations"],
        "throughput_steps_per_min": s["throughput_steps_per_min"],
        "peak_rss_mb": rss / 1024,
        "rss_before_mb": rss_before / 1024,
        "interrupted": s["interrupted"],
    }


TIMES = ("wall_s", "loop_wall_s", "cpu_s", "process_s")


def best_of(job: dict, max_wall_s: float, repeat: int) -> dict:
    """spawn `repeat` times: each time the least of the runs; stops at the first that fails."""
    best: dict = {}
    for _ in range(max(repeat, 1)):
        m = spawn(job, max_wall_s)
        if m["status"] != "ok":
            return m
        best = m if not best else {**m, **{k: min(m[k], best[k]) for k in TIMES}}
    return best


def spawn(job: dict, max_wall_s: float) -> dict:
    """run_one in a fresh interpreter, cut at max_wall_s; its measurements, or why not."""
    t0 = time.perf_counter()
    try:
        done = subprocess.run(
            [sys.executable, __file__, CHILD_FLAG, json.dumps(job)],
            capture_output=True,
            text=True,
            timeout=max_wall_s,
        )
    except subprocess.TimeoutExpired:
        return {"status": "timeout", "process_s": time.perf_counter() - t0}
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-1:] or [f"exit {done.returncode}"]
        print(f"  {job['policy']} x{job['replicas']} failed: {tail[0]}", file=sys.stderr)
        error = tail[0].split(":")[0].rsplit(".", 1)[-1]  # the exception's name
        return {"status": f"failed ({error})", "process_s": time.perf_counter() - t0}
    out = json.loads(done.stdout.strip().splitlines()[-1])
    return {"status": "ok", "process_s": time.perf_counter() - t0, **out}


# ---- the benchmark ---------------------------------------------------------------------------
def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _row(policy: str, replicas: int, concurrency: int, m: dict) -> dict:
    row = {"policy": policy, "replicas": replicas, "concurrency": concurrency, **m}
    if m.get("status") == "ok":
        row["sim_s_per_wall_s"] = m["simulated_s"] / m["loop_wall_s"]
        row["sim_s_per_wall_s_total"] = m["simulated_s"] / m["wall_s"]
        row["llm_calls_per_wall_s"] = m["llm_calls"] / m["loop_wall_s"]
        row["engine_iters_per_wall_s"] = m["engine_iterations"] / m["loop_wall_s"]
    return row


def exponent(replicas: list[int], walls: list[float]) -> float | None:
    """Slope of log(wall) against log(replicas), least squares; None under two fleet sizes."""
    import numpy as np

    if len(set(replicas)) < 2:
        return None
    slope, _ = np.polyfit(np.log(replicas), np.log(walls), 1)
    return float(slope)


def scaling(args, write) -> list[dict]:
    rows: list[dict] = []
    for policy in args.policies:
        stopped_at = None
        for r in args.replicas:
            n = args.per_replica * r
            if stopped_at is not None:
                rows.append(_row(policy, r, n, {"status": f"skipped ({stopped_at} timed out)"}))
                continue
            job = {
                "policy": policy,
                "replicas": r,
                "programs": n,
                "seed": args.seed,
                "workload": args.workload,
                "horizon": args.horizon,
            }
            row = _row(policy, r, n, best_of(job, args.max_wall_s, args.repeat))
            rows.append(row)
            if row["status"] == "timeout":
                stopped_at = f"{r} replicas"
            _progress(row)
            write(rows)
    return rows


def coupling(args) -> list[dict]:
    """Fleet run vs R independent single-replica runs of its slices, per policy and R."""
    out = []
    for policy in args.policies:
        for r in args.coupling_replicas:
            n = args.per_replica * r
            base = {
                "policy": policy,
                "programs": n,
                "seed": args.seed,
                "workload": args.workload,
                "horizon": args.horizon,
            }
            fleet = best_of({**base, "replicas": r}, args.max_wall_s, args.repeat)
            parts = []
            for i in range(r):
                part = {
                    **base,
                    "replicas": 1,
                    "slice": [i * args.per_replica, (i + 1) * args.per_replica],
                }
                parts.append(best_of(part, args.max_wall_s, args.repeat))
                if parts[-1]["status"] != "ok":
                    break
            ok = fleet["status"] == "ok" and all(p["status"] == "ok" for p in parts)
            row = {
                "policy": policy,
                "replicas": r,
                "fleet_loop_s": fleet.get("loop_wall_s"),
                "independent_loop_s_sum": sum(p["loop_wall_s"] for p in parts) if ok else None,
                "fleet_wall_s": fleet.get("wall_s"),
                "independent_wall_s_sum": sum(p["wall_s"] for p in parts) if ok else None,
                "fleet_cpu_s": fleet.get("cpu_s"),
                "independent_cpu_s_sum": sum(p["cpu_s"] for p in parts) if ok else None,
                "fleet_llm_calls": fleet.get("llm_calls"),
                "independent_llm_calls": sum(p["llm_calls"] for p in parts) if ok else None,
                "status": "ok"
                if ok
                else (fleet["status"] if fleet["status"] != "ok" else parts[-1]["status"]),
            }
            row["loop_fleet_over_independent"] = (
                row["fleet_loop_s"] / row["independent_loop_s_sum"] if ok else None
            )
            row["total_fleet_over_independent"] = (
                row["fleet_wall_s"] / row["independent_wall_s_sum"] if ok else None
            )
            row["cpu_fleet_over_independent"] = (
                row["fleet_cpu_s"] / row["independent_cpu_s_sum"] if ok else None
            )
            # the fleet and the slices do not complete the same calls (the router places them):
            # loop seconds per completed call, fleet over independent
            row["loop_per_call_fleet_over_independent"] = (
                (row["fleet_loop_s"] / row["fleet_llm_calls"])
                / (row["independent_loop_s_sum"] / row["independent_llm_calls"])
                if ok and row["fleet_llm_calls"] and row["independent_llm_calls"]
                else None
            )
            out.append(row)
            nan = float("nan")
            print(
                f"  coupling {policy} x{r}: loops fleet {row['fleet_loop_s'] or nan:.2f} s, "
                f"{r} independent {row['independent_loop_s_sum'] or nan:.2f} s "
                f"-> {row['loop_fleet_over_independent'] or nan:.2f}x ({row['status']})",
                file=sys.stderr,
                flush=True,
            )
    return out


def _progress(row: dict) -> None:
    if row["status"] == "ok":
        text = (
            f"loop {row['loop_wall_s']:.2f} s, {row['sim_s_per_wall_s']:.0f} sim-s/wall-s, "
            f"{row['peak_rss_mb']:.0f} MB"
        )
    else:
        text = row["status"]
    print(f"  {row['policy']} x{row['replicas']}: {text}", file=sys.stderr, flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--replicas", type=_ints, default=[1, 2, 4, 8, 16, 32, 64])
    ap.add_argument(
        "--policies",
        type=lambda t: [p for p in t.split(",") if p],
        default=["vllm", "stp", "continuum"],
    )
    ap.add_argument(
        "--per-replica", type=int, default=96, help="programs in the system per replica"
    )
    ap.add_argument("--horizon", type=float, default=600.0, help="simulated seconds per run")
    ap.add_argument("--max-wall-s", type=float, default=600.0, help="cap per configuration")
    ap.add_argument("--workload", default="swe", help="thundersim's generator")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=1, help="runs per configuration (least kept)")
    ap.add_argument("--coupling", action="store_true", help="also fleet vs independent replicas")
    ap.add_argument(
        "--coupling-replicas", type=_ints, default=None, help="(default: --replicas up to 8)"
    )
    ap.add_argument(
        "--out", type=Path, help="write the table as CSV here (coupling: *_coupling.csv)"
    )
    args = ap.parse_args()
    if args.coupling_replicas is None:
        args.coupling_replicas = [r for r in args.replicas if r <= 8] or args.replicas[:1]

    import pandas as pd

    def write(rows: list[dict]) -> None:  # after every configuration: a cut run keeps its rows
        if args.out is not None:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            pd.DataFrame(rows).to_csv(args.out, index=False)

    print(
        f"# scaling: {args.workload} (seed {args.seed}), {args.per_replica} programs per replica, "
        f"horizon {args.horizon:g} sim-s, tool manager off, cap {args.max_wall_s:g} s per run",
        flush=True,
    )
    rows = scaling(args, write)
    table = pd.DataFrame(rows)
    cols = [
        "policy",
        "replicas",
        "concurrency",
        "status",
        "loop_wall_s",
        "wall_s",
        "cpu_s",
        "sim_s_per_wall_s",
        "sim_s_per_wall_s_total",
        "llm_calls_per_wall_s",
        "engine_iters_per_wall_s",
        "peak_rss_mb",
        "rss_before_mb",
    ]
    shown = table[[c for c in cols if c in table]]
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(shown.to_string(index=False, float_format=lambda v: f"{v:,.2f}"))
    print("\n# wall time ~ replicas^k (least squares on log-log, completed runs)")
    for policy, group in table.groupby("policy", sort=False):
        ok = group[group.status == "ok"]
        fits = [
            exponent(ok.replicas.tolist(), ok[col].tolist()) if len(ok) else None
            for col in ("loop_wall_s", "wall_s", "cpu_s")
        ]
        loop_k, total_k, cpu_k = ("-" if k is None else f"{k:.2f}" for k in fits)
        sizes = ",".join(str(r) for r in ok.replicas)
        print(
            f"{policy:10s} loop k = {loop_k}, simulate() k = {total_k}, its CPU k = {cpu_k}"
            f"  (replicas {sizes or 'none'})"
        )
    if args.coupling:
        print("\n# coupling: the fleet run vs its replicas run independently (sum of walls)")
        ctable = pd.DataFrame(coupling(args))
        with pd.option_context("display.width", 200, "display.max_columns", 20):
            print(ctable.to_string(index=False, float_format=lambda v: f"{v:,.2f}"))
        if args.out is not None:
            ctable.to_csv(args.out.with_name(args.out.stem + "_coupling.csv"), index=False)
    if args.out is not None:
        print(f"\nwritten to {args.out}")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == CHILD_FLAG:
        print(json.dumps(run_one(json.loads(sys.argv[2]))))
    else:
        main()
