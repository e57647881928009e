"""Benchmark: one scheduler tick with 1,000 live programs (target < 5 ms).

    python experiments/bench_tick.py [--programs 1000] [--repeat 200]

Builds a Cluster over one simulated replica, puts N programs in a mix of states (active and
reasoning, active and acting for various times, paused, waiting with a ready call) with
contexts from the bundled coding trace, sizes the KV pool so the active ones overflow it (the
tick then has real pausing and restoring to decide), and times `policy.on_tick(view)` per
program-aware policy. Decisions are computed, not applied, so every repeat sees the same state.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import simpy

from thundersim.core.cluster import Cluster
from thundersim.core.policy import Policy, PolicyOptions
from thundersim.core.program import Phase, Program, Status
from thundersim.policies import make_policy
from thundersim.sim.catalog import make_setup
from thundersim.sim.driver import SimClock
from thundersim.sim.engine import SimBackend
from thundersim.sim.latency import LatencyModel, roofline_profile
from thundersim.traces.workloads import swe


def build(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    env = simpy.Environment()
    setup = make_setup()
    specs = swe.generate(n, seed)
    contexts = [
        p.prompt_tokens(min(len(p.steps) - 1, int(rng.integers(len(p.steps))))) for p in specs
    ]
    capacity = int(sum(contexts) * 0.6)  # the active set overflows the pool
    backend = SimBackend(env, 0, capacity, LatencyModel(roofline_profile(setup)))
    cluster = Cluster(SimClock(env), [backend], Policy())
    env.run(until=100.0)
    for i, spec in enumerate(specs):
        p = Program(spec, i)
        cluster.arrive(p)
        p.context_tokens = contexts[i]
        state = rng.random()
        if state < 0.5:
            p.status, p.backend = Status.ACTIVE, 0
            if rng.random() < 0.6:
                p.phase, p.acting_since = Phase.ACTING, 100.0 - float(rng.exponential(5.0))
                p.step = 1
        elif state < 0.8:
            p.status, p.phase = Status.PAUSED, Phase.REASONING
            p.pending = bool(rng.random() < 0.5)
        else:
            p.pending = True  # new, its first call ready
    return cluster


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--programs", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=200)
    args = ap.parse_args()
    cluster = build(args.programs)
    print(f"# one tick with {args.programs} live programs (ms per tick)")
    print(f"{'policy':10s} {'mean':>7s} {'p50':>7s} {'p99':>7s} {'decisions':>9s}")
    for name in ("stp", "stp_fair", "stp_tool", "stp_exact", "lru"):
        policy = make_policy(name, PolicyOptions())
        times = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            decisions = policy.on_tick(cluster.view)
            times.append(1e3 * (time.perf_counter() - t0))
        times.sort()
        print(
            f"{name:10s} {statistics.mean(times):7.2f} {times[len(times) // 2]:7.2f} "
            f"{times[int(0.99 * (len(times) - 1))]:7.2f} {len(decisions):9d}"
        )


if __name__ == "__main__":
    main()
