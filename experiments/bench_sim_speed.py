"""Benchmark: simulation speed and the thrashing phenomenon on the default setup.

    python experiments/bench_sim_speed.py [--trace traces/swe.jsonl] [--reference]
        [--step-time both|auto|measured|roofline] [--model M --gpu G --tp N]

Prints, for the paper's default setup (GLM-4.6 FP8, TP8 on 8xH100) and the bundled coding trace:
1. simulated seconds per wall second at concurrency 96 for `vllm` and `stp` (one process, one
   core; target >= 1000), and with --reference the same run iteration by iteration, so the
   skip-ahead speed-up is a ratio measured side by side in one run; each step-time backend
   (thundersim.sim.latency_measured: measured, and the roofline) side by side, `--step-time
   both`, naming the backend that actually ran (a setup the measured backend cannot model, as
   the default GLM-4.6, falls back to the roofline). The measured backend's one-off build per
   setup and process (compiling the estimator, ~1-2 s) is paid in the first run and not in the
   best of --repeat;
2. throughput, KV hit rate and preemptions of `vllm` and `stp` at 24/48/72/96 programs: the
   phenomenon the paper reports, from an untuned model.
"""

from __future__ import annotations

import argparse
import time

from thundersim.policies import make_policy
from thundersim.sim.catalog import make_setup
from thundersim.sim.simulate import RunConfig, simulate
from thundersim.traces.loader import load_trace


def timed(specs, policy, concurrency, skip_ahead=True, step_time="auto", setup=None):
    config = RunConfig(
        setup=setup or make_setup(),
        concurrency=concurrency,
        skip_ahead=skip_ahead,
        step_time=step_time,
    )
    t0 = time.perf_counter()
    result = simulate(specs, make_policy(policy), config)
    wall = time.perf_counter() - t0
    return result.summary, wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trace", default="traces/swe.jsonl")
    ap.add_argument("--reference", action="store_true", help="also time per-iteration mode")
    ap.add_argument("--repeat", type=int, default=3, help="speed runs per policy (best kept)")
    ap.add_argument(
        "--step-time",
        choices=("both", "auto", "measured", "roofline"),
        default="both",
        help="step-time backend(s) timed side by side (both: measured and roofline)",
    )
    ap.add_argument("--speed-only", action="store_true", help="skip the 24..96 programs table")
    ap.add_argument("--model", default="GLM-4.6")
    ap.add_argument("--gpu", default="H100-SXM")
    ap.add_argument("--tp", type=int, default=8)
    args = ap.parse_args()
    specs = load_trace(args.trace)
    setup = make_setup(args.gpu, args.model, args.tp)
    backends = ("measured", "roofline") if args.step_time == "both" else (args.step_time,)

    print(f"# simulation speed, concurrency 96, {args.trace} ({len(specs)} programs), {setup.name}")
    print(
        f"{'policy':8s} {'step time':9s} {'ran':9s} {'mode':10s} {'simulated_s':>11s} "
        f"{'wall_s':>8s} {'sim_s/wall_s':>12s} {'first run':>9s}"
    )
    for policy in ("vllm", "stp"):
        for step_time in backends:
            best = first = None
            for _ in range(args.repeat):
                s, wall = timed(specs, policy, 96, step_time=step_time, setup=setup)
                first = wall if first is None else first
                best = wall if best is None else min(best, wall)
            ran = s["step_time"]["backend"]
            print(
                f"{policy:8s} {step_time:9s} {ran:9s} {'skip-ahead':10s} {s['simulated_s']:11.0f} "
                f"{best:8.2f} {s['simulated_s'] / best:12.0f} {s['simulated_s'] / first:9.0f}"
            )
            if args.reference:
                r, rwall = timed(specs, policy, 96, False, step_time, setup)
                assert r["steps_completed"] == s["steps_completed"]
                print(
                    f"{policy:8s} {step_time:9s} {ran:9s} {'reference':10s} "
                    f"{r['simulated_s']:11.0f} {rwall:8.2f} {r['simulated_s'] / rwall:12.0f}"
                    f"   skip-ahead speed-up x{rwall / best:.1f}"
                )
    if args.speed_only:
        return

    print("\n# vllm vs stp by parallel programs (whole-run throughput: the trace run to its end)")
    print(
        f"{'N':>4s} {'policy':6s} {'steps/min':>9s} {'hit %':>6s} {'preempt':>8s} "
        f"{'recompute Mtok':>14s} {'ttfr p50 s':>10s}"
    )
    for n in (24, 48, 72, 96):
        for policy in ("vllm", "stp"):
            s, _ = timed(specs, policy, n, setup=setup)
            print(
                f"{n:4d} {policy:6s} {s['throughput_steps_per_min']:9.1f} "
                f"{100 * s['kv_hit_rate']:6.1f} {s['preemptions']:8d} "
                f"{s['recompute_tokens'] / 1e6:14.1f} {s['ttfr_p50_s']:10.1f}"
            )


if __name__ == "__main__":
    main()
