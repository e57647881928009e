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

Side by side with another source tree (issue 15: the engine's speed before and after a change,
on a machine too noisy for runs minutes apart to compare):

    python experiments/bench_sim_speed.py --before /tmp/before --replicas 1 16 [--rounds 3]

times every (policy, replicas) run alternately in this tree and in the one at --before (e.g. a
`git worktree add /tmp/before <commit>`), each in its own process, best of --rounds x --repeat,
and prints wall and CPU seconds and simulated seconds per wall second of both, and whether their
summaries agree on every key both report (they must: the engine's results are identical to the
bit). With --replicas R, the R replicas share 96 programs (as the issue measured the sampling of
every replica, at 16).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

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


# Run by a child process for --before: import thundersim (and the packages the editable install
# maps into it: policies, engine adapters, bundled traces) from the given tree, not this one.
_CHILD = """
import json, os, sys, time
tree = sys.argv[1]
import __editable___thundersim_0_1_0_finder as finder
base = os.path.dirname(finder.MAPPING["thundersim"])  # the tree the venv was installed from
finder.MAPPING = {k: tree + v[len(base):] for k, v in finder.MAPPING.items()}
sys.path.insert(0, tree)
os.chdir(tree)
from thundersim.policies import make_policy
from thundersim.sim.catalog import make_setup
from thundersim.sim.simulate import RunConfig, simulate
from thundersim.traces.loader import load_trace
policy, replicas, repeat, trace = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
specs = load_trace(trace)
best = None
for _ in range(repeat):
    config = RunConfig(setup=make_setup(), concurrency=96, replicas=replicas)
    w0, c0 = time.perf_counter(), time.process_time()
    s = simulate(specs, make_policy(policy), config).summary
    run = (time.perf_counter() - w0, time.process_time() - c0)
    best = run if best is None else (min(best[0], run[0]), min(best[1], run[1]))
keep = {k: v for k, v in s.items() if k not in ("wall_s", "sim_speed")}
print(json.dumps({"wall": best[0], "cpu": best[1], "sim": s["simulated_s"],
                  "summary": json.dumps(keep, sort_keys=True, default=str)}))
"""


def _child_run(tree: Path, policy: str, replicas: int, repeat: int, trace: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, str(tree), policy, str(replicas), str(repeat), trace],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": ""},
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def _agree(a, b) -> bool:
    """The two summaries agree on every key both have (a tree may report more)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return all(_agree(a[k], b[k]) for k in a.keys() & b.keys())
    return a == b


def side_by_side(before: Path, replicas: list[int], rounds: int, repeat: int, trace: str) -> None:
    """This tree and `before`, each (policy, replicas) timed alternately in fresh processes."""
    here = Path(__file__).resolve().parents[1]
    print(f"# side by side: after = {here}, before = {before}; 96 programs, {trace}")
    print(f"# best of {rounds} rounds x {repeat} runs, each round before then after")
    print(
        f"{'policy':6s} {'replicas':>8s} {'sim_s':>7s} {'before wall':>11s} {'after wall':>10s} "
        f"{'before cpu':>10s} {'after cpu':>9s} {'sim/wall before':>15s} {'after':>7s} "
        f"{'x':>5s} {'same':>5s}"
    )
    for n in replicas:
        for policy in ("vllm", "stp"):
            runs = {"before": [], "after": []}
            for _ in range(rounds):
                runs["before"].append(_child_run(before, policy, n, repeat, trace))
                runs["after"].append(_child_run(here, policy, n, repeat, trace))
            b = {k: min(r[k] for r in runs["before"]) for k in ("wall", "cpu")}
            a = {k: min(r[k] for r in runs["after"]) for k in ("wall", "cpu")}
            sim = runs["after"][0]["sim"]
            first = json.loads(runs["before"][0]["summary"])
            same = all(
                _agree(json.loads(r["summary"]), first) for r in runs["before"] + runs["after"]
            )
            print(
                f"{policy:6s} {n:8d} {sim:7.0f} {b['wall']:11.2f} {a['wall']:10.2f} "
                f"{b['cpu']:10.2f} {a['cpu']:9.2f} {sim / b['wall']:15.0f} "
                f"{sim / a['wall']:7.0f} {b['wall'] / a['wall']:5.2f} {str(same):>5s}"
            )


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
    ap.add_argument("--before", type=Path, help="another source tree, timed side by side")
    ap.add_argument("--replicas", type=int, nargs="+", default=[1], help="with --before")
    ap.add_argument("--rounds", type=int, default=3, help="with --before: alternations")
    args = ap.parse_args()
    if args.before is not None:
        side_by_side(args.before.resolve(), args.replicas, args.rounds, args.repeat, args.trace)
        return
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
