"""Benchmark: step-time backends against measured end-to-end vLLM runs (validation only).

    python experiments/bench_latency_silicon.py [--requests-per-client 4] [--limit N]
        [--out experiments/results/latency_silicon.csv]

aiconfigurator-core 0.12.0 ships `systems/silicon_sample.csv`: TTFT and TPOT measured on real
vLLM deployments (vllm/vllm-openai images 0.11-0.19; model, GPU, TP/EP layout, ISL, OSL and the
client concurrency: its `batch_size` column is the `silicon_concurrency` of each row's source).
Each aggregated vLLM row whose model and GPU the catalog has, in a layout a catalog Setup can
express (pure tensor parallelism: experts TP-sharded, no expert or attention data
parallelism), is simulated with thundersim's own simulator (one replica of that setup, the
vLLM scheduler model and budget of the GPU) on both step-time backends: the roofline and the
measured one (thundersim.sim.latency_measured).

How the rows were measured, as far as the package says: a streaming benchmark client at a fixed
concurrency against one OpenAI-compatible vLLM server (the `silicon_concurrency` field, the
vllm/vllm-openai image), with synthetic prompts of ISL tokens and OSL output tokens, which is
how aiperf / genai-perf / vLLM's benchmark_serving drive a server with `--concurrency N`
(`--max-concurrency N` with an unlimited request rate). The simulation reproduces that: N
clients start together at t = 0, each a closed loop that sends its next request (a fresh
random prompt: no prefix shared with any other, so no cache hits) the moment its previous
response has ended, `--requests-per-client` requests each; every request is counted, the first
wave's burst included, as those clients report the mean over all requests. The KV cache dtype
is BF16: vLLM's default (`--kv-cache-dtype auto`: the model's activation dtype), which no row
overrides. Weights are the row's precision: FP8 rows FP8, the Qwen3-32B rows with no precision
(the BF16 checkpoint Qwen/Qwen3-32B) BF16, gpt-oss-120b its MXFP4 checkpoint (the CSV labels
those Hopper rows fp4/nvfp4; Hopper has no FP4 and vLLM serves the MXFP4 experts there).

TTFT and TPOT as those clients define them, per request: TTFT = first token - sent;
TPOT = (last token - first token) / (output tokens - 1); the row's value is their mean.

Calibration vs validation: the measured backend is calibrated on the package's operator tables
(measured GEMM / attention / MoE / all-reduce kernels); the roofline on hardware specs. The
silicon rows are validation only: nothing is tuned to them. The one decision taken from them is
which backend is each (model, GPU)'s default: the one with the lower TPOT MAPE over that group's
rows (the measured backend on a tie). TPOT decides because it is the step time the backends
model; TTFT is reported side by side but is dominated by what neither backend models: how far
the clients' requests are synchronised (`--start burst` puts every client's first request at
t = 0, and a deterministic simulator then keeps them in lockstep, so every prompt waits for all
the others: the upper bracket; `spread`, the default, the lower) and the server's front-end
time (HTTP, tokenisation, the API server streaming every request's tokens), which grows with
concurrency. The decision is printed as the `DEFAULT_BACKEND` literal that
thundersim/sim/latency_measured.py holds, with the numbers that decided it.

The gaps to the targets (TPOT <= 15 %, TTFT <= 25 % mean error), per model, as measured:
- TTFT, every group: the front end and the clients' synchronisation above (gpt-oss TP2: real
  TTFT 59 -> 169 ms from concurrency 4 to 64, simulated ~35 ms flat);
- Llama-3.1-8B H200: the rows look inconsistent (at concurrency 112, OSL 100 about one new
  1,000-token prompt enters per step, so every step carries a ~15 ms prefill by the tables,
  yet the measured TPOT is 11.25 ms); the roofline stays the default;
- Qwen3-235B-A22B H200: the tables' MoE decode is ~20 % faster than measured (32 vs ~51 ms at
  batch 16, TP2); its FP8 at TP8 cannot be modelled (1536 / 8 does not split into 128-wide
  blocks, which vLLM refuses too without expert parallelism);
- gpt-oss-120b H100: noisy rows (concurrency 512 shows TPOT 5.6 ms with TTFT 24 s; c32 slower
  than c64); the roofline stays the default there;
- Qwen3-32B H100: both ~12 % too fast; the block-FP8 tables are slower than BF16 at small batch;
- GLM-4.6 (the paper's default): not modelled (no architecture support, no MoE table for its
  expert shape); it runs on the roofline.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from importlib import resources
from pathlib import Path

import pandas as pd

from thundersim.core.policy import PolicyOptions
from thundersim.policies import make_policy
from thundersim.sim.catalog import make_setup
from thundersim.sim.latency_measured import select_step_time
from thundersim.sim.simulate import RunConfig, simulate
from thundersim.traces.schema import EnvSpec, ProgramSpec, StepSpec

GPU_OF = {"h100_sxm": "H100-SXM", "h200_sxm": "H200", "a100_sxm": "A100-80G"}
MODEL_OF = {
    "meta-llama/Llama-3.1-70B": "Llama-3.1-70B",
    "nvidia/Llama-3.1-8B-Instruct-FP8": "Llama-3.1-8B",
    "Qwen/Qwen3-32B": "Qwen3-32B",
    "Qwen/Qwen3-235B-A22B-FP8": "Qwen3-235B-A22B",
    "openai/gpt-oss-120b": "gpt-oss-120b",
}
BACKENDS = ("roofline", "measured")
COMMAND = "python experiments/bench_latency_silicon.py"


def silicon_rows() -> pd.DataFrame:
    path = resources.files("aiconfigurator_core") / "systems" / "silicon_sample.csv"
    return pd.read_csv(str(path))


def weight_dtype(row) -> str:
    if row.model == "gpt-oss-120b":
        return "mxfp4"
    return "fp8" if row.precision == "fp8" else "bf16"


def select(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The rows simulated, and the ones left out with the reason (vLLM aggregated rows of a
    catalog model and GPU only)."""
    df = df[(df.backend == "vllm") & (df["mode"] == "agg")].copy()
    df["gpu"] = df.system.map(GPU_OF)
    df["model"] = df.model_path.map(MODEL_OF)
    df = df[df.gpu.notna() & df.model.notna()].copy()
    df["tp"] = df.tp_size.astype(int)
    df["concurrency"] = df.batch_size.astype(int)
    skipped = []
    keep = []
    for row in df.itertuples():
        moe = row.model in ("Qwen3-235B-A22B", "gpt-oss-120b")
        reason = None
        if not (math.isnan(row.attention_dp_size) or row.attention_dp_size == 1):
            reason = "attention data parallelism"
        elif moe and not (row.moe_tp_size == row.tp and row.moe_ep_size in (1, 0)):
            reason = f"MoE layout moe_tp {row.moe_tp_size:g} x moe_ep {row.moe_ep_size:g}"
        elif math.isnan(row.silicon_ttft_ms) or math.isnan(row.silicon_tpot_ms):
            reason = "no TTFT/TPOT"
        if reason is None:
            try:
                make_setup(row.gpu, row.model, row.tp, weight_dtype(row), "bf16")
            except ValueError as exc:
                reason = str(exc)
        if reason:
            skipped.append({"id": row.id, "reason": reason})
        else:
            keep.append(row.Index)
    return df.loc[keep], pd.DataFrame(skipped)


def clients(isl: int, osl: int, n: int, requests: int, offsets: list[float]) -> list[ProgramSpec]:
    """n benchmark clients as programs: `requests` calls each, every one a fresh prompt of ISL
    tokens (a context reset before it: nothing of the previous call is reused, no prefix is
    shared) with OSL output tokens and no tool time, so a client sends its next request the
    moment its previous response ends; client i starts at offsets[i]."""
    steps = tuple(StepSpec(isl, osl, "", 0.0, reset=True) for _ in range(requests))
    return [
        ProgramSpec(f"client{i:04d}", "silicon", offsets[i], None, 0, EnvSpec(), steps)
        for i in range(n)
    ]


def request_time(setup, backend: str, isl: int, osl: int, n: int) -> float:
    """One request's duration at concurrency n by the backend itself: a prefill of ISL tokens
    plus OSL - 1 decode steps of n sequences at the mean context (spreads the clients' starts;
    nothing here comes from the silicon rows)."""
    model = select_step_time(setup, choice=backend).model
    prefill = model.iteration_time(isl, isl * (isl + 1) / 2, 0.0, 1)
    return prefill + model.decode_run_time(n, n * isl, max(osl - 1, 0))


def simulate_row(row, backend: str, requests_per_client: int, start: str) -> dict:
    setup = make_setup(row.gpu, row.model, row.tp, weight_dtype(row), "bf16")
    n, isl, osl = row.concurrency, int(row.isl), int(row.osl)
    if start == "burst":
        offsets = [0.0] * n
    else:
        period = request_time(setup, backend, isl, osl, n)
        offsets = [round(i * period / n, 6) for i in range(n)]
    config = RunConfig(
        setup=setup, concurrency=None, step_time=backend, tool_manager=None, sample_dt=10.0
    )
    specs = clients(isl, osl, n, requests_per_client, offsets)
    policy = make_policy("vllm", PolicyOptions(tick_interval=5.0, decay="none"))
    result = simulate(specs, policy, config, trace_name="silicon")
    steps = result.steps
    ttft = (steps.first_token_t - steps.sent_t) * 1e3
    tpot = (steps.response_t - steps.first_token_t) / (steps.output_tokens - 1) * 1e3
    return {
        f"{backend}_backend": result.summary["step_time"]["backend"],
        f"{backend}_ttft_ms": float(ttft.mean()),
        f"{backend}_tpot_ms": float(tpot.mean()),
        f"{backend}_preemptions": result.summary["preemptions"],
    }


def ape(sim: pd.Series, real: pd.Series) -> pd.Series:
    return 100 * (sim - real).abs() / real


def report(res: pd.DataFrame) -> pd.DataFrame:
    for b in BACKENDS:
        ok = res[f"{b}_backend"] == b  # a measured run that fell back is no measured result
        for m in ("ttft", "tpot"):
            res[f"{b}_{m}_ape"] = ape(res[f"{b}_{m}_ms"], res[f"silicon_{m}_ms"]).where(ok)
            res[f"{b}_{m}_err"] = (
                100 * (res[f"{b}_{m}_ms"] - res[f"silicon_{m}_ms"]) / res[f"silicon_{m}_ms"]
            ).where(ok)
    groups = res.groupby(["model", "gpu"], sort=True)
    table = groups.agg(
        rows=("id", "size"),
        **{f"{b}_{m}": (f"{b}_{m}_ape", "mean") for m in ("ttft", "tpot") for b in BACKENDS},
        **{f"{b}_tpot_bias": (f"{b}_tpot_err", "mean") for b in BACKENDS},
        **{f"{b}_ttft_bias": (f"{b}_ttft_err", "mean") for b in BACKENDS},
    )
    return table


def main() -> None:
    ap_ = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap_.add_argument("--requests-per-client", type=int, default=4)
    ap_.add_argument("--limit", type=int, default=0, help="simulate only the first N rows")
    ap_.add_argument(
        "--start",
        choices=("spread", "burst"),
        default="spread",
        help="clients' first requests spread over one request's duration (steady state), or "
        "all at t = 0",
    )
    ap_.add_argument("--out", type=Path, default=Path("experiments/results/latency_silicon.csv"))
    args = ap_.parse_args()

    rows, skipped = select(silicon_rows())
    if args.limit:
        rows = rows.head(args.limit)
    print(f"# {len(rows)} vLLM aggregated rows simulated; {len(skipped)} left out", flush=True)
    if len(skipped):
        for reason, n in skipped.reason.value_counts().items():
            print(f"#   left out {n:3d}: {reason}")
    out = []
    t0 = time.perf_counter()
    for i, row in enumerate(rows.itertuples(), 1):
        rec = {
            "id": row.id,
            "model": row.model,
            "gpu": row.gpu,
            "tp": row.tp,
            "weight_dtype": weight_dtype(row),
            "isl": int(row.isl),
            "osl": int(row.osl),
            "concurrency": row.concurrency,
            "vllm_version": row.backend_version,
            "silicon_ttft_ms": row.silicon_ttft_ms,
            "silicon_tpot_ms": row.silicon_tpot_ms,
            "start": args.start,
        }
        for b in BACKENDS:
            rec.update(simulate_row(row, b, args.requests_per_client, args.start))
        out.append(rec)
        if i % 20 == 0:
            print(f"#   {i}/{len(rows)} rows, {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    res = pd.DataFrame(out)
    table = report(res)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    res.to_csv(args.out, index=False, float_format="%.4f")
    summary = args.out.with_name(args.out.stem + "_summary.csv")  # the README's table

    print("\n# MAPE % per model x GPU (signed mean error in brackets: - = simulated too fast)")
    print(
        f"{'model':28s} {'gpu':9s} {'rows':>4s}  {'TTFT roofline':>16s} {'TTFT measured':>16s}"
        f"  {'TPOT roofline':>16s} {'TPOT measured':>16s}  default"
    )
    decisions = {}
    for (model, gpu), r in table.iterrows():
        cells = []
        for m in ("ttft", "tpot"):
            for b in BACKENDS:
                v, bias = r[f"{b}_{m}"], r[f"{b}_{m}_bias"]
                cells.append(
                    "n/a".rjust(16) if math.isnan(v) else f"{v:6.1f} ({bias:+6.1f})".rjust(16)
                )
        score = {b: r[f"{b}_tpot"] for b in BACKENDS if not math.isnan(r[f"{b}_tpot"])}
        best = min(sorted(score, reverse=True), key=score.get)  # measured first on a tie
        decisions[(model, gpu)] = (best, r)
        print(
            f"{model:28s} {gpu:9s} {int(r.rows):4d}  {cells[0]} {cells[1]}  {cells[2]} {cells[3]}"
            f"  {best}"
        )
    means = {c: res[c].mean() for c in res.columns if c.endswith("_ape")}
    print(
        f"{'all rows':38s} {len(res):4d}  {means['roofline_ttft_ape']:16.1f} "
        f"{means['measured_ttft_ape']:16.1f}  {means['roofline_tpot_ape']:16.1f} "
        f"{means['measured_tpot_ape']:16.1f}"
    )
    frame = table.reset_index()
    frame["default"] = [decisions[(m, g)][0] for m, g in zip(frame.model, frame.gpu, strict=True)]
    overall = {"model": "all rows", "gpu": "", "rows": len(res), "default": ""}
    for b in BACKENDS:
        for m in ("ttft", "tpot"):
            overall[f"{b}_{m}"] = means[f"{b}_{m}_ape"]
    frame = pd.concat([frame, pd.DataFrame([overall])], ignore_index=True)
    frame.to_csv(summary, index=False, float_format="%.2f")
    print(f"\n# per-row results: {args.out}; per group: {summary}")
    print(f"# ({time.perf_counter() - t0:.0f} s)")
    print("\n# the per-setup default (paste into thundersim/sim/latency_measured.py):")
    print("DEFAULT_BACKEND: dict[tuple[str, str], tuple[str, str]] = {")
    for (model, gpu), (best, r) in decisions.items():
        why = (
            f"TPOT MAPE over {int(r.rows)} silicon rows: measured {r.measured_tpot:.1f} %, "
            f"roofline {r.roofline_tpot:.1f} % (TTFT {r.measured_ttft:.0f} % / "
            f"{r.roofline_ttft:.0f} %; {COMMAND})"
        )
        print(f"    ({model!r}, {gpu!r}): (\n        {best!r},\n        {why!r},\n    ),")
    print("}")


if __name__ == "__main__":
    main()
