"""Benchmark: simulator vs a real vLLM after calibration, on a small pressured trace.

    python experiments/bench_live_fidelity.py [--programs 16] [--concurrency 12] [--kv-blocks 22]

Starts one local vLLM (CPU build, tiny dummy-weight model, KV pool capped at --kv-blocks x 128
tokens), calibrates the latency model against it, then runs the first N programs of the bundled
coding trace (tokens x 0.05, tool times x 0.05) live and simulated, for vllm and stp, and prints
the relative error of throughput, KV hit rate and preemptions (target: throughput and hit rate
within 15 %). Needs `make vllm`.

Calibration and validation are separate data: the profile (overhead, per-token, per-pair and
per-sequence cost) is fitted to microbenchmarks of single prefills and decode batches only,
never to the trace runs it is then compared on. Each record carries `throughput_metric`
("whole_run": both sides run the same finite trace and are measured whole). The JSON keeps the
fitted profile beside the records.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from dataclasses import asdict
from pathlib import Path

from thundersim.core.policy import PolicyOptions
from thundersim.engine_adapters.local import LocalEngines
from thundersim.live.calibrate import calibrate, validate
from thundersim.traces.loader import load_trace, scale_trace


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--programs", type=int, default=16)
    ap.add_argument("--concurrency", type=int, default=12)
    ap.add_argument("--kv-blocks", type=int, default=22)
    ap.add_argument("--token-scale", type=float, default=0.05)
    ap.add_argument("--time-scale", type=float, default=0.05)
    ap.add_argument(
        "--out",
        type=Path,
        default=Path("experiments/results/live_fidelity.json"),
        help="records for `thundersim figures` (own_validation)",
    )
    args = ap.parse_args()
    specs = scale_trace(
        load_trace("traces/swe.jsonl")[: args.programs], args.token_scale, args.time_scale
    )
    demand = sum(p.peak_context for p in specs[: args.concurrency])
    with tempfile.TemporaryDirectory() as tmp:
        engines = LocalEngines(replicas=1, port=8291, kv_blocks=args.kv_blocks, workdir=Path(tmp))
        with engines as replicas:
            url = replicas[0].url
            capacity = args.kv_blocks * 128
            print(
                f"# {len(specs)} programs, first {args.concurrency} need {demand} KV tokens "
                f"at their peak; the pool holds {capacity}"
            )
            profile, samples = calibrate(url)
            print(
                f"# profile: overhead {1e3 * profile.overhead_s:.2f} ms, "
                f"{1e6 * profile.c_token:.2f} us/token, {1e9 * profile.c_pair:.2f} ns/pair, "
                f"{1e6 * profile.c_seq:.2f} us/sequence ({samples['prefill']} prefill rows)"
            )
            setup = (
                f"{len(specs)} swe programs (tokens x {args.token_scale}, times x "
                f"{args.time_scale}), {args.concurrency} at once needing {demand} KV tokens at "
                f"their peak against a {capacity}-token pool; tiny CPU vLLM, calibrated profile. "
                "Calibration (microbenchmarks of single prefills and decode batches) and "
                "validation (the trace runs, live and simulated) are separate data: the profile "
                "is fitted to the former only. Throughput is measured whole-run on both sides "
                "(the same finite trace)"
            )
            records = validate(
                url,
                specs,
                profile,
                args.concurrency,
                PolicyOptions(tick_interval=0.5, decay="none"),
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    result = {"setup": setup, "profile": asdict(profile), "records": records}
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'policy':6s} {'metric':26s} {'sim':>10s} {'live':>10s} {'error':>8s}")
    for r in records:
        err = "-" if r["rel_error"] is None else f"{100 * r['rel_error']:+.1f}%"
        print(f"{r['policy']:6s} {r['metric']:26s} {r['sim']:10.3f} {r['live']:10.3f} {err:>8s}")


if __name__ == "__main__":
    main()
